"""The aiokafka and FastStream seams that need a started client, against the real broker."""

import logging
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from faststream.kafka import KafkaBroker

from faststream_concurrent_aiokafka.compat import aiokafka as aiokafka_compat
from faststream_concurrent_aiokafka.compat import faststream as faststream_compat
from tests.kafka_helpers import BOOTSTRAP, numbered_topic

pytestmark = [pytest.mark.kafka, pytest.mark.smoke]


def library_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("faststream_concurrent") and r.levelno >= logging.WARNING
    ]


async def test_committed_offsets_come_back_with_their_metadata() -> None:
    topic, group = await numbered_topic("seam-commit", 10, 2)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=BOOTSTRAP, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer.getmany(timeout_ms=5000)
        first, second = TopicPartition(topic, 0), TopicPartition(topic, 1)
        await consumer.commit({first: OffsetAndMetadata(3, "fcak1:meta")})

        committed = await aiokafka_compat.fetch_committed_offsets(consumer, {first, second})
    finally:
        await consumer.stop()

    assert committed[first].offset == 3
    assert committed[first].metadata == "fcak1:meta"
    assert second not in committed  # nothing committed there yet


async def test_buffered_partitions_rotate_without_a_fallback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic, _ = await numbered_topic("seam-rotate", 40, 2)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    served: list[int] = []  # the partition of each batch, in turn
    received = 0
    try:
        with caplog.at_level(logging.WARNING):
            while received < 40:
                batches = await consumer.getmany(timeout_ms=5000, max_records=5)
                assert batches, "no records within 5 s"
                served += [tp.partition for tp in batches]
                received += sum(len(records) for records in batches.values())
                aiokafka_compat.rotate_buffered_partitions(consumer, batches)
    finally:
        await consumer.stop()

    assert library_warnings(caplog) == []
    # Both partitions were buffered together; rotation hands them out in turn.
    assert served[:4] in ([0, 1, 0, 1], [1, 0, 1, 0])


async def test_the_broker_s_producer_is_found_once_connected() -> None:
    broker = KafkaBroker(BOOTSTRAP, logger=None)
    subscriber: Any = broker.subscriber("seam-producer", group_id="g")
    async with broker:
        producer = faststream_compat.kafka_producer(subscriber)
        assert isinstance(producer, AIOKafkaProducer)


async def test_a_new_producer_of_an_id_reads_what_the_previous_one_committed() -> None:
    """What exactly-once's set-up relies on without ``require_stable`` (aiokafka 0.14 has
    none): a producer's start waits until the previous transaction of its id is complete, so
    the committed offset and metadata read right after are that transaction's; also when the
    previous producer was left behind with a transaction open (it is aborted then)."""
    topic, group = await numbered_topic("seam-eos", 1, 1)
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=group)
    await consumer.start()
    expected: tuple[int, str] | None = None
    try:
        for attempt in range(1, 21):
            producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, transactional_id=topic)
            await producer.start()
            committed = await aiokafka_compat.fetch_committed_offsets(consumer, {tp})
            seen = (committed[tp].offset, committed[tp].metadata) if tp in committed else None
            assert seen == expected, f"attempt {attempt}"
            await producer.begin_transaction()
            await producer.send_and_wait(topic, b"x", partition=0)
            offsets = {tp: OffsetAndMetadata(attempt, f"m{attempt}")}
            await producer.send_offsets_to_transaction(offsets, group)
            if attempt % 2:
                await producer.commit_transaction()
                expected = (attempt, f"m{attempt}")
            # Left behind without stopping (a crash): every other one with its transaction open.
            await aiokafka_compat.abandon_producer(producer)
    finally:
        await consumer.stop()
