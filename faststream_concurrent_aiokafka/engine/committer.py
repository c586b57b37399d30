"""Everything about commits: which commit points to send, their metadata, sending them in
batches, and reading the finished offsets back when partitions are assigned.

Finished messages only bump a counter on the hot path; one commit request per consumer is
sent when ``commit_batch_size`` messages finished, when ``commit_batch_timeout_sec`` passed,
or when a flush is asked for (rebalance, shutdown). Each partition's commit point is its
tracker's ``commit_point``: the first admitted offset not finished yet.
"""

import asyncio
import contextlib
from collections.abc import Callable, Iterable

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from faststream_concurrent_aiokafka.compat import aiokafka as aiokafka_compat
from faststream_concurrent_aiokafka.core.errors import CommitterIsDeadError
from faststream_concurrent_aiokafka.core.offset_codec import (
    MetadataDecodeError,
    decode_finished_offsets,
    encode_finished_offsets,
)
from faststream_concurrent_aiokafka.core.offsets import PartitionOffsets
from faststream_concurrent_aiokafka.engine.state import ConsumerLane

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


def collect_commit(
    lane: ConsumerLane, partitions: set[TopicPartition] | None = None
) -> CommitBatch:
    """The commit points (with finished offsets above them) that changed since the last commit,
    on partitions still assigned; partitions no longer assigned are retired instead."""
    assignment = lane.consumer.assignment()
    track = lane.options.track_completed_offsets
    batch = CommitBatch()
    for tp, tracker in list(lane.trackers.items()):
        if partitions is not None and tp not in partitions:
            continue
        if tp not in assignment:
            lane.retire(tp)
            continue
        point = tracker.commit_point
        if point is not None and (tracker.needs_commit or (track and tracker.changed_since_commit)):
            batch.add(tp, tracker, point, tracker.finished_above() if track else frozenset())
    return batch


class KafkaBatchCommitter:
    """Commits the commit points of every lane's partitions, batched, in the background."""

    def __init__(
        self,
        lanes: Callable[[], Iterable[ConsumerLane]],
        *,
        commit_batch_size: int,
        commit_batch_timeout_sec: float,
        commit_timeout_sec: float = 10.0,
    ) -> None:
        self._lanes = lanes
        self._batch_size = commit_batch_size
        self._timeout = commit_batch_timeout_sec
        self._commit_timeout = commit_timeout_sec
        self._finished_since_commit = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.commit_requests = 0
        self.failed_commits = 0

    @property
    def is_alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def error(self) -> BaseException | None:
        """What the background task died of (None while alive, or if it was cancelled)."""
        task = self._task
        if task is None or not task.done() or task.cancelled():
            return None
        return task.exception()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="kafka-batch-committer")

    def check_alive(self) -> None:
        """Raise if the background task died: nothing would be committed any more."""
        task = self._task
        if task is not None and task.done():
            cause = None if task.cancelled() else task.exception()
            msg = "the Kafka batch committer is not running; offsets can no longer be committed"
            raise CommitterIsDeadError(msg) from cause

    def notify_finished(self, count: int = 1) -> None:
        """Called for each finished message; wakes the loop once a batch is complete."""
        self._finished_since_commit += count
        if self._finished_since_commit >= self._batch_size:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timeout):
                    await self._wake.wait()
            self._wake.clear()
            self._finished_since_commit = 0
            for lane in list(self._lanes()):
                await self.commit_lane(lane)

    async def commit_lane(
        self, lane: ConsumerLane, partitions: set[TopicPartition] | None = None
    ) -> bool:
        """One commit request for this consumer; False if Kafka refused it or it timed out
        (kept for later).

        Bounded by ``commit_timeout_sec``: aiokafka retries a commit for as long as no
        coordinator answers, so without a bound a lost broker would hold every lane's commits
        (and the shutdown) forever. A request cut off this way may still land later; it only
        carries a commit point that was valid when it was sent.
        """
        async with lane.commit_lock:
            batch = collect_commit(lane, partitions)
            if not batch:
                return True
            self.commit_requests += 1
            lane.counters.commit_requests += 1
            offsets = await batch.offsets()
            try:
                async with asyncio.timeout(self._commit_timeout):
                    await lane.consumer.commit(offsets)
            except Exception as exc:
                self._failed(lane, len(batch), exc)
                return False
            lane.commit_failures_in_a_row = 0
            lane.last_commit_error = None
            batch.mark_committed()
            return True

    def _failed(self, lane: ConsumerLane, partitions: int, error: Exception) -> None:
        if isinstance(error, TimeoutError):
            error = TimeoutError(f"no answer within commit_timeout_sec={self._commit_timeout:g}")
        self.failed_commits += 1
        lane.counters.failed_commits += 1
        lane.commit_failures_in_a_row += 1
        lane.last_commit_error = error
        lane.log.warning(
            "Commit of %d partition(s) for %s failed (%d in a row), will retry: %r",
            partitions,
            lane.name,
            lane.commit_failures_in_a_row,
            error,
        )

    async def close(self) -> None:
        """Stop the loop; the caller flushes what is left with ``commit_lane``."""
        if self._task is not None:
            self._task.cancel()
            # Bounded: a commit stuck on a dead connection must not hold up the shutdown.
            await asyncio.wait([self._task], timeout=5)


async def load_finished_offsets(lane: ConsumerLane, assigned: set[TopicPartition]) -> int:
    """Read the commit metadata of newly assigned partitions and start trackers that skip what
    an earlier owner finished; returns how many messages will be skipped."""
    try:
        committed = await aiokafka_compat.fetch_committed_offsets(lane.consumer, assigned)
    except Exception as exc:
        lane.log.warning("Could not read commit metadata of %s: %r", lane.name, exc)
        return 0
    known = 0
    for tp, meta in committed.items():
        current = lane.trackers.get(tp)
        if current is not None and current.pending_count:
            continue  # still working on it in this process: its own state is newer
        done = _decode_metadata(lane, tp, meta)
        if done:
            lane.retire(tp)
            lane.trackers[tp] = PartitionOffsets(done)
            known += len(done)
    return known


def _decode_metadata(
    lane: ConsumerLane, tp: TopicPartition, meta: OffsetAndMetadata
) -> frozenset[int]:
    """Finished offsets stored with a commit; anything not ours is ignored with a warning."""
    if not meta.metadata:
        return frozenset()
    try:
        return decode_finished_offsets(meta.metadata, meta.offset)
    except MetadataDecodeError as exc:
        lane.log.warning("Ignoring commit metadata of %s[%d]: %s", tp.topic, tp.partition, exc)
        return frozenset()
