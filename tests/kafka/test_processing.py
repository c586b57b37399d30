"""The core processing contract against a real Kafka broker.

Concurrency and its limit, batched commits (by size and by time), the contiguous commit
point, what a shutdown leaves uncommitted, several groups at once, TestKafkaBroker and the
health probe. Failure paths (handler errors, unsupported setups, acks) are in
``test_processing_errors.py``.
"""

import asyncio
import gc
import time
from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Literal

import pytest
from aiokafka import AIOKafkaConsumer
from faststream import FastStream
from faststream.kafka import KafkaBroker, KafkaMessage, TestKafkaBroker
from faststream.kafka.message import KafkaAckableMessage
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    initialize_concurrent_processing,
    is_kafka_handler_healthy,
    stop_concurrent_processing,
)
from faststream_concurrent_aiokafka.engine.state import AdmittedMessage as KafkaCommitTask
from tests.kafka_helpers import (
    committed_offsets,
    concurrent_broker,
    create_topic,
    end_offsets,
    numbered_topic,
    numbers,
    produce,
    shut_down,
    unique,
    wait_committed,
    wait_until,
)

pytestmark = pytest.mark.kafka

# Generous for a slow, shared machine; every wait normally ends in well under a second.
WAIT = 20.0
# Committed offsets are read through a new admin client each time: poll them less often.
POLL = 0.2


class Gauge:
    """How many handler calls run at this moment, and the most that ever ran together."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0

    def enter(self) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)

    def leave(self) -> None:
        self.active -= 1


# ---- throughput and the concurrency limit ------------------------------------------------


@pytest.mark.smoke
@pytest.mark.parametrize("with_app", [False, True], ids=["bare-broker", "app-in-context"])
async def test_acceptance_3000_messages_processed_once_and_committed_to_the_end(
    with_app: bool,
) -> None:
    # With an app in the context the subscriber is set up at initialisation, without one
    # at its first message: both must keep the contract.
    count, partitions = 3000, 4
    topic, group = unique("accept"), unique("g-accept")
    await create_topic(topic, partitions)
    await produce(topic, numbers(count), partitions=partitions, key=lambda i: str(i % 64).encode())
    broker = concurrent_broker()
    seen: Counter[int] = Counter()
    gauge = Gauge()
    first_call: list[float] = []

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(body: int) -> None:
        if not first_call:
            first_call.append(time.monotonic())
        gauge.enter()
        try:
            await asyncio.sleep(0.01)  # the handler's own (simulated) I/O
        finally:
            gauge.leave()
        seen[body] += 1

    if with_app:
        FastStream(broker)
    handler = await initialize_concurrent_processing(
        broker.context, concurrency_limit=100, commit_batch_size=100, commit_batch_timeout_sec=1
    )
    try:
        await broker.start()
        await wait_until(lambda: len(seen) == count, timeout=WAIT)
        elapsed = time.monotonic() - first_call[0]
    finally:
        await shut_down(broker)

    setup = "app in context" if with_app else "bare broker"
    commits = handler.committer.commit_requests
    print(
        f"\nacceptance ({setup}): {count / elapsed:.0f} msg/s, "
        f"peak {gauge.peak} concurrent handlers, {commits} commit requests"
    )
    assert sorted(seen) == list(range(count))
    assert {value: n for value, n in seen.items() if n > 1} == {}, "processed more than once"
    assert handler.processed == count
    assert handler.failed == 0
    assert handler.in_flight == 0
    assert gauge.peak >= 50, f"only {gauge.peak} handlers overlapped"
    assert gauge.peak <= 100
    assert await committed_offsets(group, topic) == await end_offsets(topic, partitions)


async def test_concurrency_limit_caps_the_handlers_running_at_once() -> None:
    limit, count, partitions = 5, 200, 2
    topic, group = unique("limit"), unique("g-limit")
    await create_topic(topic, partitions)
    await produce(topic, numbers(count), partitions=partitions)
    broker = concurrent_broker()
    gauge = Gauge()
    full = asyncio.Event()
    done: set[int] = set()

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(body: int) -> None:
        gauge.enter()
        try:
            if gauge.active >= limit:
                full.set()
            # The first calls wait until the limit is reached, so reaching it is certain;
            # all of them then keep running a little, so exceeding it would show.
            await full.wait()
            await asyncio.sleep(0.002)
        finally:
            gauge.leave()
        done.add(body)

    await initialize_concurrent_processing(
        broker.context, concurrency_limit=limit, commit_batch_size=50, commit_batch_timeout_sec=1
    )
    try:
        await broker.start()
        await wait_until(lambda: len(done) == count, timeout=WAIT)
    finally:
        await shut_down(broker)

    assert gauge.peak == limit


# ---- batched commits -----------------------------------------------------------------


async def test_finished_messages_leave_no_reference_cycles() -> None:
    # A message kept alive by a cycle survives into the collector's oldest generation while
    # its handler awaits; with many in flight full collections then cost much of the CPU.
    # Everything a finished message used must be freed by reference counting alone.
    count = 200
    topic, group = await numbered_topic("cycles", count, partitions=2)
    broker = concurrent_broker()
    done: set[int] = set()

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(body: int) -> None:
        await asyncio.sleep(0)  # suspend once, as a handler doing I/O does
        done.add(body)

    handler = await initialize_concurrent_processing(broker.context, concurrency_limit=20)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        await broker.start()
        await wait_until(lambda: len(done) == count and handler.in_flight == 0, timeout=WAIT)
        gc.collect()
        leaked = Counter(
            type(obj).__name__
            for obj in gc.garbage
            if isinstance(obj, KafkaCommitTask | KafkaAckableMessage | asyncio.Task)
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        await shut_down(broker)
    assert leaked == {}, f"freed only by the garbage collector: {dict(leaked)}"


REQUEST_ID: ContextVar[int | None] = ContextVar("request_id", default=None)


async def run_until_idle(broker: KafkaBroker, handled: Callable[[], bool], **settings: Any) -> None:
    """Start concurrent processing and the broker, wait until ``handled()`` holds and nothing
    runs any more, then shut down."""
    handler = await initialize_concurrent_processing(broker.context, **settings)
    try:
        await broker.start()
        await wait_until(lambda: handled() and handler.in_flight == 0, timeout=WAIT)
    finally:
        await shut_down(broker)


async def test_a_slot_runs_the_next_message_in_the_task_it_already_has() -> None:
    # Ending one message and starting the next in the same task frees the first one's
    # objects right before the second one's are made, which keeps CPython's collector from
    # running over the in-flight work again and again. A context variable set and reset with
    # its token leaves the context as it was, so it does not stop the reuse.
    count = 60
    topic, group = await numbered_topic("reuse", count, partitions=2)
    broker = concurrent_broker()
    tasks: set[asyncio.Task[Any]] = set()
    done: set[int] = set()

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(body: int) -> None:
        token = REQUEST_ID.set(body)
        try:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            await asyncio.sleep(0)
            done.add(body)
        finally:
            REQUEST_ID.reset(token)

    await run_until_idle(broker, lambda: len(done) == count, concurrency_limit=2)
    assert len(tasks) <= count // 4, f"{len(tasks)} tasks for {count} messages"


async def test_context_variables_a_handler_leaves_set_do_not_reach_the_next_message() -> None:
    # A handler that sets a context variable and never resets it changes its task's context;
    # that task then ends instead of running the next message, which gets a fresh one.
    count = 40
    topic, group = await numbered_topic("ctx", count, partitions=2)
    broker = concurrent_broker()
    inherited: dict[int, int | None] = {}

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(body: int) -> None:
        inherited[body] = REQUEST_ID.get()
        REQUEST_ID.set(body)
        await asyncio.sleep(0)

    await run_until_idle(broker, lambda: len(inherited) == count, concurrency_limit=2)
    leaked = {body: value for body, value in inherited.items() if value is not None}
    assert leaked == {}, f"values left by earlier messages: {leaked}"


async def test_a_full_batch_is_committed_without_waiting_for_the_timeout() -> None:
    topic, group = unique("bysize"), unique("g-bysize")
    await create_topic(topic, 1)
    await produce(topic, numbers(25), partitions=1)
    broker = concurrent_broker()
    done: set[int] = set()

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(body: int) -> None:
        done.add(body)

    # The timer would only fire after 60 s, far beyond the wait below.
    handler = await initialize_concurrent_processing(
        broker.context, commit_batch_size=10, commit_batch_timeout_sec=60
    )
    try:
        await broker.start()

        async def advanced() -> bool:
            return (await committed_offsets(group, topic)).get(0, 0) >= 10

        await wait_until(advanced, timeout=WAIT, interval=POLL)
        assert len(done) >= 10
        assert handler.committer.commit_requests >= 1
    finally:
        await shut_down(broker)


async def test_a_partial_batch_is_committed_after_the_timeout() -> None:
    topic, group = unique("bytime"), unique("g-bytime")
    await create_topic(topic, 2)
    await produce(topic, numbers(40), partitions=2)
    broker = concurrent_broker()

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(body: int) -> None:
        pass

    # 40 messages never fill a batch of 10 000: only the timer can commit them.
    handler = await initialize_concurrent_processing(
        broker.context, commit_batch_size=10_000, commit_batch_timeout_sec=0.5
    )
    try:
        await broker.start()
        await wait_committed(group, topic, {0: 20, 1: 20})
        assert handler.committer.commit_requests >= 1
        assert handler.is_running, "committed by the timer, not by a shutdown"
    finally:
        await shut_down(broker)


# ---- the commit point ----------------------------------------------------------------


async def test_commit_point_waits_for_the_first_unfinished_message() -> None:
    # One consumer reads a one-partition topic whose offset 0 blocks and a probe topic:
    # the probe's commit proves a commit cycle looked at this consumer after the others
    # finished (both partitions' commit points are computed in the same request).
    blocked, probe, group = unique("prefix"), unique("prefix-probe"), unique("g-prefix")
    await create_topic(blocked, 1)
    await create_topic(probe, 1)
    await produce(blocked, numbers(50), partitions=1)
    broker = concurrent_broker()
    release = asyncio.Event()
    finished: set[int] = set()

    @broker.subscriber(
        blocked, probe, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(body: int) -> None:
        if body == 0:
            await release.wait()
        finished.add(body)

    handler = await initialize_concurrent_processing(
        broker.context, commit_batch_size=5, commit_batch_timeout_sec=0.2
    )
    try:
        await broker.start()
        await wait_until(lambda: finished == set(range(1, 50)), timeout=WAIT)
        await produce(probe, numbers(1, start=1000), partitions=1)
        await wait_committed(group, probe, {0: 1})

        assert (await committed_offsets(group, blocked)).get(0, 0) == 0
        assert 0 not in finished
        assert handler.in_flight == 1

        release.set()
        await wait_committed(group, blocked, {0: 50})
    finally:
        release.set()
        await shut_down(broker)


async def test_message_cancelled_at_shutdown_is_the_commit_point_and_redelivered_first() -> None:
    topic, group = unique("cancel"), unique("g-cancel")
    await create_topic(topic, 1)
    await produce(topic, numbers(20), partitions=1)
    broker = concurrent_broker()
    never = asyncio.Event()
    finished: set[int] = set()
    cancelled: list[int] = []

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(body: int) -> None:
        if body == 5:
            try:
                await never.wait()
            except asyncio.CancelledError:
                cancelled.append(body)
                raise
        finished.add(body)

    await initialize_concurrent_processing(
        broker.context, commit_batch_size=100, commit_batch_timeout_sec=60, shutdown_timeout_sec=1
    )
    try:
        await broker.start()
        await wait_until(lambda: finished == set(range(20)) - {5}, timeout=WAIT)
    finally:
        await shut_down(broker)

    assert cancelled == [5]
    assert await committed_offsets(group, topic) == {0: 5}

    # A new consumer of the group starts at the cancelled message.
    again = concurrent_broker()
    redelivered: list[int] = []

    @again.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle_again(body: int) -> None:
        redelivered.append(body)

    # One at a time, so the calls happen in offset order. Whether the messages after 5,
    # finished before the shutdown, run again is not asserted: 5 must, and first.
    await initialize_concurrent_processing(
        again.context, concurrency_limit=1, commit_batch_size=100, commit_batch_timeout_sec=0.2
    )
    try:
        await again.start()
        await wait_committed(group, topic, {0: 20})
    finally:
        await shut_down(again)

    assert redelivered[:1] == [5]
    assert redelivered == sorted(set(redelivered)), "out of order or twice"
    assert set(redelivered) <= set(range(5, 20))


# ---- several subscribers and groups --------------------------------------------------


async def test_records_are_fetched_in_batches_not_one_getone_per_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    count = 300
    topic, group = unique("fetch"), unique("g-fetch")
    await create_topic(topic, 2)
    await produce(topic, numbers(count), partitions=2)
    calls: Counter[str] = Counter()
    getone, getmany = AIOKafkaConsumer.getone, AIOKafkaConsumer.getmany

    async def counted_getone(self: AIOKafkaConsumer, *partitions: Any) -> Any:
        calls["getone"] += 1
        return await getone(self, *partitions)

    async def counted_getmany(self: AIOKafkaConsumer, *partitions: Any, **kwargs: Any) -> Any:
        calls["getmany"] += 1
        return await getmany(self, *partitions, **kwargs)

    monkeypatch.setattr(AIOKafkaConsumer, "getone", counted_getone)
    monkeypatch.setattr(AIOKafkaConsumer, "getmany", counted_getmany)
    broker = concurrent_broker()
    seen: set[int] = set()

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(body: int) -> None:
        seen.add(body)

    await initialize_concurrent_processing(broker.context, concurrency_limit=50)
    try:
        await broker.start()
        await wait_until(lambda: len(seen) == count, timeout=WAIT)
    finally:
        await shut_down(broker)

    print(f"\nfetch calls for {count} messages: {dict(calls)}")
    # Without an app in the context the subscriber is handed over at its first message,
    # which FastStream fetched with getone() itself.
    assert calls["getone"] <= 1
    # At most 100 records per fetch here (50 free slots + 50 of queue room).
    assert 3 <= calls["getmany"] <= count // 10


async def test_partitions_are_served_in_turn_when_slots_are_few() -> None:
    # aiokafka buffers a whole fetch per partition and hands out one partition's records
    # until they run out; with 2 slots the other partition would wait for all of them.
    per_partition, head = 200, 40
    topic, group = unique("turns"), unique("g-turns")
    await create_topic(topic, 2)
    await produce(topic, numbers(2 * per_partition), partitions=2)
    broker = concurrent_broker()
    order: list[int] = []

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(msg: KafkaMessage) -> None:
        record = msg.raw_message
        assert not isinstance(record, tuple)
        order.append(record.partition)
        await asyncio.sleep(0.001)

    await initialize_concurrent_processing(broker.context, concurrency_limit=2)
    try:
        await broker.start()
        await wait_until(lambda: len(order) >= head, timeout=WAIT)
    finally:
        await shut_down(broker)

    first = Counter(order[:head])
    print(f"\npartitions of the first {head} messages: {dict(first)}")
    assert min(first[0], first[1]) >= head // 4


@pytest.mark.smoke
async def test_manual_subscriber_with_max_workers_runs_one_lane_per_consumer() -> None:
    # FastStream gives a MANUAL subscriber with max_workers its own consumer per worker; each
    # fetches in batches and commits only the partitions it was assigned.
    count, partitions = 400, 4
    topic, group = unique("workers"), unique("g-workers")
    await create_topic(topic, partitions)
    await produce(topic, numbers(count), partitions=partitions)
    broker = concurrent_broker()
    seen: Counter[int] = Counter()

    sub = broker.subscriber(
        topic,
        group_id=group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        max_workers=2,
    )

    @sub
    async def handle(body: int) -> None:
        await asyncio.sleep(0.001)
        seen[body] += 1

    handler = await initialize_concurrent_processing(broker.context, commit_batch_size=20)
    try:
        await broker.start()
        await wait_until(lambda: len(seen) == count, timeout=WAIT)
        await wait_committed(group, topic, await end_offsets(topic, partitions))
        lanes = handler.lanes_of(sub)
        owned = [set(lane.consumer.assignment()) for lane in lanes]
    finally:
        await shut_down(broker)

    assert set(seen.values()) == {1}
    assert len(lanes) == 2
    assert owned[0].isdisjoint(owned[1])
    assert len(owned[0] | owned[1]) == partitions


async def test_subscribers_and_groups_commit_independently() -> None:
    # Group A reads both topics (one subscriber each), group B reads the first topic too.
    # B holds its first message: A must still commit everything, B everything but that.
    first, second = unique("multi-1"), unique("multi-2")
    group_a, group_b = unique("g-multi-a"), unique("g-multi-b")
    await create_topic(first, 2)
    await create_topic(second, 2)
    await produce(first, numbers(40), partitions=2)
    await produce(second, numbers(40, start=100), partitions=2)
    broker = concurrent_broker()
    release = asyncio.Event()
    a_first: set[int] = set()
    a_second: set[int] = set()
    b_first: set[int] = set()

    @broker.subscriber(
        first, group_id=group_a, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle_a_first(body: int) -> None:
        a_first.add(body)

    @broker.subscriber(
        second, group_id=group_a, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle_a_second(body: int) -> None:
        a_second.add(body)

    @broker.subscriber(
        first, group_id=group_b, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle_b_first(body: int) -> None:
        if body == 0:  # partition 0, offset 0
            await release.wait()
        b_first.add(body)

    handler = await initialize_concurrent_processing(
        broker.context, commit_batch_size=5, commit_batch_timeout_sec=0.2
    )
    try:
        await broker.start()
        await wait_committed(group_a, first, {0: 20, 1: 20})
        await wait_committed(group_a, second, {0: 20, 1: 20})
        await wait_until(lambda: b_first == set(range(1, 40)), timeout=WAIT)
        # One more message per partition: B committing partition 1's proves a commit cycle
        # computed B's commit points after all of partition 0 but its offset 0 finished.
        await produce(first, numbers(2, start=1000), partitions=2)

        async def b_partition_1_committed() -> bool:
            return (await committed_offsets(group_b, first)).get(1) == 21

        await wait_until(b_partition_1_committed, timeout=WAIT, interval=POLL)
        assert (await committed_offsets(group_b, first)).get(0, 0) == 0
        await wait_committed(group_a, first, {0: 21, 1: 21})
        assert await committed_offsets(group_b, second) == {}
        assert 0 not in b_first

        release.set()
        await wait_committed(group_b, first, {0: 21, 1: 21})
    finally:
        release.set()
        await shut_down(broker)

    assert a_first == {*range(40), 1000, 1001}
    assert a_second == set(range(100, 140))
    assert b_first == {*range(40), 1000, 1001}
    assert handler.failed == 0
    assert await committed_offsets(group_a, first) == {0: 21, 1: 21}
    assert await committed_offsets(group_b, second) == {}


# ---- TestKafkaBroker -----------------------------------------------------------------


@pytest.mark.smoke
@pytest.mark.parametrize("setup", ["none", "initialised", "initialised_with_app"])
async def test_works_under_test_kafka_broker(
    setup: Literal["none", "initialised", "initialised_with_app"],
) -> None:
    topic = unique("inmemory")
    broker = concurrent_broker()
    received: list[int] = []

    @broker.subscriber(topic, group_id=unique("g-inmemory"), ack_policy=AckPolicy.MANUAL)
    async def handle(body: int) -> int:
        received.append(body)
        return body * 2

    if setup == "initialised_with_app":
        FastStream(broker)
    if setup != "none":
        await initialize_concurrent_processing(broker.context)
    try:
        async with TestKafkaBroker(broker) as test_broker:
            await test_broker.publish(1, topic)
            assert received == [1]
            await test_broker.publish(2, topic)
            assert received == [1, 2]
    finally:
        await stop_concurrent_processing(broker.context)


# ---- health --------------------------------------------------------------------------


async def test_health_follows_the_handler_lifecycle() -> None:
    topic, group = unique("health"), unique("g-health")
    await create_topic(topic, 1)
    await produce(topic, numbers(3), partitions=1)
    broker = concurrent_broker()
    done: set[int] = set()

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(body: int) -> None:
        done.add(body)

    assert is_kafka_handler_healthy(broker.context) is False
    await initialize_concurrent_processing(broker.context, commit_batch_timeout_sec=0.2)
    try:
        assert is_kafka_handler_healthy(broker.context) is True
        await broker.start()
        await wait_until(lambda: len(done) == 3, timeout=WAIT)
        assert is_kafka_handler_healthy(broker.context) is True
    finally:
        await shut_down(broker)
    assert is_kafka_handler_healthy(broker.context) is False
