"""The token bucket behind ``max_messages_per_sec``: how many messages may start now, and how
long admission waits for the next one.

Pure: the time is passed in (seconds of a monotonic clock), nothing is read or slept here.

The burst: the bucket starts with one second's worth of tokens (at least one), so a consumer
that starts may start a second's worth at once; whatever of it is left after that first
second is dropped. From then on the bucket refills at ``rate`` tokens a second and banks at
most a tenth of a second's worth (at least one token): a consumer that fell behind (a slow
handler, a rebalance, a stall of the event loop) catches up by at most 10 % of a second's
messages, so no one-second window after the first starts more than 1.1 x ``rate`` messages.
Taking more than is there leaves a debt that later refills pay first, so the long-run rate
never exceeds ``rate`` whatever the callers take.
"""

import math
from typing import Final

BANKED_SEC: Final = 0.1  # after the first second: the most a bucket saves up, in seconds
STARTING_SEC: Final = 1.0  # the burst a new bucket starts with, in seconds of the rate

# Refills are float sums: a token short by a rounding error counts as there.
_ROUNDING: Final = 1e-9


class TokenBucket:
    """``rate`` tokens a second; one token per message admitted."""

    __slots__ = ("_stamp", "_start_ends", "_tokens", "banked", "rate")

    def __init__(self, rate: float, now: float) -> None:
        if not (math.isfinite(rate) and rate > 0):
            msg = f"a token bucket needs a finite rate > 0, got {rate!r}"
            raise ValueError(msg)
        self.rate = rate
        self.banked = max(1.0, rate * BANKED_SEC)
        self._tokens = max(1.0, rate * STARTING_SEC)
        self._stamp = now
        self._start_ends = now + STARTING_SEC

    def _refill(self, now: float) -> None:
        if now <= self._stamp:
            return
        if self._tokens < self.banked:
            self._tokens = min(self.banked, self._tokens + (now - self._stamp) * self.rate)
        elif now >= self._start_ends:
            self._tokens = self.banked  # the starting burst's rest is dropped
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
