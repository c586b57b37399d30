"""The adaptive concurrency limit behind ``adaptive_concurrency=True``: how many handler calls
may run at once, following the handler's measured latency and failures.

Pure: latencies and times are passed in, nothing is measured here.

The algorithm (after Netflix's concurrency-limits: Gradient2's latency ratio, Vegas's bands,
AIMD's cut on drops, BBR's baseline probe and its eye on the delivery rate). Finished calls are
averaged over windows of about one round of the limit (``limit`` samples, at least
``MIN_WINDOW``, only calls started under the limit in force). The baseline is the average
latency of an unloaded window: the lowest window average seen, taken afresh every
``PROBE_EVERY_SEC`` from a window run at half the limit, so a downstream that became slower for
good is relearned instead of starving the consumer. Each window's ``ratio = average /
baseline`` says how much the calls waited beyond their own work, and its rate (calls ended per
second, smoothed over windows) whether that wait bought throughput. Below ``NO_QUEUE``, or
while the rate is at its best (``RATE_AT_BEST``: the last growth paid), the limit grows by
``GROWTH`` (10 %); below ``GROW_BELOW``, or higher while the rate keeps up (a handler
bound by the event loop itself: more calls wait longer, as many end), it grows by
``log10(limit)`` (at least 1); both only if the window used at least half of it. Above
``SHRINK_ABOVE`` with the rate fallen under ``RATE_FELL`` of the best since the probe (a
downstream that serves less the more it is given) the limit moves half way towards the one
that would bring the ratio back to ``GROW_BELOW``, ``limit * GROW_BELOW / ratio``, by a quarter
at the most (``SHRINK_AT_MOST``); otherwise it stays. Latencies under ``LATENCY_FLOOR_SEC`` are
the event loop's scheduling, not a downstream's: a faster handler's ratio is taken against it.
More than ``FAILURE_SHARE`` of the window's calls failed (an error or a timeout): the
limit is cut by ``FAILURE_CUT``, whatever the latency says; failed calls' latencies are left
out of the average (a fast failure is no baseline). The limit stays between the floor and the
ceiling (``concurrency_limit``). Each sample costs a few additions; the arithmetic runs once
per window.
"""

import math
from typing import Final

MIN_WINDOW: Final = 10  # samples: fewer say little about a latency average
PROBE_EVERY_SEC: Final = 10.0  # how often the baseline is measured again at half the limit
FAILURE_SHARE: Final = 0.1  # more failed calls than this in a window read as overload
FAILURE_CUT: Final = 0.9  # ... and cut the limit by 10 %
GROWTH: Final = 1.1  # nothing queues: grow by 10 % a window
NO_QUEUE: Final = 1.1  # latency ratios below this: nothing queues
GROW_BELOW: Final = 1.2  # ... below this: a little queues, the limit still grows
SHRINK_ABOVE: Final = 1.4  # ... above this: the downstream queues calls, the limit shrinks
RATE_FELL: Final = 0.85  # ... if the rate fell under this share of the best since the probe
SHRINK_AT_MOST: Final = 0.75  # ... by a quarter a window at the most
# Latencies below this are the event loop's own scheduling, not a downstream's: the ratio of
# a handler this fast is taken against it.
LATENCY_FLOOR_SEC: Final = 0.001
RATE_AT_BEST: Final = 0.97  # ... at this share of the best or above, growth still pays
RATE_SMOOTHING: Final = 0.25  # weight of a window's rate in the smoothed one
FLOOR: Final = 1
INITIAL: Final = 10  # the library's default concurrency_limit: where a limit starts


def _step(limit: float) -> float:
    return max(1.0, math.log10(limit))


class AdaptiveLimit:
    """The current limit between ``floor`` and ``ceiling``; fed one sample per finished call."""

    __slots__ = (
        "_baseline",
        "_best_rate",
        "_count",
        "_failures",
        "_first_end",
        "_limit",
        "_max_in_flight",
        "_next_probe",
        "_probe_start",
        "_rate",
        "_samples",
        "_since",
        "_sum",
        "ceiling",
        "floor",
        "limit",
        "windows",
    )

    def __init__(self, ceiling: int, now: float, *, floor: int = FLOOR) -> None:
        if not 1 <= floor < ceiling:
            msg = f"an adaptive limit needs 1 <= floor < ceiling, got {floor} and {ceiling}"
            raise ValueError(msg)
        self.floor, self.ceiling = floor, ceiling
        self._limit = float(min(ceiling, max(floor, INITIAL)))
        self.limit = int(self._limit)  # what admission reads: the whole calls allowed now
        self._baseline = math.inf
        self._next_probe = now + PROBE_EVERY_SEC
        self._probe_start: float | None = None  # while measuring the baseline at half
        self._since = now  # the limit changed last: calls started before tell of the old one
        self._rate: float | None = None  # calls ended per second, smoothed over windows
        self._best_rate = 0.0  # the highest smoothed rate since the last probe
        self.windows = 0  # windows closed: how often the limit was reconsidered
        self._reset_window()

    @property
    def baseline_sec(self) -> float | None:
        """The unloaded latency the queue is estimated against (None until measured)."""
        return None if math.isinf(self._baseline) else self._baseline

    def _reset_window(self) -> None:
        self._samples = 0
        self._sum = 0.0  # latencies of the calls that succeeded: a fast failure is no baseline
        self._count = 0
        self._failures = 0
        self._max_in_flight = 0
        self._first_end: float | None = None

    def sample(self, latency_sec: float, *, failed: bool, in_flight: int, now: float) -> None:
        """A call that started ``latency_sec`` ago ended at ``now`` while ``in_flight`` calls
        ran (itself included)."""
        if now - latency_sec < self._since:
            return  # started under an older limit: says nothing of this one
        self._samples += 1
        if self._first_end is None:
            self._first_end = now
        if failed:
            self._failures += 1
        else:
            self._sum += latency_sec
            self._count += 1
        self._max_in_flight = max(self._max_in_flight, in_flight)
        if self._samples >= max(MIN_WINDOW, self.limit):
            self._close_window(now)

    def _close_window(self, now: float) -> None:
        self.windows += 1
        samples, failures, used = self._samples, self._failures, self._max_in_flight
        average = self._sum / self._count if self._count else None
        first_end = self._first_end
        self._reset_window()
        if self._probe_start is not None and average is not None:
            self._probe_start = None
            self._baseline = average
            self._best_rate = self._rate or 0.0  # the best rate is relearned too
            self._set(self._limit, now)
            return
        if first_end is not None and now > first_end and self._probe_start is None:
            self._measure_rate((samples - 1) / (now - first_end))
        if failures > FAILURE_SHARE * samples:
            self._set(self._limit * FAILURE_CUT, now)
        elif average is not None:
            self._baseline = min(self._baseline, average)
            self._adjust(average, used, now)
        if now >= self._next_probe:
            self._next_probe = now + PROBE_EVERY_SEC
            self._probe_start = self._since = now
            self.limit = max(self.floor, self.limit // 2)

    def _measure_rate(self, rate: float) -> None:
        smoothed = rate if self._rate is None else self._rate + RATE_SMOOTHING * (rate - self._rate)
        self._rate = smoothed
        self._best_rate = max(self._best_rate, smoothed)

    @property
    def _rate_fell(self) -> bool:
        """The smoothed rate is well below the best seen since the last probe: the calls
        queued by the limit now cost throughput, not only latency."""
        return self._rate is not None and self._rate < RATE_FELL * self._best_rate

    @property
    def _rate_rising(self) -> bool:
        """The smoothed rate is at the best seen since the probe: the last growth paid."""
        return self._rate is not None and self._rate >= RATE_AT_BEST * self._best_rate

    def _adjust(self, average: float, used: int, now: float) -> None:
        limit = self._limit
        ratio = average / max(self._baseline, LATENCY_FLOOR_SEC)
        if ratio > SHRINK_ABOVE and self._rate_fell:
            target = (limit + limit * GROW_BELOW / ratio) / 2
            self._set(max(target, limit * SHRINK_AT_MOST), now)
        elif 2 * used < limit:
            return  # the window did not use the limit: it says nothing about a higher one
        elif ratio < NO_QUEUE or self._rate_rising:
            self._set(max(limit * GROWTH, limit + _step(limit)), now)
        elif ratio < GROW_BELOW or not self._rate_fell:
            self._set(limit + _step(limit), now)

    def _set(self, limit: float, now: float) -> None:
        self._limit = min(float(self.ceiling), max(float(self.floor), limit))
        if int(self._limit) != self.limit:
            self.limit = int(self._limit)
            self._since = now
