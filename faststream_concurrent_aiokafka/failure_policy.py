"""What a failed attempt means and how long to wait before the next one.

Pure: no I/O. FastStream's control exceptions get a fixed meaning here, so none of them can
commit past work still in flight or stop the consumer.
"""

import enum
import random

from faststream.exceptions import AckMessage, RejectMessage, SkipMessage


class Outcome(enum.Enum):
    DONE = "done"  # success, or the handler said the message is settled (ack / skip)
    RETRY = "retry"  # a failure: try again while attempts remain, then dead-letter
    DEAD_LETTER = "dead_letter"  # the handler rejected it: dead-letter now, no retries


def classify(error: BaseException | None) -> Outcome:
    """``AckMessage``/``SkipMessage`` = done, ``RejectMessage`` = dead-letter, the rest retry."""
    if error is None or isinstance(error, AckMessage | SkipMessage):
        return Outcome.DONE
    if isinstance(error, RejectMessage):
        return Outcome.DEAD_LETTER
    return Outcome.RETRY


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential delay after failed attempt ``attempt`` (1-based), with jitter in [50%, 100%].

    The jitter spreads retries of messages that failed together, so they do not hit a
    recovering dependency at the same instant.
    """
    exponential = min(cap, base * 2.0 ** min(attempt - 1, 62))
    return exponential * (0.5 + 0.5 * (rng or random).random())
