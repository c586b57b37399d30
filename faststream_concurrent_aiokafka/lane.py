"""Per-consumer state: offsets by partition, work waiting for a slot, and pause state.

Each consumer gets its own lane because Kafka only accepts a consumer's commits for the
partitions assigned to that consumer, and pausing is per consumer too.
"""

import asyncio
import logging
from collections import deque
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from faststream_concurrent_aiokafka.commit_task import KafkaCommitTask
from faststream_concurrent_aiokafka.config import EffectiveOptions
from faststream_concurrent_aiokafka.offsets import PartitionOffsets
from faststream_concurrent_aiokafka.ordering import OrderingGate

logger = logging.getLogger("faststream_concurrent_aiokafka")


class ConsumerLane:
    """Everything kept for one consumer between admission and commit."""

    def __init__(self, consumer: AIOKafkaConsumer, subscriber: Any, options: EffectiveOptions):
        self.consumer = consumer
        self.subscriber = subscriber
        self.options = options
        self.trackers: dict[TopicPartition, PartitionOffsets] = {}
        self.gate: OrderingGate[KafkaCommitTask] = OrderingGate()
        self.ready: deque[KafkaCommitTask] = deque()
        self.running: set[KafkaCommitTask] = set()
        self.tracked = 0
        self.closing = False
        self.dead_letter_stuck: set[KafkaCommitTask] = set()
        self.hungry = False
        self.commit_lock = asyncio.Lock()
        self._paused: set[TopicPartition] | None = None

    @property
    def paused(self) -> bool:
        return self._paused is not None

    def tracker_for(self, topic_partition: TopicPartition) -> PartitionOffsets:
        tracker = self.trackers.get(topic_partition)
        if tracker is None:
            tracker = self.trackers[topic_partition] = PartitionOffsets()
        return tracker

    def retire(self, topic_partition: TopicPartition) -> None:
        """Forget a partition this consumer no longer owns; late results stay uncommitted."""
        tracker = self.trackers.pop(topic_partition, None)
        if tracker is not None:
            tracker.retired = True
            self.tracked -= tracker.pending_count

    def drop_waiting(self, partitions: set[TopicPartition] | None = None) -> int:
        """Discard admitted work that has not started; it stays uncommitted and is redelivered."""

        def matches(job: KafkaCommitTask) -> bool:
            return partitions is None or job.topic_partition in partitions

        kept = [job for job in self.ready if not matches(job)]
        dropped = len(self.ready) - len(kept)
        self.ready = deque(kept)
        return dropped + len(self.gate.drop(matches))

    def pause(self) -> None:
        """Stop fetching on every assigned partition; the poll loop keeps running."""
        if self._paused is not None:
            return
        self._paused = set()
        self.reapply_pause()

    def reapply_pause(self) -> None:
        """Pause state is lost on rebalance; pause whatever is assigned now."""
        if self._paused is None:
            return
        already = self.consumer.paused()
        targets = {tp for tp in self.consumer.assignment() if tp not in already}
        if targets:
            self.consumer.pause(*targets)
            self._paused |= targets
            logger.debug("Paused %d partition(s) of %s", len(targets), self.name)

    def resume(self) -> None:
        """Resume only what this library paused, leaving the user's own pauses alone."""
        if self._paused is None:
            return
        targets = self._paused & self.consumer.assignment()
        self._paused = None
        if targets:
            self.consumer.resume(*targets)
            logger.debug("Resumed %d partition(s) of %s", len(targets), self.name)

    def offsets_to_commit(
        self, partitions: set[TopicPartition] | None = None
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """Commit points that moved since the last commit, on partitions still assigned."""
        assignment = self.consumer.assignment()
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp, tracker in list(self.trackers.items()):
            if partitions is not None and tp not in partitions:
                continue
            if tp not in assignment:
                self.retire(tp)
            elif tracker.needs_commit and tracker.committable is not None:
                offsets[tp] = OffsetAndMetadata(tracker.committable, "")
        return offsets

    def mark_committed(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        for tp, committed in offsets.items():
            tracker = self.trackers.get(tp)
            if tracker is not None:
                tracker.committed = committed.offset

    @property
    def name(self) -> str:
        group = getattr(self.subscriber, "group_id", None) or "-"
        topics = ",".join(getattr(self.subscriber, "topic_names", []) or [])
        return f"group={group} topics={topics}"
