"""Background committer: sends each consumer's advanced commit points in batches.

Finished messages only bump a counter on the hot path; one commit request per consumer is
sent when ``commit_batch_size`` messages finished, when ``commit_batch_timeout_sec`` passed,
or when a flush is asked for (rebalance, shutdown).
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from aiokafka import TopicPartition

from faststream_concurrent_aiokafka.errors import CommitterIsDeadError
from faststream_concurrent_aiokafka.lane import ConsumerLane

logger = logging.getLogger("faststream_concurrent_aiokafka")


class KafkaBatchCommitter:
    """Commits the contiguous finished prefix of every tracked partition, batched."""

    def __init__(
        self,
        lanes: Callable[[], Iterable[ConsumerLane]],
        *,
        commit_batch_size: int,
        commit_batch_timeout_sec: float,
    ) -> None:
        self._lanes = lanes
        self._batch_size = commit_batch_size
        self._timeout = commit_batch_timeout_sec
        self._finished_since_commit = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.commit_requests = 0
        self.failed_commits = 0

    @property
    def is_alive(self) -> bool:
        return self._task is not None and not self._task.done()

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
        """One commit request for this consumer; False if Kafka refused it (kept for later)."""
        async with lane.commit_lock:
            batch = lane.prepare_commit(partitions)
            if not batch:
                return True
            self.commit_requests += 1
            try:
                await lane.consumer.commit(await batch.offsets())
            except Exception as exc:
                self.failed_commits += 1
                logger.warning(
                    "Commit of %d partition(s) for %s failed, will retry: %r",
                    len(batch),
                    lane.name,
                    exc,
                )
                return False
            batch.mark_committed()
            return True

    async def commit_all(self) -> None:
        """Flush now, whatever the batch size says."""
        self.check_alive()
        for lane in list(self._lanes()):
            await self.commit_lane(lane)

    async def close(self) -> None:
        """Stop the loop; the caller flushes what is left with ``commit_lane``."""
        if self._task is not None:
            self._task.cancel()
            # Bounded: a commit stuck on a dead connection must not hold up the shutdown.
            await asyncio.wait([self._task], timeout=5)
