"""The token bucket behind ``max_messages_per_sec``: how many messages may start now, and how
long admission waits for the next one.

Pure: the time is passed in (seconds of a monotonic clock), nothing is read or slept here.
The bucket fills at ``rate`` tokens a second up to its burst, one second's worth (at least one
token), and starts full: an idle consumer may start a second's worth at once, then the rate
holds. Taking more than is there leaves a debt that later refills pay first, so the long-run
rate never exceeds ``rate`` whatever the callers take.
"""

import math
from typing import Final

# Refills are float sums: a token short by a rounding error counts as there.
_ROUNDING: Final = 1e-9


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` banked; one token per message admitted."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, now: float) -> None:
        if not (math.isfinite(rate) and rate > 0):
            msg = f"a token bucket needs a finite rate > 0, got {rate!r}"
            raise ValueError(msg)
        self.rate = rate
        self.burst = max(1.0, rate)
        self._tokens = self.burst
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def available(self, now: float) -> int:
        """Whole tokens there now: how many messages may start without waiting."""
        self._refill(now)
        return max(0, int(self._tokens + _ROUNDING))

    def take(self, count: int, now: float) -> None:
        """``count`` messages started; more than ``available`` leaves a debt."""
        self._refill(now)
        self._tokens -= count

    def wait_sec(self, now: float) -> float:
        """Seconds until a whole token is there (0 if one is)."""
        self._refill(now)
        return max(0.0, (1.0 - _ROUNDING - self._tokens) / self.rate)
