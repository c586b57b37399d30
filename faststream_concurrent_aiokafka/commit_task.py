"""One admitted message: its place in Kafka, its ordering key and its asyncio task."""

import asyncio
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

if TYPE_CHECKING:
    from faststream_concurrent_aiokafka.lane import ConsumerLane
    from faststream_concurrent_aiokafka.offsets import PartitionOffsets


class KafkaCommitTask:
    """A message from admission to commit; ``error`` is set when its processing failed."""

    __slots__ = (
        "asyncio_task",
        "error",
        "key",
        "lane",
        "offset",
        "record",
        "topic_partition",
        "tracker",
    )

    def __init__(
        self,
        record: "ConsumerRecord[Any, Any]",
        topic_partition: TopicPartition,
        lane: "ConsumerLane",
        tracker: "PartitionOffsets",
        key: Hashable | None,
    ) -> None:
        self.record = record
        self.topic_partition = topic_partition
        self.offset: int = record.offset
        self.lane = lane
        # Held directly: after a revocation the lane's tracker for this partition is a new one.
        self.tracker = tracker
        self.key = key
        self.asyncio_task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    @property
    def consumer(self) -> AIOKafkaConsumer:
        return self.lane.consumer

    def describe(self) -> str:
        """Where the message sits, for log lines."""
        return f"{self.record.topic}[{self.record.partition}]@{self.offset}"
