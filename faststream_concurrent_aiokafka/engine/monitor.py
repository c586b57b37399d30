"""What operators see: the snapshot and the current faults, read from the engine's own state
when asked for. Nothing here runs on the per-message path.

Both read sets and dicts the event loop changes, so they run on the engine's loop;
``on_engine_loop`` takes a caller in another thread there (a metrics server thread).
"""

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from aiokafka import TopicPartition

from faststream_concurrent_aiokafka.core.health import (
    COMMIT_FAILURES_DEGRADED,
    DEGRADED,
    FAILED,
    Fault,
)
from faststream_concurrent_aiokafka.core.histogram import Histogram, HistogramSnapshot
from faststream_concurrent_aiokafka.core.snapshot import (
    FlowSnapshot,
    PartitionSnapshot,
    ProcessingSnapshot,
    SubscriberSnapshot,
    Totals,
)
from faststream_concurrent_aiokafka.engine.engine import Engine
from faststream_concurrent_aiokafka.engine.lag import oldest_record_ages
from faststream_concurrent_aiokafka.engine.state import ConsumerLane, Counters

T = TypeVar("T")

READ_TIMEOUT_SEC = 5.0


def on_engine_loop(engine: Engine, read: Callable[[], T], timeout: float = READ_TIMEOUT_SEC) -> T:
    """``read()`` where the engine's state may be read: on its event loop. Called from that
    loop (a health route, FastStream's ASGI app) it runs at once; from another thread it runs
    on the loop and the caller waits up to ``timeout`` (then ``TimeoutError``)."""
    loop = engine.loop
    try:
        current = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    if loop is None or current is loop or not loop.is_running():
        return read()
    result: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            result.set_result(read())
        except BaseException as exc:  # handed to the waiting thread
            result.set_exception(exc)

    loop.call_soon_threadsafe(run)
    return result.result(timeout)


# ---- faults --------------------------------------------------------------------------


def current_faults(engine: Engine) -> list[Fault]:
    """Everything wrong now, each with a reason naming what and where. The one place health
    reads: a new kind of fault is one line here (or a ``Faults.set`` where it happens)."""
    faults = list(engine.faults)
    if not engine.is_running:
        faults.append(Fault(FAILED, "concurrent processing is not running"))
    elif not engine.committer.is_alive:
        error = engine.committer.error
        cause = f" ({error!r})" if error is not None else ""
        faults.append(
            Fault(FAILED, f"the batch committer is dead{cause}: offsets can no longer be committed")
        )
    now = engine.watchdog.now()
    for lane in engine.lanes:
        faults += _lane_faults(lane)
    # One line per subscriber, whichever of its consumers tripped its shared brake.
    faults += engine.brake_faults
    for message, lane in list(engine.watchdog.stalled.items()):
        faults.append(
            Fault(
                DEGRADED,
                f"message {message.describe()} of {lane.name} has been running for "
                f"{engine.watchdog.age(message, now):.0f} s "
                f"(stall_warning_sec={lane.settings.stall_warning_sec:g})",
            )
        )
    return faults


def _lane_faults(lane: ConsumerLane) -> Iterator[Fault]:
    if lane.fetching.error is not None:
        yield Fault(
            FAILED,
            f"consuming of {lane.name} stopped by an error: its fetch fails with "
            f"{lane.fetching.error!r} (FastStream retries it)",
        )
    if lane.paused_by_app:
        yield Fault(DEGRADED, f"{lane.name} is paused by the application (pause_processing)")
    cap = lane.retry_cap
    for tp in sorted(cap.full):
        yield Fault(
            DEGRADED,
            f"fetching of the retry partition {tp.topic}[{tp.partition}] of {lane.name} is "
            f"paused: {cap.waiting(tp)} record(s) read back wait for their due time "
            f"(retry_topic_max_waiting={cap.bound}); the rest wait in Kafka",
        )
    topic = lane.settings.dead_letter_topic
    for message in list(lane.dead_letter_stuck):
        yield Fault(
            DEGRADED,
            f"dead-letter publish of {message.describe()} to {topic!r} is failing (retried "
            "with backoff); its partition's commit point waits for it",
        )
    yield from lane.strategy.faults()
    commits = lane.offsets.commits
    if commits.failures_in_a_row >= COMMIT_FAILURES_DEGRADED:
        yield Fault(
            DEGRADED,
            f"{commits.failures_in_a_row} commits in a row failed for {lane.name} "
            f"(last: {commits.last_error!r})",
        )


# ---- snapshot ------------------------------------------------------------------------


def snapshot(engine: Engine) -> ProcessingSnapshot:
    """The processing as it is now (see ``core.snapshot`` for what each figure means). Every
    subscriber that ran is listed, with its totals, also once its consumers are gone."""
    now = engine.watchdog.now()
    by_pipeline: dict[object, list[ConsumerLane]] = {}
    for lane in engine.lanes:
        by_pipeline.setdefault(lane.pipeline, []).append(lane)
    subscribers = []
    for pipeline, counters in engine.counters_by_pipeline():
        lanes = by_pipeline.get(pipeline, [])
        partitions = [p for lane in lanes for p in _partitions(engine, lane, now)]
        partitions.sort(key=lambda p: (p.topic, p.partition))
        subscribers.append(
            SubscriberSnapshot(
                name=pipeline.name,
                group=pipeline.group,
                topics=pipeline.topics,
                settings=lanes[0].settings if lanes else pipeline.settings(),
                consumers=len(lanes),
                partitions=tuple(partitions),
                totals=totals_of(counters),
                brake_tripped=any(lane.brake.tripped for lane in lanes),
                paused_by_application=any(lane.paused_by_app for lane in lanes),
                processing_time=_histogram_snapshot(engine.processing_time(pipeline)),
                flow=flow_of(lanes),
            )
        )
    settings = engine.settings
    return ProcessingSnapshot(
        running=engine.is_running,
        concurrency_limit=settings.concurrency_limit,
        max_uncommitted_tasks=settings.max_uncommitted_tasks,
        in_flight=engine.in_flight,
        uncommitted=engine.uncommitted,
        subscribers=tuple(subscribers),
        totals=Totals.sum(subscriber.totals for subscriber in subscribers),
        not_committed=sum(subscriber.not_committed for subscriber in subscribers),
    )


def _histogram_snapshot(histogram: Histogram | None) -> HistogramSnapshot | None:
    return None if histogram is None else histogram.snapshot()


def flow_of(lanes: list[ConsumerLane]) -> FlowSnapshot:
    """The subscriber's rate limit and adaptive limit, over its consumers' lanes."""
    if not lanes:
        return FlowSnapshot()
    flows = [lane.flow for lane in lanes]
    adaptive = [flow.adaptive for flow in flows if flow.adaptive is not None]
    baselines = [a.baseline_sec for a in adaptive if a.baseline_sec is not None]
    return FlowSnapshot(
        max_messages_per_sec=lanes[0].settings.max_messages_per_sec,
        waiting_for_rate=sum(flow.waiting_for_rate for flow in flows),
        rate_waits=sum(flow.rate_waits for flow in flows),
        rate_wait_sec=sum(flow.rate_wait_sec for flow in flows),
        rate_limited=sum(flow.rate_limited for flow in flows),
        adaptive_limit=max((a.limit for a in adaptive), default=None),
        adaptive_baseline_sec=min(baselines, default=None),
    )


def totals_of(counters: Counters) -> Totals:
    """The counters as outcomes: each ended message is exactly one of ok, failed or
    dead-lettered (a dead letter is bumped just before its message settles)."""
    dead_lettered = min(counters.dead_lettered, counters.failed)
    return Totals(
        ok=counters.processed - counters.failed - counters.expired - counters.retry_topic_sent,
        failed=counters.failed - dead_lettered,
        dead_lettered=dead_lettered,
        skipped=counters.skipped,
        claims_accepted=counters.claims_accepted,
        claims_ignored=counters.claims_ignored,
        expired=counters.expired,
        retry_topic=counters.retry_topic_sent,
        retries=counters.retries,
        task_timeouts=counters.task_timeouts,
        stalls=counters.stalls,
        commit_requests=counters.commit_requests,
        failed_commits=counters.failed_commits,
        pauses=counters.pauses,
        resumes=counters.resumes,
        rebalances=counters.rebalances,
        partitions_assigned=counters.assignments,
        partitions_revoked=counters.revocations,
        transactions_committed=counters.transactions_committed,
        transactions_aborted=counters.transactions_aborted,
        producers_fenced=counters.producers_fenced,
    )


@dataclass
class _Partition:
    in_flight: int = 0
    queued: int = 0
    held: int = 0
    waiting_retry: int = 0
    stalled: int = 0
    oldest_offset: int | None = None  # the longest running; the lowest offset among equals
    oldest_sec: float = 0.0

    def note_running(self, offset: int, age: float) -> None:
        self.in_flight += 1
        oldest = self.oldest_offset
        if oldest is None or age > self.oldest_sec or (age == self.oldest_sec and offset < oldest):
            self.oldest_sec, self.oldest_offset = age, offset


def _partitions(engine: Engine, lane: ConsumerLane, now: float) -> Iterator[PartitionSnapshot]:
    consumer = lane.consumer
    assigned = set(consumer.assignment())
    paused = set(consumer.paused())
    found: dict[TopicPartition, _Partition] = {tp: _Partition() for tp in assigned}
    for tp in lane.offsets.trackers:
        found.setdefault(tp, _Partition())
    watchdog = engine.watchdog
    for message in list(lane.running):
        age = watchdog.age(message, now)
        stalled = message in watchdog.stalled
        for tp, _, offset in message.positions():
            part = found.setdefault(tp, _Partition())
            part.stalled += stalled
            part.note_running(offset, age)
    for message in list(lane.ready):
        for tp, _, _ in message.positions():
            found.setdefault(tp, _Partition()).queued += 1
    for message in list(lane.gate.held()):
        for tp, _, _ in message.positions():
            found.setdefault(tp, _Partition()).held += 1
    for message in list(lane.waiting_retry):
        for tp, _, _ in message.positions():
            found.setdefault(tp, _Partition()).waiting_retry += 1
    group = lane.pipeline.group
    ages = oldest_record_ages(
        [*lane.running, *lane.ready, *lane.gate.held(), *lane.waiting_retry], time.time()
    )
    for tp, part in found.items():
        tracker = lane.offsets.trackers.get(tp)
        lag = engine.lag.read(consumer, tp, tracker)
        yield PartitionSnapshot(
            group=group,
            topic=tp.topic,
            partition=tp.partition,
            assigned=tp in assigned,
            paused=tp in paused,
            in_flight=part.in_flight,
            queued=part.queued,
            held=part.held,
            waiting_retry=part.waiting_retry,
            commit_point=tracker.commit_point if tracker else None,
            committed=tracker.committed if tracker else None,
            finished_above=tracker.finished_count if tracker else 0,
            uncommitted=tracker.pending_count if tracker else 0,
            not_committed=tracker.not_committed(part.in_flight) if tracker else part.in_flight,
            stalled=part.stalled,
            oldest_in_flight_offset=part.oldest_offset,
            oldest_in_flight_sec=None if part.oldest_offset is None else part.oldest_sec,
            end_offset=lag.end_offset,
            lag=lag.lag,
            unprocessed=lag.unprocessed,
            oldest_record_age_sec=ages.get(tp),
        )
