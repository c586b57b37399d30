"""The pure parts of monitoring: faults to a health report, a snapshot to metric samples."""

import re
import subprocess
import sys

import pytest

from faststream_concurrent_aiokafka.core import metrics
from faststream_concurrent_aiokafka.core.health import Fault, HealthReport, assess
from faststream_concurrent_aiokafka.core.settings import SubscriberSettings
from faststream_concurrent_aiokafka.core.snapshot import (
    PartitionSnapshot,
    ProcessingSnapshot,
    SubscriberSnapshot,
    Totals,
)


def partition(number: int, **figures: object) -> PartitionSnapshot:
    values: dict[str, object] = {
        "group": "billing",
        "topic": "orders",
        "partition": number,
        "assigned": True,
        "paused": False,
        "in_flight": 0,
        "queued": 0,
        "held": 0,
        "commit_point": None,
        "committed": None,
        "finished_above": 0,
        "uncommitted": 0,
        "not_committed": 0,
        "stalled": 0,
        "oldest_in_flight_offset": None,
        "oldest_in_flight_sec": None,
        **figures,
    }
    return PartitionSnapshot(**values)  # type: ignore[arg-type]


def snapshot_of(*partitions: PartitionSnapshot, totals: Totals | None = None) -> ProcessingSnapshot:
    subscriber = SubscriberSnapshot(
        name="group=billing topics=orders",
        group="billing",
        topics=("orders",),
        settings=SubscriberSettings(concurrency_limit=7),
        consumers=1,
        partitions=partitions,
        totals=totals or Totals(),
    )
    return ProcessingSnapshot(
        running=True,
        concurrency_limit=50,
        max_uncommitted_tasks=1000,
        in_flight=3,
        uncommitted=12,
        subscribers=(subscriber,),
        totals=totals or Totals(),
    )


# ---- health ----------------------------------------------------------------------------


def test_no_fault_is_ok() -> None:
    assert assess([]) == HealthReport("ok", ())


def test_the_worst_severity_wins_and_failed_reasons_come_first() -> None:
    report = assess(
        [
            Fault("degraded", "orders[0]@5 has been running for 70 s"),
            Fault("failed", "the batch committer is dead"),
            Fault("degraded", "3 commits in a row failed"),
        ]
    )

    assert report.status == "failed"
    assert report.is_failed
    assert report.reasons == (
        "the batch committer is dead",
        "orders[0]@5 has been running for 70 s",
        "3 commits in a row failed",
    )
    assert report.as_dict() == {"status": "failed", "reasons": list(report.reasons)}


def test_only_degraded_faults_make_degraded() -> None:
    report = assess([Fault("degraded", "a"), Fault("degraded", "b")])

    assert (report.status, report.is_failed, report.reasons) == ("degraded", False, ("a", "b"))


# ---- totals ----------------------------------------------------------------------------


def test_totals_add_up_field_by_field_and_processed_is_the_ended_outcomes() -> None:
    one = Totals(ok=5, failed=1, dead_lettered=2, skipped=4, retries=3, commit_requests=9)
    two = Totals(ok=1, dead_lettered=1, failed_commits=2, commit_requests=3)

    both = Totals.sum([one, two])

    assert both == Totals(
        ok=6, failed=1, dead_lettered=3, skipped=4, retries=3, commit_requests=12, failed_commits=2
    )
    assert both.processed == 10  # skipped messages never ran


# ---- metrics ---------------------------------------------------------------------------


def test_metric_names_follow_prometheus_conventions_and_are_unique() -> None:
    names = [metric.name for metric in metrics.METRICS]
    assert len(names) == len(set(names))
    for metric in metrics.METRICS:
        assert re.fullmatch(r"faststream_concurrent_[a-z_]+", metric.name)
        assert not metric.name.endswith("_total"), "counters get _total from the exporter"
        assert metric.help.endswith(".")


def test_labels_never_carry_offsets_or_keys() -> None:
    allowed = {"group", "topic", "partition", "outcome", "result", "status"}
    assert all(set(metric.labels) <= allowed for metric in metrics.METRICS)


def test_partition_figures_become_samples_labelled_by_group_topic_partition() -> None:
    snapshot = snapshot_of(
        partition(
            0,
            in_flight=2,
            queued=1,
            held=3,
            uncommitted=6,
            not_committed=9,
            finished_above=1,
            commit_point=40,
            committed=38,
            oldest_in_flight_offset=40,
            oldest_in_flight_sec=4.5,
            stalled=1,
        ),
        partition(1, paused=True),
    )

    samples = metrics.measure(snapshot, HealthReport("degraded", ("x",)))

    p0, p1 = ("billing", "orders", "0"), ("billing", "orders", "1")
    assert samples[metrics.IN_FLIGHT] == [(p0, 2), (p1, 0)]
    assert samples[metrics.QUEUED] == [(p0, 1), (p1, 0)]
    assert samples[metrics.HELD] == [(p0, 3), (p1, 0)]
    assert samples[metrics.UNCOMMITTED] == [(p0, 6), (p1, 0)]
    assert samples[metrics.NOT_COMMITTED] == [(p0, 9), (p1, 0)]
    assert samples[metrics.FINISHED_ABOVE] == [(p0, 1), (p1, 0)]
    assert samples[metrics.STALLED] == [(p0, 1), (p1, 0)]
    assert samples[metrics.OLDEST] == [(p0, 4.5), (p1, 0.0)]
    # Offsets are values, and only where there is one.
    assert samples[metrics.COMMIT_POINT] == [(p0, 40)]
    assert samples[metrics.COMMITTED] == [(p0, 38)]
    subscriber = ("billing", "orders")
    assert samples[metrics.PAUSED] == [(subscriber, 1)]
    assert samples[metrics.ASSIGNED] == [(subscriber, 2)]
    assert samples[metrics.LIMIT] == [(subscriber, 7)]
    assert samples[metrics.TASKS] == [((), 3)]
    assert samples[metrics.GLOBAL_LIMIT] == [((), 50)]
    assert samples[metrics.ALL_UNCOMMITTED] == [((), 12)]
    assert samples[metrics.MAX_UNCOMMITTED] == [((), 1000)]
    assert samples[metrics.HEALTH] == [
        (("ok",), 0.0),
        (("starting",), 0.0),
        (("degraded",), 1.0),
        (("failed",), 0.0),
    ]
    # Lag and record age only where they are known.
    assert samples[metrics.LAG] == samples[metrics.UNPROCESSED] == []
    assert samples[metrics.RECORD_AGE] == []
    assert samples[metrics.BRAKE_TRIPPED] == [(subscriber, 0.0)]


def test_lag_and_record_age_become_partition_samples() -> None:
    snapshot = snapshot_of(
        partition(0, end_offset=1000, lag=1000, unprocessed=990, oldest_record_age_sec=121.5),
        partition(1, end_offset=None),
    )

    samples = metrics.measure(snapshot, HealthReport("ok"))

    p0 = ("billing", "orders", "0")
    assert samples[metrics.LAG] == [(p0, 1000)]
    assert samples[metrics.UNPROCESSED] == [(p0, 990)]
    assert samples[metrics.RECORD_AGE] == [(p0, 121.5)]


def test_a_starting_consumer_is_not_ready_but_alive() -> None:
    starting = assess([Fault("starting", "joining")])
    assert (starting.status, starting.is_ready, starting.is_failed) == ("starting", False, False)
    assert assess([]).is_ready
    assert assess([Fault("degraded", "slow")]).is_ready
    # Worse faults win, and their reasons come first.
    mixed = assess([Fault("starting", "s"), Fault("degraded", "d"), Fault("failed", "f")])
    assert (mixed.status, mixed.reasons) == ("failed", ("f", "d", "s"))
    assert assess([Fault("starting", "s"), Fault("degraded", "d")]).status == "degraded"


def test_totals_become_counters_by_outcome_and_result() -> None:
    totals = Totals(
        ok=1800,
        failed=3,
        dead_lettered=200,
        skipped=7,
        retries=200,
        task_timeouts=2,
        stalls=1,
        commit_requests=25,
        failed_commits=4,
        pauses=5,
        resumes=4,
        rebalances=2,
        transactions_committed=30,
        transactions_aborted=2,
        producers_fenced=1,
    )

    samples = metrics.measure(snapshot_of(totals=totals), HealthReport("ok"))

    who = ("billing", "orders")
    assert samples[metrics.PROCESSED] == [
        ((*who, "ok"), 1800),
        ((*who, "failed"), 3),
        ((*who, "dead_lettered"), 200),
        ((*who, "skipped"), 7),
        ((*who, "expired"), 0),
        ((*who, "retry_topic"), 0),
    ]
    assert samples[metrics.COMMITS] == [((*who, "ok"), 21), ((*who, "failed"), 4)]
    assert samples[metrics.RETRIES] == [(who, 200)]
    assert samples[metrics.TASK_TIMEOUTS] == [(who, 2)]
    assert samples[metrics.STALLS] == [(who, 1)]
    assert samples[metrics.PAUSES] == [(who, 5)]
    assert samples[metrics.RESUMES] == [(who, 4)]
    assert samples[metrics.REBALANCES] == [(who, 2)]
    assert samples[metrics.TRANSACTIONS] == [((*who, "committed"), 30), ((*who, "aborted"), 2)]
    assert samples[metrics.FENCED] == [(who, 1)]


def test_nothing_running_has_only_the_global_samples() -> None:
    samples = metrics.measure(ProcessingSnapshot.stopped(), HealthReport("failed", ("off",)))

    with_samples = {metric for metric, values in samples.items() if values}
    assert with_samples == {
        metrics.TASKS,
        metrics.GLOBAL_LIMIT,
        metrics.ALL_UNCOMMITTED,
        metrics.MAX_UNCOMMITTED,
        metrics.HEALTH,
    }


# ---- optional extras -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "missing", "extra"),
    [
        ("prometheus", "prometheus_client", "[prometheus]"),
        ("otel", "opentelemetry", "[otel]"),
    ],
)
def test_an_exporter_without_its_library_names_the_extra_to_install(
    module: str, missing: str, extra: str
) -> None:
    code = (
        f"import sys; sys.modules[{missing!r}] = None\n"
        "import faststream_concurrent_aiokafka  # the package itself needs neither\n"
        f"import faststream_concurrent_aiokafka.{module}\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode != 0
    assert "ImportError" in done.stderr
    assert f"faststream-concurrent-aiokafka{extra}" in done.stderr
