"""A slot's task: runs its message through the lane's pipeline, retries it, dead-letters it.

The pipeline (for FastStream: the subscriber's whole ``process_message``, middlewares,
handler and publishing) is awaited right here, not in a helper coroutine: a frame less for
every message in flight. The message's offset is committed only after all of it.
"""

import asyncio
from typing import NamedTuple

from faststream_concurrent_aiokafka.core.dead_letters import PublishFailure, classify_publish_error
from faststream_concurrent_aiokafka.core.decode_errors import describe_exception, quotes_input
from faststream_concurrent_aiokafka.core.errors import TaskTimeoutError
from faststream_concurrent_aiokafka.core.failure_policy import Outcome, backoff_delay
from faststream_concurrent_aiokafka.engine.lost_dead_letters import give_up_dead_letter
from faststream_concurrent_aiokafka.engine.state import AdmittedMessage, TakeNext

RUNNING: dict[int, AdmittedMessage] = {}
"""Messages whose pipeline runs now, by ``id()`` of the raw record the pipeline is given.

The integration finds a message's state here from inside its pipeline: no context variable
to set (and allocate) per message, and found even when a middleware runs the rest of the
pipeline in a task of its own.
"""


async def run_slot(message: AdmittedMessage, take_next: TakeNext) -> None:
    """Task body of a slot: runs its message, then each one ``take_next`` hands it after that.

    Per message: attempts, backoff, dead-lettering; never raises.
    """
    current: AdmittedMessage | None = message
    while current is not None:
        key = id(current.record)
        RUNNING[key] = current
        try:
            process = current.lane.process
            attempt = 0
            while True:
                attempt = current.attempt = attempt + 1
                try:
                    await process(current.record)
                    error = current.attempt_error
                except (Exception, SystemExit) as exc:  # every failure goes through the policy
                    error = exc
                if error is None:
                    break
                current.attempt_error = None
                if not await _after_failed_attempt(current, error, attempt):
                    break
        finally:
            del RUNNING[key]
        current = take_next(current)


class Failure(NamedTuple):
    """What a failed attempt leads to: another attempt after ``retry_in`` seconds, or a final
    failure (``final``), or neither (the message is settled: acknowledged, or stopping)."""

    retry_in: float | None
    final: bool
    retried: bool  # the error was one worth retrying (its attempts are used up if final)


def is_final_failure(message: AdmittedMessage, error: BaseException) -> bool:
    """Whether ``error`` ends the message's running attempt for good (it will not be retried):
    what a pipeline reports to the middlewares around it as FastStream alone would."""
    outcome = message.lane.policy.classify(error)
    if outcome is Outcome.DEAD_LETTER:
        return True
    return outcome is Outcome.RETRY and message.attempt > message.lane.options.max_retries


def assess_failure(
    message: AdmittedMessage, error: BaseException, attempt: int, *, log_retry: bool = True
) -> Failure:
    """Sort a failed attempt by the policy; a retry is logged once, short, at INFO (it is not
    yet an error of the service), a stop is handed to the pipeline."""
    lane = message.lane
    if isinstance(error, TaskTimeoutError):
        lane.counters.task_timeouts += 1
    outcome = lane.policy.classify(error)
    if outcome is Outcome.DONE:
        return Failure(None, final=False, retried=False)
    if outcome is Outcome.STOP:
        lane.pipeline.stop_requested(error)
        return Failure(None, final=False, retried=False)
    options = lane.options
    if outcome is Outcome.RETRY and attempt <= options.max_retries:
        delay = backoff_delay(attempt, options.retry_backoff_sec, options.retry_backoff_max_sec)
        lane.counters.retries += 1
        if log_retry:
            lane.log.info(
                "Attempt %d of %s failed (%s); retrying in %.3f s",
                attempt,
                message.describe(),
                summary(error),
                delay,
                extra=message.log_extra(),
            )
        return Failure(delay, final=False, retried=True)
    return Failure(None, final=True, retried=outcome is Outcome.RETRY)


async def _after_failed_attempt(
    message: AdmittedMessage, error: BaseException, attempt: int
) -> bool:
    """An attempt failed: wait and say True to retry, or settle the failure and say False."""
    failure = assess_failure(message, error, attempt)
    if failure.retry_in is not None:
        await asyncio.sleep(failure.retry_in)
        return True
    if failure.final:
        message.error = error
        if not brake_holds(message, error, attempt):
            await _dead_letter_or_log(message, error, attempt, retried=failure.retried)
    return False


def brake_holds(message: AdmittedMessage, error: BaseException, attempts: int) -> bool:
    """Count a final failure with the dead-letter brake; True when the brake holds the
    message (tripped now or before): neither dead-lettered nor committed."""
    brake = message.lane.brake
    was_tripped = brake.tripped
    cause = brake.record_failure()
    if cause is None:
        return False
    _hold(message, error, attempts, cause, first=not was_tripped)
    return True


def _hold(
    message: AdmittedMessage, error: BaseException, attempts: int, cause: str, *, first: bool
) -> None:
    """The dead-letter brake is tripped: the message is neither dead-lettered nor committed
    (its offsets block the commit point), and its subscriber takes no new messages. The trip
    is logged once at ERROR; every message held after it once at WARNING."""
    lane = message.lane
    for _, tracker, offset in message.positions():
        tracker.block(offset)
    if first:
        lane.brake.held_at = message.describe()
        lane.log.error(
            "Dead-letter brake of %s tripped at %s: %s. Nothing from this message on is "
            "dead-lettered or committed and no new messages are taken; fix the cause and "
            "restart, processing resumes here",
            lane.name,
            message.describe(),
            cause,
            exc_info=log_traceback(error),
            extra=message.log_extra(),
        )
    else:
        lane.log.warning(
            "Message %s failed after %d attempt(s) (%s); held uncommitted by the tripped "
            "dead-letter brake",
            message.describe(),
            attempts,
            summary(error),
            extra=message.log_extra(),
        )
    if not lane.closing:
        lane.stop_taking()


def log_final_failure(
    message: AdmittedMessage, error: BaseException, attempts: int, *, retried: bool
) -> None:
    """The final failure, once at ERROR with its traceback, saying what happens next."""
    lane = message.lane
    topic = lane.options.dead_letter_topic
    outcome = (
        "committed without a dead-letter topic" if topic is None else f"dead-lettering to {topic!r}"
    )
    lane.log.error(
        "Message %s failed after %d attempt(s) (%s)%s; %s",
        message.describe(),
        attempts,
        summary(error),
        "" if retried else ", not retried",
        outcome,
        exc_info=log_traceback(error),
        extra=message.log_extra(),
    )


async def _dead_letter_or_log(
    message: AdmittedMessage, error: BaseException, attempts: int, *, retried: bool
) -> None:
    """Last attempt failed: logged once at ERROR with its traceback, then dead-lettered
    (retrying the publish until it succeeds) or committed as failed.

    The offset is only committed after this returns; a stuck dead-letter publish holds the
    partition's commit point, never skips past the message.
    """
    log_final_failure(message, error, attempts, retried=retried)
    lane = message.lane
    options = lane.options
    topic = options.dead_letter_topic
    if topic is None:
        return
    stuck = lane.dead_letter_stuck
    publish_attempt = 0
    try:
        while True:
            publish_attempt += 1
            try:
                await lane.pipeline.dead_letter(
                    topic, message.record, error, attempts, options.dead_letter_exception_text
                )
            except Exception as exc:
                if classify_publish_error(exc) is not PublishFailure.TRANSIENT:
                    give_up_dead_letter(message, topic, exc)
                    return
                stuck.add(message)
                delay = backoff_delay(
                    publish_attempt, options.retry_backoff_sec, options.retry_backoff_max_sec
                )
                lane.log.error(
                    "Dead-lettering %s to %r failed (%s); retrying in %.3f s, not committed",
                    message.describe(),
                    topic,
                    summary(exc),
                    delay,
                    extra=message.log_extra(),
                )
                await asyncio.sleep(delay)
            else:
                lane.counters.dead_lettered += 1
                if publish_attempt > 1:
                    lane.log.warning(
                        "Message %s dead-lettered to %r after %d publish attempt(s)",
                        message.describe(),
                        topic,
                        publish_attempt,
                        extra=message.log_extra(),
                    )
                return
    finally:
        stuck.discard(message)


def summary(error: BaseException | None) -> str:
    """An error for a log line: type and text, a validation error without the body it quotes."""
    return "no error" if error is None else f"{type(error).__name__}: {describe_exception(error)}"


def log_traceback(error: BaseException) -> BaseException | None:
    """What a log line's ``exc_info`` gets: none for an error whose text quotes the body (its
    traceback ends with that text; the line's summary names the fields and rules instead)."""
    return None if quotes_input(error) else error
