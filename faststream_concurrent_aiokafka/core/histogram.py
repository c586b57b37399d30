"""A fixed-bucket histogram of durations, for the opt-in processing time.

Pure: no I/O. ``observe`` is one bisect and two additions: it runs once per attempt of a
subscriber that asked for it (``measure_processing_time``), and its snapshot is read at
scrape time.
"""

from bisect import bisect_left
from dataclasses import dataclass
from typing import Final

BUCKETS_SEC: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Upper bounds (seconds) of the buckets, as Prometheus's ``le``; one more for the rest."""


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """Cumulative counts per upper bound (``float("inf")`` last), the sum and the count."""

    buckets: tuple[tuple[float, int], ...]
    sum: float
    count: int


class Histogram:
    __slots__ = ("_counts", "_sum")

    def __init__(self) -> None:
        self._counts = [0] * (len(BUCKETS_SEC) + 1)
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        self._counts[bisect_left(BUCKETS_SEC, seconds)] += 1
        self._sum += seconds

    def snapshot(self) -> HistogramSnapshot:
        cumulative, total = [], 0
        for bound, count in zip((*BUCKETS_SEC, float("inf")), self._counts, strict=True):
            total += count
            cumulative.append((bound, total))
        return HistogramSnapshot(tuple(cumulative), self._sum, total)
