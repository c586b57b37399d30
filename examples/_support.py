"""What the small examples share to run themselves against a broker: topics, producing,
reading back and the group's committed offsets. Not part of what a user copies."""

import os
import uuid
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def create_topics(bootstrap: str, names: Iterable[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1) for name in names])
    finally:
        await admin.close()


async def produce(
    bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes]]
) -> None:
    """Send (key, value) pairs; the key picks the partition, as in production."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def read_topic(
    bootstrap: str, topic: str, count: int, timeout_ms: int = 10_000
) -> "list[ConsumerRecord[bytes, bytes]]":
    """The first ``count`` records of ``topic`` (fewer if they do not arrive in time)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        while len(records) < count:
            batch = await consumer.getmany(timeout_ms=timeout_ms)
            if not batch:
                break
            for part in batch.values():
                records.extend(part)
    finally:
        await consumer.stop()
    return records


async def fully_committed(bootstrap: str, group: str, topic: str, partitions: int) -> bool:
    """The group's committed offsets are the topic's end offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return all([await consumer.committed(tp) == ends[tp] for tp in tps])
    finally:
        await consumer.stop()
