"""What the processing looks like at one moment: the types of ``processing_snapshot``.

Pure: no I/O. Immutable values, built from the engine's own state when asked for (never
kept up to date on the per-message path), so a metrics scrape or a health probe reads a
consistent picture and can keep it.
"""

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Self

from faststream_concurrent_aiokafka.core.histogram import HistogramSnapshot
from faststream_concurrent_aiokafka.core.settings import SubscriberSettings


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionSnapshot:
    """One partition of one consumer. Counts are messages (records, for batch subscribers)."""

    group: str
    topic: str
    partition: int
    assigned: bool  # assigned to this consumer now (False: revoked, work still ending)
    paused: bool  # fetching paused, by the library's backpressure or by the application
    in_flight: int  # running: handler, retries, a dead-letter publish
    queued: int  # admitted, waiting for a free slot
    held: int  # admitted, waiting behind a running message with the same key
    commit_point: int | None  # the offset that would be committed now (first unfinished)
    committed: int | None  # the last offset this process committed (None: none yet)
    finished_above: int  # finished, above the commit point: waiting for an earlier one
    uncommitted: int  # admitted and not yet passed by the commit point
    # What a crash now would run again: running, plus finished since the last commit Kafka
    # acknowledged (or left out of its metadata); see PartitionOffsets.not_committed.
    not_committed: int
    stalled: int  # running longer than stall_warning_sec
    oldest_in_flight_offset: int | None
    oldest_in_flight_sec: float | None  # see Watchdog for its resolution
    # Lag as Burrow and KEDA read it (see engine.lag); None while an offset is unknown.
    end_offset: int | None = None  # the log end offset (next offset to be written)
    lag: int | None = None  # end_offset minus the group's committed offset
    unprocessed: int | None = None  # end_offset minus the commit point, less finished_above
    oldest_record_age_sec: float | None = None  # now minus the Kafka timestamp of the oldest
    # admitted record not settled yet (running, queued, held or waiting); None without any
    waiting_retry: int = 0  # failed, waiting for its next attempt without a slot


@dataclass(frozen=True, slots=True, kw_only=True)
class Totals:
    """Running totals since the processing started. ``ok``, ``failed``, ``dead_lettered``
    and ``skipped`` are the outcomes of messages, each message counted once."""

    ok: int = 0  # ended without an error (or settled by AckMessage, SkipMessage, ack())
    failed: int = 0  # attempts used up, logged and committed without a dead-letter topic
    dead_lettered: int = 0  # published to the dead-letter topic, acknowledged
    skipped: int = 0  # finished by an earlier owner (commit metadata), not run again
    claims_accepted: int = 0  # offsets commit metadata claimed finished, to be skipped
    claims_ignored: int = 0  # claimed at or beyond the partition's end at assignment: ignored
    expired: int = 0  # older than max_message_age_sec, not run, no dead-letter topic
    retry_topic: int = 0  # attempts used up for now: sent to the retry topic, acknowledged
    retries: int = 0  # failed attempts that were tried again
    task_timeouts: int = 0  # attempts cancelled by task_timeout_sec
    stalls: int = 0  # messages that ran longer than stall_warning_sec
    commit_requests: int = 0
    failed_commits: int = 0  # refused by Kafka or timed out (commit_timeout_sec)
    pauses: int = 0  # the library paused a consumer's partitions (backpressure, drain)
    resumes: int = 0
    rebalances: int = 0  # assignments a consumer received (each rebalance gives one)
    partitions_assigned: int = 0
    partitions_revoked: int = 0
    transactions_committed: int = 0  # exactly-once: transactions committed
    transactions_aborted: int = 0  # exactly-once: aborted, their messages ran again
    producers_fenced: int = 0  # exactly-once: a partition's producer fenced (taken over)

    @property
    def processed(self) -> int:
        """Messages whose processing ended, whatever the outcome (skipped ones not run); one
        sent to the retry topic ends there, and its record read back ends once more."""
        return self.ok + self.failed + self.dead_lettered + self.retry_topic

    @classmethod
    def sum(cls, items: Iterable["Totals"]) -> Self:
        values = dict.fromkeys((field.name for field in dataclasses.fields(cls)), 0)
        for item in items:
            for name in values:
                values[name] += getattr(item, name)
        return cls(**values)


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowSnapshot:
    """A subscriber's rate limit and adaptive limit now, over its consumers; the counts are
    since its consumers started."""

    max_messages_per_sec: float | None = None  # the rate configured (None: no limit)
    waiting_for_rate: int = 0  # consumers whose poll loop waits for the rate now
    rate_waits: int = 0  # times a poll loop waited for the rate
    rate_wait_sec: float = 0.0  # how long, in all
    rate_limited: int = 0  # messages admitted after such a wait
    adaptive_limit: int | None = None  # the adaptive limit in force (the highest of its
    # consumers'); None: adaptive_concurrency is off
    adaptive_baseline_sec: float | None = None  # the unloaded latency it compares against


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriberSnapshot:
    """One concurrent subscriber: its limits in force, its partitions over all its consumers
    (several with ``max_workers``) and its totals."""

    name: str
    group: str
    topics: tuple[str, ...]
    settings: SubscriberSettings
    consumers: int
    partitions: tuple[PartitionSnapshot, ...]
    totals: Totals
    brake_tripped: bool = False  # its dead-letter brake stopped it (until a restart)
    paused_by_application: bool = False  # pause_processing, until resume_processing
    # Seconds per attempt of its pipeline; None unless measure_processing_time=True.
    processing_time: HistogramSnapshot | None = None
    flow: FlowSnapshot = FlowSnapshot()

    @property
    def running_limit(self) -> int:
        """The concurrency limit in force: the adaptive one, else ``concurrency_limit``."""
        adaptive = self.flow.adaptive_limit
        return self.settings.concurrency_limit if adaptive is None else adaptive

    @property
    def in_flight(self) -> int:
        return sum(p.in_flight for p in self.partitions)

    @property
    def queued(self) -> int:
        return sum(p.queued for p in self.partitions)

    @property
    def held(self) -> int:
        return sum(p.held for p in self.partitions)

    @property
    def waiting_retry(self) -> int:
        return sum(p.waiting_retry for p in self.partitions)

    @property
    def waiting_in_retry_topic(self) -> int:
        """Records read back from its retry topic, waiting for their due time."""
        topic = self.settings.retry_topic
        return sum(p.waiting_retry for p in self.partitions if p.topic == topic)

    @property
    def uncommitted(self) -> int:
        return sum(p.uncommitted for p in self.partitions)

    @property
    def not_committed(self) -> int:
        return sum(p.not_committed for p in self.partitions)

    @property
    def paused_partitions(self) -> int:
        return sum(p.paused for p in self.partitions if p.assigned)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessingSnapshot:
    """Everything at once. ``in_flight`` counts running tasks over all subscribers (a batch
    is one), against ``concurrency_limit``; ``uncommitted`` counts messages against
    ``max_uncommitted_tasks``; ``not_committed`` is what a crash now would run again, over
    all subscribers."""

    running: bool
    concurrency_limit: int
    max_uncommitted_tasks: int
    in_flight: int
    uncommitted: int
    subscribers: tuple[SubscriberSnapshot, ...]
    totals: Totals
    not_committed: int = 0

    def partitions(self) -> Iterator[PartitionSnapshot]:
        for subscriber in self.subscribers:
            yield from subscriber.partitions

    @classmethod
    def stopped(cls, concurrency_limit: int = 0, max_uncommitted_tasks: int = 0) -> Self:
        """What there is to see when no processing runs."""
        return cls(
            running=False,
            concurrency_limit=concurrency_limit,
            max_uncommitted_tasks=max_uncommitted_tasks,
            in_flight=0,
            uncommitted=0,
            subscribers=(),
            totals=Totals(),
        )
