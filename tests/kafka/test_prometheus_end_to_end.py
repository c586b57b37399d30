"""The shipped alert rules and dashboard against a real Prometheus server scraping a real
service under load (tests/apps/monitored_app.py, under uvicorn, on the real broker).

Prometheus comes from Debian's ``prometheus`` package (scripts/prometheus.sh installs it in
CI); outside CI the test is skipped when the binary is missing. Scrapes and rule evaluations
run every second, and the stall rule's ``for:`` is cut to 2 s in the test's copy of the rules.
"""

import asyncio
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from tests.kafka.test_examples import free_port, http_get
from tests.kafka_helpers import BOOTSTRAP, create_topic, unique, wait_until

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "contrib" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "contrib" / "grafana" / "dashboard.json"
STALL_RULE = "FaststreamConcurrentMessageStalled"

if shutil.which("prometheus") is None and not os.environ.get("CI"):
    pytest.skip(
        "no prometheus binary: run `scripts/prometheus.sh ensure` (Debian's prometheus package)",
        allow_module_level=True,
    )


def rules_with_short_stall(target: Path) -> None:
    """alerts.yml with the stall rule's ``for:`` cut to 2 s (the other rules as shipped)."""
    text = ALERTS.read_text()
    head, rule = text.split(f"- alert: {STALL_RULE}\n")
    rule, count = re.subn(r"for: \S+", "for: 2s", rule, count=1)
    assert count == 1
    target.write_text(f"{head}- alert: {STALL_RULE}\n{rule}")


def dashboard_queries() -> list[str]:
    """Every panel's PromQL, Grafana's variables filled as "All" would fill them."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            query = target["expr"].replace("$__rate_interval", "15s")
            queries.append(re.sub(r"\$(group|topic)\b", ".*", query))
    return queries


@contextmanager
def prometheus(workdir: Path, service_port: int) -> Iterator[str]:
    port = free_port()
    rules = workdir / "alerts.yml"
    rules_with_short_stall(rules)
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {rules}\n"
        "scrape_configs:\n  - job_name: service\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{service_port}']\n"
    )
    log = (workdir / "prometheus.log").open("w")
    server = subprocess.Popen(
        [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(30)
        log.close()


@asynccontextmanager
async def service(workdir: Path, topic: str, group: str) -> AsyncIterator[int]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "BOOTSTRAP": BOOTSTRAP,
        "TOPIC": topic,
        "GROUP": group,
        "DEAD_LETTER_TOPIC": f"{topic}.dlq",
    }
    with (workdir / "service.log").open("w") as out:
        server = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited
            [sys.executable, "-m", "uvicorn", "tests.apps.monitored_app:app", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield port
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.to_thread(server.wait, 60)


async def query(base: str, promql: str) -> list[dict[str, Any]]:
    """The instant query's result; empty while the server is not ready (503, refused)."""
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        status, body = await asyncio.to_thread(http_get, url)
    except OSError:
        return []
    if status == 503:
        return []
    assert status == 200, body
    result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
    return result


async def stall_alert_state(base: str) -> str | None:
    """pending, firing, or None (inactive)."""
    status, body = await asyncio.to_thread(http_get, f"{base}/api/v1/alerts")
    assert status == 200, body
    states = [
        alert["state"]
        for alert in json.loads(body)["data"]["alerts"]
        if alert["labels"]["alertname"] == STALL_RULE
    ]
    return states[0] if states else None


async def produce_orders(topic: str, stop: asyncio.Event, per_sec: int = 100) -> None:
    """Orders at ``per_sec``, every 20th invalid (dead-lettered after one retry)."""
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=5)
    await producer.start()
    try:
        number = 0
        while not stop.is_set():
            for _ in range(per_sec // 10):
                amount = 0 if number % 20 == 19 else 9.5
                await producer.send(topic, json.dumps({"id": number, "amount": amount}).encode())
                number += 1
            await asyncio.sleep(0.1)  # the production pace
    finally:
        await producer.stop()


async def test_every_panel_has_data_and_the_stall_alert_fires_and_resolves(
    tmp_path: Path,
) -> None:
    topic, group = unique("prom-e2e"), unique("g-prom-e2e")
    await create_topic(topic, 4)
    await create_topic(f"{topic}.dlq", 1)
    stop = asyncio.Event()
    load = asyncio.create_task(produce_orders(topic, stop))
    try:
        async with service(tmp_path, topic, group) as service_port:
            with prometheus(tmp_path, service_port) as base:

                async def has_data(promql: str) -> bool:
                    return bool(await query(base, promql))

                rate = "sum(rate(faststream_concurrent_processed_messages_total[15s])) > 0"
                await wait_until(lambda: has_data(rate), timeout=90)
                assert await stall_alert_state(base) is None

                producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
                await producer.start()
                try:
                    stall = {"id": -1, "amount": 1, "stall_sec": 15}
                    await producer.send_and_wait(topic, json.dumps(stall).encode())
                finally:
                    await producer.stop()
                # While it stalls, a record is always in work: every panel has something.
                for promql in dashboard_queries():
                    await wait_until(functools.partial(has_data, promql), timeout=10)

                async def alert_is(state: str | None) -> bool:
                    return await stall_alert_state(base) == state

                await wait_until(lambda: alert_is("firing"), timeout=30)
                firing = await query(base, 'ALERTS{alertstate="firing"}')
                assert STALL_RULE in {sample["metric"]["alertname"] for sample in firing}
                # The message ends after 15 s: the stall, and so the alert, is over.
                await wait_until(lambda: alert_is(None), timeout=40)
    finally:
        stop.set()
        await load
