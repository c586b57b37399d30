"""What a failed attempt means and how long to wait before the next one.

Pure: no I/O. The exception types that carry a meaning (FastStream's acknowledgement and stop
exceptions) are handed in by the integration layer, so the policy itself knows no framework.
"""

import dataclasses
import enum
import random
from dataclasses import dataclass

from faststream_concurrent_aiokafka.core.errors import OrderingKeyError

ExceptionTypes = tuple[type[BaseException], ...]


class Outcome(enum.Enum):
    DONE = "done"  # success, or the handler said the message is settled (ack / skip)
    RETRY = "retry"  # a failure: try again while attempts remain, then dead-letter
    DEAD_LETTER = "dead_letter"  # rejected, or not worth retrying: dead-letter now
    STOP = "stop"  # the handler asked to stop consuming (or the app): done, then stop


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    """Sorts an attempt's exception into an ``Outcome``; anything not listed is retried.

    ``no_retry`` holds the user's errors not worth retrying (``no_retry_on``); they are read
    after the control exceptions, so listing ``Exception`` never turns an ack into a failure.
    """

    done: ExceptionTypes = ()
    dead_letter: ExceptionTypes = ()
    stop: ExceptionTypes = ()
    no_retry: ExceptionTypes = ()

    def classify(self, error: BaseException | None) -> Outcome:
        if error is None:
            return Outcome.DONE
        if isinstance(error, self.stop):
            return Outcome.STOP
        if isinstance(error, self.done):
            return Outcome.DONE
        if isinstance(error, (self.dead_letter, self.no_retry)):  # nested: no copy
            return Outcome.DEAD_LETTER
        if isinstance(error, OrderingKeyError):  # the key function would fail again
            return Outcome.DEAD_LETTER
        return Outcome.RETRY

    def with_no_retry(self, no_retry: ExceptionTypes) -> "FailurePolicy":
        """This policy, with ``no_retry`` as the errors that are not retried."""
        return dataclasses.replace(self, no_retry=tuple(no_retry))


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential delay after failed attempt ``attempt`` (1-based), with jitter in [50%, 100%].

    The jitter spreads retries of messages that failed together, so they do not hit a
    recovering dependency at the same instant.
    """
    exponential = min(cap, base * 2.0 ** min(attempt - 1, 62))
    return exponential * (0.5 + 0.5 * (rng or random).random())


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """How far a message's attempts went, enough to go on from there in a later run: after
    its transaction was aborted (exactly-once), or after a wait for its next attempt spent
    outside its slot (at-least-once)."""

    attempts: int  # attempts made
    error: BaseException  # the last one's error
    final: bool  # no attempt is left: dead-letter it (or give it up) without running it
    retried: bool  # the error was one worth retrying (for the log line)
    counted: bool = False  # its final failure was counted by the dead-letter brake already
    dead_letter_attempts: int = 0  # failed dead-letter publishes (backoff before the next)
    wait_sec: float = 0.0  # the wait before its next attempt, spent outside its slot
    hop: int = 0  # read back from the retry topic on this hop (0: not from the retry topic)
