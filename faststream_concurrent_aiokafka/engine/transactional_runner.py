"""A slot's task in an exactly-once lane: runs each message inside its partition's open
transaction, and keeps a failed attempt's records out of every committed transaction.

The message's task carries a ``Ticket`` in ``transactional_send.CURRENT`` while it runs (reset
before the next message, so the task's context compares equal to the lane's again), which
routes every publish of its pipeline, dead letters included, into the transaction. Failures
take the one failure path (``attempts``) with the steps that differ here: an attempt that
fails before publishing anything is retried in place as in an at-least-once lane; one that
fails after publishing cannot be, its records are in the transaction. The transaction is
aborted instead, the message runs again in the next one, and it goes on from the attempts it
made (an ``AttemptRecord``): retried, or dead-lettered, or given up without running again. The
record stays until the commit passes the message, so an abort another message causes costs it
no attempt: each message causes at most ``max_retries + 1`` aborts, and the partition gets on.
A record too old when its turn comes (``max_message_age_sec``) is not run: its dead letter
joins the transaction, or it is counted ``expired``; the commit passes it either way.
"""

from collections.abc import Callable
from typing import Final

from aiokafka import errors as kafka_errors

from faststream_concurrent_aiokafka.compat import aiokafka as aiokafka_compat
from faststream_concurrent_aiokafka.core.errors import TransactionalPublishError
from faststream_concurrent_aiokafka.core.failure_policy import AttemptRecord
from faststream_concurrent_aiokafka.engine.attempts import LaneAttempts, summary
from faststream_concurrent_aiokafka.engine.expiry import age_sec, expire
from faststream_concurrent_aiokafka.engine.flow_control import raise_key_error
from faststream_concurrent_aiokafka.engine.partition_transaction import PartitionTransaction
from faststream_concurrent_aiokafka.engine.runner import RUNNING
from faststream_concurrent_aiokafka.engine.state import AdmittedMessage, TakeNext
from faststream_concurrent_aiokafka.engine.transactional_send import CURRENT, Ticket

# Errors of a publish that say the transaction, not the message, failed.
_TRANSACTION_ERRORS: Final = (TransactionalPublishError, kafka_errors.ProducerFenced)


async def run_transactional_slot(
    partition_of: Callable[[AdmittedMessage], PartitionTransaction | None],
    message: AdmittedMessage,
    take_next: TakeNext,
) -> None:
    """Task body of an exactly-once lane's slot (see ``runner.run_slot``); ``partition_of``
    finds the transaction a message runs in."""
    current: AdmittedMessage | None = message
    while current is not None:
        partition = partition_of(current)
        finished = False
        if partition is None:
            _block(current)  # its partition was reset or released since it was admitted
        else:
            key = id(current.record)
            RUNNING[key] = current
            ticket = Ticket(current, partition)
            token = CURRENT.set(ticket)
            try:
                # Kept, not taken: should another message's failure abort this run too, the
                # message resumes from its own record again (see ``PartitionTransaction``).
                earlier = partition.earlier.get(current.offset)
                limit = current.lane.settings.max_message_age_sec
                if earlier is not None:
                    attempts = TransactionalAttempts(current, partition, ticket)
                    finished = await attempts.resume(earlier)
                elif limit is not None and (age := age_sec(current, limit)) is not None:
                    attempts = TransactionalAttempts(current, partition, ticket)
                    finished = await expire(current, age, limit, attempts)
                else:
                    # The first attempt right here (as in ``run_slot``): no object and no
                    # frame more for a message that succeeds.
                    current.attempt = 1
                    try:
                        if current.lane.flow.key_errors:
                            raise_key_error(current)
                        await current.lane.process(current.record)
                        error = current.attempt_error
                    except (Exception, SystemExit) as exc:  # every failure: the policy's
                        error = exc
                    finished = error is None
                    if error is not None:
                        current.attempt_error = None
                        attempts = TransactionalAttempts(current, partition, ticket)
                        finished = await attempts.after_attempt(1, error)
            except BaseException:
                partition.settled(current, finished=False)
                raise
            finally:
                CURRENT.reset(token)
                del RUNNING[key]
        following = take_next(current)
        # After the settle: a commit that waited for this message sees it finished.
        if partition is not None:
            partition.settled(current, finished=finished)
        current = following


def _block(message: AdmittedMessage) -> None:
    """The commit point never passes the message: it runs again after the abort."""
    message.runs_again = True
    for _, tracker, offset in message.positions():
        tracker.block(offset)


class TransactionalAttempts(LaneAttempts):
    """A message's attempts inside its partition's transaction. ``resume`` returns True when
    it finished (its offsets may be committed), False when it waits for its transaction's
    abort to run again."""

    __slots__ = ("partition", "ticket")

    def __init__(
        self, message: AdmittedMessage, partition: PartitionTransaction, ticket: Ticket
    ) -> None:
        super().__init__(message)
        self.partition = partition
        self.ticket = ticket

    def lost(self, error: BaseException) -> bool:
        """Not the message's failure: its transaction was aborted meanwhile (its epoch is
        over), or the producer is fenced or broken. It runs again (here after the abort, or on
        the partition's next owner)."""
        partition = self.partition
        same_epoch = self.ticket.epoch == partition.epoch
        producer = partition.producer
        if (
            same_epoch
            and not isinstance(error, _TRANSACTION_ERRORS)
            and producer is not None
            and aiokafka_compat.producer_failure(producer) is None
        ):
            return False
        message = self.message
        _block(message)
        if same_epoch:
            partition.request_abort(f"a publish of {message.describe()} failed ({summary(error)})")
        return True

    def published(self) -> bool:
        return self.partition.ledger.holds(self.message)

    def park(self, record: AttemptRecord, delay: float) -> bool:
        """The wait for a retry stays in the slot: the message is part of its partition's open
        transaction until it settles (``PartitionTransaction.settled``)."""
        del record, delay
        return False

    def defer(self, record: AttemptRecord) -> None:
        """It failed after it published: its transaction is aborted, and it goes on from
        ``record`` in the next one."""
        message = self.message
        self.partition.earlier[message.offset] = record
        if record.final:
            then = "given up" if self.settings.dead_letter_topic is None else "dead-lettered"
        else:
            then = "tried again"
        self.log.info(
            "Attempt %d of %s failed after it published (%s); its transaction is aborted and "
            "the message %s in the next one",
            record.attempts,
            message.describe(),
            summary(record.error),
            then,
            extra=message.log_extra(),
        )
        _block(message)
        self.partition.request_abort(f"{message.describe()} failed after it published")

    def cannot_dead_letter(self, topic: str, error: Exception) -> bool:
        """Inside a transaction every failed dead letter is tried again in the next one."""
        del topic, error
        return False

    def dead_letter_failed(
        self, record: AttemptRecord, topic: str, error: Exception, delay: float
    ) -> bool:
        """Its records are in the transaction: it is aborted and the dead letter tried again
        in the next one, after a backoff."""
        del delay
        message = self.message
        self.partition.earlier[message.offset] = record
        self.log.error(
            "Dead-lettering %s to %r failed (%s); its transaction is aborted and the dead "
            "letter tried again in the next one (attempt %d)",
            message.describe(),
            topic,
            summary(error),
            record.dead_letter_attempts + 1,
            extra=message.log_extra(),
        )
        _block(message)
        self.partition.request_abort(f"the dead letter of {message.describe()} failed")
        return False
