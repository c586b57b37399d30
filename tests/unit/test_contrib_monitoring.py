"""The shipped alert rules and dashboard name only metrics the library exports.

A renamed metric would otherwise leave an alert that never fires and a panel that stays
empty. (promtool unit-tests the rules, see scripts/prometheus.sh; the end-to-end test runs
every panel's query against a real Prometheus.)
"""

import json
import re
from pathlib import Path
from typing import Any

from faststream_concurrent_aiokafka.core import metrics

CONTRIB = Path(__file__).parents[2] / "contrib"
NAME = re.compile(r"\bfaststream_concurrent_[a-z_]+\b")


def exported_names() -> set[str]:
    histogram = metrics.PROCESSING_TIME.name
    return {
        f"{metric.name}_total" if metric.kind == "counter" else metric.name
        for metric in metrics.METRICS
    } | {f"{histogram}_bucket", f"{histogram}_sum", f"{histogram}_count"}


def dashboard_panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = json.loads((CONTRIB / "grafana" / "dashboard.json").read_text())[
        "panels"
    ]
    return panels


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]


def test_every_metric_the_alert_rules_use_is_exported() -> None:
    lines = (CONTRIB / "prometheus" / "alerts.yml").read_text().splitlines()
    rules = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    used = set(NAME.findall(rules))
    assert used, "no metric found in alerts.yml"
    assert used <= exported_names()


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    queries = dashboard_queries()
    used = {name for query in queries for name in NAME.findall(query)}
    assert len(queries) >= 12
    assert used <= exported_names()


def test_every_query_of_every_panel_names_an_exported_metric() -> None:
    """Per panel and per query: a query naming no metric, or only unknown ones, would draw an
    empty panel; two panels on one place would hide one."""
    exported = exported_names()
    places = set()
    for panel in dashboard_panels():
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            names = set(NAME.findall(target["expr"]))
            assert names, f"a query of {panel['title']!r} names no metric"
            assert names <= exported, f"{panel['title']!r}: {sorted(names - exported)}"
        place = (panel["gridPos"]["x"], panel["gridPos"]["y"])
        assert place not in places, f"{panel['title']!r} sits on another panel"
        places.add(place)
    ids = [panel["id"] for panel in dashboard_panels()]
    assert len(ids) == len(set(ids))


def test_the_dashboard_shows_flow_control_and_failing_downstreams() -> None:
    """Issue 28's flow control and issue 27's states have their panels."""
    used = {name for query in dashboard_queries() for name in NAME.findall(query)}
    for needed in (
        metrics.RATE.name,
        f"{metrics.RATE_LIMITED.name}_total",
        f"{metrics.RATE_WAIT.name}_total",
        metrics.LIMIT.name,
        metrics.WAITING_RETRY.name,
        metrics.PAUSED_BY_APPLICATION.name,
        metrics.BRAKE_TRIPPED.name,
    ):
        assert needed in used, needed
    assert any('outcome="expired"' in query for query in dashboard_queries())


def test_the_dashboard_shows_what_operators_ask_for() -> None:
    used = {name for query in dashboard_queries() for name in NAME.findall(query)}
    for needed in (
        metrics.LAG.name,
        f"{metrics.PROCESSED.name}_total",
        metrics.IN_FLIGHT.name,
        f"{metrics.RETRIES.name}_total",
        metrics.RECORD_AGE.name,
        metrics.HEALTH.name,
    ):
        assert needed in used
