"""One input partition of an exactly-once lane: its transactional producer, its open
transaction, and the steps it goes through (see ``engine.transactions`` for the whole)."""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.structs import OffsetAndMetadata

from faststream_concurrent_aiokafka.compat import aiokafka as aiokafka_compat
from faststream_concurrent_aiokafka.core.commit_policy import CANCEL_GRACE_SEC, final_commit_timeout
from faststream_concurrent_aiokafka.core.errors import TransactionalPublishError
from faststream_concurrent_aiokafka.core.failure_policy import AttemptRecord, backoff_delay
from faststream_concurrent_aiokafka.core.health import DEGRADED, FAILED, Fault
from faststream_concurrent_aiokafka.core.offset_codec import ENCODE_INLINE_MAX
from faststream_concurrent_aiokafka.core.offsets import PartitionOffsets
from faststream_concurrent_aiokafka.core.settings import ConcurrencySettings
from faststream_concurrent_aiokafka.core.transaction_state import (
    RUNNING,
    TransactionState,
    after_abort,
    after_loss,
    check_transition,
    has_transaction,
    released,
)
from faststream_concurrent_aiokafka.core.transactions import (
    ABORTS_DEGRADED,
    MAX_SPAN,
    OPEN_PER_CLOSED,
    OPEN_SHARE,
    MetadataOverflowError,
    TransactionLedger,
    Verdict,
    carried,
    count_may_commit,
    exact_metadata,
    span_has_room,
    sticky_partition,
    to_commit,
    transactional_id,
)
from faststream_concurrent_aiokafka.engine.committer import decode_metadata, describe_error
from faststream_concurrent_aiokafka.engine.state import AdmittedMessage, ConsumerLane
from faststream_concurrent_aiokafka.engine.transactional_send import Ticket

# What closing a released partition's producer may add to the release's budget.
_CLOSE_SEC = 1.0

# Errors after which a producer can never be used again, whatever its state says.
_BROKEN = (kafka_errors.ProducerFenced, kafka_errors.OutOfOrderSequenceNumber)
# Set-up errors that another rebalance would not cure: an operator has to act.
_PERMANENT = (
    kafka_errors.TransactionalIdAuthorizationFailed,
    kafka_errors.GroupAuthorizationFailedError,
    kafka_errors.TopicAuthorizationFailedError,
)


_S = TransactionState


class PartitionTransaction:
    """One input partition of an exactly-once lane: its producer, its open transaction and
    what it last committed. Where it stands is one ``TransactionState``, every move checked
    (``core.transaction_state``); the gate is open exactly in ``OPEN``."""

    def __init__(
        self, lane: ConsumerLane, settings: ConcurrencySettings, tp: TopicPartition
    ) -> None:
        self.lane = lane
        self.settings = settings
        self.tp = tp
        self.ledger = TransactionLedger()
        self.producer: AIOKafkaProducer | None = None
        self.state = _S.STARTING
        self.epoch = 0  # moves on when a transaction's messages lose it (abort, loss, release)
        self._on_record_done = partial(self._record_done, 0)
        self.fault: Fault | None = None  # why it was lost (for health)
        self.record_failure: BaseException | None = None  # a refused record broke the producer
        # Transactions aborted since the last commit, and why the last one was: each read
        # again backs off longer, and health reports a partition that keeps aborting.
        self.aborts_in_a_row = 0
        self.last_abort: str | None = None
        self.committed_point: int | None = None
        self.committed_finished: frozenset[int] = frozenset()
        self.start_offset: int | None = None  # where reading starts without a committed offset
        # Admission, not the transaction: paused at the admission span's end, from this offset.
        self.cut_at: int | None = None
        # Messages whose transaction was aborted after they failed: how their attempts went,
        # kept until the commit passes them, so an abort another message causes costs none.
        self.earlier: dict[int, AttemptRecord] = {}
        self.senders: set[asyncio.Task[Any]] = set()  # tasks in a publish now
        self.unkeyed_sticky = False  # records without a key: one partition a transaction
        self.job: asyncio.Task[None] | None = None
        # When the gate last opened and closed, and how long the last commit kept it closed:
        # a transaction commits on its count only once that time has paid off.
        self.gate_opened_at = 0.0
        self.gate_closed_at = 0.0
        self.last_closed_sec = 0.0
        self._paid_off: asyncio.TimerHandle | None = None  # commits then, if still due
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._open = asyncio.Event()

    def _move(self, target: TransactionState) -> None:
        """The one place the state changes: checked, and the gate's waiters woken when it
        opens or when the transaction is gone for them."""
        check_transition(self.state, target, self.name)
        previous, self.state = self.state, target
        if target is _S.COMMITTING or target is _S.RELEASING:
            self._open.clear()
            if previous is _S.OPEN:
                self.gate_closed_at = asyncio.get_running_loop().time()
            return
        self._open.set()
        if target is _S.OPEN:
            now = asyncio.get_running_loop().time()
            if previous is _S.COMMITTING:
                self.last_closed_sec = now - self.gate_closed_at
            self.gate_opened_at = now

    @property
    def running(self) -> bool:
        """A transaction is there for its messages to run (and publish) in."""
        return has_transaction(self.state)

    def __repr__(self) -> str:
        return f"{self.tp.topic}[{self.tp.partition}]"

    @property
    def name(self) -> str:
        return f"{self!r} of {self.lane.name}"

    @property
    def max_open_sec(self) -> float:
        return self.lane.settings.transaction_timeout_sec * OPEN_SHARE

    def unavailable(self) -> str:
        if self.record_failure is not None:
            return (
                f"the producer of {self!r} broke: a record it sent was refused "
                f"({describe_error(self.record_failure)}); the message runs again from its "
                "last commit, with a new producer"
            )
        return (
            f"the transaction of {self!r} was aborted or its partition released; "
            "the message runs again from its last commit"
        )

    # ---- publishing -------------------------------------------------------------------

    def send_record(  # noqa: PLR0917 - AIOKafkaProducer.send's arguments
        self,
        ticket: Ticket,
        topic: str,
        value: Any,
        key: Any,
        partition: int | None,
        timestamp_ms: int | None,
        headers: Any,
    ) -> Coroutine[Any, Any, "asyncio.Future[Any]"]:
        """One record of ``ticket``'s message into the open transaction. Without a key or a
        partition it goes to the transaction's partition of its topic (``sticky_partition``),
        unless the application's partitioner or key serializer decides."""
        if key is None and partition is None and self.unkeyed_sticky:
            return self.send(
                ticket,
                lambda producer: producer.send(
                    topic, value, None, self._sticky(producer, topic), timestamp_ms, headers
                ),
            )
        return self.send(
            ticket,
            lambda producer: producer.send(topic, value, key, partition, timestamp_ms, headers),
        )

    def _sticky(self, producer: AIOKafkaProducer, topic: str) -> int | None:
        """The open transaction's partition of ``topic`` for records without a key (None
        before the producer knows the topic: aiokafka chooses, this once)."""
        ledger = self.ledger
        chosen = ledger.sticky.get(topic)
        if chosen is None:
            available = aiokafka_compat.available_partitions(producer, topic)
            if not available:
                return None
            chosen = sticky_partition(available, self.tp.partition + ledger.begun)
            ledger.sticky[topic] = chosen
        return chosen

    async def send(
        self, ticket: Ticket, send: Callable[[AIOKafkaProducer], Awaitable["asyncio.Future[Any]"]]
    ) -> "asyncio.Future[Any]":
        """One publish of ``ticket``'s message into the open transaction: joins it (waiting
        while a commit keeps the gate closed), then ``send`` with its producer."""
        producer = self._join(ticket)
        while producer is None:
            await self._open.wait()
            producer = self._join(ticket)
        task = asyncio.current_task()
        assert task is not None
        senders = self.senders
        senders.add(task)  # a task is in one publish at a time
        try:
            future = await send(producer)
        except Exception as exc:
            if ticket.epoch == self.epoch:  # not after its transaction ended meanwhile
                self.ledger.spoil(f"a publish failed ({describe_error(exc)})")
            raise
        finally:
            senders.discard(task)
            self._changed.set()
        future.add_done_callback(self._on_record_done)  # made once an epoch, not per record
        return future

    def _join(self, ticket: Ticket) -> AIOKafkaProducer | None:
        """The producer to publish ``ticket``'s message with, once it is in the open
        transaction; None while the gate is closed to it. Raises when the transaction is over
        for it, or the message ended."""
        message = ticket.message
        producer = self.producer
        state = self.state
        if (
            ticket.epoch != self.epoch
            or producer is None
            or not has_transaction(state)
            or self.record_failure is not None
        ):
            raise TransactionalPublishError(self.unavailable())
        if message not in message.lane.running:
            msg = (
                f"{message.describe()} ended before this publish: with exactly_once, "
                "await every publish (in tasks the handler spawned too) before the handler "
                "returns"
            )
            raise TransactionalPublishError(msg)
        ledger = self.ledger
        if ledger.holds(message):
            return producer
        if state is not _S.OPEN:
            return None
        ledger.enter(message, asyncio.get_running_loop().time())
        return producer

    def _record_done(self, epoch: int, future: "asyncio.Future[Any]") -> None:
        """A record of the transaction of ``epoch`` was acknowledged or failed; a failed one
        spoils it (aiokafka would commit the transaction without it), unless that transaction
        is over. Read when each record settles, not kept for the commit: a future kept until
        then outlives a garbage collection or two, and the collections cost more than this.

        A record the broker refused (too large for its topic, say) also breaks the producer,
        whatever the epoch: aiokafka numbered its batch, the broker never wrote it, and every
        later batch to that partition fails out of sequence. The partition is lost instead of
        aborted (``_broken``), so that the next assignment starts a producer afresh."""
        if future.cancelled():
            reason = "a record was not written (cancelled)"
        elif (error := future.exception()) is not None:
            self.record_failure = self.record_failure or error
            reason = (
                f"a record was not written ({describe_error(error)}); the producer's sequence "
                "numbers for its partition are now behind the broker's"
            )
        else:
            return
        if epoch == self.epoch:
            self.request_abort(reason)  # a broken producer is lost on the way (``_abort``)
        else:
            self._changed.set()

    def _broken(self, producer: AIOKafkaProducer) -> BaseException | None:
        """Why the producer can do nothing more: aiokafka's own state, or a refused record."""
        return aiokafka_compat.producer_failure(producer) or self.record_failure

    def _new_epoch(self) -> None:
        """The open transaction is over for the messages and records in it."""
        self.epoch += 1
        self._on_record_done = partial(self._record_done, self.epoch)

    # ---- the messages' side -----------------------------------------------------------

    def runs(self, message: AdmittedMessage) -> bool:
        """``message`` belongs to this partition's current transaction epoch."""
        return has_transaction(self.state) and message.tracker is self.lane.offsets.trackers.get(
            self.tp
        )

    def settled(self, message: AdmittedMessage, *, finished: bool) -> None:
        """``message`` settled; a partition cut at the span's end fetches again once its commit
        point moved on."""
        if self.ledger.leave(message) and not finished:
            self.ledger.spoil(f"{message.describe()} ended without finishing after it published")
        self._changed.set()
        if self.cut_at is not None and has_transaction(self.state):
            tracker = self.lane.offsets.trackers.get(self.tp)
            if tracker is not None and span_has_room(tracker.commit_point, self.cut_at):
                self.cut_at = None
                self.lane.fetching.unpin(self.tp)

    def request_abort(self, reason: str) -> None:
        """Abort the open transaction soon (the message asking ends without finishing)."""
        self.ledger.spoil(reason)
        self._changed.set()
        self.start_job()

    # ---- commits ----------------------------------------------------------------------

    def due(self, *, interval_elapsed: bool) -> bool:
        """Whether the background commit should run now: on the interval, or once
        ``commit_batch_size`` messages finished and the gate has been open long enough
        (``core.transactions.OPEN_PER_CLOSED``)."""
        if self.ledger.taint is not None:
            return True
        tracker = self.lane.offsets.trackers.get(self.tp)
        finished = 0 if tracker is None else tracker.version - tracker.committed_version
        if interval_elapsed:
            return finished > 0 or self.ledger.opened_at is not None
        if finished < self.settings.commit_batch_size:
            return False
        loop = asyncio.get_running_loop()
        if count_may_commit(loop.time() - self.gate_opened_at, self.last_closed_sec):
            return True
        if self._paid_off is None:
            at = self.gate_opened_at + OPEN_PER_CLOSED * self.last_closed_sec
            self._paid_off = loop.call_at(at, self._commit_paid_off)
        return False

    def _commit_paid_off(self) -> None:
        """The gate has been open long enough since a count was reached: commit, if due."""
        self._paid_off = None
        if self.state is _S.OPEN and self.due(interval_elapsed=False):
            self.start_job()

    def start_job(self) -> None:
        """Commit (or abort) in the background, unless a commit or abort runs already."""
        if self.state in {_S.OPEN, _S.COMMITTING} and (self.job is None or self.job.done()):
            self.job = asyncio.create_task(self._background(), name=f"transaction {self!r}")

    async def _background(self) -> None:
        try:
            async with self._lock:
                if self.state is _S.OPEN:
                    await self._settle(None)
        except Exception as exc:  # a bug must not leave the gate closed for good
            self.lane.log.exception("Transaction of %s failed unexpectedly", self.name)
            await self.lose(f"an unexpected error ({describe_error(exc)})", exc)

    async def commit_now(self, timeout: float) -> bool:
        """Commit (or abort) the open transaction now, within ``timeout`` for the requests;
        True when it committed or had nothing to commit."""
        async with self._lock:
            if self.state in {_S.STARTING, _S.ABORTING}:
                return True
            if self.state not in RUNNING:
                return False
            return await self._settle(timeout)

    async def _settle(self, timeout: float | None) -> bool:
        """Close the gate, wait for the transaction's messages, then commit it or abort it.
        ``timeout`` bounds the requests (``commit_timeout_sec`` when None). A partition being
        released (``RELEASING``) waits for nothing and begins no next transaction."""
        loop = asyncio.get_running_loop()
        ledger = self.ledger
        if self.state is _S.OPEN:
            self._move(_S.COMMITTING)
        while True:
            verdict = ledger.verdict(
                loop.time(), self.max_open_sec, sends_in_flight=len(self.senders)
            )
            if verdict is not Verdict.WAIT:
                break
            if self.state is not _S.COMMITTING:  # released: nothing is waited for
                ledger.spoil(
                    f"{ledger.members} message(s) that published were still running when "
                    "the partition was released"
                )
                continue
            deadline = ledger.deadline(self.max_open_sec) or loop.time() + self.max_open_sec
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._changed.wait()
        request_timeout = self.settings.commit_timeout_sec if timeout is None else timeout
        if verdict is Verdict.ABORT:
            await self._abort(ledger.taint or "aborted", request_timeout)
            return False
        return await self._commit(request_timeout)

    async def _commit(self, timeout: float) -> bool:
        lane = self.lane
        tracker = lane.offsets.trackers.get(self.tp)
        point = None if tracker is None else tracker.commit_point
        finished: frozenset[int] = frozenset()
        if tracker is None or point is None:
            point, finished = self.committed_point, self.committed_finished
        else:
            point, finished = to_commit(point, tracker.finished_above(), tracker.already_done)
        version = 0 if tracker is None else tracker.version
        published = self.ledger.opened_at is not None
        moved = point is not None and (point, finished) != (
            self.committed_point,
            self.committed_finished,
        )
        if not published and not moved:
            # Nothing went into the open transaction: it stays open, the gate opens again.
            if self.state is _S.COMMITTING:
                self._move(_S.OPEN)
            return True
        try:
            metadata = await _metadata(point, finished)
        except MetadataOverflowError as exc:
            await self._abort(str(exc), timeout)
            return False
        producer = self.producer
        assert producer is not None
        if (broken := self._broken(producer)) is not None:
            await self.lose(f"its producer broke ({describe_error(broken)})", broken)
            return False
        lane.offsets.commits.requested()
        try:
            async with asyncio.timeout(timeout):
                # Every record acknowledged first: aiokafka would commit without a failed one.
                await producer.flush()
                if self.ledger.taint is not None:
                    raise _Spoiled(self.ledger.taint)
                if moved and point is not None:
                    offsets = {self.tp: OffsetAndMetadata(point, metadata)}
                    await producer.send_offsets_to_transaction(offsets, lane.pipeline.group)
                await producer.commit_transaction()
        except _Spoiled as exc:
            await self._abort(str(exc), timeout)
            return False
        except Exception as exc:  # TimeoutError included: each kind has its way out
            self.lane.offsets.commits.failed(exc)
            await self._after_failed_request("commit", exc, timeout)
            return False
        lane.offsets.commits.succeeded()
        lane.counters.transactions_committed += 1
        self.aborts_in_a_row = 0
        if tracker is not None and point is not None:
            tracker.committed = point
            tracker.committed_version = version
        self.committed_point, self.committed_finished = point, finished
        if point is not None:
            for offset in [o for o in self.earlier if o < point]:
                del self.earlier[offset]
        await self._reopen()
        return True

    async def _reopen(self) -> None:
        """Begin the next transaction and open the gate. A partition being released opens no
        gate, but still begins one when its release came during this commit (from the
        background): what finished since is committed in it, and there is always a transaction
        to end while a partition is in ``RUNNING``."""
        if self.producer is None or not has_transaction(self.state):
            return
        await self.producer.begin_transaction()
        self.ledger.begin()
        if self.state is _S.COMMITTING:
            self._move(_S.OPEN)

    async def _after_failed_request(self, what: str, error: BaseException, timeout: float) -> None:
        """A commit or abort request failed: an abortable error aborts; a broken producer,
        or a request with no answer (its outcome unknown), loses the partition."""
        producer = self.producer
        broken = None if producer is None else self._broken(producer)
        if isinstance(error, TimeoutError):
            await self.lose(f"its {what} got no answer within {timeout:.1f} s", error)
        elif broken is not None or isinstance(error, _BROKEN) or what == "abort":
            await self.lose(f"its {what} failed ({describe_error(broken or error)})", error)
        else:
            await self._abort(f"its {what} failed ({describe_error(error)})", timeout)

    # ---- abort ------------------------------------------------------------------------

    def _close_epoch(self, target: TransactionState) -> None:
        """The open transaction is over for its messages (moving to ``target``): none may
        publish into it any more (publishers waiting at the gate find it gone), nothing new is
        fetched, and what waits for a slot is dropped (it runs again from the last commit)."""
        self._new_epoch()
        self._move(target)
        self.lane.fetching.pin(self.tp)
        self.lane.drop_waiting({self.tp})

    async def _abort(self, reason: str, timeout: float) -> None:
        """Drop the partition's waiting messages (its running ones can no longer publish),
        abort the transaction and, unless the partition is being released, read it again from
        the last commit."""
        lane = self.lane
        self._close_epoch(after_abort(self.state))
        if not await self._settle_sends():
            await self.lose(f"{reason}; publishes under way did not end when cancelled", None)
            return
        producer = self.producer
        assert producer is not None
        if (broken := self._broken(producer)) is not None:
            await self.lose(f"{reason}; its producer broke ({describe_error(broken)})", broken)
            return
        try:
            async with asyncio.timeout(final_commit_timeout(timeout)):
                await producer.abort_transaction()
        except Exception as exc:  # TimeoutError included
            self.lane.offsets.commits.failed(exc)
            await self._after_failed_request("abort", exc, timeout)
            return
        lane.counters.transactions_aborted += 1
        self.aborts_in_a_row += 1
        self.last_abort = reason
        # A release that came during the abort moved it on: the partition is not read again.
        redeliver = self.state is _S.ABORTING
        start = self.committed_point if self.committed_point is not None else self.start_offset
        lane.log.warning(
            "Transaction of %s aborted (%s); its records are discarded%s",
            self.name,
            reason,
            f" and its messages from offset {start} on run again" if redeliver else "",
        )
        if redeliver:
            await self._restart()

    async def _settle_sends(self, grace: float = CANCEL_GRACE_SEC) -> bool:
        """Let the publishes under way finish (they only queue their records), cancelling
        those still going after ``grace`` seconds; True once none is left.

        Messages are not cancelled: from the epoch's change on their publishes are refused,
        what they finish is not committed (their tracker is retired) and they end as any
        message does, without FastStream logging a cancellation as an error; a key they hold
        keeps its order for the messages read again."""
        current = asyncio.current_task()
        tasks = set(self.senders)
        if current is not None:
            tasks.discard(current)
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        late = set(self.senders) - {current}
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=grace)
        return not set(self.senders) - {current}

    async def _restart(self) -> None:
        """Read the partition again from its last commit, in a new transaction."""
        assert self.producer is not None
        await self.producer.begin_transaction()
        lane = self.lane
        lane.offsets.retire(self.tp)
        lane.offsets.trackers[self.tp] = PartitionOffsets(self.committed_finished)
        position = self.committed_point if self.committed_point is not None else self.start_offset
        if position is not None and self.tp in lane.consumer.assignment():
            lane.consumer.seek(self.tp, position)
        self.cut_at = None
        self.ledger.begin()
        self._move(_S.OPEN)
        # Aborts in a row: the messages run again after a growing backoff, not at once.
        again = self.aborts_in_a_row - 1
        if again < 1:
            lane.fetching.unpin(self.tp)
            return
        settings = lane.settings
        delay = backoff_delay(again, settings.retry_backoff_sec, settings.retry_backoff_max_sec)
        asyncio.get_running_loop().call_later(delay, self._read_again, self.epoch)

    def _read_again(self, epoch: int) -> None:
        """The backoff after an abort is over: fetch again, unless the transaction moved on."""
        if epoch == self.epoch and self.state in {_S.OPEN, _S.COMMITTING}:
            self.lane.fetching.unpin(self.tp)

    def abort_fault(self) -> Fault | None:
        """Health's view of a partition whose transactions keep aborting."""
        if self.aborts_in_a_row < ABORTS_DEGRADED:
            return None
        return Fault(
            DEGRADED,
            f"exactly-once partition {self.name}: {self.aborts_in_a_row} transactions in a row "
            f"aborted without a commit (last: {self.last_abort}); its messages run again after "
            "each",
        )

    # ---- lost -------------------------------------------------------------------------

    async def lose(self, reason: str, error: BaseException | None) -> None:
        """The producer cannot go on (fenced, broken, no answer): drop the partition's work,
        close the producer and, unless an operator must act first, ask the group for a new
        assignment (the only safe moment to start a producer again)."""
        lane = self.lane
        self._close_epoch(after_loss(self.state))
        await self._settle_sends()
        producer, self.producer = self.producer, None
        if producer is not None:
            await aiokafka_compat.abandon_producer(producer)
        lane.offsets.retire(self.tp)
        fenced = isinstance(error, kafka_errors.ProducerFenced)
        permanent = isinstance(error, _PERMANENT)
        if fenced:
            lane.counters.producers_fenced += 1
            reason = (
                f"its producer was fenced: another member took the partition over, or its "
                f"transaction outlived transaction_timeout_sec ({reason})"
            )
        self.fault = Fault(
            FAILED if permanent else DEGRADED,
            f"exactly-once partition {self.name} stopped: {reason}; "
            + ("fix the cause and restart" if permanent else "it waits for a new assignment"),
        )
        lane.log.error(
            "Exactly-once partition %s stopped: %s; its uncommitted work is dropped (it runs "
            "again from the last commit, by whichever member gets it)%s",
            self.name,
            reason,
            "" if permanent else "; this member asks the group for a new assignment",
        )
        # Asked only while it is still this member's: a release meanwhile moved it on.
        if not permanent and self.state is _S.LOST and not lane.closing:
            try:
                aiokafka_compat.request_rejoin(lane.consumer)
            except Exception as exc:
                lane.log.warning(
                    "Asking the group for a new assignment failed (%s); %s waits for the "
                    "next rebalance",
                    describe_error(exc),
                    self.name,
                )

    # ---- set-up and release -------------------------------------------------------------

    async def start_producer(self, timeout: float) -> bool:
        """Start the partition's producer: fences the previous owner's, and returns once the
        previous transaction of this transactional id is complete."""
        lane = self.lane
        settings = lane.settings
        tid = transactional_id(
            settings.transactional_id_prefix, lane.pipeline.group, self.tp.topic, self.tp.partition
        )
        producer = lane.pipeline.transactional_producer(
            tid, int(settings.transaction_timeout_sec * 1000)
        )
        self.producer = producer
        self.unkeyed_sticky = aiokafka_compat.partitions_unkeyed_anywhere(producer)
        try:
            async with asyncio.timeout(timeout):
                await producer.start()
        except Exception as exc:  # TimeoutError included
            reason = (
                f"its producer {tid!r} did not start within {timeout:.1f} s"
                if isinstance(exc, TimeoutError)
                else f"its producer {tid!r} did not start ({describe_error(exc)})"
            )
            await self.lose(reason, exc)
            return False
        return True

    async def set_up(self, committed: OffsetAndMetadata | None, start_offset: int | None) -> int:
        """Start reading after what was committed (or at ``start_offset``), skipping what the
        metadata says was finished, in the first transaction. Returns how many finished
        messages will be skipped."""
        assert self.producer is not None
        await self.producer.begin_transaction()
        lane = self.lane
        tp = self.tp
        finished = frozenset() if committed is None else decode_metadata(lane, tp, committed)
        if committed is not None and len(kept := carried(committed.offset, finished)) < len(
            finished
        ):
            lane.log.warning(
                "%s: its commit metadata claims %d finished offset(s) %d or more above the "
                "committed offset %d, more than a transaction can carry; they run again",
                self.name,
                len(finished) - len(kept),
                MAX_SPAN,
                committed.offset,
            )
            finished = kept
        self.committed_point = None if committed is None else committed.offset
        self.committed_finished = finished
        self.start_offset = start_offset
        lane.offsets.retire(tp)
        lane.offsets.trackers[tp] = PartitionOffsets(finished)
        position = self.committed_point if self.committed_point is not None else start_offset
        if position is not None:
            lane.consumer.seek(tp, position)
        self.ledger.begin()
        self.fault = None
        self._move(_S.OPEN)
        lane.fetching.unpin(tp)
        return len(finished)

    def releasing(self) -> None:
        """The partition is about to be released: its set-up stops, a waiting commit gives up
        waiting (and aborts if it must), no transaction begins after the open one."""
        self._move(released(self.state))
        self._changed.set()

    async def release(self, timeout: float) -> bool:
        """The partition is released (rebalance, stop): commit its transaction, or abort it
        when messages in it still run, within ``timeout``; then close the producer (at most
        ``_CLOSE_SEC`` more). Messages still running go on, as in an at-least-once lane;
        nothing they do is committed. True when its finished work was committed."""
        loop = asyncio.get_running_loop()
        self.releasing()
        ended = False
        committed = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._lock:
                if self.state is _S.RELEASING:
                    committed = await self._settle(timeout)
                ended = True
        self._new_epoch()
        if self.state is _S.RELEASING:  # committed, or left open when the budget ran out
            self._move(_S.WINDING_UP)  # publishers waiting at the gate find the partition gone
        close_by = loop.time() + _CLOSE_SEC
        await self._settle_sends(_CLOSE_SEC / 4)
        producer, self.producer = self.producer, None
        self._move(_S.CLOSED)
        if producer is None:
            return committed
        aiokafka_compat.forget_transaction_error(producer)
        if ended:  # the transaction ended: nothing is left to flush
            with contextlib.suppress(Exception):  # a stop that hangs is abandoned below
                async with asyncio.timeout(max(0.0, close_by - loop.time())):
                    await producer.stop()
                return committed
        await aiokafka_compat.abandon_producer(producer, _CLOSE_SEC / 4)
        return committed


async def _metadata(point: int | None, finished: frozenset[int]) -> str:
    """``exact_metadata`` of a commit; many offsets are encoded in a worker thread (see
    ``ENCODE_INLINE_MAX``), while the gate is closed but the event loop serves the rest."""
    if point is None or not finished:
        return ""
    if len(finished) > ENCODE_INLINE_MAX:
        return await asyncio.to_thread(exact_metadata, point, finished)
    return exact_metadata(point, finished)


class _Spoiled(Exception):
    """A transaction turned out to need an abort while its commit was being sent."""
