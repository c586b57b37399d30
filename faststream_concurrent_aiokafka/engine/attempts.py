"""The one path of a failed message: its retries with backoff, its final failure (the
dead-letter brake, the ERROR line), and its dead letter, whoever runs it.

``Attempts.after_attempt`` is the loop; what differs is a method a subclass overrides:
``LaneAttempts`` for a lane's message (at-least-once), ``transactional_runner`` for an
exactly-once one (a failure after it published waits for its transaction's abort) and
``integration.inline`` for a message under ``TestKafkaBroker`` (failures raised to the test).
How far a message got is an ``AttemptRecord``, and ``resume`` goes on from one: the loop can
stop at a wait and be taken up again later, in another task.
"""

import asyncio
import contextvars
import dataclasses
import math
from typing import Any, Final, NamedTuple

from faststream_concurrent_aiokafka.core.dead_letters import PublishFailure, classify_publish_error
from faststream_concurrent_aiokafka.core.decode_errors import describe_exception, quotes_input
from faststream_concurrent_aiokafka.core.errors import TaskTimeoutError
from faststream_concurrent_aiokafka.core.failure_policy import (
    AttemptRecord,
    FailurePolicy,
    Outcome,
    backoff_delay,
)
from faststream_concurrent_aiokafka.core.settings import SubscriberSettings
from faststream_concurrent_aiokafka.engine.lost_dead_letters import give_up_dead_letter
from faststream_concurrent_aiokafka.engine.retry_topic import has_hop_left, send_later
from faststream_concurrent_aiokafka.engine.state import AdmittedMessage, Counters, Log

ATTEMPT: Final[contextvars.ContextVar[int]] = contextvars.ContextVar("attempt")
"""The number of the attempt running in this task, set for attempts after the first only (a
first attempt costs nothing; ``current_attempt`` reads 1 without it) and reset after it."""


def current_attempt() -> int:
    """Which attempt of its message the calling handler runs: 1 for the first."""
    return ATTEMPT.get(1)


class Failure(NamedTuple):
    """What a failed attempt leads to: another attempt after ``retry_in`` seconds, or a final
    failure (``final``), or neither (the message is settled: acknowledged, or stopping)."""

    retry_in: float | None
    final: bool
    retried: bool  # the error was one worth retrying (its attempts are used up if final)
    outcome: Outcome


class Attempts:
    """One message's attempts after one failed. Subclasses say how an attempt runs and what
    each step means where the message runs; the order of the steps is kept here."""

    __slots__ = ("counters", "log", "policy", "settings")

    def __init__(
        self, log: Log, settings: SubscriberSettings, policy: FailurePolicy, counters: Counters
    ) -> None:
        self.log = log
        self.settings = settings
        self.policy = policy
        self.counters = counters

    # ---- what each kind of message provides ---------------------------------------------

    async def attempt(self, number: int) -> BaseException | None:
        """Run the message once, its attempt ``number`` (from 1); its error, None when it
        succeeded."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def log_extra(self) -> dict[str, Any]:
        raise NotImplementedError

    async def publish_dead_letter(self, topic: str, error: BaseException, attempts: int) -> None:
        raise NotImplementedError

    # ---- steps that differ (the defaults: a lane's at-least-once message) -------------------

    def settled(self, error: BaseException, outcome: Outcome) -> bool:
        """The handler acknowledged (``DONE``) or asked to stop (``STOP``); True: finished."""
        del error, outcome
        return True

    def lost(self, error: BaseException) -> bool:
        """The attempt failed because where it runs went away (a transaction's abort): it runs
        again later. True stops here."""
        del error
        return False

    def published(self) -> bool:
        """The failed attempt's output cannot be taken back here (it is in a transaction)."""
        return False

    def defer(self, record: AttemptRecord) -> None:
        """Go on from ``record`` in a later run (see ``published``)."""
        raise NotImplementedError

    def fail(self, error: BaseException) -> None:
        """The message failed for good with ``error``."""
        del error

    def held_by_brake(self, record: AttemptRecord) -> bool:
        """Count the final failure with the dead-letter brake; True when the brake stops it."""
        del record
        return False

    def dead_letter_failed(
        self, record: AttemptRecord, topic: str, error: Exception, delay: float
    ) -> bool:
        """A dead-letter publish failed (``record`` counts it); True: try it again here after
        ``delay`` seconds."""
        del record
        self.log.error(
            "Dead-lettering %s to %r failed (%s); retrying in %.3f s, not committed",
            self.describe(),
            topic,
            summary(error),
            delay,
            extra=self.log_extra(),
        )
        return True

    def cannot_dead_letter(self, topic: str, error: Exception) -> bool:
        """The dead letter failed with an error no retry fixes, and was given up (True)."""
        del topic, error
        return False

    def dead_lettered(self, record: AttemptRecord, topic: str) -> bool:
        """The dead letter was acknowledged; True: finished."""
        if record.dead_letter_attempts:
            self.log.warning(
                "Message %s dead-lettered to %r after %d publish attempt(s)",
                self.describe(),
                topic,
                record.dead_letter_attempts + 1,
                extra=self.log_extra(),
            )
        return True

    def stuck(self, stuck: bool) -> None:
        """Its dead letter is failing (health reports it), or no longer."""
        del stuck

    async def later(self, record: AttemptRecord) -> bool:
        """The in-memory attempts are used up: True once the message was handed to the retry
        topic for a later attempt (``retry_topic``), finished here."""
        del record
        return False

    def park(self, record: AttemptRecord, delay: float) -> bool:
        """Wait for the next attempt outside the slot: True when the message was handed back
        to wait ``delay`` seconds and go on from ``record`` later (``resume_parked``)."""
        del record, delay
        return False

    async def wait(self, delay: float) -> None:
        """Wait before the next attempt or dead-letter publish, in the message's task."""
        await asyncio.sleep(delay)

    # ---- the path -----------------------------------------------------------------------

    def backoff(self, attempt: int) -> float:
        settings = self.settings
        return backoff_delay(attempt, settings.retry_backoff_sec, settings.retry_backoff_max_sec)

    async def resume(self, record: AttemptRecord | None) -> bool:
        """Run the message from where ``record`` left it (from the first attempt without
        one); True when it finished, False when it runs again later."""
        attempt = 0
        if record is not None:
            attempt = record.attempts
            if record.final:
                return await self.final(record)
            await self.wait(self.backoff(attempt))
        return await self.after_attempt(attempt + 1, await self.numbered(attempt + 1))

    async def numbered(self, number: int) -> BaseException | None:
        """Run attempt ``number`` with ``current_attempt()`` reading it in the handler."""
        if number == 1:
            return await self.attempt(1)
        token = ATTEMPT.set(number)
        try:
            return await self.attempt(number)
        finally:
            ATTEMPT.reset(token)

    async def resume_parked(self, record: AttemptRecord) -> bool:
        """Go on with a message that waited for its next attempt outside its slot (``park``):
        the wait is over, the attempt runs now."""
        attempt = record.attempts + 1
        return await self.after_attempt(attempt, await self.numbered(attempt))

    async def after_attempt(self, attempt: int, error: BaseException | None) -> bool:
        """Attempt number ``attempt`` ended with ``error``: retry until one succeeds or none is
        left, then the final failure. True when the message finished (its offsets may be
        committed), False when it runs again later."""
        while error is not None:
            if self.lost(error):
                return False
            published = self.published()
            failure = self.assess(error, attempt, log_retry=not published)
            if failure.retry_in is None and not failure.final:
                return self.settled(error, failure.outcome)
            record = AttemptRecord(attempt, error, failure.final, failure.retried)
            if published:
                self.defer(record)
                return False
            if failure.retry_in is None:
                return await self.later(record) or await self.final(record)
            if self.park(record, failure.retry_in):
                return False
            await self.wait(failure.retry_in)
            attempt += 1
            error = await self.numbered(attempt)
        return True

    def assess(self, error: BaseException, attempt: int, *, log_retry: bool = True) -> Failure:
        """Sort a failed attempt by the policy; a retry is logged once, short, at INFO (it is
        not yet an error of the service)."""
        if isinstance(error, TaskTimeoutError):
            self.counters.task_timeouts += 1
        outcome = self.policy.classify(error)
        if outcome is Outcome.DONE or outcome is Outcome.STOP:
            return Failure(None, final=False, retried=False, outcome=outcome)
        delay = self.next_delay(error, attempt, outcome)
        if delay is not None:
            self.counters.retries += 1
            if log_retry:
                self.log.info(
                    "Attempt %d of %s failed (%s); retrying in %.3f s",
                    attempt,
                    self.describe(),
                    summary(error),
                    delay,
                    extra=self.log_extra(),
                )
            return Failure(delay, final=False, retried=True, outcome=outcome)
        retried = attempt > 1 if self.settings.retry_policy else outcome is Outcome.RETRY
        return Failure(None, final=True, retried=retried, outcome=outcome)

    def next_delay(self, error: BaseException, attempt: int, outcome: Outcome) -> float | None:
        """Seconds before the next attempt, None for none. A ``retry_policy`` alone decides
        for every error but a rejection (``max_retries``, the backoff and ``no_retry_on`` do not
        apply); one that raises or answers something else than seconds ends the attempts."""
        settings = self.settings
        policy = settings.retry_policy
        if policy is None:
            if outcome is Outcome.RETRY and attempt <= settings.max_retries:
                return self.backoff(attempt)
            return None
        if isinstance(error, self.policy.dead_letter):
            return None
        try:
            delay = policy(error, attempt)
        except Exception as exc:
            self.log.error(
                "retry_policy raised %s for attempt %d of %s; no more attempts",
                summary(exc),
                attempt,
                self.describe(),
                extra=self.log_extra(),
            )
            return None
        if delay is None:
            return None
        if (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not (math.isfinite(delay) and delay >= 0)
        ):
            self.log.error(
                "retry_policy returned %r for attempt %d of %s, not seconds >= 0 or None; no "
                "more attempts",
                delay,
                attempt,
                self.describe(),
                extra=self.log_extra(),
            )
            return None
        return float(delay)

    async def final(self, record: AttemptRecord) -> bool:
        """No attempt is left: counted with the brake (once), logged once at ERROR with its
        traceback, then dead-lettered (each failed publish tried again after a backoff) or,
        without a dead-letter topic, given up. The offset is committed only after this
        returns True: a stuck dead letter holds the commit point, never skips the message."""
        self.fail(record.error)
        if not record.counted:
            if self.held_by_brake(record):
                return False
            self.log_final_failure(record)
            record = dataclasses.replace(record, counted=True)
        topic = self.settings.dead_letter_topic
        if topic is None:
            return True
        tries = record.dead_letter_attempts
        delay = self.backoff(tries) if tries else None
        try:
            while True:
                if delay is not None:
                    self.stuck(True)
                    await self.wait(delay)
                try:
                    await self.publish_dead_letter(topic, record.error, record.attempts)
                except Exception as exc:
                    if self.cannot_dead_letter(topic, exc):
                        return True
                    tries = record.dead_letter_attempts + 1
                    record = dataclasses.replace(record, dead_letter_attempts=tries)
                    delay = self.backoff(tries)
                    if not self.dead_letter_failed(record, topic, exc, delay):
                        return False
                    continue
                self.counters.dead_lettered += 1
                return self.dead_lettered(record, topic)
        finally:
            self.stuck(False)

    def log_final_failure(self, record: AttemptRecord) -> None:
        """The final failure, once at ERROR with its traceback, saying what happens next."""
        topic = self.settings.dead_letter_topic
        then = (
            "committed without a dead-letter topic"
            if topic is None
            else f"dead-lettering to {topic!r}"
        )
        self.log.error(
            "Message %s failed after %d attempt(s) (%s)%s; %s",
            self.describe(),
            record.attempts,
            summary(record.error),
            "" if record.retried else ", not retried",
            then,
            exc_info=log_traceback(record.error),
            extra=self.log_extra(),
        )


class LaneAttempts(Attempts):
    """The attempts of a message a lane admitted (at-least-once): made only once one failed,
    so the message that succeeds first time costs nothing here."""

    __slots__ = ("message",)

    def __init__(self, message: AdmittedMessage) -> None:
        lane = message.lane
        super().__init__(lane.log, lane.settings, lane.policy, lane.counters)
        self.message = message

    async def attempt(self, number: int) -> BaseException | None:
        message = self.message
        message.attempt = number
        try:
            await message.lane.process(message.record)
            error = message.attempt_error
        except (Exception, SystemExit) as exc:  # every failure goes through the policy
            error = exc
        message.attempt_error = None
        return error

    def describe(self) -> str:
        return self.message.describe()

    def log_extra(self) -> dict[str, Any]:
        return self.message.log_extra()

    async def publish_dead_letter(self, topic: str, error: BaseException, attempts: int) -> None:
        message = self.message
        await message.lane.pipeline.dead_letter(
            topic, message.record, error, attempts, self.settings.dead_letter_exception_text
        )

    def settled(self, error: BaseException, outcome: Outcome) -> bool:
        if outcome is Outcome.STOP:
            self.message.lane.pipeline.stop_requested(error)
        return True

    def fail(self, error: BaseException) -> None:
        self.message.error = error

    def cannot_dead_letter(self, topic: str, error: Exception) -> bool:
        """Too large, an invalid or unknown topic, not authorised: given up at once (see
        ``lost_dead_letters``), the message committed without its dead letter."""
        if classify_publish_error(error) is PublishFailure.TRANSIENT:
            return False
        give_up_dead_letter(self.message, topic, error)
        return True

    def held_by_brake(self, record: AttemptRecord) -> bool:
        return brake_stops(self.message, record.error, record.attempts)

    async def later(self, record: AttemptRecord) -> bool:
        if self.settings.retry_topic is None:
            return False
        return await send_later(self.message, record, self.wait, self.backoff)

    def park(self, record: AttemptRecord, delay: float) -> bool:
        """Its slot goes to other messages meanwhile: the scheduler settles it as waiting (it
        keeps its key, its place below the commit point and its uncommitted count) and hands
        it back to a slot, ahead of new records, once ``delay`` is over."""
        message = self.message
        if message.lane.closing:
            return False  # a stop or a tripped brake: wait here, as drains expect
        message.retry = dataclasses.replace(record, wait_sec=delay)
        return True

    def stuck(self, stuck: bool) -> None:
        message = self.message
        if stuck:
            message.lane.dead_letter_stuck.add(message)
        else:
            message.lane.dead_letter_stuck.discard(message)


def is_final_failure(message: AdmittedMessage, error: BaseException) -> bool:
    """Whether ``error`` ends the message's running attempt for good (it will not be retried):
    what a pipeline reports to the middlewares around it as FastStream alone would."""
    lane = message.lane
    outcome = lane.policy.classify(error)
    if lane.settings.retry_policy is not None:
        # The policy is asked once per failed attempt, after this: only a rejection is known.
        return isinstance(error, lane.policy.dead_letter)
    if outcome is Outcome.DEAD_LETTER:
        return True
    return (
        outcome is Outcome.RETRY
        and message.attempt > message.lane.settings.max_retries
        and not has_hop_left(message)  # it goes on in the retry topic
    )


def brake_stops(message: AdmittedMessage, error: BaseException, attempts: int) -> bool:
    """Count a final failure with the dead-letter brake; True when the brake stops the
    message (tripped now or before): neither dead-lettered nor committed."""
    brake = message.lane.brake
    was_tripped = brake.tripped
    cause = brake.record_failure()
    if cause is None:
        return False
    _brake_message(message, error, attempts, cause, first=not was_tripped)
    return True


def _brake_message(
    message: AdmittedMessage, error: BaseException, attempts: int, cause: str, *, first: bool
) -> None:
    """The dead-letter brake is tripped: the message is neither dead-lettered nor committed
    (its offsets block the commit point), and its subscriber takes no new messages. The trip
    is logged once at ERROR; every message braked after it once at WARNING."""
    lane = message.lane
    if lane.brake.recovers:
        _brake_for_a_cooldown(message, error, attempts, cause)
        return
    for _, tracker, offset in message.positions():
        tracker.block(offset)
    if first:
        lane.brake.tripped_at = message.describe()
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
        lane.close_admission()


def _brake_for_a_cooldown(
    message: AdmittedMessage, error: BaseException, attempts: int, cause: str
) -> None:
    """``brake_cooldown_sec``: the message waits out the cooldown as a waiting retry (its key,
    its place below the commit point kept); the subscriber starts nothing and fetches nothing
    until then, then tries one message (half-open). A trip, or a failed try, restarts the
    cooldown, logged once at ERROR."""
    lane = message.lane
    brake = lane.brake
    cooldown = brake.cooldown_sec
    assert cooldown is not None
    now = asyncio.get_running_loop().time()
    if now >= brake.reopen_at:
        brake.reopen_at = now + cooldown
        if brake.tripped_at is None:
            brake.tripped_at = message.describe()
        lane.fetching.pause()
        lane.log.error(
            "Dead-letter brake of %s tripped at %s: %s. Nothing is dead-lettered, committed "
            "past it or started for %g s (brake_cooldown_sec), then one message is tried",
            lane.name,
            message.describe(),
            cause,
            cooldown,
            exc_info=log_traceback(error),
            extra=message.log_extra(),
        )
    record = AttemptRecord(attempts, error, final=False, retried=True, counted=True)
    message.retry = dataclasses.replace(record, wait_sec=max(brake.reopen_at - now, 0.0))


def summary(error: BaseException | None) -> str:
    """An error for a log line: type and text, a validation error without the body it quotes."""
    return "no error" if error is None else f"{type(error).__name__}: {describe_exception(error)}"


def log_traceback(error: BaseException) -> BaseException | None:
    """What a log line's ``exc_info`` gets: none for an error whose text quotes the body (its
    traceback ends with that text; the line's summary names the fields and rules instead)."""
    return None if quotes_input(error) else error
