"""The dead-letter brake: a subscriber whose messages fail for good too often stops.

Pure: no I/O. A bad deploy that makes every message fail would otherwise dead-letter (or
give up) and commit the whole stream. The brake counts a subscriber's final failures against
its successes; past a limit it trips, and the engine then holds the failing message
uncommitted, stops taking new messages and reports why until a restart. Two limits, either or
both (arroyo's ``DlqLimit`` has the same two): failures in a row, and the share of failures
among the last messages.

Successes are counted by the engine as messages end (one increment on ``succeeded``);
failures are recorded here, when a message failed for good and before it is dead-lettered,
so the decision comes before anything is published or committed.
"""

from collections import deque


class DeadLetterBrake:
    """The brake state of one subscriber (shared by its consumers)."""

    __slots__ = (
        "_consecutive",
        "_failed",
        "_recent",
        "_succeeded_at_last_failure",
        "cause",
        "cooldown_sec",
        "failure_ratio_window",
        "max_consecutive_failures",
        "max_failure_ratio",
        "reopen_at",
        "succeeded",
        "tripped_at",
    )

    def __init__(
        self,
        *,
        max_consecutive_failures: int | None = None,
        max_failure_ratio: float | None = None,
        failure_ratio_window: int = 100,
        cooldown_sec: float | None = None,
    ) -> None:
        # brake_cooldown_sec: None stays tripped until a restart; else one message is tried
        # once ``reopen_at`` (a monotonic time the engine sets when it trips) has passed.
        self.cooldown_sec = cooldown_sec
        self.reopen_at = 0.0
        self.max_consecutive_failures = max_consecutive_failures
        self.max_failure_ratio = max_failure_ratio
        self.failure_ratio_window = failure_ratio_window
        self.succeeded = 0  # messages of the subscriber that ended without an error
        self.cause: str | None = None  # why it tripped; None while it has not
        self.tripped_at: str | None = None  # the first message it held (set by the engine)
        self._failed = 0
        self._consecutive = 0
        self._succeeded_at_last_failure = 0
        # Position (in ended messages) of each failure among the last window's messages.
        self._recent: deque[int] = deque()

    @property
    def enabled(self) -> bool:
        return self.max_consecutive_failures is not None or self.max_failure_ratio is not None

    @property
    def tripped(self) -> bool:
        return self.cause is not None

    @property
    def recovers(self) -> bool:
        return self.cooldown_sec is not None

    def reset(self) -> None:
        """A message tried after the cooldown succeeded: counting starts afresh."""
        self.cause = None
        self.tripped_at = None
        self._consecutive = 0
        self._recent.clear()

    def record_failure(self) -> str | None:
        """A message failed for good. None: let it through (dead-letter it, or give it up);
        otherwise the brake is tripped (by this failure or earlier) and this says why: the
        message must be held, not dead-lettered or committed."""
        if self.cause is not None or not self.enabled:
            return self.cause
        self._failed += 1
        if self.succeeded != self._succeeded_at_last_failure:
            self._consecutive = 0
            self._succeeded_at_last_failure = self.succeeded
        self._consecutive += 1
        limit = self.max_consecutive_failures
        if limit is not None and self._consecutive > limit:
            self.cause = (
                f"{self._consecutive} messages in a row failed (max_consecutive_failures={limit})"
            )
            return self.cause
        ratio = self.max_failure_ratio
        if ratio is not None:
            window = self.failure_ratio_window
            ended = self.succeeded + self._failed
            recent = self._recent
            recent.append(ended)
            while recent[0] <= ended - window:
                recent.popleft()
            if ended >= window and len(recent) > ratio * window:
                self.cause = (
                    f"{len(recent)} of the last {window} messages failed "
                    f"(max_failure_ratio={ratio})"
                )
        return self.cause
