"""A slot's task in an exactly-once lane: runs each message inside its partition's open
transaction, and keeps a failed attempt's records out of every committed transaction.

The message's task carries a ``Ticket`` in ``transactions.CURRENT`` while it runs (reset
before the next message, so the task's context compares equal to the lane's again), which
routes every publish of its pipeline, dead letters included, into the transaction. An attempt
that fails before publishing anything is retried in place as in an at-least-once lane. One
that fails after publishing cannot be: its records are in the transaction. The transaction is
aborted instead, the message runs again in the next one, and it goes on from the attempts it
made (``EarlierAttempts``): retried, or dead-lettered, or given up without running again.
"""

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Final

from aiokafka import errors as kafka_errors

from faststream_concurrent_aiokafka.compat import aiokafka as aiokafka_compat
from faststream_concurrent_aiokafka.core.errors import TransactionalPublishError
from faststream_concurrent_aiokafka.core.failure_policy import backoff_delay
from faststream_concurrent_aiokafka.core.transactions import EarlierAttempts
from faststream_concurrent_aiokafka.engine.partition_transaction import PartitionTransaction
from faststream_concurrent_aiokafka.engine.runner import (
    RUNNING,
    assess_failure,
    brake_holds,
    log_final_failure,
    summary,
)
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
                finished = await _run(current, partition, ticket)
            except BaseException:
                partition.ended(current, finished=False)
                raise
            finally:
                CURRENT.reset(token)
                del RUNNING[key]
        following = take_next(current)
        # After the settle: a commit that waited for this message sees it finished.
        if partition is not None:
            partition.ended(current, finished=finished)
        current = following


def _block(message: AdmittedMessage) -> None:
    """The commit point never passes the message: it runs again after the abort."""
    message.runs_again = True
    for _, tracker, offset in message.positions():
        tracker.block(offset)


async def _run(message: AdmittedMessage, partition: PartitionTransaction, ticket: Ticket) -> bool:
    """The message's attempts; True when it finished (its offsets may be committed), False
    when it waits for its transaction's abort to run again."""
    lane = message.lane
    options = lane.options
    earlier = partition.earlier.pop(message.offset, None)
    attempt = 0
    if earlier is not None:
        attempt = earlier.attempts
        if earlier.final:
            return await _final(message, partition, earlier)
        await asyncio.sleep(
            backoff_delay(attempt, options.retry_backoff_sec, options.retry_backoff_max_sec)
        )
    process = lane.process
    while True:
        attempt = message.attempt = attempt + 1
        try:
            await process(message.record)
            error = message.attempt_error
        except (Exception, SystemExit) as exc:  # every failure goes through the policy
            error = exc
        if error is None:
            return True
        message.attempt_error = None
        if _transaction_broke(partition, ticket, error):
            # Not the message's failure: its transaction was aborted or its producer lost; it
            # runs again (here after the abort, or on the partition's next owner).
            _block(message)
            if ticket.epoch == partition.epoch:
                partition.request_abort(
                    f"a publish of {message.describe()} failed ({summary(error)})"
                )
            return False
        published = partition.ledger.holds(message)
        failure = assess_failure(message, error, attempt, log_retry=not published)
        if failure.retry_in is None and not failure.final:
            return True  # acknowledged, skipped or stopping: what it published stands
        if not published:
            if failure.retry_in is not None:
                await asyncio.sleep(failure.retry_in)
                continue
            return await _final(
                message, partition, EarlierAttempts(attempt, error, True, failure.retried)
            )
        partition.earlier[message.offset] = EarlierAttempts(
            attempt, error, failure.final, failure.retried
        )
        if failure.final:
            then = "given up" if options.dead_letter_topic is None else "dead-lettered"
        else:
            then = "tried again"
        lane.log.info(
            "Attempt %d of %s failed after it published (%s); its transaction is aborted and "
            "the message %s in the next one",
            attempt,
            message.describe(),
            summary(error),
            then,
            extra=message.log_extra(),
        )
        _block(message)
        partition.request_abort(f"{message.describe()} failed after it published")
        return False


def _transaction_broke(
    partition: PartitionTransaction, ticket: Ticket, error: BaseException
) -> bool:
    """The attempt failed because of its transaction, not of itself: the transaction was
    aborted meanwhile (the message's epoch is over), or the producer is fenced or broken."""
    if ticket.epoch != partition.epoch or isinstance(error, _TRANSACTION_ERRORS):
        return True
    producer = partition.producer
    return producer is None or aiokafka_compat.producer_failure(producer) is not None


async def _final(
    message: AdmittedMessage, partition: PartitionTransaction, earlier: EarlierAttempts
) -> bool:
    """No attempt is left: count it with the brake (once), then dead-letter it inside the
    transaction or give it up. A dead-letter publish that fails spoils the transaction: it
    is aborted and the dead letter tried again in the next one, after a backoff."""
    lane = message.lane
    options = lane.options
    error = earlier.error
    message.error = error
    if not earlier.counted:
        if brake_holds(message, error, earlier.attempts):
            return False
        log_final_failure(message, error, earlier.attempts, retried=earlier.retried)
        earlier = dataclasses.replace(earlier, counted=True)
    topic = options.dead_letter_topic
    if topic is None:
        return True
    if earlier.dead_letter_attempts:
        lane.dead_letter_stuck.add(message)
        try:
            await asyncio.sleep(
                backoff_delay(
                    earlier.dead_letter_attempts,
                    options.retry_backoff_sec,
                    options.retry_backoff_max_sec,
                )
            )
        finally:
            lane.dead_letter_stuck.discard(message)
    try:
        await lane.pipeline.dead_letter(
            topic, message.record, error, earlier.attempts, options.dead_letter_exception_text
        )
    except Exception as exc:
        tries = earlier.dead_letter_attempts + 1
        partition.earlier[message.offset] = dataclasses.replace(earlier, dead_letter_attempts=tries)
        lane.log.error(
            "Dead-lettering %s to %r failed (%s); its transaction is aborted and the dead "
            "letter tried again in the next one (attempt %d)",
            message.describe(),
            topic,
            summary(exc),
            tries + 1,
            extra=message.log_extra(),
        )
        _block(message)
        partition.request_abort(f"the dead letter of {message.describe()} failed")
        return False
    lane.counters.dead_lettered += 1
    return True
