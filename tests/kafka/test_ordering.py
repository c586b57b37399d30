"""Ordering modes against a real broker: "key" runs one message per key at a time in offset
order, "partition" one per partition, "unordered" anything; per-subscriber overrides.

Handlers that ``await asyncio.sleep`` simulate work; waiting on the code under test is done
with events and ``wait_until``.
"""

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from faststream import FastStream
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.kafka.subscriber.usecase import DefaultSubscriber
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    ConcurrentProcessing,
    KafkaConcurrentProcessingMiddleware,
    configure_subscriber,
    initialize_concurrent_processing,
    stop_concurrent_processing,
)
from faststream_concurrent_aiokafka.core.settings import Ordering
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


# ---- helpers --------------------------------------------------------------------------


def make_broker() -> KafkaBroker:
    broker = KafkaBroker(BOOTSTRAP, logger=None)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    return broker


@asynccontextmanager
async def serving(broker: KafkaBroker, **settings: Any) -> AsyncIterator[ConcurrentProcessing]:
    """Initialise (eagerly: an app is in the context), start the broker; stop both after."""
    FastStream(broker)
    handler = await initialize_concurrent_processing(broker.context, **settings)
    try:
        await broker.start()
        yield handler
    finally:
        await broker.stop()
        await stop_concurrent_processing(broker.context)


def where(msg: KafkaMessage) -> tuple[int, int, bytes | None]:
    """(partition, offset, key) of the message being handled."""
    record = msg.raw_message
    assert not isinstance(record, tuple)
    return record.partition, record.offset, record.key


def subscribe(broker: KafkaBroker, topic: str) -> tuple[DefaultSubscriber, str]:
    """A concurrent (MANUAL-ack) subscriber in a group of its own, and that group."""
    group = unique(f"{topic}-g")
    subscriber = broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    return subscriber, group


class OrderProbe:
    """Watches handler starts and ends.

    Per ordering unit (a key within its partition, or a partition): a message may only start
    once the previous one of its unit finished, and starts follow offset order. ``None`` as
    unit means "no ordering expected" (counted, never checked).
    """

    def __init__(self) -> None:
        self.running: Counter[Hashable] = Counter()
        self.last_started: dict[Hashable, int] = {}
        self.violations: list[str] = []
        self.runs: Counter[tuple[int, int]] = Counter()
        self.in_flight = 0
        self.peak = 0
        self.finished = 0
        self.first_start: float | None = None
        self.last_end = 0.0

    def start(self, unit: Hashable | None, partition: int, offset: int) -> None:
        if self.first_start is None:
            self.first_start = time.perf_counter()
        self.runs[(partition, offset)] += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if unit is None:
            return
        if self.running[unit]:
            self.violations.append(f"{unit!r}: offset {offset} started while an earlier one ran")
        last = self.last_started.get(unit)
        if last is not None and offset <= last:
            self.violations.append(f"{unit!r}: offset {offset} started after offset {last}")
        self.last_started[unit] = offset
        self.running[unit] += 1

    def end(self, unit: Hashable | None) -> None:
        self.in_flight -= 1
        self.finished += 1
        self.last_end = time.perf_counter()
        if unit is not None:
            self.running[unit] -= 1

    @property
    def seconds(self) -> float:
        assert self.first_start is not None
        return self.last_end - self.first_start

    def each_once(self, total: int) -> bool:
        return len(self.runs) == total and set(self.runs.values()) == {1}


def key_of(i: int, keys: int) -> bytes:
    return str(i % keys).encode()


# ---- 6. acceptance: key ordering at volume --------------------------------------------

ACCEPTANCE_MESSAGES = 4000
ACCEPTANCE_PARTITIONS = 4
ACCEPTANCE_KEYS = 64


async def _run_volume(ordering: Ordering) -> tuple[OrderProbe, str, str]:
    """4000 messages, 4 partitions, 64 keys, ~10 ms handlers, limit 100."""
    topic = unique(f"ord-volume-{ordering}")
    await create_topic(topic, ACCEPTANCE_PARTITIONS)
    await produce(
        topic,
        [str(i).encode() for i in range(ACCEPTANCE_MESSAGES)],
        partitions=ACCEPTANCE_PARTITIONS,
        key=lambda i: key_of(i, ACCEPTANCE_KEYS),
    )
    broker = make_broker()
    probe = OrderProbe()
    sub, group = subscribe(broker, topic)

    @sub
    async def handle(body: int, msg: KafkaMessage) -> None:
        partition, offset, key = where(msg)
        unit = (partition, key)
        probe.start(unit, partition, offset)
        try:
            await asyncio.sleep(0.01)
        finally:
            probe.end(unit)

    async with serving(broker, concurrency_limit=100, ordering=ordering):
        await wait_until(lambda: probe.finished >= ACCEPTANCE_MESSAGES, timeout=60)
    return probe, topic, group


async def test_key_ordering_holds_at_volume_and_overlaps_keys() -> None:
    keyed, keyed_topic, keyed_group = await _run_volume("key")
    unordered, _, _ = await _run_volume("unordered")

    keyed_rate = ACCEPTANCE_MESSAGES / keyed.seconds
    unordered_rate = ACCEPTANCE_MESSAGES / unordered.seconds
    print(
        f"\nthroughput, {ACCEPTANCE_MESSAGES} msgs / {ACCEPTANCE_PARTITIONS} partitions / "
        f"{ACCEPTANCE_KEYS} keys / 10 ms handlers / limit 100: "
        f"ordering='key' {keyed_rate:.0f} msg/s (peak {keyed.peak} in flight), "
        f"ordering='unordered' {unordered_rate:.0f} msg/s (peak {unordered.peak} in flight; "
        f"{len(unordered.violations)} key-order violations there, as allowed)"
    )
    assert keyed.violations == []
    assert keyed.each_once(ACCEPTANCE_MESSAGES)
    assert keyed.peak >= 16
    assert await committed_offsets(keyed_group, keyed_topic) == await end_offsets(
        keyed_topic, ACCEPTANCE_PARTITIONS
    )
    assert unordered.each_once(ACCEPTANCE_MESSAGES)


# ---- 7. partition ordering ------------------------------------------------------------


async def test_partition_ordering_runs_one_per_partition_and_partitions_in_parallel() -> None:
    topic, partitions, total = unique("ord-partition"), 4, 200
    await create_topic(topic, partitions)
    await produce(
        topic,
        [str(i).encode() for i in range(total)],
        partitions=partitions,
        key=lambda i: key_of(i, 16),  # many keys per partition: keys must not matter here
    )
    broker = make_broker()
    probe = OrderProbe()
    sub, group = subscribe(broker, topic)

    @sub
    async def handle(body: int, msg: KafkaMessage) -> None:
        partition, offset, _ = where(msg)
        probe.start(partition, partition, offset)
        try:
            await asyncio.sleep(0.01)
        finally:
            probe.end(partition)

    async with serving(broker, concurrency_limit=10, ordering="partition"):
        await wait_until(lambda: probe.finished >= total, timeout=30)

    assert probe.violations == []
    assert probe.peak >= 2  # one per partition, so this many partitions ran at once
    assert probe.each_once(total)
    assert await committed_offsets(group, topic) == await end_offsets(topic, partitions)


# ---- 8. keyless messages under key ordering -------------------------------------------


async def test_messages_without_key_run_concurrently_under_key_ordering() -> None:
    topic, total = unique("ord-keyless"), 40
    await create_topic(topic, 1)
    await produce(topic, [str(i).encode() for i in range(total)], partitions=1)
    broker = make_broker()
    probe = OrderProbe()
    overlapped = asyncio.Event()
    never_overlapped: list[int] = []
    sub, group = subscribe(broker, topic)

    @sub
    async def handle(body: int, msg: KafkaMessage) -> None:
        partition, offset, key = where(msg)
        assert key is None
        probe.start(None, partition, offset)
        if probe.in_flight >= 2:
            overlapped.set()
        try:
            if offset == 0:
                # Holds until another message of the same partition runs beside it.
                try:
                    await asyncio.wait_for(overlapped.wait(), timeout=10)
                except TimeoutError:
                    never_overlapped.append(offset)
        finally:
            probe.end(None)

    async with serving(broker, concurrency_limit=10, ordering="key"):
        await wait_until(lambda: probe.finished >= total, timeout=30)

    assert never_overlapped == []
    assert probe.peak > 1
    assert probe.each_once(total)
    assert await committed_offsets(group, topic) == {0: total}


# ---- 9. per-subscriber ordering override ----------------------------------------------


async def test_subscriber_key_ordering_overrides_global_unordered() -> None:
    ordered_topic, plain_topic = unique("ord-override-key"), unique("ord-override-plain")
    total, keys = 200, 4
    for topic in (ordered_topic, plain_topic):
        await create_topic(topic, 1)
        await produce(
            topic,
            [str(i).encode() for i in range(total)],
            partitions=1,
            key=lambda i: key_of(i, keys),
        )
    broker = make_broker()
    ordered, plain = OrderProbe(), OrderProbe()
    same_key_overlap = asyncio.Event()
    plain_never_overlapped: list[int] = []

    ordered_sub, ordered_group = subscribe(broker, ordered_topic)
    configure_subscriber(ordered_sub, ordering="key")

    @ordered_sub
    async def handle_ordered(body: int, msg: KafkaMessage) -> None:
        partition, offset, key = where(msg)
        unit = (partition, key)
        ordered.start(unit, partition, offset)
        try:
            await asyncio.sleep(0.01)
        finally:
            ordered.end(unit)

    plain_sub, _ = subscribe(broker, plain_topic)

    @plain_sub
    async def handle_plain(body: int, msg: KafkaMessage) -> None:
        partition, offset, key = where(msg)
        unit = (partition, key)
        plain.start(unit, partition, offset)
        if plain.running[unit] > 1:
            same_key_overlap.set()
        try:
            if offset == 0:
                # The global "unordered" still applies here: another message of key 0 runs
                # beside this one.
                try:
                    await asyncio.wait_for(same_key_overlap.wait(), timeout=10)
                except TimeoutError:
                    plain_never_overlapped.append(offset)
            else:
                await asyncio.sleep(0.01)
        finally:
            plain.end(unit)

    async with serving(broker, concurrency_limit=40, ordering="unordered"):
        await wait_until(lambda: ordered.finished >= total and plain.finished >= total, timeout=30)

    assert ordered.violations == []
    assert ordered.peak > 1  # different keys still overlap
    assert ordered.each_once(total)
    assert plain_never_overlapped == []
    assert plain.violations != []
    assert plain.each_once(total)
    assert await committed_offsets(ordered_group, ordered_topic) == {0: total}


# ---- 10. a hot key does not starve the others -----------------------------------------


async def test_hot_key_backlog_does_not_starve_other_keys() -> None:
    topic = unique("ord-hot")
    hot_total, other_keys, per_other = 500, 50, 2
    other_total = other_keys * per_other
    total = hot_total + other_total
    await create_topic(topic, 1)

    def key(i: int) -> bytes:
        # The hot key's whole backlog comes first in the partition, the others after it.
        return b"hot" if i < hot_total else f"k{(i - hot_total) % other_keys}".encode()

    await produce(topic, [str(i).encode() for i in range(total)], partitions=1, key=key)
    broker = make_broker()
    probe = OrderProbe()
    hot_done = other_done = 0
    hot_done_when_others_finished: list[int] = []
    sub, group = subscribe(broker, topic)

    @sub
    async def handle(body: int, msg: KafkaMessage) -> None:
        nonlocal hot_done, other_done
        partition, offset, record_key = where(msg)
        unit = (partition, record_key)
        probe.start(unit, partition, offset)
        try:
            await asyncio.sleep(0.01)
        finally:
            probe.end(unit)
        if record_key == b"hot":
            hot_done += 1
        else:
            other_done += 1
            if other_done == other_total:
                hot_done_when_others_finished.append(hot_done)

    async with serving(broker, concurrency_limit=10, ordering="key"):
        await wait_until(lambda: probe.finished >= total, timeout=60)

    assert probe.violations == []
    assert probe.each_once(total)
    # Every other key was done while the hot key still had backlog.
    assert len(hot_done_when_others_finished) == 1
    assert hot_done_when_others_finished[0] < hot_total
    assert await committed_offsets(group, topic) == {0: total}
