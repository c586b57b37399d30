"""The processing engine: admits messages, runs them as tasks within the limits, and keeps
every consumer's commit point behind the first unfinished message.

When a consumer has as much work waiting as it has slots, its poll loop is held until one
frees; held too long (so Kafka would see the consumer as stuck) it is paused instead and
resumed once the backlog halves. The uncommitted-work budget pauses too.
"""

import asyncio
import contextvars
import logging
import signal
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from faststream_concurrent_aiokafka.commit_task import KafkaCommitTask
from faststream_concurrent_aiokafka.committer import KafkaBatchCommitter
from faststream_concurrent_aiokafka.config import ConcurrencySettings, resolve_options
from faststream_concurrent_aiokafka.lane import ConsumerLane, Tally
from faststream_concurrent_aiokafka.offsets import PartitionOffsets
from faststream_concurrent_aiokafka.ordering import ordering_key
from faststream_concurrent_aiokafka.rebalance import KafkaConcurrentRebalanceListener
from faststream_concurrent_aiokafka.runner import NextJob, run_slot
from faststream_concurrent_aiokafka.subscriber_options import options_of

logger = logging.getLogger("faststream_concurrent_aiokafka")

# A loop held this long without a free slot gets its consumer paused: with work this slow
# the re-fetch after the resume costs little.
MAX_HOLD_SEC = 10.0

SlotRunner = Callable[[KafkaCommitTask, NextJob], Coroutine[Any, Any, None]]


class KafkaConcurrentHandler:
    """Owns the consumer lanes, the global concurrency limit and the batch committer."""

    def __init__(
        self, settings: ConcurrencySettings | None = None, run_slot: SlotRunner = run_slot
    ) -> None:
        self.settings = settings or ConcurrencySettings()
        self._run_slot = run_slot
        self._lanes: dict[AIOKafkaConsumer, ConsumerLane] = {}
        self._hungry: deque[ConsumerLane] = deque()
        self._running = 0
        self._tally = Tally()
        # Bound methods made once, for every task (its done callback, its next message), and
        # the task's job looked up: nothing allocated per message for them.
        self._task_jobs: dict[asyncio.Task[None], KafkaCommitTask] = {}
        self._task_done = self._on_task_done
        self._next_job = self._complete_and_take
        # Waits for given jobs to end (rebalance, shutdown): a slot's task outlives its job.
        self._settle_waiters: list[tuple[set[KafkaCommitTask], asyncio.Future[None]]] = []
        self._over_budget = False
        self.committer = KafkaBatchCommitter(
            self._lanes.values,
            commit_batch_size=self.settings.commit_batch_size,
            commit_batch_timeout_sec=self.settings.commit_batch_timeout_sec,
        )
        self.is_running = False
        self.signal_handlers: dict[signal.Signals, Any] = {}
        self.shutdown_task: asyncio.Future[None] | None = None
        self.processed = 0
        self.failed = 0
        self.skipped = 0
        self.setup_errors: list[Exception] = []

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self.committer.start()
        self.is_running = True

    @property
    def is_healthy(self) -> bool:
        return (
            self.is_running
            and self.committer.is_alive
            and not self.setup_errors
            and not any(lane.dead_letter_stuck for lane in self._lanes.values())
        )

    @property
    def in_flight(self) -> int:
        return self._running

    def create_rebalance_listener(self) -> KafkaConcurrentRebalanceListener:
        """A listener bound to this handler, for ``subscriber(..., listener=...)``."""
        return KafkaConcurrentRebalanceListener(handler=self)

    @property
    def lanes(self) -> list[ConsumerLane]:
        return list(self._lanes.values())

    def lanes_of(self, subscriber: object) -> list[ConsumerLane]:
        return [lane for lane in self._lanes.values() if lane.subscriber is subscriber]

    def lane_for(self, subscriber: object, consumer: AIOKafkaConsumer) -> ConsumerLane:
        lane = self._lanes.get(consumer)
        if lane is None or lane.subscriber is not subscriber:
            if lane is not None:
                lane.leave_tally()
            options = resolve_options(self.settings, options_of(subscriber))
            lane = self._lanes[consumer] = ConsumerLane(consumer, subscriber, options, self._tally)
        return lane

    # ---- admission -------------------------------------------------------------------

    def admit(self, lane: ConsumerLane, record: "ConsumerRecord[Any, Any]") -> None:
        """Take one fetched record (see ``admit_records``)."""
        self.admit_records(lane, (record,))

    def admit_records(
        self, lane: ConsumerLane, records: "Iterable[ConsumerRecord[Any, Any]]"
    ) -> None:
        """Take fetched records: each runs now, waits for a slot, or is held behind its key.
        Slots are filled and the pause state refreshed once for all of them."""
        if lane.closing or not self.is_running:
            # Not tracked, so never committed past: the next owner reads it again.
            return
        self.committer.check_alive()
        ordering = lane.options.ordering
        gate, ready = lane.gate, lane.ready
        # A fetch brings runs of records of one partition: its TopicPartition and tracker are
        # looked up once per run, not made again for every record.
        tp = TopicPartition("", -1)
        tracker: PartitionOffsets | None = None
        for record in records:
            if tracker is None or record.partition != tp.partition or record.topic != tp.topic:
                tp = TopicPartition(record.topic, record.partition)
                tracker = lane.tracker_for(tp)
            offset = record.offset
            if offset in tracker.already_done:
                self._skip_done(lane, tracker, offset)
                continue
            tracker.track(offset)
            lane.add_tracked(1)
            key = ordering_key(ordering, record.topic, record.partition, record.key)
            job = KafkaCommitTask(record, tp, offset, lane=lane, tracker=tracker, key=key)
            if gate.submit(job, key):
                ready.append(job)
        self._start_ready(lane)
        self._refresh_pause(lane)

    def admit_batch(
        self, lane: ConsumerLane, records: "tuple[ConsumerRecord[Any, Any], ...]"
    ) -> None:
        """A ``batch=True`` subscriber's records run as one task and finish together."""
        if lane.closing or not self.is_running or not records:
            return
        self.committer.check_alive()
        positions = []
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            tracker = lane.tracker_for(tp)
            tracker.track(record.offset)
            positions.append((tp, tracker, record.offset))
        lane.add_tracked(len(positions))
        first_tp, first_tracker, first_offset = positions[0]
        job = KafkaCommitTask(
            records, first_tp, first_offset, lane=lane, tracker=first_tracker, key=None
        )
        job.batch = tuple(positions)
        lane.ready.append(job)
        self._start_ready(lane)
        self._refresh_pause(lane)

    def _skip_done(self, lane: ConsumerLane, tracker: PartitionOffsets, offset: int) -> None:
        """An earlier owner finished this message (commit metadata said so): count it done."""
        tracker.track(offset)
        lane.add_tracked(1 - tracker.finish(offset))
        self.skipped += 1
        self.committer.notify_finished()

    def _start_ready(self, lane: ConsumerLane) -> None:
        limit = self.settings.concurrency_limit
        lane_limit = lane.options.concurrency_limit
        ready = lane.ready
        while ready and len(lane.running) < lane_limit:
            if self._running >= limit:
                if not lane.hungry:
                    lane.hungry = True
                    self._hungry.append(lane)
                return
            job = ready.popleft()
            task = asyncio.create_task(
                self._run_slot(job, self._next_job), context=lane.context.copy()
            )
            task.add_done_callback(self._task_done)
            self._occupy_slot(lane, job, task)

    def _occupy_slot(
        self, lane: ConsumerLane, job: KafkaCommitTask, task: "asyncio.Task[None]"
    ) -> None:
        lane.running.add(job)
        self._running += 1
        job.asyncio_task = task
        self._task_jobs[task] = job

    def _complete_and_take(self, job: KafkaCommitTask) -> KafkaCommitTask | None:
        """A slot's task finished its message: settle it and hand it the lane's next ready one,
        so one message's objects are freed just before the next one's are made and CPython's
        collector does not see the in-flight work pile up. Not while other lanes wait for a
        global slot, and not when the message left the task's context variables changed: the
        task ends instead, and every message starts from the lane's context."""
        task = job.asyncio_task
        assert task is not None
        del self._task_jobs[task]
        lane = job.lane
        self._settle(job, cancelled=False)
        following = None
        if (
            lane.ready
            and not self._hungry
            and len(lane.running) < lane.options.concurrency_limit
            and self._running < self.settings.concurrency_limit
            and contextvars.copy_context() == lane.context
        ):
            following = lane.ready.popleft()
            self._occupy_slot(lane, following, task)
        self._serve_hungry()
        self._start_ready(lane)
        self._refresh_pause(lane)
        return following

    def _on_task_done(self, task: "asyncio.Task[None]") -> None:
        """A slot's task ended. It settles its messages itself; one it still holds was
        cancelled, or its runner raised."""
        job = self._task_jobs.pop(task, None)
        if job is not None:
            self.complete(job, cancelled=task.cancelled())

    def complete(self, job: KafkaCommitTask, *, cancelled: bool) -> None:
        """A message's processing ended: update offsets, free its slot, start what waits."""
        self._settle(job, cancelled=cancelled)
        self._serve_hungry()
        self._start_ready(job.lane)
        self._refresh_pause(job.lane)

    def _settle(self, job: KafkaCommitTask, *, cancelled: bool) -> None:
        """Update offsets and free the message's slot; a cancelled message blocks its offset."""
        lane = job.lane
        lane.running.discard(job)
        job.asyncio_task = None
        self._running -= 1
        if cancelled:
            for _, tracker, offset in job.positions():
                tracker.block(offset)
        else:
            if job.error is not None:
                self.failed += 1
            self.processed += 1
            if job.batch is None:
                self._finish(lane, job.tracker, job.offset)
            else:
                for _, tracker, offset in job.batch:
                    self._finish(lane, tracker, offset)
            self.committer.notify_finished()
        if job.key is not None:
            successor = lane.gate.release(job.key)
            if successor is not None and not successor.tracker.retired:
                lane.ready.append(successor)
        if self._settle_waiters:
            self._wake_settle_waiters(job)

    def _wake_settle_waiters(self, job: KafkaCommitTask) -> None:
        for jobs, waiter in self._settle_waiters:
            jobs.discard(job)
            if not jobs and not waiter.done():
                waiter.set_result(None)

    @staticmethod
    def _finish(lane: ConsumerLane, tracker: PartitionOffsets, offset: int) -> None:
        passed = tracker.finish(offset)
        if not tracker.retired:
            lane.add_tracked(-passed)

    def _serve_hungry(self) -> None:
        """Hand freed global slots to lanes that waited for one, in turn."""
        hungry = self._hungry
        while hungry and self._running < self.settings.concurrency_limit:
            lane = hungry.popleft()
            lane.hungry = False
            self._start_ready(lane)

    # ---- backpressure ----------------------------------------------------------------

    def admission_room(self, lane: ConsumerLane) -> int:
        """How many records one fetch may bring: the free slots plus the room left in the
        backlog (so it never passes the limit), within the uncommitted budget; at least one."""
        limit = lane.options.concurrency_limit
        free = min(limit - len(lane.running), self.settings.concurrency_limit - self._running)
        room = max(0, free) + limit - len(lane.ready)
        budget_left = self.settings.max_uncommitted_tasks - self._tally.count
        return max(1, min(room, budget_left))

    async def wait_for_room(self, lane: ConsumerLane) -> None:
        """Hold the consumer's poll loop while its backlog fills its limit: the cheapest
        backpressure, since a pause makes aiokafka drop and re-fetch the records it buffered.
        Past the hold budget pause instead, so the loop polls again in time."""
        limit = lane.options.concurrency_limit
        if len(lane.ready) < limit or lane.closing:
            return
        room = lane.room = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(_hold_budget(lane.consumer)):
                await room
        except TimeoutError:
            if len(lane.ready) >= limit:
                lane.pause()
        finally:
            lane.room = None

    def _refresh_pause(self, lane: ConsumerLane) -> None:
        """Wake a held poll loop once its backlog has room; pause when the uncommitted budget
        is spent; resume once the backlog halved and the budget has room again."""
        backlog = len(lane.ready)
        limit = lane.options.concurrency_limit
        if backlog < limit:
            lane.wake_admission()
        if self._tally.count >= self.settings.max_uncommitted_tasks:
            self._over_budget = True
            lane.pause()
        elif self._over_budget:
            # Back under budget: every lane paused only for the budget may fetch again.
            self._over_budget = False
            for other in self._lanes.values():
                if other.paused and len(other.ready) <= other.options.concurrency_limit // 2:
                    other.resume()
        elif lane.paused and backlog <= limit // 2:
            lane.resume()

    # ---- rebalance and shutdown ------------------------------------------------------

    async def partitions_assigned(self, subscriber: object, assigned: set[TopicPartition]) -> None:
        """Re-apply pauses and learn which messages an earlier owner already finished."""
        consumer = _consumer_owning(subscriber, assigned)
        if consumer is None:
            return
        lane = self.lane_for(subscriber, consumer)
        lane.reapply_pause()
        if not lane.options.track_completed_offsets or not assigned:
            return
        try:
            committed = await consumer._coordinator.fetch_committed_offsets(assigned)
        except Exception as exc:
            logger.warning("Could not read commit metadata of %s: %r", lane.name, exc)
            return
        known = lane.load_already_done(committed)
        if known:
            logger.info(
                "%s: %d message(s) above the committed offsets were finished before; "
                "they will be skipped",
                lane.name,
                known,
            )

    async def release_partitions(
        self, lane: ConsumerLane, partitions: Iterable[TopicPartition], timeout: float
    ) -> None:
        """Before partitions move: let their running work finish, commit it, forget them."""
        revoked = {tp for tp in partitions if tp in lane.trackers}
        if not revoked:
            return
        dropped = lane.drop_waiting(revoked)
        await self._wait_running(lane, min(timeout, _flush_budget(lane.consumer)), revoked)
        await self.committer.commit_lane(lane, revoked)
        for tp in revoked:
            lane.retire(tp)
        logger.info(
            "Released %d partition(s) of %s (%d queued message(s) left for the next owner)",
            len(revoked),
            lane.name,
            dropped,
        )

    async def drain(self, lanes: Iterable[ConsumerLane], timeout: float) -> None:
        """Stop admitting, let running work finish up to ``timeout``, cancel the rest, commit."""
        lanes = list(lanes)
        for lane in lanes:
            lane.closing = True
            lane.pause()
            lane.drop_waiting()
        await asyncio.gather(*(self._wait_running(lane, timeout) for lane in lanes))
        leftovers = [job.asyncio_task for lane in lanes for job in lane.running if job.asyncio_task]
        for task in leftovers:
            task.cancel()
        if leftovers:
            logger.warning(
                "%d message(s) still running after %.1f s were cancelled and stay uncommitted",
                len(leftovers),
                timeout,
            )
            await asyncio.wait(leftovers, timeout=1.0)
        for lane in lanes:
            await self.committer.commit_lane(lane)

    async def _wait_running(
        self, lane: ConsumerLane, timeout: float, partitions: set[TopicPartition] | None = None
    ) -> None:
        """Until the running messages (of ``partitions``, if given) ended, or ``timeout``."""
        jobs = {job for job in lane.running if partitions is None or job.touches(partitions)}
        if not jobs:
            return
        entry = (jobs, asyncio.get_running_loop().create_future())
        self._settle_waiters.append(entry)
        try:
            await asyncio.wait((entry[1],), timeout=timeout)
        finally:
            self._settle_waiters.remove(entry)

    def forget(self, lanes: Iterable[ConsumerLane]) -> None:
        for lane in lanes:
            if self._lanes.pop(lane.consumer, None) is lane:
                lane.leave_tally()


def _hold_budget(consumer: AIOKafkaConsumer) -> float:
    """How long a full backlog may hold the poll loop: aiokafka counts the time outside its
    fetch calls against max_poll_interval_ms and leaves the group past it."""
    max_poll_interval = _private_timeout_sec(consumer, "_max_poll_interval_ms")
    return MAX_HOLD_SEC if max_poll_interval is None else min(max_poll_interval * 0.5, MAX_HOLD_SEC)


def _flush_budget(consumer: AIOKafkaConsumer) -> float:
    """Most of the consumer's rebalance timeout: past it Kafka rebalances without this member
    and the flush's commit is refused, so waiting longer only adds duplicates."""
    rebalance_timeout = _private_timeout_sec(consumer, "_rebalance_timeout_ms")
    return float("inf") if rebalance_timeout is None else rebalance_timeout * 0.6


def _private_timeout_sec(consumer: AIOKafkaConsumer, attribute: str) -> float | None:
    """A timeout the consumer keeps only privately (aiokafka 0.14), in seconds; None if absent."""
    value_ms = getattr(consumer, attribute, None)
    return value_ms / 1000 if isinstance(value_ms, int) else None


def _consumer_owning(subscriber: Any, assigned: set[TopicPartition]) -> AIOKafkaConsumer | None:
    """The subscriber's consumer that was just given ``assigned`` (several with max_workers)."""
    consumers = getattr(subscriber, "consumer_subgroup", None) or [subscriber.consumer]
    for consumer in consumers:
        if consumer is not None and assigned <= consumer.assignment():
            return consumer
    return None
