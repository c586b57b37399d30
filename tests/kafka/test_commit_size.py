"""A commit of many partitions with full metadata, against the real broker: the broker
writes one OffsetCommit as one record batch to __consumer_offsets, bounded by its
message.max.bytes (1 MiB), so such a commit is sent in several requests."""

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from faststream_concurrent_aiokafka.engine.committer import split_commit
from tests.kafka_helpers import BOOTSTRAP, committed_metadata, create_topic, unique

pytestmark = pytest.mark.kafka

PARTITIONS = 300
METADATA = "m" * 4000  # under offset.metadata.max.bytes (4,096) per partition


async def test_a_commit_over_the_brokers_batch_limit_is_split_and_accepted() -> None:
    topic, group = unique("commit-size"), unique("commit-size-g")
    await create_topic(topic, PARTITIONS)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=BOOTSTRAP, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        offsets = {tp: OffsetAndMetadata(0, METADATA) for tp in partitions}
        # The premise: in one request, the broker refuses it (about 1.2 MB of records).
        with pytest.raises(KafkaError):
            await consumer.commit(offsets)

        requests = split_commit(offsets, group)
        for request in requests:  # as the committer sends them
            await consumer.commit(request)

        assert len(requests) > 1
        assert sum(len(request) for request in requests) == PARTITIONS
        assert await committed_metadata(group, topic) == dict.fromkeys(range(PARTITIONS), METADATA)
    finally:
        await consumer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
        await admin.start()
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()
