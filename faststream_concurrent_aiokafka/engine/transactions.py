"""Exactly-once lanes (``processing_guarantee="exactly_once"``): every record a message
publishes goes into its input partition's open Kafka transaction, which also commits that
partition's commit point and the offsets finished above it.

One transactional producer per input partition (``core.transactions.transactional_id``):
aiokafka has no group-metadata fencing (KIP-447), so a member that takes a partition over
fences the previous owner's producer of it by starting its own. Per partition:

- **Set-up**, after each assignment, outside the rebalance callback (aiokafka heartbeats
  only once it returned): the partition is pinned paused, its producer starts (fencing the old
  owner and waiting out its last transaction), the committed offset and metadata are read,
  the consumer is moved there and the first transaction begins. Records fetched before are
  dropped and read again.
- **Publishing**: a message's first publish waits while a commit is under way, then *enters*
  the open transaction (``TransactionalSender``, found through ``CURRENT``).
- **Commit**, on the commit interval: the gate closes, the messages in the transaction finish
  (until its max open time), their records are flushed, then the offsets and the commit go
  out, and the next transaction begins.
- **Abort** (a message failed after publishing or ran past its max open time, a publish
  failed): the partition's waiting messages are dropped and its running ones can no longer
  publish, the transaction is aborted, and the partition read again from its last commit.
- **Lost** (fenced, or the producer broke or got no answer): its work is dropped and the
  member asks the group for a new assignment, the only moment a producer may start again
  without fencing a rightful new owner.

Every step is bounded: commits and aborts by ``commit_timeout_sec``, a transaction kept open
by its running messages by ``transaction_timeout_sec * OPEN_SHARE``, releases and stops by
their own budgets.
"""

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from functools import partial
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from faststream_concurrent_aiokafka.compat import aiokafka as aiokafka_compat
from faststream_concurrent_aiokafka.core import backpressure
from faststream_concurrent_aiokafka.core.commit_policy import final_commit_timeout
from faststream_concurrent_aiokafka.core.health import Fault
from faststream_concurrent_aiokafka.core.settings import ConcurrencySettings
from faststream_concurrent_aiokafka.core.transaction_state import TransactionState
from faststream_concurrent_aiokafka.core.transactions import admissible_below
from faststream_concurrent_aiokafka.engine.committer import describe_error
from faststream_concurrent_aiokafka.engine.partition_transaction import PartitionTransaction
from faststream_concurrent_aiokafka.engine.state import AdmittedMessage, ConsumerLane, SlotBody
from faststream_concurrent_aiokafka.engine.transactional_runner import run_transactional_slot


class LaneTransactions:
    """The exactly-once partitions of one lane: admission, set-up, commits and release; the
    commit strategy of an exactly-once lane (see ``state.CommitStrategy``)."""

    def __init__(self, lane: ConsumerLane, settings: ConcurrencySettings) -> None:
        self.slot_body: SlotBody = partial(run_transactional_slot, self.partition_of)
        # A task for every ready message at once: an abort runs a transaction's messages
        # again together; started one by one, messages failing for good were seen aborting
        # each other's dead letters for ever (test_a_failure_after_publishing_counts_...).
        self.ramps_slots = False
        self.lane = lane
        self.settings = settings
        self.partitions: dict[TopicPartition, PartitionTransaction] = {}
        # The first offset fetched of partitions with no transaction yet (read again later).
        self._dropped: dict[TopicPartition, int] = {}
        self._set_up: asyncio.Task[None] | None = None

    def partition_of(self, message: AdmittedMessage) -> PartitionTransaction | None:
        """The transaction ``message`` runs in, None if its partition was reset or released
        since it was admitted."""
        partition = self.partitions.get(message.topic_partition)
        return partition if partition is not None and partition.runs(message) else None

    # ---- admission ----------------------------------------------------------------------

    def admissible(
        self, records: "Iterable[ConsumerRecord[Any, Any]]"
    ) -> "list[ConsumerRecord[Any, Any]]":
        """The fetched records that may be admitted now: those of partitions whose transaction
        is ready, and within ``MAX_SPAN`` above their commit point. The rest are dropped and
        read again: a partition that reached the span's end is moved back and paused until
        its commit point moved on."""
        lane = self.lane
        taken: list[ConsumerRecord[Any, Any]] = []
        tp = TopicPartition("", -1)
        partition: PartitionTransaction | None = None
        limit = 0
        cut = False
        for record in records:
            if record.partition != tp.partition or record.topic != tp.topic:
                tp = TopicPartition(record.topic, record.partition)
                partition = self.partitions.get(tp)
                cut = False
                if partition is not None and partition.running and partition.cut_at is None:
                    tracker = lane.offsets.trackers.get(tp)
                    point = None if tracker is None else tracker.commit_point
                    limit = admissible_below(point, record.offset)
                else:
                    self._note_dropped(tp, record.offset)
                    cut = True
            if cut:
                continue
            if record.offset >= limit:
                assert partition is not None
                partition.cut_at = record.offset
                lane.fetching.pin(tp)
                lane.consumer.seek(tp, record.offset)
                cut = True
                continue
            taken.append(record)
        return taken

    def _note_dropped(self, tp: TopicPartition, offset: int) -> None:
        known = self._dropped.get(tp)
        if known is None or offset < known:
            self._dropped[tp] = offset

    # ---- rebalance ----------------------------------------------------------------------

    async def assign(self, assigned: set[TopicPartition]) -> None:
        """Partitions were assigned: pin them paused and set them up in the background (the
        rebalance callback returns at once, so aiokafka heartbeats meanwhile)."""
        lane = self.lane
        fresh = {tp for tp in assigned if tp not in self.partitions}
        if not fresh or lane.closing:
            return  # a rejoin that completes while the lane stops: nothing is set up
        lane.fetching.pin(*fresh)
        for tp in fresh:
            self.partitions[tp] = PartitionTransaction(self.lane, self.settings, tp)
        previous = self._set_up
        self._set_up = asyncio.create_task(
            self._set_up_guarded(fresh, previous), name=f"exactly-once set-up of {lane.name}"
        )

    async def _set_up_guarded(
        self, fresh: set[TopicPartition], previous: "asyncio.Task[None] | None"
    ) -> None:
        try:
            await self._set_up_partitions(fresh, previous)
        except Exception as exc:  # a bug must not leave the partitions pinned for good
            self.lane.log.exception("Setting up %s failed unexpectedly", self.lane.name)
            for tp in fresh:
                partition = self.partitions.get(tp)
                if partition is not None and not partition.running:
                    await partition.lose(f"its set-up failed ({describe_error(exc)})", exc)

    async def _set_up_partitions(
        self, fresh: set[TopicPartition], previous: "asyncio.Task[None] | None"
    ) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        lane = self.lane
        budget = min(
            self.settings.rebalance_flush_timeout_sec,
            backpressure.flush_budget_sec(aiokafka_compat.rebalance_timeout_ms(lane.consumer)),
        )
        partitions = [self.partitions[tp] for tp in fresh if tp in self.partitions]
        started = await asyncio.gather(*(p.start_producer(budget) for p in partitions))
        live = [
            p
            for p, ok in zip(partitions, started, strict=True)
            if ok and p.state is TransactionState.STARTING
        ]
        if not live:
            return
        try:
            async with asyncio.timeout(budget):
                committed = await aiokafka_compat.fetch_committed_offsets(
                    lane.consumer, [p.tp for p in live]
                )
                starts = {}
                for p in live:
                    if p.tp not in committed:
                        starts[p.tp] = await lane.consumer.position(p.tp)
        except Exception as exc:  # TimeoutError included
            for p in live:
                await p.lose(f"its committed offset was not read ({describe_error(exc)})", exc)
            return
        skipped = 0
        for p in live:
            if p.state is not TransactionState.STARTING:  # lost, or released meanwhile
                continue
            start = starts.get(p.tp)
            dropped = self._dropped.pop(p.tp, None)
            if start is not None and dropped is not None:
                start = min(start, dropped)
            skipped += await p.set_up(committed.get(p.tp), start)
        if skipped:
            lane.log.info(
                "%s: %d message(s) above the committed offsets were finished before; "
                "they will be skipped",
                lane.name,
                skipped,
            )

    def owned(self, partitions: Iterable[TopicPartition]) -> set[TopicPartition]:
        trackers, mine = self.lane.offsets.trackers, self.partitions
        return {tp for tp in partitions if tp in trackers or tp in mine}

    async def release(self, partitions: set[TopicPartition], timeout: float) -> None:
        """Partitions move (rebalance) or the lane stops: each commits its transaction (or
        aborts it, when a message in it still runs), and closes its producer."""
        leaving = [self.partitions.pop(tp) for tp in list(self.partitions) if tp in partitions]
        for partition in leaving:
            partition.releasing()
        task = self._set_up
        if task is not None and not task.done() and not self.partitions:
            task.cancel()
            await asyncio.wait([task])
        if leaving:
            results = await asyncio.gather(*(p.release(timeout) for p in leaving))
            failed = [p for p, ok in zip(leaving, results, strict=True) if not ok]
            for partition in failed:
                point = partition.committed_point
                self.lane.log.info(
                    "%s released without a commit of its last transaction: its messages "
                    "from %s on run again",
                    partition.name,
                    "the committed offset" if point is None else f"offset {point}",
                )
        for tp in partitions:
            self._dropped.pop(tp, None)

    # ---- commits ------------------------------------------------------------------------

    def request_commits(self, *, interval_elapsed: bool) -> Callable[[], Awaitable[bool]] | None:
        """Each partition commits its own transaction in the background, when due."""
        for partition in self.partitions.values():
            if partition.due(interval_elapsed=interval_elapsed):
                partition.start_job()
        return None

    async def flush(self, timeout: float, partitions: set[TopicPartition] | None = None) -> bool:
        """Commit every partition's transaction now (offsets commit only inside them, so
        ``partitions`` does not narrow it)."""
        del partitions
        results = await asyncio.gather(
            *(p.commit_now(timeout) for p in self.partitions.values() if p.running)
        )
        return all(results)

    async def close(self, deadline: float, cancelled: "list[asyncio.Task[None]]") -> None:
        """Every partition ends its transaction (committed, or aborted when a message in it
        still runs) and closes its producer; cancelled messages are not waited for."""
        del cancelled
        timeout = final_commit_timeout(deadline - asyncio.get_running_loop().time())
        await self.release(set(self.partitions), timeout)

    def faults(self) -> Iterator[Fault]:
        for partition in list(self.partitions.values()):
            fault = partition.fault or partition.abort_fault()
            if fault is not None:
                yield fault
