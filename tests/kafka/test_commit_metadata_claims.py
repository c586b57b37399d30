"""What the commit metadata of a group claims, against the real broker: claims of records that
do not exist yet are ignored, and a claim of 2**20 offsets costs bits, not megabytes."""

import asyncio
import logging
import resource
import tracemalloc
from pathlib import Path

import pytest
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.middlewares import AckPolicy

import faststream_concurrent_aiokafka
from faststream_concurrent_aiokafka import initialize_concurrent_processing
from faststream_concurrent_aiokafka.core.offset_codec import encode_finished_offsets
from tests.kafka_helpers import (
    BOOTSTRAP,
    committed_offsets,
    concurrent_broker,
    create_topic,
    end_offsets,
    produce,
    shut_down,
    unique,
    wait_until,
)

pytestmark = pytest.mark.kafka

LIBRARY_LOGGER = "faststream_concurrent_aiokafka"
SPAN = 1 << 20  # the most offsets a claim may name
HELD_MAX_BYTES = 5 << 20
PACKAGE = Path(faststream_concurrent_aiokafka.__file__).parent


async def commit_claim(group: str, topic: str, committed: int, claimed: range) -> str:
    """Commit ``committed`` for ``group`` with metadata claiming ``claimed`` finished, as any
    client allowed to commit for the group could; returns the metadata."""
    metadata = encode_finished_offsets(committed, claimed)
    # No auto-commit: its commit of the consumer's position on stop would replace ours.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=BOOTSTRAP, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.commit({tp: OffsetAndMetadata(committed, metadata)})
    finally:
        await consumer.stop()
    return metadata


def recording_subscriber(
    broker: KafkaBroker,
    topic: str,
    group: str,
    seen: list[int],
    listener: ConsumerRebalanceListener | None = None,
) -> None:
    @broker.subscriber(
        topic,
        group_id=group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        listener=listener,
    )
    async def handle(msg: KafkaMessage) -> None:
        raw = msg.raw_message
        assert not isinstance(raw, tuple)
        seen.append(raw.offset)


async def test_claims_beyond_the_end_are_ignored_and_later_records_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Offset 1 committed with a claim of 2..1000 while the partition ends at 3: offset 2 is
    skipped (a claim below the end cannot be told from a real one), the records produced
    after the assignment (3..7) run."""
    caplog.set_level(logging.WARNING, logger=LIBRARY_LOGGER)
    topic, group = unique("claims-end"), unique("g-claims-end")
    await create_topic(topic, 1)
    await produce(topic, [b"0", b"1", b"2"], partitions=1)
    await commit_claim(group, topic, 1, range(2, 1001))
    broker = concurrent_broker()
    seen: list[int] = []
    recording_subscriber(broker, topic, group, seen)
    handler = await initialize_concurrent_processing(
        broker.context, commit_batch_size=1, commit_batch_timeout_sec=0.1
    )
    try:
        await broker.start()
        await wait_until(lambda: 1 in seen, timeout=20)
        await produce(topic, [str(i).encode() for i in range(3, 8)], partitions=1)
        await wait_until(lambda: set(seen) >= set(range(3, 8)), timeout=20)
        await wait_until(lambda: _committed_at(group, topic, {0: 8}), timeout=20, interval=0.2)
    finally:
        await shut_down(broker)
    assert sorted(seen) == [1, 3, 4, 5, 6, 7]
    totals = handler.engine.counters
    assert (totals.claims_accepted, totals.claims_ignored) == (1, 998)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        f"{topic}[0] (committed offset 1) claims 998 offset(s) from 3 to 1000" in line
        for line in warnings
    ), warnings


async def _committed_at(group: str, topic: str, expected: dict[int, int]) -> bool:
    return await committed_offsets(group, topic) == expected


async def produce_empty_records(topic: str, count: int) -> None:
    """``count`` records without key or value, in large batches (a million take a second)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=BOOTSTRAP, max_batch_size=1_000_000, max_request_size=2_000_000
    )
    await producer.start()
    try:
        sent, acks = 0, []
        while sent < count:
            batch = producer.create_batch()
            while sent < count and batch.append(key=None, value=b"", timestamp=None) is not None:
                sent += 1
            acks.append(await producer.send_batch(batch, topic, partition=0))
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


def held_by_the_library(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes still allocated from the library's modules."""
    filters = [tracemalloc.Filter(True, f"{PACKAGE}/*")]
    return sum(stat.size for stat in snapshot.filter_traces(filters).statistics("filename"))


class Measure(ConsumerRebalanceListener):  # type: ignore[misc]
    """Called right after the library set an assignment up, before anything is fetched or
    committed: what the set-up holds then, and the process's RSS."""

    def __init__(self) -> None:
        self.held: int | None = None
        self.rss = 0

    async def on_partitions_revoked(self, revoked: object) -> None:
        del revoked

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if assigned and self.held is None:
            self.held = held_by_the_library(tracemalloc.take_snapshot())
            self.rss = rss_bytes()


def rss_bytes() -> int:
    with Path("/proc/self/statm").open() as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


async def test_a_claim_of_the_whole_span_costs_bits_not_megabytes() -> None:
    """A 14-character metadata string claims 2**20 offsets, every one below the partition's
    end: it is kept, as a bitmap of 128 KiB (as a set of ints it took some 64 MiB), and the
    claimed records are skipped."""
    topic, group = unique("claims-span"), unique("g-claims-span")
    await create_topic(topic, 1)
    total = SPAN + 10
    await produce_empty_records(topic, total)
    assert await end_offsets(topic, 1) == {0: total}
    metadata = await commit_claim(group, topic, 0, range(1, SPAN + 1))
    broker = concurrent_broker()
    seen: list[int] = []
    measure = Measure()
    recording_subscriber(broker, topic, group, seen, measure)
    # Set up before the start (broker=...): the library's listener runs before the test's.
    handler = await initialize_concurrent_processing(
        broker.context, broker=broker, commit_batch_size=100, commit_batch_timeout_sec=0.5
    )
    tracemalloc.start()
    rss_before = rss_bytes()
    try:
        await broker.start()
        await wait_until(lambda: measure.held is not None, timeout=30)
        tracemalloc.stop()
        ends = await end_offsets(topic, 1)
        await wait_until(lambda: _committed_at(group, topic, ends), timeout=60, interval=0.5)
    finally:
        tracemalloc.stop()
        await shut_down(broker)
        await _delete(topic)
    held = measure.held
    assert held is not None
    print(
        f"\nclaim of {SPAN} offsets in {len(metadata)} characters: the library held "
        f"{held / 1024:.0f} KiB after setting the assignment up; process RSS grew "
        f"{(measure.rss - rss_before) / 2**20:.1f} MiB from before the start (consumer "
        "connections and all)"
    )
    assert len(metadata) <= 20
    assert held < HELD_MAX_BYTES
    assert sorted(seen) == [0, *range(SPAN + 1, total)]
    assert handler.engine.counters.skipped == SPAN


async def _delete(topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()
