"""The engine's state: admitted messages, the lane each belongs to, and what runs them.

The types refer to each other (a message knows its lane, a lane holds its messages), so they
share this module. Each consumer gets its own lane because Kafka only accepts a consumer's
commits for the partitions assigned to that consumer, and pausing is per consumer too.
"""

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable, Iterator
from typing import Any, NamedTuple, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from faststream_concurrent_aiokafka.core.dead_letter_brake import DeadLetterBrake
from faststream_concurrent_aiokafka.core.failure_policy import AttemptRecord, FailurePolicy
from faststream_concurrent_aiokafka.core.health import Fault
from faststream_concurrent_aiokafka.core.offsets import PartitionOffsets
from faststream_concurrent_aiokafka.core.ordering import OrderingGate
from faststream_concurrent_aiokafka.core.retry_topic import WaitingCap
from faststream_concurrent_aiokafka.core.settings import ExceptionText, SubscriberSettings
from faststream_concurrent_aiokafka.engine.flow_control import LaneFlow

Log = logging.Logger | logging.LoggerAdapter[Any]
"""Where a lane's lines go; message lines carry ``topic``, ``partition`` and ``offset`` extras."""


class Pipeline(Protocol):
    """What runs a lane's messages. The engine hands it every admitted message and asks it how
    a failure reads; it never needs to know the framework behind it."""

    @property
    def owner(self) -> object:
        """Whose messages these are (a FastStream subscriber); compared by identity only."""

    @property
    def name(self) -> str:
        """For log lines: the consumer group and topics."""

    @property
    def group(self) -> str:
        """The consumer group, for metrics ("" without one)."""

    @property
    def topics(self) -> tuple[str, ...]:
        """The subscribed topics (or pattern), for metrics."""

    @property
    def policy(self) -> FailurePolicy:
        """How an attempt's exception reads."""

    def settings(self) -> SubscriberSettings:
        """The settings the next lane made for this pipeline runs with."""

    def logger(self) -> Log:
        """Where the lines of the next lane made for this pipeline go."""

    def process(self, record: Any) -> Awaitable[Any]:
        """The message's whole processing. A failed attempt raises, or sets the message's
        ``attempt_error`` and returns (FastStream's pipeline does, so that FastStream does not
        log every attempt as an error)."""

    async def dead_letter(
        self,
        topic: str,
        record: Any,
        error: BaseException | None,
        attempts: int,
        exception_text: ExceptionText | None,
    ) -> None:
        """Publish the message to ``topic`` and wait for the broker's acknowledgement;
        ``exception_text`` writes the error's text into the dead letter."""

    async def publish_retry(
        self, topic: str, record: Any, headers: list[tuple[str, bytes]]
    ) -> None:
        """Publish the record's key and value with ``headers`` to the retry topic and wait for
        the broker's acknowledgement."""

    def stop_requested(self, error: BaseException) -> None:
        """The handler asked to stop consuming (``Outcome.STOP``)."""

    def transactional_producer(self, transactional_id: str, timeout_ms: int) -> AIOKafkaProducer:
        """A new, unstarted producer with this transactional id, connected as the pipeline's
        publishes are, into which the messages of an exactly-once lane publish."""


class CommitStrategy(Protocol):
    """How a lane's work gets committed: at-least-once (``engine.at_least_once``) or
    exactly-once (``engine.transactions``), chosen once when the lane is made. The engine's
    shared modules call only this; none of them asks which guarantee a lane has."""

    @property
    def slot_body(self) -> "SlotBody":
        """What runs each of the lane's messages in a slot."""

    @property
    def ramps_slots(self) -> bool:
        """Whether slot tasks start only as the ones started before wait (a task works
        through the ready messages itself meanwhile), rather than one per ready message."""

    def admissible(
        self, records: "Iterable[ConsumerRecord[Any, Any]]"
    ) -> "Iterable[ConsumerRecord[Any, Any]]":
        """The fetched records that may be admitted now (the others are read again)."""

    async def assign(self, assigned: set[TopicPartition]) -> None:
        """Partitions were assigned: learn where each starts (in the background, or now)."""

    def owned(self, partitions: Iterable[TopicPartition]) -> set[TopicPartition]:
        """Those of ``partitions`` whose work this lane keeps: a release has to end it."""

    async def release(self, partitions: set[TopicPartition], timeout: float) -> None:
        """Partitions move (rebalance): commit their finished work within ``timeout``."""

    def request_commits(self, *, interval_elapsed: bool) -> "Callable[[], Awaitable[bool]] | None":
        """The committer's tick: start what commits in the background, and return the commit
        the committer awaits in turn, if any."""

    async def flush(self, timeout: float, partitions: set[TopicPartition] | None = None) -> bool:
        """Commit now (``partitions``, or all) within ``timeout``; False if it failed."""

    async def close(self, deadline: float, cancelled: "list[asyncio.Task[None]]") -> None:
        """The lane stops: commit what finished by the loop time ``deadline``, once its
        ``cancelled`` tasks ended, and log what runs again."""

    def faults(self) -> Iterator[Fault]:
        """What is wrong with its commits now, for health."""


TakeNext = Callable[["AdmittedMessage"], "AdmittedMessage | None"]
SlotBody = Callable[["AdmittedMessage", TakeNext], Coroutine[Any, Any, None]]
"""A slot task's body: runs its message, then each one ``TakeNext`` hands it after that."""


Position = tuple[TopicPartition, PartitionOffsets, int]


class AdmittedMessage:
    """A message (or a batch) from admission until its processing ended.

    ``error`` is set when its processing failed; ``task`` while a slot runs it;
    ``attempt_error`` by a pipeline that reports a failed attempt instead of raising it;
    ``attempt`` is the number (from 1) of the attempt running now; ``retry`` how far its
    attempts went while it waits for the next one outside a slot (``attempts.LaneAttempts``).
    """

    __slots__ = (
        "attempt",
        "attempt_error",
        "batch",
        "error",
        "key",
        "lane",
        "offset",
        "record",
        "retry",
        "runs_again",
        "task",
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
        tracker: PartitionOffsets,
        key: Hashable | None,
    ) -> None:
        self.record = record
        self.topic_partition = topic_partition
        self.offset = offset
        self.lane = lane
        # Held directly: after a revocation the lane's tracker for this partition is a new one.
        self.tracker = tracker
        self.key = key
        self.task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.attempt_error: BaseException | None = None
        self.attempt = 0
        # Exactly-once: its attempt ended with its transaction's abort (or its partition's
        # loss); it runs again, so this run is neither finished nor counted.
        self.runs_again = False
        self.retry: AttemptRecord | None = None
        # For a batch, every record's place; None for a single message (the common case).
        self.batch: tuple[Position, ...] | None = None

    def positions(self) -> tuple[Position, ...]:
        if self.batch is not None:
            return self.batch
        return ((self.topic_partition, self.tracker, self.offset),)

    def touches(self, partitions: set[TopicPartition]) -> bool:
        return any(tp in partitions for tp, _, _ in self.positions())

    def log_extra(self) -> dict[str, Any]:
        """Where the message sits, as log record fields."""
        tp = self.topic_partition
        return {"topic": tp.topic, "partition": tp.partition, "offset": self.offset}

    def describe(self) -> str:
        """Where the message sits, for log lines."""
        tp = self.topic_partition
        where = f"{tp.topic}[{tp.partition}]@{self.offset}"
        if self.batch is not None:
            return f"batch of {len(self.batch)} from {where}"
        return where


class CommitGuard:
    """What a running message's handler gets as its consumer: commits and seeks are dropped.

    A handler's own ``commit()`` would commit every assigned partition's position and a
    ``seek()`` would re-read; with other messages in flight either would commit past or
    re-read unfinished work. The committer alone moves the commit point.
    """

    __slots__ = ("_consumer",)

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer

    async def commit(self, *_args: Any, **_kwargs: Any) -> None:
        return None

    def seek(self, *_args: Any, **_kwargs: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


class Tally:
    """Messages admitted and not yet passed by a commit point, over all of an engine's lanes:
    kept as they change, since the uncommitted budget is checked for every message."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class Counters:
    """Running totals of one pipeline (subscriber), bumped where things happen, read by health
    and metrics; its lanes share them."""

    __slots__ = (
        "assignments",
        "claims_accepted",
        "claims_ignored",
        "commit_requests",
        "dead_lettered",
        "expired",
        "failed",
        "failed_commits",
        "pauses",
        "processed",
        "producers_fenced",
        "rebalances",
        "resumes",
        "retries",
        "retry_topic_sent",
        "revocations",
        "skipped",
        "stalls",
        "task_timeouts",
        "transactions_aborted",
        "transactions_committed",
    )

    def __init__(self) -> None:
        self.processed = 0  # messages whose processing ended, failed ones included
        self.failed = 0  # ended with an error: dead-lettered, or given up without a topic
        self.dead_lettered = 0  # published to the dead-letter topic (acknowledged)
        self.skipped = 0  # finished by an earlier owner, per the commit metadata
        self.claims_accepted = 0  # offsets commit metadata claimed finished, below the end
        self.claims_ignored = 0  # ... at or beyond the partition's end: ignored
        self.expired = 0  # not run, older than max_message_age_sec, without a dead-letter topic
        self.retries = 0  # failed attempts that were tried again
        self.retry_topic_sent = 0  # handed to the retry topic (acknowledged), finished here
        self.task_timeouts = 0  # attempts cancelled by task_timeout_sec
        self.stalls = 0  # messages seen running longer than stall_warning_sec
        self.commit_requests = 0
        self.failed_commits = 0  # refused by Kafka, or timed out
        self.pauses = 0  # a lane paused its partitions (backpressure, drain)
        self.resumes = 0
        self.rebalances = 0  # assignments a lane's consumer received
        self.assignments = 0  # partitions assigned to a lane
        self.revocations = 0  # partitions released by a lane
        self.transactions_committed = 0  # exactly-once: transactions committed with output
        self.transactions_aborted = 0  # exactly-once: aborted, their messages run again
        self.producers_fenced = 0  # exactly-once: another member took a partition over


class CommitStatus:
    """How a lane's commit requests went, whichever guarantee sent them: the one place a
    commit request and a failed one are counted."""

    __slots__ = ("_counters", "failures_in_a_row", "last_error")

    def __init__(self, counters: Counters) -> None:
        self._counters = counters
        self.failures_in_a_row = 0  # refused or timed out since the last one that went through
        self.last_error: BaseException | None = None

    def requested(self) -> None:
        self._counters.commit_requests += 1

    def failed(self, error: BaseException) -> None:
        self._counters.failed_commits += 1
        self.failures_in_a_row += 1
        self.last_error = error

    def succeeded(self) -> None:
        self.failures_in_a_row = 0
        self.last_error = None


class Faults:
    """Faults that last until cleared or until the processing stops (a subscriber whose
    handler stopped it, ...): set where they happen, read by health. A fault that ends by
    itself is better read from state where health gathers them (``monitor.current_faults``)."""

    __slots__ = ("_current",)

    def __init__(self) -> None:
        self._current: dict[Hashable, Fault] = {}

    def set(self, key: Hashable, fault: Fault) -> None:
        self._current[key] = fault

    def clear(self, key: Hashable) -> None:
        self._current.pop(key, None)

    def __iter__(self) -> Iterator[Fault]:
        return iter(list(self._current.values()))


class Fetching:
    """What a lane's consumer may fetch: the pause this library set (backpressure, a stop),
    the partitions pinned paused whatever backpressure decides, the poll loop's wait for
    backlog room, and the error of the last fetch."""

    __slots__ = ("_consumer", "_counters", "_log", "_name", "_paused", "error", "pinned", "room")

    def __init__(self, consumer: AIOKafkaConsumer, counters: Counters, log: Log, name: str) -> None:
        self._consumer = consumer
        self._counters = counters
        self._log = log
        self._name = name
        self._paused: set[TopicPartition] | None = None
        # Partitions kept paused whatever backpressure decides (see ``pin``).
        self.pinned: set[TopicPartition] = set()
        # Set while the consumer's poll loop waits for backlog room (see wait_for_room).
        self.room: asyncio.Future[None] | None = None
        # The error of the consumer's last fetch, None once one succeeded.
        self.error: BaseException | None = None

    @property
    def paused(self) -> bool:
        return self._paused is not None

    def wake(self) -> None:
        """Let a poll loop waiting for backlog room go on."""
        room = self.room
        if room is not None and not room.done():
            room.set_result(None)

    def pause(self) -> None:
        """Stop fetching on every assigned partition; the poll loop keeps polling."""
        if self._paused is not None:
            return
        self._paused = set()
        self._counters.pauses += 1
        self.reapply()

    def reapply(self) -> None:
        """Pause state is lost on rebalance; pause whatever is assigned now."""
        if self._paused is None:
            return
        consumer = self._consumer
        already = consumer.paused()
        targets = {tp for tp in consumer.assignment() if tp not in already}
        if targets:
            consumer.pause(*targets)
            self._paused |= targets
            self._log.debug("Paused %d partition(s) of %s", len(targets), self._name)

    def pin(self, *partitions: TopicPartition) -> None:
        """Keep ``partitions`` paused whatever backpressure decides (an exactly-once partition
        whose transaction is not ready); assigned ones are paused now."""
        self.pinned.update(partitions)
        assigned = self._consumer.assignment()
        targets = [tp for tp in partitions if tp in assigned]
        if targets:
            self._consumer.pause(*targets)

    def unpin(self, *partitions: TopicPartition) -> None:
        """Let pinned partitions fetch again, unless the lane itself is paused now (they
        resume with it then)."""
        self.pinned.difference_update(partitions)
        targets = set(partitions) & self._consumer.assignment()
        if not targets:
            return
        if self._paused is not None:
            self._paused |= targets
        else:
            self._consumer.resume(*targets)

    def resume(self) -> None:
        """Resume only what this library paused, leaving the user's own pauses alone."""
        if self._paused is None:
            return
        targets = (self._paused - self.pinned) & self._consumer.assignment()
        self._paused = None
        self._counters.resumes += 1
        if targets:
            self._consumer.resume(*targets)
            self._log.debug("Resumed %d partition(s) of %s", len(targets), self._name)


class Offsets:
    """A lane's offsets: a tracker per partition it reads, how many of its messages no commit
    point passed yet (its own count and the engine's ``Tally``), what a refused commit keeps
    until the rejoin, and how its commit requests went."""

    __slots__ = (
        "awaiting_rejoin",
        "changed",
        "commit_lock",
        "commits",
        "tally",
        "tracked",
        "trackers",
    )

    def __init__(self, tally: Tally, counters: Counters) -> None:
        self.trackers: dict[TopicPartition, PartitionOffsets] = {}
        # The trackers that changed since the last commit tick took them (``take_changed``):
        # one commit tick costs the partitions that changed, not all that are assigned.
        self.changed: dict[TopicPartition, PartitionOffsets] = {}
        self.tracked = 0
        self.tally = tally
        # Revoked partitions whose last commit was refused: kept until the next assignment,
        # which commits those given back (see ``KafkaBatchCommitter.recommit_after_rejoin``).
        self.awaiting_rejoin: dict[TopicPartition, PartitionOffsets] = {}
        self.commit_lock = asyncio.Lock()
        self.commits = CommitStatus(counters)

    def add_tracked(self, delta: int) -> None:
        self.tracked += delta
        self.tally.count += delta

    def tracker_for(self, topic_partition: TopicPartition) -> PartitionOffsets:
        tracker = self.trackers.get(topic_partition)
        if tracker is None:
            tracker = self.install(topic_partition, PartitionOffsets())
        return tracker

    def install(
        self, topic_partition: TopicPartition, tracker: PartitionOffsets
    ) -> PartitionOffsets:
        """Make ``tracker`` the partition's, listed as changed from now on (and at once)."""
        self.trackers[topic_partition] = tracker
        tracker.listen(self.changed, topic_partition)
        return tracker

    def take_changed(self) -> list[tuple[TopicPartition, PartitionOffsets]]:
        """The current trackers that changed since the last call, unlisted until they change
        again (``relist`` puts back those a failed commit carried)."""
        taken = []
        for tp, tracker in self.changed.items():
            tracker.listed = False
            if self.trackers.get(tp) is tracker:
                taken.append((tp, tracker))
        self.changed.clear()
        return taken

    def relist(self, trackers: Iterable[PartitionOffsets]) -> None:
        """List again the trackers a commit took but Kafka did not acknowledge."""
        for tracker in trackers:
            if not tracker.listed:
                tracker.mark_changed()

    def retire(self, topic_partition: TopicPartition) -> None:
        """Drop the tracker of a partition this consumer no longer owns; late results of its
        messages stay uncommitted."""
        tracker = self.trackers.pop(topic_partition, None)
        if tracker is not None:
            tracker.retired = True
            self.add_tracked(-tracker.pending_count)

    def retire_from_tally(self) -> None:
        """The lane is retired from its engine: its backlog stops counting against the
        engine's budget, whatever happens to its remaining work."""
        self.tally.count -= self.tracked
        self.tally = Tally()
        self.tally.count = self.tracked


class Dropped(NamedTuple):
    """What a lane handed back uncommitted (read again by the partition's next owner)."""

    queued: int  # admitted, not started
    retries: int  # failed, waiting for their next attempt

    def plus(self, other: "Dropped") -> "Dropped":
        return Dropped(self.queued + other.queued, self.retries + other.retries)


class ConsumerLane:
    """Everything kept for one consumer between admission and commit, in named parts: what
    its subscriber is (``pipeline``, ``settings``, ``policy``, ``brake``, ``counters``), its
    messages (``gate``, ``ready``, ``running``), its ``offsets``, its ``fetching`` and its
    commit ``strategy``."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        pipeline: Pipeline,
        settings: SubscriberSettings,
        *,
        tally: Tally | None = None,
        counters: Counters | None = None,
        faults: Faults | None = None,
        brake: DeadLetterBrake | None = None,
        strategy: "Callable[[ConsumerLane], CommitStrategy]",
    ) -> None:
        # The subscriber: what runs its messages and how.
        self.consumer = consumer
        self.pipeline = pipeline
        self.log = pipeline.logger()
        self.process: Callable[[Any], Awaitable[Any]] = pipeline.process  # bound once
        self.settings = settings
        # The pipeline's control exceptions plus the subscriber's errors not worth retrying.
        self.policy = pipeline.policy.with_no_retry(settings.no_retry_on)
        # Shared by every lane of the same pipeline: the brake stops the whole subscriber.
        self.brake = brake or DeadLetterBrake(
            max_consecutive_failures=settings.max_consecutive_failures,
            max_failure_ratio=settings.max_failure_ratio,
            failure_ratio_window=settings.failure_ratio_window,
            cooldown_sec=settings.brake_cooldown_sec,
        )
        self.counters = counters or Counters()
        self.faults = faults or Faults()
        self.commit_guard = CommitGuard(consumer)
        # What every message task of this lane starts from (a copy each): the context the lane
        # was made in, FastStream's poll loop or rebalance listener, never a handler's.
        self.context = contextvars.copy_context()
        # Its messages: behind their key, ready for a slot, running; and its admission.
        self.gate: OrderingGate[AdmittedMessage] = OrderingGate()
        # The ordering key function, the rate limit and the adaptive limit.
        self.flow = LaneFlow(settings)
        self.ready: deque[AdmittedMessage] = deque()
        self.running: set[AdmittedMessage] = set()
        self.dead_letter_stuck: set[AdmittedMessage] = set()
        # Expiry's log throttle (``expiry``): per partition, its last line and expired since.
        self.expiry_lines: dict[TopicPartition, tuple[float, int]] = {}
        # Failed, waiting for their next attempt without a slot (the scheduler's timers).
        self.waiting_retry: set[AdmittedMessage] = set()
        # Of those, how many per retry-topic partition (retry_topic_max_waiting); a full one is
        # pinned paused, so the records behind stay in Kafka (``retry_waits``).
        self.retry_cap: WaitingCap[TopicPartition] = WaitingCap(settings.retry_topic_max_waiting)
        self.hungry = False  # waits for a global slot (``Scheduler``)
        self.closing = False  # admission closed: takes no new messages
        # Paused by the application (pause_processing): starts and fetches nothing new.
        self.paused_by_app = False
        self.offsets = Offsets(tally or Tally(), self.counters)
        self.fetching = Fetching(consumer, self.counters, self.log, pipeline.name)
        # How the lane commits, and what runs its messages (bound once: read per message).
        self.strategy = strategy(self)
        self.slot_body: SlotBody = self.strategy.slot_body
        self.ramps_slots = self.strategy.ramps_slots

    @property
    def name(self) -> str:
        return self.pipeline.name

    def drop_waiting(self, partitions: set[TopicPartition] | None = None) -> "Dropped":
        """Discard admitted work that has not started, and the waiting retries; it stays
        uncommitted and is redelivered (a retry starts its attempts again from one)."""

        def matches(message: AdmittedMessage) -> bool:
            # A batch spanning a partition that stays is kept: dropping it would strand its
            # other records below that partition's commit point.
            return partitions is None or all(tp in partitions for tp, _, _ in message.positions())

        kept = [message for message in self.ready if not matches(message)]
        dropped_ready = [message for message in self.ready if matches(message)]
        self.ready = deque(kept)
        # A message waiting for a retry holds its key as a ready one does; it is read again.
        retrying = [message for message in self.waiting_retry if matches(message)]
        for message in retrying:
            self.retry_done_waiting(message)
        queued = len(dropped_ready) + len(self.gate.drop(matches))
        dropped_ready += retrying
        gate = self.gate
        if self.flow.key_errors:  # a message whose key function failed has no key: ready
            for message in dropped_ready:
                self.flow.key_errors.pop(message, None)
        # A ready message passed the ordering gate: it holds its key until it ends, and
        # dropped it never will, so its key is handed on here (to a message that stays).
        for message in dropped_ready:
            if message.key is not None:
                successor = gate.release_past(message.key, matches)
                if successor is not None:
                    self.ready.append(successor)
        self.fetching.wake()
        return Dropped(queued, len(retrying))

    def retry_waits(self, message: AdmittedMessage) -> None:
        """The message waits for its next attempt; a retry-topic partition from
        ``retry_topic_max_waiting`` such messages on fetches no more (pinned paused: the
        records behind stay in Kafka, not in memory), the lane's other partitions go on."""
        self.waiting_retry.add(message)
        tp = message.topic_partition
        if tp.topic == self.settings.retry_topic and self.retry_cap.add(tp):
            self.fetching.pin(tp)
            self.log.debug("Paused %s of %s: retry_topic_max_waiting reached", tp, self.name)

    def retry_done_waiting(self, message: AdmittedMessage) -> None:
        """The message waits no more (due, dropped): a full retry partition below its bound
        again fetches again."""
        self.waiting_retry.discard(message)
        tp = message.topic_partition
        if self.retry_cap.remove(tp):
            self.fetching.unpin(tp)
            self.log.debug("Resumed %s of %s: below retry_topic_max_waiting", tp, self.name)

    def close_admission(self) -> "Dropped":
        """Take no new messages (shutdown, or a tripped brake): admission closes, fetching
        pauses for good, and what waits for a slot or a retry is dropped, uncommitted, for a
        later read; returns how many were dropped."""
        self.closing = True
        self.fetching.pause()
        return self.drop_waiting()

    def resume(self) -> None:
        """Fetch again what backpressure paused, unless admission closed or the application
        paused the lane."""
        if not self.closing and not self.paused_by_app and not self.brake.tripped:
            self.fetching.resume()
