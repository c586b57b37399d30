"""Backpressure against a real broker: a full backlog holds the poll loop, and slow work
pauses partitions instead of holding it past max_poll_interval_ms; per-subscriber and
uncommitted-work limits hold, task timeouts free their slot.

Handlers that ``await asyncio.sleep`` here simulate slow work; they never stand in for waiting
on the code under test (that is done with events and ``wait_until``).
"""

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from faststream import FastStream
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    ConcurrentProcessing,
    KafkaConcurrentProcessingMiddleware,
    configure_subscriber,
    initialize_concurrent_processing,
    stop_concurrent_processing,
)
from faststream_concurrent_aiokafka.engine.state import ConsumerLane
from tests.kafka_helpers import (
    BOOTSTRAP,
    committed_offsets,
    create_topic,
    end_offsets,
    produce,
    unique,
    wait_until,
)

pytestmark = pytest.mark.kafka

LIB_LOGGER = "faststream_concurrent_aiokafka"


# ---- helpers --------------------------------------------------------------------------


def make_broker() -> KafkaBroker:
    broker = KafkaBroker(BOOTSTRAP, logger=None)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    return broker


@asynccontextmanager
async def serving(
    broker: KafkaBroker,
    state: dict[str, ConcurrentProcessing] | None = None,
    **settings: Any,
) -> AsyncIterator[ConcurrentProcessing]:
    """Initialise (eagerly: an app is in the context), start the broker; stop both after.

    ``state["handler"]`` is set before the broker starts, for handlers that inspect it.
    """
    FastStream(broker)
    handler = await initialize_concurrent_processing(broker.context, **settings)
    if state is not None:
        state["handler"] = handler
    try:
        await broker.start()
        yield handler
    finally:
        await broker.stop()
        await stop_concurrent_processing(broker.context)


def position(msg: KafkaMessage) -> tuple[int, int]:
    record = msg.raw_message
    assert not isinstance(record, tuple)
    return record.partition, record.offset


def single_lane(handler: ConcurrentProcessing, subscriber: object) -> ConsumerLane | None:
    lanes = handler.lanes_of(subscriber)
    return lanes[0] if len(lanes) == 1 else None


def lib_messages(caplog: pytest.LogCaptureFixture, start: int = 0) -> list[str]:
    return [r.getMessage() for r in caplog.records[start:] if r.name == LIB_LOGGER]


class RecordingListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """The user's own listener; the library wraps it and calls it after its own work."""

    def __init__(self, on_assigned: Callable[[], None] | None = None) -> None:
        self.assigned: list[set[Any]] = []
        self.revoked: list[set[Any]] = []
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        self.revoked.append(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        self.assigned.append(set(assigned))
        if self._on_assigned is not None:
            self._on_assigned()


# ---- 1. slow handlers: pause, never evicted -------------------------------------------

# Seconds each message's handler takes: every one >= max_poll_interval (4 s), some beyond the
# session timeout (6 s); with 2 slots the whole run takes ~31 s.
SLOW_SECONDS = (4.0, 12.0, 4.0, 5.0, 4.0, 4.0, 6.0, 4.0, 4.0, 5.0, 4.0, 6.0)
EVICTION_SIGNS = (
    "Heartbeat failed",
    "leave group",
    "LeaveGroup",
    "CommitFailedError",
    "Heartbeat session expired",
    "Marking the coordinator dead",
)


@pytest.mark.smoke
async def test_slow_handlers_pause_partitions_and_are_never_evicted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiokafka")
    caplog.set_level(logging.DEBUG, logger=LIB_LOGGER)
    topic, group = unique("bp-slow"), unique("bp-slow-g")
    total = len(SLOW_SECONDS)
    await create_topic(topic, 2)
    await produce(topic, [str(i).encode() for i in range(total)], partitions=2)

    broker = make_broker()
    listener = RecordingListener()
    runs: Counter[tuple[int, int]] = Counter()
    finished: list[int] = []

    sub = broker.subscriber(
        topic,
        group_id=group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        max_poll_interval_ms=4000,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        listener=listener,
    )

    @sub
    async def slow(body: int, msg: KafkaMessage) -> None:
        runs[position(msg)] += 1
        await asyncio.sleep(SLOW_SECONDS[body])
        finished.append(body)

    async with serving(
        broker, concurrency_limit=2, commit_batch_size=1, commit_batch_timeout_sec=1.0
    ) as handler:
        # Once the first (initial) join happened, the group must never rejoin.
        await wait_until(lambda: len(listener.assigned) == 1, timeout=30)
        joins_at_start = sum(
            "(Re-)joining group" in r.getMessage() for r in caplog.records if r.name != LIB_LOGGER
        )
        await wait_until(lambda: len(finished) == total, timeout=90)
        lane = single_lane(handler, sub)
        assert lane is not None
        still_assigned = set(lane.consumer.assignment())
        records_before_stop = list(caplog.records)
        assert handler.failed == 0
        assert handler.engine.counters.failed_commits == 0

    # Never evicted: one assignment, no revocation of real partitions, no rejoin or
    # heartbeat/commit failures while it ran.
    assert listener.assigned == [{TopicPartition(topic, 0), TopicPartition(topic, 1)}]
    assert all(not revoked for revoked in listener.revoked), listener.revoked
    assert still_assigned == {TopicPartition(topic, 0), TopicPartition(topic, 1)}
    joins = sum("(Re-)joining group" in r.getMessage() for r in records_before_stop)
    assert joins == joins_at_start
    signs = [
        r.getMessage()
        for r in records_before_stop
        for sign in EVICTION_SIGNS
        if sign in r.getMessage()
    ]
    assert signs == []
    # Backpressure was by pausing the partitions.
    paused = [m for m in lib_messages(caplog) if m.startswith("Paused")]
    resumed = [m for m in lib_messages(caplog) if m.startswith("Resumed")]
    print(f"\nslow handlers: paused {len(paused)} times, resumed {len(resumed)} times, no rejoin")
    assert paused, "partitions were never paused"
    # Each message ran once, and everything was committed.
    assert sorted(finished) == list(range(total))
    assert set(runs.values()) == {1}
    assert len(runs) == total
    assert await committed_offsets(group, topic) == await end_offsets(topic, 2)


async def test_full_backlog_holds_the_poll_loop_without_pausing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Handlers quicker than the wait budget: the loop waits for a slot each time the backlog
    # is full, so the consumer is never paused and aiokafka never re-fetches.
    caplog.set_level(logging.DEBUG, logger=LIB_LOGGER)
    topic, group = unique("bp-hold"), unique("bp-hold-g")
    total, limit = 60, 2
    await create_topic(topic, 2)
    await produce(topic, [str(i).encode() for i in range(total)], partitions=2)

    broker = make_broker()
    state: dict[str, ConcurrentProcessing] = {}
    backlogs: list[int] = []
    done: list[int] = []

    sub = broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )

    @sub
    async def quick(body: int) -> None:
        lane = single_lane(state["handler"], sub)
        assert lane is not None
        backlogs.append(len(lane.ready))
        await asyncio.sleep(0.01)
        done.append(body)

    async with serving(broker, state, concurrency_limit=limit) as handler:
        await wait_until(lambda: len(done) == total, timeout=30)
        lane = single_lane(handler, sub)
        assert lane is not None
        held_paused = lane.fetching.paused
        # Before the stop, whose drain pauses the consumer.
        pauses = [m for m in lib_messages(caplog) if m.startswith("Paused")]

    print(f"\nheld loop: backlog peak {max(backlogs)} with limit {limit}")
    assert not held_paused
    assert pauses == []
    # Work was waiting, so the hold was needed, and the backlog stayed bounded: at most the
    # limit, plus the limit - 1 messages a fetch brought whose slot tasks the scheduler starts
    # once the first one had its step (``Scheduler._ramp``).
    assert 1 <= max(backlogs) <= 2 * limit - 1
    assert sorted(done) == list(range(total))
    assert await committed_offsets(group, topic) == await end_offsets(topic, 2)


# ---- 2. a slow subscriber does not hold back a fast one ------------------------------


async def test_saturated_slow_subscriber_does_not_hold_back_fast_one() -> None:
    slow_topic, fast_topic = unique("bp-slow-s"), unique("bp-fast-f")
    group = unique("bp-fair-g")
    slow_total, fast_total = 30, 300
    await create_topic(slow_topic, 1)
    await create_topic(fast_topic, 2)
    await produce(slow_topic, [str(i).encode() for i in range(slow_total)], partitions=1)

    broker = make_broker()
    slow_started = slow_done = 0
    slow_peak = 0
    fast_done = 0
    global_peak = 0
    at_fast_finish: dict[str, int] = {}
    fast_finished = asyncio.Event()
    state: dict[str, ConcurrentProcessing] = {}

    slow_sub = broker.subscriber(
        slow_topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    configure_subscriber(slow_sub, concurrency_limit=2)

    @slow_sub
    async def slow(body: int) -> None:
        nonlocal slow_started, slow_done, slow_peak, global_peak
        slow_started += 1
        slow_peak = max(slow_peak, slow_started - slow_done)
        global_peak = max(global_peak, state["handler"].in_flight)
        await asyncio.sleep(2.0)
        slow_done += 1

    @broker.subscriber(
        fast_topic,
        group_id=unique("bp-fair-f"),
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
    )
    async def fast(body: int) -> None:
        nonlocal fast_done, global_peak
        global_peak = max(global_peak, state["handler"].in_flight)
        await asyncio.sleep(0.005)
        fast_done += 1
        if fast_done == fast_total:
            at_fast_finish.update(slow_started=slow_started, slow_done=slow_done)
            fast_finished.set()

    async with serving(broker, state, concurrency_limit=10) as handler:

        def slow_saturated() -> bool:
            lane = single_lane(handler, slow_sub)
            return lane is not None and len(lane.running) == 2 and len(lane.ready) > 0

        await wait_until(slow_saturated, timeout=30)
        await produce(fast_topic, [str(i).encode() for i in range(fast_total)], partitions=2)
        await asyncio.wait_for(fast_finished.wait(), timeout=30)

    # F finished all its messages while S was still busy, most of its backlog untouched.
    assert at_fast_finish["slow_done"] <= slow_total - 10
    assert at_fast_finish["slow_started"] > at_fast_finish["slow_done"]
    assert fast_done == fast_total
    # The per-subscriber limit and the global limit held.
    assert slow_peak == 2
    assert global_peak <= 10


# ---- 3. max_uncommitted_tasks bounds admitted-but-uncommitted work ---------------------


async def test_uncommitted_budget_pauses_behind_a_blocked_message() -> None:
    topic, group = unique("bp-budget"), unique("bp-budget-g")
    total, budget, slack = 300, 50, 2
    await create_topic(topic, 1)
    await produce(topic, [str(i).encode() for i in range(total)], partitions=1)

    broker = make_broker()
    release = asyncio.Event()
    runs: Counter[int] = Counter()
    samples: list[int] = []
    done: list[int] = []
    state: dict[str, ConcurrentProcessing] = {}

    def sample() -> int:
        value = sum(lane.offsets.tracked for lane in state["handler"].lanes)
        samples.append(value)
        return value

    sub = broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )

    @sub
    async def blocked_head(body: int, msg: KafkaMessage) -> None:
        _, offset = position(msg)
        runs[offset] += 1
        if offset == 0:
            await release.wait()
        else:
            sample()
        done.append(offset)

    async with serving(
        broker,
        state,
        concurrency_limit=100,
        max_uncommitted_tasks=budget,
        commit_batch_size=10,
        shutdown_timeout_sec=5.0,
    ) as handler:

        def settled_at_budget() -> bool:
            sample()
            lane = single_lane(handler, sub)
            return (
                lane is not None
                and lane.fetching.paused
                and handler.in_flight == 1
                and handler.processed >= budget - 1
            )

        try:
            await wait_until(settled_at_budget, timeout=30)
            lane = single_lane(handler, sub)
            assert lane is not None
            assert set(lane.consumer.paused()) == {TopicPartition(topic, 0)}
            admitted_while_blocked = len(done)
            peak = max(samples)
            # Offset 0 holds the commit point: nothing at or past it is committed yet.
            assert (await committed_offsets(group, topic)).get(0, 0) == 0
        finally:
            release.set()
        await wait_until(lambda: len(done) == total, timeout=30)

    print(f"\nuncommitted budget {budget}: peak admitted-but-uncommitted {peak}")
    # The budget was reached and never exceeded by more than the slack.
    assert budget <= peak <= budget + slack
    assert budget - 1 <= admitted_while_blocked <= budget + slack - 1
    assert max(samples) <= budget + slack
    assert sorted(done) == list(range(total))
    assert set(runs.values()) == {1}
    assert await committed_offsets(group, topic) == {0: total}


# ---- 4. task_timeout_sec ---------------------------------------------------------------


async def test_task_timeout_cancels_logs_counts_and_commits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LIB_LOGGER)
    topic, group = unique("bp-timeout"), unique("bp-timeout-g")
    await create_topic(topic, 1)
    await produce(topic, [str(i).encode() for i in range(5)], partitions=1)

    broker = make_broker()
    loop = asyncio.get_running_loop()
    cancelled_after: list[float] = []
    done: list[int] = []

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def sometimes_stuck(body: int) -> None:
        if body == 0:
            started = loop.time()
            try:
                await asyncio.sleep(5.0)
            except asyncio.CancelledError:
                cancelled_after.append(loop.time() - started)
                raise
        done.append(body)

    async with serving(
        broker, task_timeout_sec=0.5, commit_batch_size=1, commit_batch_timeout_sec=0.5
    ) as handler:
        await wait_until(lambda: bool(cancelled_after) and handler.processed == 5, timeout=30)
        # The consumer carries on after the timeout: messages produced now are processed too.
        await produce(topic, [str(i).encode() for i in range(5, 8)], partitions=1)
        await wait_until(lambda: len(done) == 7 and handler.processed == 8, timeout=30)
        failed = handler.failed

    assert sorted(done) == list(range(1, 8))
    assert len(cancelled_after) == 1
    # Cancelled by the 0.5 s timeout, long before its 5 s of work would have ended.
    assert 0.4 <= cancelled_after[0] < 4.0
    assert failed == 1
    # Its offset was committed as processed, with everything after it.
    assert await committed_offsets(group, topic) == {0: 8}
    # Reported once as the message's final failure, a timeout, naming the message.
    timed_out = [
        r
        for r in caplog.records
        if r.name == LIB_LOGGER and "task_timeout_sec=0.5" in r.getMessage()
    ]
    reports = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LIB_LOGGER]
    assert len(timed_out) == 1, reports
    assert timed_out[0].levelno == logging.ERROR, reports
    assert "TaskTimeoutError" in timed_out[0].getMessage()
    assert f"{topic}[0]@0" in timed_out[0].getMessage()


# ---- 5. a rebalance while paused ------------------------------------------------------


async def test_rebalance_while_paused_loses_and_duplicates_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aiokafka")
    caplog.set_level(logging.DEBUG, logger=LIB_LOGGER)
    topic, group = unique("bp-rebal"), unique("bp-rebal-g")
    total = 300
    both = {TopicPartition(topic, 0), TopicPartition(topic, 1)}
    await create_topic(topic, 2)
    await produce(topic, [str(i).encode() for i in range(total)], partitions=2)

    broker = make_broker()
    gate = asyncio.Event()
    runs: Counter[tuple[int, int]] = Counter()
    done: list[tuple[int, int]] = []
    assigned_at: list[int] = []
    listener = RecordingListener(on_assigned=lambda: assigned_at.append(len(caplog.records)))

    sub = broker.subscriber(
        topic,
        group_id=group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        heartbeat_interval_ms=300,
        # A full backlog holds the poll loop for half of this before pausing the consumer.
        max_poll_interval_ms=2000,
        listener=listener,
    )

    @sub
    async def gated(body: int, msg: KafkaMessage) -> None:
        where = position(msg)
        runs[where] += 1
        await gate.wait()
        done.append(where)

    def real_revocations() -> int:
        return sum(
            1
            for r in caplog.records
            if r.getMessage().startswith("Revoking previously assigned partitions")
            and isinstance(r.args, tuple)
            and r.args
            and r.args[0]
        )

    async with serving(
        broker, concurrency_limit=2, commit_batch_size=5, shutdown_timeout_sec=5.0
    ) as handler:

        def paused_with_backlog() -> bool:
            lane = single_lane(handler, sub)
            return lane is not None and lane.fetching.paused and len(lane.ready) >= 2

        await wait_until(paused_with_backlog, timeout=30)
        lane = single_lane(handler, sub)
        assert lane is not None
        consumer = lane.consumer
        assert set(consumer.paused()) == both

        intruder = AIOKafkaConsumer(
            topic,
            bootstrap_servers=BOOTSTRAP,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            heartbeat_interval_ms=300,
        )
        # start() returns once the intruder has its assignment, i.e. after our revocation.
        joining = asyncio.create_task(intruder.start())
        try:
            # The revocation waits for the two running messages; let them finish now.
            await wait_until(lambda: real_revocations() >= 1, timeout=30)
            gate.set()
            await asyncio.wait_for(joining, timeout=30)
            assert len(intruder.assignment()) == 1
            await wait_until(lambda: len(listener.assigned) >= 2, timeout=30)
            assert len(listener.assigned[1]) == 1
        finally:
            gate.set()
            if not joining.done():
                joining.cancel()
            await intruder.stop()
        await wait_until(lambda: set(consumer.assignment()) == both, timeout=30)
        await wait_until(lambda: len(done) == total and handler.in_flight == 0, timeout=30)
        final_assignment_mark = assigned_at[-1]
        assert listener.assigned[-1] == both
        assert not consumer.paused()

    # Nothing lost, nothing processed twice.
    assert len(runs) == total
    assert set(runs.values()) == {1}
    assert await committed_offsets(group, topic) == await end_offsets(topic, 2)
    # Backpressure still works on the partitions the consumer got back.
    assert any(m.startswith("Paused") for m in lib_messages(caplog, final_assignment_mark))
    assert handler.processed == total
