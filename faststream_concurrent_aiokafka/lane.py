"""Per-consumer state: offsets by partition, work waiting for a slot, and pause state.

Each consumer gets its own lane because Kafka only accepts a consumer's commits for the
partitions assigned to that consumer, and pausing is per consumer too.
"""

import asyncio
import contextvars
import logging
from collections import deque
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from faststream_concurrent_aiokafka.commit_task import KafkaCommitTask
from faststream_concurrent_aiokafka.config import EffectiveOptions
from faststream_concurrent_aiokafka.offset_codec import (
    MetadataDecodeError,
    decode_finished_offsets,
    encode_finished_offsets,
)
from faststream_concurrent_aiokafka.offsets import PartitionOffsets
from faststream_concurrent_aiokafka.ordering import OrderingGate
from faststream_concurrent_aiokafka.runner import CommitGuard

logger = logging.getLogger("faststream_concurrent_aiokafka")


class Tally:
    """Messages admitted and not yet passed by a commit point, over all of a handler's lanes:
    kept as they change, since the uncommitted budget is checked for every message."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class ConsumerLane:
    """Everything kept for one consumer between admission and commit."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        subscriber: Any,
        options: EffectiveOptions,
        tally: Tally | None = None,
    ) -> None:
        self.consumer = consumer
        self.subscriber = subscriber
        self.options = options
        self.trackers: dict[TopicPartition, PartitionOffsets] = {}
        self.gate: OrderingGate[KafkaCommitTask] = OrderingGate()
        self.ready: deque[KafkaCommitTask] = deque()
        self.running: set[KafkaCommitTask] = set()
        self.tracked = 0
        self.tally = tally or Tally()
        # Set while the consumer's poll loop waits for backlog room (see wait_for_room).
        self.room: asyncio.Future[None] | None = None
        self.closing = False
        self.dead_letter_stuck: set[KafkaCommitTask] = set()
        self.commit_guard = CommitGuard(consumer)
        self.hungry = False
        self.commit_lock = asyncio.Lock()
        # What every message task of this lane starts from (a copy each): the context the lane
        # was made in, FastStream's poll loop or rebalance listener, never a handler's.
        self.context = contextvars.copy_context()
        self._paused: set[TopicPartition] | None = None

    def add_tracked(self, delta: int) -> None:
        self.tracked += delta
        self.tally.count += delta

    def leave_tally(self) -> None:
        """This lane is dropped from its handler: its backlog stops counting against the
        handler's budget, whatever happens to its remaining work."""
        self.tally.count -= self.tracked
        self.tally = Tally()
        self.tally.count = self.tracked

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
            self.add_tracked(-tracker.pending_count)

    def drop_waiting(self, partitions: set[TopicPartition] | None = None) -> int:
        """Discard admitted work that has not started; it stays uncommitted and is redelivered."""

        def matches(job: KafkaCommitTask) -> bool:
            # A batch spanning a partition that stays is kept: dropping it would strand its
            # other records below that partition's commit point.
            return partitions is None or all(tp in partitions for tp, _, _ in job.positions())

        kept = [job for job in self.ready if not matches(job)]
        dropped = len(self.ready) - len(kept)
        self.ready = deque(kept)
        dropped += len(self.gate.drop(matches))
        self.wake_admission()
        return dropped

    def wake_admission(self) -> None:
        """Let a poll loop held for backlog room go on."""
        room = self.room
        if room is not None and not room.done():
            room.set_result(None)

    def pause(self) -> None:
        """Stop fetching on every assigned partition; the poll loop keeps polling."""
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
        if self._paused is None or self.closing:
            return
        targets = self._paused & self.consumer.assignment()
        self._paused = None
        if targets:
            self.consumer.resume(*targets)
            logger.debug("Resumed %d partition(s) of %s", len(targets), self.name)

    def prepare_commit(self, partitions: set[TopicPartition] | None = None) -> "CommitBatch":
        """Commit points (with finished offsets above them) that changed since the last commit,
        on partitions still assigned."""
        assignment = self.consumer.assignment()
        track = self.options.track_completed_offsets
        batch = CommitBatch()
        for tp, tracker in list(self.trackers.items()):
            if partitions is not None and tp not in partitions:
                continue
            if tp not in assignment:
                self.retire(tp)
                continue
            if track:
                point = tracker.commit_point
                if point is None or (
                    point == tracker.committed and not tracker.changed_since_commit
                ):
                    continue
                batch.add(tp, tracker, point, tracker.finished_above())
            elif tracker.needs_commit and tracker.committable is not None:
                batch.add(tp, tracker, tracker.committable, frozenset())
        return batch

    def load_already_done(self, committed: dict[TopicPartition, OffsetAndMetadata]) -> int:
        """Start fresh trackers that skip what an earlier owner finished; returns the count."""
        known = 0
        for tp, meta in committed.items():
            current = self.trackers.get(tp)
            if current is not None and current.pending_count:
                continue  # still working on it in this process: its own state is newer
            done = decode_metadata(tp, meta)
            if done:
                self.retire(tp)
                self.trackers[tp] = PartitionOffsets(done)
                known += len(done)
        return known

    @property
    def name(self) -> str:
        group = getattr(self.subscriber, "group_id", None) or "-"
        topics = ",".join(getattr(self.subscriber, "topic_names", []) or [])
        return f"group={group} topics={topics}"


# Above this many finished offsets, encoding (zlib, several tries) can take milliseconds:
# it runs in a worker thread so the event loop keeps serving messages and heartbeats.
_ENCODE_INLINE_MAX = 256


class CommitBatch:
    """One commit request: commit points, the finished offsets above them, and the tracker
    versions they were taken at."""

    __slots__ = ("_taken",)

    def __init__(self) -> None:
        self._taken: list[tuple[TopicPartition, PartitionOffsets, int, frozenset[int], int]] = []

    def __bool__(self) -> bool:
        return bool(self._taken)

    def __len__(self) -> int:
        return len(self._taken)

    def add(
        self, tp: TopicPartition, tracker: PartitionOffsets, point: int, finished: frozenset[int]
    ) -> None:
        self._taken.append((tp, tracker, point, finished, tracker.version))

    async def offsets(self) -> dict[TopicPartition, OffsetAndMetadata]:
        """The request body, with each partition's finished offsets encoded as metadata."""
        offsets = {}
        for tp, _, point, finished, _ in self._taken:
            if len(finished) > _ENCODE_INLINE_MAX:
                metadata = await asyncio.to_thread(encode_finished_offsets, point, finished)
            else:
                metadata = encode_finished_offsets(point, finished) if finished else ""
            offsets[tp] = OffsetAndMetadata(point, metadata)
        return offsets

    def mark_committed(self) -> None:
        for _, tracker, point, _, version in self._taken:
            tracker.committed = point
            tracker.committed_version = version


def decode_metadata(tp: TopicPartition, meta: OffsetAndMetadata) -> frozenset[int]:
    """Finished offsets stored with a commit; anything not ours is ignored with a warning."""
    if not meta.metadata:
        return frozenset()
    try:
        return decode_finished_offsets(meta.metadata, meta.offset)
    except MetadataDecodeError as exc:
        logger.warning("Ignoring commit metadata of %s[%d]: %s", tp.topic, tp.partition, exc)
        return frozenset()
