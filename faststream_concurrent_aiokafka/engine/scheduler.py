"""Admission, slots and settling: where a fetched record becomes a running message and where
a message's end moves its partition's commit point.

A record is admitted into its lane's offset tracking, then runs at once, waits for a slot or
is held behind an earlier message with the same key. A message *settles* once its processing
ended, one way or another: finished (success, or a failure the policy dealt with) or
cancelled (its offset then blocks the commit point). Settling frees its slot, which the same
task fills with the lane's next ready message when it can (see ``settle_and_take_next``).
Backpressure decisions come from ``core.backpressure``.
"""

import asyncio
import contextvars
import heapq
import itertools
from collections import deque
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from faststream_concurrent_aiokafka.compat import aiokafka as aiokafka_compat
from faststream_concurrent_aiokafka.core import backpressure
from faststream_concurrent_aiokafka.core.offsets import PartitionOffsets
from faststream_concurrent_aiokafka.core.settings import ConcurrencySettings
from faststream_concurrent_aiokafka.engine.committer import KafkaBatchCommitter
from faststream_concurrent_aiokafka.engine.retry_topic import read_back
from faststream_concurrent_aiokafka.engine.state import (
    AdmittedMessage,
    ConsumerLane,
    Tally,
)


class Scheduler:
    """Runs admitted messages within the global and per-lane limits; settles them."""

    def __init__(
        self,
        settings: ConcurrencySettings,
        *,
        lanes: dict[AIOKafkaConsumer, ConsumerLane],
        committer: KafkaBatchCommitter,
        tally: Tally,
    ) -> None:
        self._global_limit = settings.concurrency_limit
        self._max_uncommitted = settings.max_uncommitted_tasks
        self._lanes = lanes
        self._committer = committer
        self._tally = tally
        self._hungry: deque[ConsumerLane] = deque()
        self.running = 0
        # Bound methods made once, for every task (its done callback, its next message), and
        # the task's message looked up: nothing allocated per message for them.
        self._task_messages: dict[asyncio.Task[None], AdmittedMessage] = {}
        self._task_done = self._on_task_done
        self._take_next = self.settle_and_take_next
        # Waits for given messages to settle (rebalance, shutdown): a slot's task outlives them.
        self._settle_waiters: list[tuple[set[AdmittedMessage], asyncio.Future[None]]] = []
        self._over_budget = False
        # Messages waiting for their next attempt without a slot: (due, order, message) on a
        # heap, one timer for the earliest.
        self._due: list[tuple[float, int, AdmittedMessage]] = []
        self._due_order = itertools.count()
        self._due_timer: asyncio.TimerHandle | None = None
        # Lanes whose next slot tasks start after the ones just started had a step.
        self._ramps: dict[ConsumerLane, asyncio.Handle] = {}

    # ---- admission -------------------------------------------------------------------

    def admit(self, lane: ConsumerLane, records: "Iterable[ConsumerRecord[Any, Any]]") -> None:
        """Take fetched records: each runs now, waits for a slot, or is held behind its key.
        Slots are filled and the pause state refreshed once for all of them."""
        flow = lane.flow
        gate, ready = lane.gate, lane.ready
        # A fetch brings runs of records of one partition: its TopicPartition and tracker are
        # looked up once per run, not made again for every record.
        tp = TopicPartition("", -1)
        tracker: PartitionOffsets | None = None
        admitted = 0
        ordered = flow.ordered
        key = key_error = None
        retry_topic = lane.settings.retry_topic
        reading_back = False
        for record in records:
            if tracker is None or record.partition != tp.partition or record.topic != tp.topic:
                tp = TopicPartition(record.topic, record.partition)
                tracker = lane.offsets.tracker_for(tp)
                reading_back = tp.topic == retry_topic
            offset = record.offset
            if offset in tracker.already_done:
                self._skip_done(lane, tracker, offset)
                continue
            if not tracker.track(offset):
                continue  # delivered again while its first delivery is still on its way
            lane.offsets.add_tracked(1)
            admitted += 1
            if reading_back:
                message = AdmittedMessage(record, tp, offset, lane=lane, tracker=tracker, key=None)
                self._read_back(lane, message)
                continue
            if ordered:
                key, key_error = flow.key(record)
            message = AdmittedMessage(record, tp, offset, lane=lane, tracker=tracker, key=key)
            if key_error is not None:
                flow.key_errors[message] = key_error
            if key is None or gate.submit(message, key):
                ready.append(message)
        flow.took(admitted)
        self._start_ready(lane)
        self.refresh_pause(lane)

    def admit_batch(
        self, lane: ConsumerLane, records: "tuple[ConsumerRecord[Any, Any], ...]"
    ) -> None:
        """A ``batch=True`` subscriber's records run as one message and finish together."""
        positions = []
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            tracker = lane.offsets.tracker_for(tp)
            if tracker.track(record.offset):
                positions.append((tp, tracker, record.offset))
        if not positions:
            return  # every record delivered again while its first delivery is on its way
        lane.offsets.add_tracked(len(positions))
        lane.flow.took(len(positions))
        first_tp, first_tracker, first_offset = positions[0]
        message = AdmittedMessage(
            records, first_tp, first_offset, lane=lane, tracker=first_tracker, key=None
        )
        message.batch = tuple(positions)
        lane.ready.append(message)
        self._start_ready(lane)
        self.refresh_pause(lane)

    def _read_back(self, lane: ConsumerLane, message: AdmittedMessage) -> None:
        """A record of the lane's retry topic (unordered: no key): it waits for its due time
        without a slot, runs now, or is finished unrun when another group sent it."""
        wait = read_back(message)
        if wait is None:
            lane.counters.skipped += 1
            _finish(lane, message.tracker, message.offset)
            self._committer.notify_finished()
        elif wait > 0:
            self._wait_for_retry(message, wait)
        else:
            lane.ready.append(message)

    def _skip_done(self, lane: ConsumerLane, tracker: PartitionOffsets, offset: int) -> None:
        """An earlier owner finished this message (commit metadata said so): count it done."""
        lane.offsets.add_tracked(1 - tracker.skip(offset))
        lane.counters.skipped += 1
        self._committer.notify_finished()

    # ---- slots -----------------------------------------------------------------------

    def _start_ready(self, lane: ConsumerLane, burst: int = 1) -> None:
        """Start up to ``burst`` slot tasks for the lane's ready messages; if some are left,
        start twice as many once those tasks had their first step (``_ramp``).

        A slot's task takes the lane's next ready message itself when its message ends, so
        a task whose handlers never wait works through the whole backlog in one step: tasks
        are only added while the ones started before are all waiting (doubling, so a limit
        of 1,000 is reached in ten loop iterations), not one per ready message.
        """
        if lane.paused_by_app or lane in self._ramps:
            return
        limit = self._global_limit
        lane_limit = lane.flow.running_limit(lane.settings.concurrency_limit)
        brake = lane.brake
        if brake.tripped and brake.recovers:
            # Cooling down: nothing starts; then half-open: one message at a time is tried.
            if asyncio.get_running_loop().time() < brake.reopen_at:
                return
            lane_limit = 1
        if not lane.ramps_slots:
            burst = lane_limit
        ready = lane.ready
        while ready and len(lane.running) < lane_limit:
            if self.running >= limit:
                if not lane.hungry:
                    lane.hungry = True
                    self._hungry.append(lane)
                return
            if burst == 0:
                self._ramps[lane] = asyncio.get_running_loop().call_soon(self._ramp, lane)
                return
            burst -= 1
            message = ready.popleft()
            task = asyncio.create_task(
                lane.slot_body(message, self._take_next), context=lane.context.copy()
            )
            task.add_done_callback(self._task_done)
            self._occupy_slot(lane, message, task)

    def _ramp(self, lane: ConsumerLane) -> None:
        """The tasks started last have had their first step and messages are still ready:
        they wait (or run out of the lane's limit); start twice as many as are running."""
        del self._ramps[lane]
        self._start_ready(lane, burst=max(1, len(lane.running)))

    def _occupy_slot(
        self, lane: ConsumerLane, message: AdmittedMessage, task: "asyncio.Task[None]"
    ) -> None:
        lane.running.add(message)
        self.running += 1
        message.task = task
        self._task_messages[task] = message
        if lane.flow.adaptive is not None:
            lane.flow.started_running(message)

    def _serve_hungry(self) -> None:
        """Hand freed global slots to lanes that waited for one, in turn."""
        hungry = self._hungry
        while hungry and self.running < self._global_limit:
            lane = hungry.popleft()
            lane.hungry = False
            self._start_ready(lane)

    # ---- settling --------------------------------------------------------------------

    def settle_and_take_next(self, message: AdmittedMessage) -> AdmittedMessage | None:
        """A slot's task finished its message: settle it and hand the task the lane's next
        ready one, so one message's objects are freed just before the next one's are made and
        CPython's collector does not see the in-flight work pile up. Not while other lanes wait
        for a global slot, and not when the message left the task's context variables changed:
        the task ends instead, and every message starts from the lane's context."""
        task = message.task
        assert task is not None
        del self._task_messages[task]
        lane = message.lane
        self._settle(message, cancelled=False)
        following = None
        if (
            lane.ready
            and not lane.paused_by_app
            and not lane.brake.tripped
            and not self._hungry
            and len(lane.running) < lane.flow.running_limit(lane.settings.concurrency_limit)
            and self.running < self._global_limit
            and contextvars.copy_context() == lane.context
        ):
            following = lane.ready.popleft()
            self._occupy_slot(lane, following, task)
        self._after_settle(lane)
        return following

    def _on_task_done(self, task: "asyncio.Task[None]") -> None:
        """A slot's task ended. It settles its messages itself; one it still holds was
        cancelled, or its body raised."""
        message = self._task_messages.pop(task, None)
        if message is not None:
            self._settle(message, cancelled=task.cancelled())
            self._after_settle(message.lane)

    def _after_settle(self, lane: ConsumerLane) -> None:
        self._serve_hungry()
        self._start_ready(lane)
        self.refresh_pause(lane)

    def _settle(self, message: AdmittedMessage, *, cancelled: bool) -> None:
        """Free the message's slot and move its offsets: finished, or blocked if cancelled or
        to run again (then not counted: a failed attempt would count as a success), or left
        as they are while it waits for its next attempt (``_wait_for_retry``)."""
        lane = message.lane
        if lane.flow.adaptive is not None:
            failed = (
                cancelled
                or message.runs_again
                or message.error is not None
                or message.retry is not None
            )
            lane.flow.stopped_running(message, failed=failed, in_flight=len(lane.running))
        lane.running.discard(message)
        message.task = None
        self.running -= 1
        if message.retry is not None and not cancelled:
            self._wait_for_retry(message, message.retry.wait_sec)
            if self._settle_waiters:
                self._wake_settle_waiters(message)
            return
        if cancelled or message.runs_again:
            for _, tracker, offset in message.positions():
                tracker.block(offset)
        else:
            counters = lane.counters
            if message.error is not None:
                counters.failed += 1
            else:
                self._succeeded(lane)
            counters.processed += 1
            if message.batch is None:
                _finish(lane, message.tracker, message.offset)
            else:
                for _, tracker, offset in message.batch:
                    _finish(lane, tracker, offset)
            self._committer.notify_finished()
        if lane.flow.key_errors and not message.runs_again:
            lane.flow.key_errors.pop(message, None)
        self._release_key(lane, message)
        if self._settle_waiters:
            self._wake_settle_waiters(message)

    @staticmethod
    def _succeeded(lane: ConsumerLane) -> None:
        """A success; one tried after the brake's cooldown resumes the subscriber."""
        brake = lane.brake
        brake.succeeded += 1
        if (
            brake.tripped
            and brake.recovers
            and asyncio.get_running_loop().time() >= brake.reopen_at
        ):
            lane.log.warning(
                "Dead-letter brake of %s recovered: a message tried after the cooldown "
                "succeeded; processing resumes",
                lane.name,
            )
            brake.reset()
            lane.resume()

    @staticmethod
    def _release_key(lane: ConsumerLane, message: AdmittedMessage) -> None:
        """The next message of the key runs; one whose partition went away meanwhile is
        discarded, and the key passes on past it."""
        if message.key is not None:
            successor = lane.gate.release_past(message.key, _retired)
            if successor is not None:
                lane.ready.append(successor)

    # ---- retries waiting without a slot ------------------------------------------------

    def _wait_for_retry(self, message: AdmittedMessage, delay: float) -> None:
        """The message keeps its key (nothing behind it runs), its offsets (unfinished: the
        commit point stays below it, its uncommitted count stays) but not its slot."""
        message.lane.retry_waits(message)
        due = asyncio.get_running_loop().time() + delay
        heapq.heappush(self._due, (due, next(self._due_order), message))
        if self._due[0][2] is message:
            self._arm_due_timer()

    def _arm_due_timer(self) -> None:
        if self._due_timer is not None:
            self._due_timer.cancel()
            self._due_timer = None
        if self._due:
            loop = asyncio.get_running_loop()
            self._due_timer = loop.call_at(self._due[0][0], self._retries_due)

    def _retries_due(self) -> None:
        """Hand each message whose wait is over back to its lane, ahead of new records; one
        dropped meanwhile (revoked, stopped) is no longer waiting and is skipped."""
        self._due_timer = None
        due = self._due
        now = asyncio.get_running_loop().time()
        lanes: dict[ConsumerLane, None] = {}
        while due and due[0][0] <= now:
            message = heapq.heappop(due)[2]
            lane = message.lane
            if message in lane.waiting_retry:
                lane.retry_done_waiting(message)
                lanes[lane] = None
                if message.tracker.retired:
                    # Its partition went away: it is not run; the key passes on past it (to a
                    # message that then starts below).
                    if lane.flow.key_errors:
                        lane.flow.key_errors.pop(message, None)
                    self._release_key(lane, message)
                    continue
                lane.ready.appendleft(message)
        self._arm_due_timer()
        for lane in lanes:
            self._start_ready(lane)
            self.refresh_pause(lane)

    def cancel_retry_timer(self) -> None:
        """The engine stops: no waiting retry is handed back any more (they are read again)."""
        if self._due_timer is not None:
            self._due_timer.cancel()
            self._due_timer = None
        self._due.clear()

    def _wake_settle_waiters(self, message: AdmittedMessage) -> None:
        for messages, waiter in self._settle_waiters:
            messages.discard(message)
            if not messages and not waiter.done():
                waiter.set_result(None)

    async def wait_settled(self, messages: set[AdmittedMessage], timeout: float) -> None:
        """Until every one of ``messages`` settled, or ``timeout``."""
        if not messages:
            return
        entry = (set(messages), asyncio.get_running_loop().create_future())
        self._settle_waiters.append(entry)
        try:
            await asyncio.wait((entry[1],), timeout=timeout)
        finally:
            self._settle_waiters.remove(entry)

    # ---- paused by the application ----------------------------------------------------

    def pause_by_app(self, lane: ConsumerLane) -> None:
        """Start no new message and fetch nothing; running ones finish and are committed, the
        partitions stay assigned (the poll loop goes on polling)."""
        lane.paused_by_app = True
        lane.fetching.pause()

    def resume_by_app(self, lane: ConsumerLane) -> None:
        lane.paused_by_app = False
        self._start_ready(lane)
        self.refresh_pause(lane)

    # ---- backpressure ----------------------------------------------------------------

    def fetch_size(self, lane: ConsumerLane) -> int:
        """How many records the lane's next fetch may bring (no more than the rate allows)."""
        size = backpressure.fetch_size(
            lane_limit=lane.settings.concurrency_limit,
            lane_running=len(lane.running),
            lane_backlog=len(lane.ready),
            global_limit=self._global_limit,
            global_running=self.running,
            uncommitted_room=self._max_uncommitted - self._tally.count,
        )
        tokens = lane.flow.tokens()
        return size if tokens is None else max(1, min(size, tokens))

    async def wait_for_rate(self, lane: ConsumerLane) -> None:
        """Make the poll loop wait until ``max_messages_per_sec`` lets a message in: no pause,
        so nothing aiokafka fetched ahead is dropped. A wait past the wait budget (a rate under
        one message per budget) pauses instead, so the loop polls in time; a later token
        resumes it."""
        flow = lane.flow
        if flow.bucket is None or lane.closing:
            return
        budget = backpressure.wait_budget_sec(aiokafka_compat.max_poll_interval_ms(lane.consumer))
        if not await flow.wait_for_token(budget):
            lane.fetching.pause()
        elif lane.fetching.paused:
            self.refresh_pause(lane)

    async def wait_for_room(self, lane: ConsumerLane) -> None:
        """Make the consumer's poll loop wait while its backlog fills its limit: the cheapest
        backpressure, since a pause makes aiokafka drop and re-fetch the records it buffered.
        Past the wait budget pause instead, so the loop polls again in time."""
        limit = lane.settings.concurrency_limit
        if not backpressure.backlog_full(len(lane.ready), limit) or lane.closing:
            return
        room = lane.fetching.room = asyncio.get_running_loop().create_future()
        budget = backpressure.wait_budget_sec(aiokafka_compat.max_poll_interval_ms(lane.consumer))
        try:
            async with asyncio.timeout(budget):
                await room
        except TimeoutError:
            if backpressure.backlog_full(len(lane.ready), limit):
                lane.fetching.pause()
        finally:
            lane.fetching.room = None

    def refresh_pause(self, lane: ConsumerLane) -> None:
        """Wake a waiting poll loop once its backlog has room; pause when the uncommitted budget
        is spent; resume once the backlog halved and the budget has room again."""
        backlog = len(lane.ready)
        limit = lane.settings.concurrency_limit
        if backlog < limit:
            lane.fetching.wake()
        if backpressure.over_budget(self._tally.count, self._max_uncommitted):
            self._over_budget = True
            lane.fetching.pause()
        elif self._over_budget:
            # Back under budget: every lane paused only for the budget may fetch again.
            self._over_budget = False
            for other in self._lanes.values():
                if other.fetching.paused and backpressure.may_resume(
                    len(other.ready), other.settings.concurrency_limit
                ):
                    other.resume()
        elif lane.fetching.paused and backpressure.may_resume(backlog, limit):
            lane.resume()


def _retired(message: AdmittedMessage) -> bool:
    return message.tracker.retired


def _finish(lane: ConsumerLane, tracker: PartitionOffsets, offset: int) -> None:
    passed = tracker.finish(offset)
    if not tracker.retired:
        lane.offsets.add_tracked(-passed)
