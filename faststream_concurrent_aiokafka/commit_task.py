"""One admitted message (or batch): its place in Kafka, its ordering key and its task."""

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
        "batch",
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
        record: "ConsumerRecord[Any, Any] | tuple[ConsumerRecord[Any, Any], ...]",
        topic_partition: TopicPartition,
        offset: int,
        *,
        lane: "ConsumerLane",
        tracker: "PartitionOffsets",
        key: Hashable | None,
    ) -> None:
        self.record = record
        self.topic_partition = topic_partition
        self.offset = offset
        self.lane = lane
        # Held directly: after a revocation the lane's tracker for this partition is a new one.
        self.tracker = tracker
        self.key = key
        self.asyncio_task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        # For a batch, every record's place; None for a single message (the common case).
        self.batch: tuple[Position, ...] | None = None

    @property
    def consumer(self) -> AIOKafkaConsumer:
        return self.lane.consumer

    def positions(self) -> "tuple[Position, ...]":
        if self.batch is not None:
            return self.batch
        return ((self.topic_partition, self.tracker, self.offset),)

    def touches(self, partitions: set[TopicPartition]) -> bool:
        return any(tp in partitions for tp, _, _ in self.positions())

    def describe(self) -> str:
        """Where the message sits, for log lines."""
        tp = self.topic_partition
        where = f"{tp.topic}[{tp.partition}]@{self.offset}"
        if self.batch is not None:
            return f"batch of {len(self.batch)} from {where}"
        return where


Position = tuple[TopicPartition, "PartitionOffsets", int]
