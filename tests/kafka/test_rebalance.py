"""Rebalances against a real broker: a second member joins while the first one is busy.

Member A (its own broker, context and handler) processes a 4-partition topic with 20-50 ms
handlers; member B joins the group from the same process. Work A finished on partitions it
loses must be committed before B reads them, so with in-flight work finishing within
``rebalance_flush_timeout_sec`` no message is processed twice and none is lost.
"""

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    KafkaConcurrentProcessingMiddleware,
    initialize_concurrent_processing,
    stop_concurrent_processing,
)
from faststream_concurrent_aiokafka.integration.handler import KafkaConcurrentRebalanceListener
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

PARTITIONS = 4
BOUND_SEC = 30.0

Work = Callable[[str, int, int], Awaitable[None]]
ListenerFor = Callable[[KafkaBroker], ConsumerRebalanceListener]


class Tally:
    """What each member processed and what runs right now, per partition."""

    def __init__(self) -> None:
        self.processed: list[tuple[str, int]] = []
        self.finished_on: Counter[tuple[str, int]] = Counter()
        self.running_on: Counter[tuple[str, int]] = Counter()

    def ids(self, member: str | None = None) -> list[int]:
        return [ident for who, ident in self.processed if member is None or who == member]

    def count(self, member: str) -> int:
        return len(self.ids(member))

    def duplicates(self) -> list[int]:
        return sorted(i for i, n in Counter(self.ids()).items() if n > 1)

    async def run(self, member: str, partition: int, work: Awaitable[None]) -> None:
        self.running_on[member, partition] += 1
        try:
            await work
        finally:
            self.running_on[member, partition] -= 1
        self.finished_on[member, partition] += 1


def short_work(ident: int) -> float:
    """20-50 ms of awaited work."""
    return 0.02 + (ident % 4) * 0.01


def member_broker(
    member: str,
    topic: str,
    group: str,
    tally: Tally,
    *,
    work: Work | None = None,
    listener_for: ListenerFor | None = None,
) -> KafkaBroker:
    """A member of ``group``; ``listener_for(broker)`` gives its subscriber's own listener."""
    broker = KafkaBroker(BOOTSTRAP, logger=None)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    listener = listener_for(broker) if listener_for is not None else None

    async def default_work(_member: str, ident: int, _offset: int) -> None:
        await asyncio.sleep(short_work(ident))

    body_of = work or default_work

    @broker.subscriber(
        topic,
        group_id=group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        # Members notice a rebalance at their next heartbeat: keep that quick.
        heartbeat_interval_ms=200,
        listener=listener,
    )
    async def handle(body: int, msg: KafkaMessage) -> None:
        record = msg.raw_message
        assert not isinstance(record, tuple), "a per-message subscriber got a batch"
        await tally.run(member, record.partition, body_of(member, body, record.offset))
        tally.processed.append((member, body))

    return broker


async def start_member(broker: KafkaBroker, **settings: Any) -> None:
    await initialize_concurrent_processing(broker.context, **settings)
    await broker.start()


async def stop_member(broker: KafkaBroker) -> None:
    try:
        await asyncio.wait_for(broker.stop(), BOUND_SEC)
    finally:
        await stop_concurrent_processing(broker.context)


@pytest.mark.smoke
async def test_second_member_joining_causes_no_duplicates(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="faststream_concurrent_aiokafka")
    total = 1200
    topic, group = unique("rebalance"), unique("rebalance-group")
    await create_topic(topic, PARTITIONS)
    await produce(topic, [str(i).encode() for i in range(total)], partitions=PARTITIONS)
    tally = Tally()
    a = member_broker("A", topic, group, tally)
    b = member_broker("B", topic, group, tally)
    settings: dict[str, Any] = {"concurrency_limit": 4, "rebalance_flush_timeout_sec": 10.0}
    await start_member(a, **settings)
    try:
        await wait_until(lambda: tally.count("A") >= 100, timeout=BOUND_SEC)
        await start_member(b, **settings)
        try:
            await wait_until(lambda: len(set(tally.ids())) >= total, timeout=BOUND_SEC)
        finally:
            await stop_member(b)
    finally:
        await stop_member(a)

    print(
        f"\nA processed {tally.count('A')}, B processed {tally.count('B')}, "
        f"duplicates {len(tally.duplicates())}"
    )
    assert tally.count("B") > 0, "B never got partitions: no rebalance happened mid-stream"
    assert any("Released" in r.getMessage() for r in caplog.records), "no partition was flushed"
    both = set(tally.ids("A")) & set(tally.ids("B"))
    assert not both, f"processed by both members: {sorted(both)[:20]}"
    assert tally.duplicates() == []
    assert set(tally.ids()) == set(range(total))
    assert await committed_offsets(group, topic) == await end_offsets(topic, PARTITIONS)


async def test_handler_outliving_the_flush_timeout_loses_nothing() -> None:
    """A message still running when the flush times out is left uncommitted: the partition's
    next owner processes it again (the only duplicate), and nothing is lost.

    It is the last message of partition 0, so no later message of that partition finished
    above it (those would be redelivered too: only the contiguous prefix is committed).
    """
    head, tail = 10, 300
    long_id = head - 1
    topic, group = unique("rebalance-long"), unique("rebalance-long-group")
    await create_topic(topic, PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=5)
    await producer.start()
    try:
        for ident in range(head):
            await producer.send(topic, str(ident).encode(), partition=0)
        for ident in range(head, head + tail * (PARTITIONS - 1)):
            await producer.send(topic, str(ident).encode(), partition=1 + ident % (PARTITIONS - 1))
        await producer.flush()
    finally:
        await producer.stop()
    total = head + tail * (PARTITIONS - 1)

    long_started = asyncio.Event()
    redelivered = asyncio.Event()
    outcome: list[str] = []

    async def work(_member: str, ident: int, _offset: int) -> None:
        if ident != long_id:
            await asyncio.sleep(short_work(ident))
        elif not long_started.is_set():
            long_started.set()
            # Runs until the message was handed out again; the flush gives up after 1 s.
            try:
                await asyncio.wait_for(redelivered.wait(), BOUND_SEC)
                outcome.append("redelivered while the first attempt still ran")
            except TimeoutError:
                outcome.append("never redelivered while the first attempt ran")
        else:
            redelivered.set()

    tally = Tally()
    a = member_broker("A", topic, group, tally, work=work)
    b = member_broker("B", topic, group, tally, work=work)
    settings: dict[str, Any] = {"concurrency_limit": 4, "rebalance_flush_timeout_sec": 1.0}
    await start_member(a, **settings)
    try:
        await asyncio.wait_for(long_started.wait(), BOUND_SEC)
        await start_member(b, **settings)
        try:
            await wait_until(
                lambda: len(set(tally.ids())) >= total and long_id in tally.ids(),
                timeout=BOUND_SEC,
            )
            await wait_until(lambda: tally.ids().count(long_id) >= 2, timeout=BOUND_SEC)
        finally:
            await stop_member(b)
    finally:
        await stop_member(a)

    long_in_flight = 1
    print(
        f"\nA processed {tally.count('A')}, B processed {tally.count('B')}, "
        f"duplicates {tally.duplicates()}, long message: {outcome}"
    )
    assert tally.count("B") > 0
    assert outcome == ["redelivered while the first attempt still ran"]
    assert set(tally.ids()) == set(range(total)), "lost messages"
    assert len(tally.ids()) - total <= long_in_flight
    assert tally.duplicates() == [long_id]
    assert await committed_offsets(group, topic) == await end_offsets(topic, PARTITIONS)


class RecordingListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """The user's own listener: records its calls and, on revocation, what was committed and
    what still ran on the revoked partitions at that moment."""

    def __init__(self, member: str, topic: str, group: str, tally: Tally) -> None:
        self.member = member
        self.topic = topic
        self.group = group
        self.tally = tally
        self.assigned: list[set[TopicPartition]] = []
        self.revoked: list[set[TopicPartition]] = []
        self.at_revocation: list[tuple[dict[int, int], dict[int, int], dict[int, int]]] = []

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.revoked.append(set(revoked))
        if not revoked:
            return
        parts = sorted(tp.partition for tp in revoked)
        finished = {p: self.tally.finished_on[self.member, p] for p in parts}
        running = {p: self.tally.running_on[self.member, p] for p in parts}
        committed = await committed_offsets(self.group, self.topic)
        self.at_revocation.append((finished, running, {p: committed.get(p, 0) for p in parts}))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assigned.append(set(assigned))


@pytest.mark.parametrize("wiring", ["explicit", "own-listener"])
async def test_user_listener_runs_after_the_library_flush(wiring: str) -> None:
    """``explicit``: ``listener=KafkaConcurrentRebalanceListener(broker.context, inner=user)``;
    ``own-listener``: ``listener=user``, wrapped by the library at setup."""
    total = 600
    topic, group = unique("listener"), unique("listener-group")
    await create_topic(topic, PARTITIONS)
    await produce(topic, [str(i).encode() for i in range(total)], partitions=PARTITIONS)
    tally = Tally()
    user = RecordingListener("A", topic, group, tally)
    if wiring == "explicit":

        def listener_for(broker: KafkaBroker) -> ConsumerRebalanceListener:
            return KafkaConcurrentRebalanceListener(broker.context, inner=user)

    else:

        def listener_for(broker: KafkaBroker) -> ConsumerRebalanceListener:
            return user

    a = member_broker("A", topic, group, tally, listener_for=listener_for)
    b = member_broker("B", topic, group, tally)
    # Only the flush commits on A: batches never fill and the timer never fires in this test.
    a_settings: dict[str, Any] = {
        "concurrency_limit": 4,
        "commit_batch_size": 100_000,
        "commit_batch_timeout_sec": 600.0,
    }
    await start_member(a, **a_settings)
    try:
        await wait_until(lambda: tally.count("A") >= 40, timeout=BOUND_SEC)
        await start_member(b, concurrency_limit=4)
        try:
            await wait_until(lambda: len(user.assigned) >= 2, timeout=BOUND_SEC)
            await wait_until(lambda: len(set(tally.ids())) >= total, timeout=BOUND_SEC)
        finally:
            await stop_member(b)
    finally:
        await stop_member(a)

    assert user.assigned[0] == {TopicPartition(topic, p) for p in range(PARTITIONS)}
    assert any(user.revoked), "the user's on_partitions_revoked never saw a revocation"
    assert user.at_revocation, "no revocation with partitions"
    finished, running, committed = user.at_revocation[0]
    print(
        f"\n[{wiring}] at revocation: finished={finished} running={running} committed={committed}"
    )
    assert sum(finished.values()) > 0
    # The library ran first: nothing of the revoked partitions still runs, all of it committed.
    assert running == dict.fromkeys(finished, 0)
    assert committed == finished
    assert tally.duplicates() == []
    assert set(tally.ids()) == set(range(total))
