"""The metrics, once for every exporter: names, meaning, labels, and their values in a
snapshot. ``prometheus`` and ``otel`` only render this table.

Pure: no I/O. Label values are bounded: consumer group, topic (a subscriber's topics joined
by ","), partition number, and fixed words; never an offset or a key.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, Literal

from faststream_concurrent_aiokafka.core.health import HealthReport
from faststream_concurrent_aiokafka.core.histogram import HistogramSnapshot
from faststream_concurrent_aiokafka.core.snapshot import (
    PartitionSnapshot,
    ProcessingSnapshot,
    SubscriberSnapshot,
    Totals,
)

Kind = Literal["gauge", "counter", "histogram"]
Labels = tuple[str, ...]
Sample = tuple[Labels, float]

PARTITION_LABELS: Final = ("group", "topic", "partition")
SUBSCRIBER_LABELS: Final = ("group", "topic")


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric. Counter names are given without ``_total`` (Prometheus adds it)."""

    name: str
    kind: Kind
    help: str
    unit: str  # UCUM, for OpenTelemetry
    labels: Labels = ()


def _partition_gauge(name: str, help_text: str, unit: str = "{message}") -> Metric:
    return Metric(f"faststream_concurrent_{name}", "gauge", help_text, unit, PARTITION_LABELS)


def _counter(name: str, help_text: str, unit: str, extra: Labels = ()) -> Metric:
    labels = (*SUBSCRIBER_LABELS, *extra)
    return Metric(f"faststream_concurrent_{name}", "counter", help_text, unit, labels)


IN_FLIGHT: Final = _partition_gauge("in_flight_messages", "Messages running now.")
QUEUED: Final = _partition_gauge("queued_messages", "Messages waiting for a free slot.")
HELD: Final = _partition_gauge(
    "held_messages", "Messages waiting behind a running message with the same key."
)
WAITING_RETRY: Final = _partition_gauge(
    "waiting_retry_messages",
    "Messages that failed and wait for their next attempt without holding a slot.",
)
UNCOMMITTED: Final = _partition_gauge(
    "uncommitted_messages", "Messages admitted and not yet passed by the commit point."
)
NOT_COMMITTED: Final = _partition_gauge(
    "not_committed_messages",
    "What a crash now would run again: messages running, and those finished since the last "
    "commit Kafka acknowledged (or left out of its metadata).",
)
FINISHED_ABOVE: Final = _partition_gauge(
    "finished_above_commit_point_messages",
    "Messages finished above the commit point, waiting for an earlier one to end.",
)
STALLED: Final = _partition_gauge(
    "stalled_messages", "Messages running longer than stall_warning_sec."
)
OLDEST: Final = _partition_gauge(
    "oldest_in_flight_seconds",
    "How long the longest-running message has run (0 without any; resolution: the watchdog "
    "tick, 1 s or less).",
    "s",
)
COMMIT_POINT: Final = _partition_gauge(
    "commit_point_offset", "The offset that would be committed now.", "{offset}"
)
COMMITTED: Final = _partition_gauge(
    "committed_offset", "The last offset this process committed.", "{offset}"
)
LAG: Final = _partition_gauge(
    "lag_messages",
    "The partition's end offset minus the group's committed offset (what Burrow and KEDA "
    "read); a paused partition's end offset is asked from the broker.",
)
UNPROCESSED: Final = _partition_gauge(
    "unprocessed_messages",
    "Messages not processed yet: the end offset minus the commit point, less those finished "
    "above it.",
)
RECORD_AGE: Final = _partition_gauge(
    "oldest_record_age_seconds",
    "Now minus the Kafka timestamp of the oldest admitted record not settled yet (running, "
    "queued or held): how old the data being worked on is.",
    "s",
)
PAUSED_BY_APPLICATION: Final = Metric(
    "faststream_concurrent_paused_by_application",
    "gauge",
    "1 while the application paused the subscriber (pause_processing), else 0.",
    "1",
    SUBSCRIBER_LABELS,
)
BRAKE_TRIPPED: Final = Metric(
    "faststream_concurrent_dead_letter_brake_tripped",
    "gauge",
    "1 once the subscriber's dead-letter brake stopped it (until a restart), else 0.",
    "1",
    SUBSCRIBER_LABELS,
)
PAUSED: Final = Metric(
    "faststream_concurrent_paused_partitions",
    "gauge",
    "Assigned partitions whose fetching is paused (backpressure, shutdown, the application).",
    "{partition}",
    SUBSCRIBER_LABELS,
)
ASSIGNED: Final = Metric(
    "faststream_concurrent_assigned_partitions",
    "gauge",
    "Partitions assigned to the subscriber's consumers.",
    "{partition}",
    SUBSCRIBER_LABELS,
)
LIMIT: Final = Metric(
    "faststream_concurrent_concurrency_limit",
    "gauge",
    "The subscriber's concurrency_limit (with adaptive_concurrency: the limit in force now).",
    "{message}",
    SUBSCRIBER_LABELS,
)
RATE: Final = Metric(
    "faststream_concurrent_max_messages_per_sec",
    "gauge",
    "The subscriber's max_messages_per_sec (absent without a rate limit).",
    "{message}/s",
    SUBSCRIBER_LABELS,
)
TASKS: Final = Metric(
    "faststream_concurrent_running_tasks",
    "gauge",
    "Message tasks running over all subscribers (a batch is one), against the global limit.",
    "{task}",
)
GLOBAL_LIMIT: Final = Metric(
    "faststream_concurrent_global_concurrency_limit",
    "gauge",
    "The global concurrency_limit.",
    "{task}",
)
ALL_UNCOMMITTED: Final = Metric(
    "faststream_concurrent_all_uncommitted_messages",
    "gauge",
    "Uncommitted messages over all subscribers, against max_uncommitted_tasks.",
    "{message}",
)
MAX_UNCOMMITTED: Final = Metric(
    "faststream_concurrent_max_uncommitted_messages",
    "gauge",
    "max_uncommitted_tasks: above it fetching pauses.",
    "{message}",
)
HEALTH: Final = Metric(
    "faststream_concurrent_health",
    "gauge",
    "1 for the current health status (ok, starting, degraded, failed), 0 for the others.",
    "1",
    ("status",),
)
PROCESSED: Final = _counter(
    "processed_messages",
    "Messages whose processing ended, by outcome: ok, failed (logged, committed), "
    "dead_lettered, skipped (finished by an earlier owner), expired (older than "
    "max_message_age_sec, not run), retry_topic (sent to the retry topic for a later "
    "attempt).",
    "{message}",
    ("outcome",),
)
RETRIES: Final = _counter("retries", "Failed attempts that were tried again.", "{attempt}")
TASK_TIMEOUTS: Final = _counter(
    "task_timeouts", "Attempts cancelled by task_timeout_sec.", "{attempt}"
)
STALLS: Final = _counter("stalls", "Messages that ran longer than stall_warning_sec.", "{message}")
COMMITS: Final = _counter(
    "commits",
    "Commit requests, by result: ok, failed (refused by Kafka or timed out).",
    "{request}",
    ("result",),
)
PAUSES: Final = _counter("pauses", "Times the library paused a consumer's partitions.", "{pause}")
RESUMES: Final = _counter("resumes", "Times the library resumed them.", "{resume}")
REBALANCES: Final = _counter(
    "rebalances", "Partition assignments the subscriber's consumers received.", "{rebalance}"
)
CLAIMS: Final = _counter(
    "commit_metadata_claims",
    "Offsets the commit metadata of newly assigned partitions claimed an earlier owner "
    "finished, by result: accepted (skipped when read), ignored (at or beyond the "
    "partition's end).",
    "{offset}",
    ("result",),
)
TRANSACTIONS: Final = _counter(
    "transactions",
    "Exactly-once transactions ended, by result: committed, aborted (their messages ran again).",
    "{transaction}",
    ("result",),
)
RATE_LIMITED: Final = _counter(
    "rate_limited_messages",
    "Messages admitted after the poll loop waited for max_messages_per_sec.",
    "{message}",
)
RATE_WAIT: Final = _counter(
    "rate_wait_seconds", "Time the poll loop waited for max_messages_per_sec.", "s"
)
FENCED: Final = _counter(
    "fenced_producers",
    "Exactly-once partition producers fenced: another member took the partition over (this "
    "one was a zombie), or a transaction outlived transaction_timeout_sec.",
    "{producer}",
)

PROCESSING_TIME: Final = Metric(
    "faststream_concurrent_processing_seconds",
    "histogram",
    "Time of each attempt of the subscriber's pipeline (middlewares, handler, publishing); "
    "only for subscribers with measure_processing_time=True.",
    "s",
    SUBSCRIBER_LABELS,
)
"""Not in ``METRICS``: a histogram has no observable OpenTelemetry instrument; the
Prometheus collector renders it from ``histograms``."""

STATUSES: Final = ("ok", "starting", "degraded", "failed")

_PER_PARTITION: Final[tuple[tuple[Metric, Callable[[PartitionSnapshot], float | None]], ...]] = (
    (IN_FLIGHT, lambda p: p.in_flight),
    (QUEUED, lambda p: p.queued),
    (HELD, lambda p: p.held),
    (WAITING_RETRY, lambda p: p.waiting_retry),
    (UNCOMMITTED, lambda p: p.uncommitted),
    (NOT_COMMITTED, lambda p: p.not_committed),
    (FINISHED_ABOVE, lambda p: p.finished_above),
    (STALLED, lambda p: p.stalled),
    (OLDEST, lambda p: p.oldest_in_flight_sec or 0.0),
    (COMMIT_POINT, lambda p: p.commit_point),
    (COMMITTED, lambda p: p.committed),
    (LAG, lambda p: p.lag),
    (UNPROCESSED, lambda p: p.unprocessed),
    (RECORD_AGE, lambda p: p.oldest_record_age_sec),
)
_PER_SUBSCRIBER: Final[tuple[tuple[Metric, Callable[[SubscriberSnapshot], float]], ...]] = (
    (PAUSED, lambda s: s.paused_partitions),
    (ASSIGNED, lambda s: sum(p.assigned for p in s.partitions)),
    (LIMIT, lambda s: s.running_limit),
    (BRAKE_TRIPPED, lambda s: float(s.brake_tripped)),
    (RATE_LIMITED, lambda s: s.flow.rate_limited),
    (RATE_WAIT, lambda s: s.flow.rate_wait_sec),
    (PAUSED_BY_APPLICATION, lambda s: float(s.paused_by_application)),
)
_TOTALS: Final[tuple[tuple[Metric, Callable[[Totals], float]], ...]] = (
    (RETRIES, lambda t: t.retries),
    (TASK_TIMEOUTS, lambda t: t.task_timeouts),
    (STALLS, lambda t: t.stalls),
    (PAUSES, lambda t: t.pauses),
    (RESUMES, lambda t: t.resumes),
    (REBALANCES, lambda t: t.rebalances),
    (FENCED, lambda t: t.producers_fenced),
)

METRICS: Final = (
    *(metric for metric, _ in _PER_PARTITION),
    *(metric for metric, _ in _PER_SUBSCRIBER),
    RATE,
    TASKS,
    GLOBAL_LIMIT,
    ALL_UNCOMMITTED,
    MAX_UNCOMMITTED,
    HEALTH,
    PROCESSED,
    *(metric for metric, _ in _TOTALS),
    COMMITS,
    CLAIMS,
    TRANSACTIONS,
)
"""Every metric, in the order exporters show them."""


def measure(snapshot: ProcessingSnapshot, health: HealthReport) -> dict[Metric, list[Sample]]:
    """Every metric's samples in ``snapshot`` (a metric may have none)."""
    samples: dict[Metric, list[Sample]] = {metric: [] for metric in METRICS}
    for subscriber in snapshot.subscribers:
        labels = (subscriber.group, ",".join(subscriber.topics))
        for partition in subscriber.partitions:
            where = (partition.group, partition.topic, str(partition.partition))
            for metric, read in _PER_PARTITION:
                value = read(partition)
                if value is not None:
                    samples[metric].append((where, value))
        for metric, read_subscriber in _PER_SUBSCRIBER:
            samples[metric].append((labels, read_subscriber(subscriber)))
        if subscriber.flow.max_messages_per_sec is not None:
            samples[RATE].append((labels, subscriber.flow.max_messages_per_sec))
        samples[PROCESSED] += _processed(labels, subscriber.totals)
        for metric, read_totals in _TOTALS:
            samples[metric].append((labels, read_totals(subscriber.totals)))
        totals = subscriber.totals
        samples[COMMITS] += [
            ((*labels, "ok"), totals.commit_requests - totals.failed_commits),
            ((*labels, "failed"), totals.failed_commits),
        ]
        samples[CLAIMS] += [
            ((*labels, "accepted"), totals.claims_accepted),
            ((*labels, "ignored"), totals.claims_ignored),
        ]
        samples[TRANSACTIONS] += [
            ((*labels, "committed"), totals.transactions_committed),
            ((*labels, "aborted"), totals.transactions_aborted),
        ]
    samples[TASKS].append(((), snapshot.in_flight))
    samples[GLOBAL_LIMIT].append(((), snapshot.concurrency_limit))
    samples[ALL_UNCOMMITTED].append(((), snapshot.uncommitted))
    samples[MAX_UNCOMMITTED].append(((), snapshot.max_uncommitted_tasks))
    samples[HEALTH] += [((status,), float(health.status == status)) for status in STATUSES]
    return samples


def histograms(snapshot: ProcessingSnapshot) -> list[tuple[Labels, HistogramSnapshot]]:
    """``PROCESSING_TIME`` of each subscriber that measures it."""
    return [
        ((subscriber.group, ",".join(subscriber.topics)), subscriber.processing_time)
        for subscriber in snapshot.subscribers
        if subscriber.processing_time is not None
    ]


def _processed(labels: Labels, totals: Totals) -> Iterator[Sample]:
    yield (*labels, "ok"), totals.ok
    yield (*labels, "failed"), totals.failed
    yield (*labels, "dead_lettered"), totals.dead_lettered
    yield (*labels, "skipped"), totals.skipped
    yield (*labels, "expired"), totals.expired
    yield (*labels, "retry_topic"), totals.retry_topic
