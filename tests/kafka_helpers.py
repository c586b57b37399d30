"""Helpers for tests against the real broker: topics, producing, committed offsets, waiting."""

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata
from faststream.kafka import KafkaBroker

from faststream_concurrent_aiokafka import (
    KafkaConcurrentProcessingMiddleware,
    stop_concurrent_processing,
)

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def create_topic(
    name: str,
    partitions: int,
    *,
    bootstrap: str = BOOTSTRAP,
    configs: dict[str, str] | None = None,
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs or {})])
    finally:
        await admin.close()


async def topics(*, bootstrap: str = BOOTSTRAP) -> set[str]:
    """Every topic the broker has (asking for all creates none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def produce(
    topic: str,
    values: Iterable[bytes],
    *,
    partitions: int,
    key: Callable[[int], bytes | None] = lambda _i: None,
    timestamp_ms: Callable[[int], int | None] = lambda _i: None,
    bootstrap: str = BOOTSTRAP,
) -> int:
    """Send values round-robin over partitions (``timestamp_ms(i)``: the i-th record's
    timestamp, None for now); returns how many were sent."""
    # Idempotence keeps each partition in send order even when a batch is retried.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, enable_idempotence=True)
    await producer.start()
    count = 0
    try:
        for i, value in enumerate(values):
            await producer.send(
                topic, value, key=key(i), partition=i % partitions, timestamp_ms=timestamp_ms(i)
            )
            count += 1
        await producer.flush()
    finally:
        await producer.stop()
    return count


async def _group_offsets(
    group: str, topic: str, bootstrap: str = BOOTSTRAP
) -> dict[int, OffsetAndMetadata]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta for tp, meta in offsets.items() if tp.topic == topic}


async def committed_offsets(
    group: str, topic: str, *, bootstrap: str = BOOTSTRAP
) -> dict[int, int]:
    """partition -> committed offset of ``group`` (absent when nothing was committed)."""
    offsets = await _group_offsets(group, topic, bootstrap)
    return {p: meta.offset for p, meta in offsets.items()}


async def committed_metadata(group: str, topic: str) -> dict[int, str]:
    """partition -> metadata stored with the committed offset."""
    return {p: meta.metadata for p, meta in (await _group_offsets(group, topic)).items()}


async def end_offsets(topic: str, partitions: int, *, bootstrap: str = BOOTSTRAP) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


async def read_all(topic: str, expected: int, timeout: float = 30.0) -> list[Record]:
    """Read ``expected`` records of ``topic`` from the beginning (key, value, headers)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest")
    await consumer.start()
    records: list[Record] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                records.extend((r.key, r.value, list(r.headers)) for r in recs)
    finally:
        await consumer.stop()
    return records


async def read_committed(
    topic: str, partitions: int, timeout: float = 30.0, *, bootstrap: str = BOOTSTRAP
) -> list[bytes]:
    """Every record of ``topic`` a ``read_committed`` reader sees: up to the last stable offset
    of each partition (call it once the producers ended their transactions)."""
    by_partition = await read_committed_by_partition(
        topic, partitions, timeout, bootstrap=bootstrap
    )
    return [value for values in by_partition.values() for value in values]


async def read_committed_by_partition(
    topic: str, partitions: int, timeout: float = 30.0, *, bootstrap: str = BOOTSTRAP
) -> dict[int, list[bytes]]:
    """``read_committed``'s values, by the partition they are in."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", auto_offset_reset="earliest"
    )
    await consumer.start()
    values: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)  # the last stable offsets, under read_committed
        deadline = time.monotonic() + timeout
        while True:
            positions = {tp: await consumer.position(tp) for tp in tps}
            if all(positions[tp] >= ends[tp] for tp in tps):
                return values
            if time.monotonic() > deadline:
                read = sum(map(len, values.values()))
                msg = f"read {read} records of {topic}, stopped at {positions} of {ends}"
                raise AssertionError(msg)
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                values[tp.partition] += [r.value for r in records if r.value]
    finally:
        await consumer.stop()


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 30.0, interval: float = 0.05
) -> None:
    """Poll ``condition`` until it holds; fail the test with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            msg = f"condition not met within {timeout} s"
            raise AssertionError(msg)
        await asyncio.sleep(interval)


def concurrent_broker(logger: logging.Logger | None = None) -> KafkaBroker:
    """A broker with the middleware registered (no per-message log lines unless ``logger``)."""
    broker = KafkaBroker(BOOTSTRAP, logger=logger)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    return broker


def hour_old_evens(i: int) -> int | None:
    """For ``produce``: the even records an hour old (``max_message_age_sec`` tests), the odd
    ones stamped now."""
    return int((time.time() - 3600) * 1000) if i % 2 == 0 else None


def numbers(count: int, start: int = 0) -> list[bytes]:
    """Message values b"start" .. b"start+count-1" (FastStream decodes them as ints)."""
    return [str(i).encode() for i in range(start, start + count)]


async def numbered_topic(prefix: str, count: int, partitions: int) -> tuple[str, str]:
    """A new topic holding the values ``numbers(count)`` over ``partitions``, and a new group."""
    topic, group = unique(prefix), unique(f"g-{prefix}")
    await create_topic(topic, partitions)
    await produce(topic, numbers(count), partitions=partitions)
    return topic, group


async def wait_committed(
    group: str,
    topic: str,
    expected: dict[int, int],
    timeout: float = 20.0,
    *,
    bootstrap: str = BOOTSTRAP,
) -> None:
    """Wait until ``group``'s committed offsets of ``topic`` are exactly ``expected``."""

    async def reached() -> bool:
        return await committed_offsets(group, topic, bootstrap=bootstrap) == expected

    try:
        await wait_until(reached, timeout=timeout, interval=0.2)
    except AssertionError:
        actual = await committed_offsets(group, topic, bootstrap=bootstrap)
        msg = f"committed offsets of {group} on {topic}: {actual}, expected {expected}"
        raise AssertionError(msg) from None


async def shut_down(broker: KafkaBroker) -> None:
    """Stop as an app does: the broker first (drains and commits), then the handler."""
    await broker.stop()
    await stop_concurrent_processing(broker.context)
