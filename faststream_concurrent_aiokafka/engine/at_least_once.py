"""At-least-once lanes (the default): a message's offset is committed after its processing
ended, by the batched consumer commits of ``committer``; whatever was not committed when a
partition moves runs again on its next reader.

The lane's side of it: where assigned partitions start (what a refused commit left behind,
what an earlier owner finished), what a release and a stop commit, and how a failed commit
is logged.
"""

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from faststream_concurrent_aiokafka.core.commit_policy import (
    CANCEL_GRACE_SEC,
    CommitDecision,
    final_commit_timeout,
)
from faststream_concurrent_aiokafka.core.health import Fault
from faststream_concurrent_aiokafka.engine.committer import (
    KafkaBatchCommitter,
    log_commit_failure,
    log_redelivery,
    uncommitted,
)
from faststream_concurrent_aiokafka.engine.finished_claims import load_finished_offsets
from faststream_concurrent_aiokafka.engine.runner import run_slot
from faststream_concurrent_aiokafka.engine.state import ConsumerLane, SlotBody


class AtLeastOnce:
    """The commit strategy of an at-least-once lane (see ``state.CommitStrategy``)."""

    def __init__(
        self, lane: ConsumerLane, committer: KafkaBatchCommitter, rejoin_sec: float
    ) -> None:
        self.slot_body: SlotBody = run_slot
        self.ramps_slots = True
        self.lane = lane
        self.committer = committer
        self._rejoin_sec = rejoin_sec

    def admissible(
        self, records: "Iterable[ConsumerRecord[Any, Any]]"
    ) -> "Iterable[ConsumerRecord[Any, Any]]":
        return records

    async def assign(self, assigned: set[TopicPartition]) -> None:
        """Commit what a refused commit left of partitions given back, and learn which
        messages an earlier owner already finished."""
        lane = self.lane
        if lane.offsets.awaiting_rejoin:
            await self.committer.recommit_after_rejoin(lane, assigned, self._rejoin_sec)
        if lane.settings.track_completed_offsets and assigned:
            await load_finished_offsets(lane, assigned)

    def owned(self, partitions: Iterable[TopicPartition]) -> set[TopicPartition]:
        trackers = self.lane.offsets.trackers
        return {tp for tp in partitions if tp in trackers}

    async def release(self, partitions: set[TopicPartition], timeout: float) -> None:
        """Commit the released partitions' finished work. A refused commit keeps it until the
        next assignment (``CommitDecision.AFTER_REJOIN``)."""
        lane = self.lane
        attempt = await self.committer.send(lane, partitions, timeout=timeout)
        if attempt.ok or attempt.decision is CommitDecision.DROP_UNASSIGNED:
            return
        kept = dict(uncommitted(lane, partitions))
        lane.offsets.awaiting_rejoin.update(kept)
        if kept:
            lane.log.warning(
                "%d revoked partition(s) of %s could not be committed (%s); their finished "
                "work is kept until the next assignment: committed then for the partitions "
                "this consumer gets back, read again by the new owner for the others",
                len(kept),
                lane.name,
                attempt.reason(),
            )

    def request_commits(self, *, interval_elapsed: bool) -> Callable[[], Awaitable[bool]]:
        # A complete batch sends a point that did not move only once its finished offsets grew
        # enough; the interval sends every change (see committer.collect_commit).
        return self._flush_on_interval if interval_elapsed else self._flush_on_batch

    async def _flush_on_interval(self) -> bool:
        return await self.flush(self.committer.commit_timeout_sec)

    async def _flush_on_batch(self) -> bool:
        return await self.flush(self.committer.commit_timeout_sec, every_change=False)

    async def flush(
        self,
        timeout: float,
        partitions: set[TopicPartition] | None = None,
        *,
        every_change: bool = True,
    ) -> bool:
        """One commit request, bounded by ``timeout``: aiokafka retries a commit for as long as
        no coordinator answers, so without a bound a lost broker would hold every commit (and
        the shutdown) forever. What a failure keeps and drops: ``core.commit_policy``."""
        attempt = await self.committer.send(
            self.lane, partitions, timeout=timeout, every_change=every_change
        )
        if not attempt.ok:
            log_commit_failure(self.lane, attempt, timeout)
        return attempt.ok

    async def close(self, deadline: float, cancelled: "list[asyncio.Task[None]]") -> None:
        """The final commit, once the cancelled messages ended (at most ``CANCEL_GRACE_SEC``),
        with what is left until ``deadline``; every partition it could not commit is logged
        with the offsets read again."""
        lane = self.lane
        if cancelled:
            await asyncio.wait(cancelled, timeout=CANCEL_GRACE_SEC)
        timeout = final_commit_timeout(deadline - asyncio.get_running_loop().time())
        attempt = await self.committer.send(lane, None, timeout=timeout)
        if not attempt.ok:
            for tp, tracker in uncommitted(lane):
                log_redelivery(lane, tp, tracker, f"the final commit failed, {attempt.reason()}")
        kept, lane.offsets.awaiting_rejoin = lane.offsets.awaiting_rejoin, {}
        for tp, tracker in kept.items():
            log_redelivery(lane, tp, tracker, "revoked while its commit was refused")

    def faults(self) -> Iterator[Fault]:
        return iter(())
