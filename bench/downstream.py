"""A slow downstream for handlers to call, and skewed keys for ordered runs.

The downstream models a service whose latency grows with the calls it serves at once
(``quadratic``: 20 ms while at most 20 calls are in flight, 20 ms x (in_flight / 20)^2
beyond, each call capped at 5 s, so its throughput falls as concurrency grows past 20) or does
not (``flat``: 10 ms at any concurrency). A call's latency is fixed by the calls in flight when
it starts, itself included.

The keys follow Zipf's law (s = 1.1 over 10,000 keys by default): a few keys carry most of
the messages, as real entity ids do; with all-distinct keys a key-ordered run is an
unordered run in disguise.
"""

import asyncio
import bisect
import itertools
import random
from collections.abc import Callable
from typing import Final

QUADRATIC_KNEE: Final = 20  # calls in flight before the quadratic model slows down
QUADRATIC_BASE_SEC: Final = 0.02
CALL_CAP_SEC: Final = 5.0
FLAT_SEC: Final = 0.01


def quadratic_latency(in_flight: int) -> float:
    """20 ms up to 20 calls in flight, 20 ms x (in_flight / 20)^2 beyond, at most 5 s."""
    growth = max(1.0, (in_flight / QUADRATIC_KNEE) ** 2)
    return min(CALL_CAP_SEC, QUADRATIC_BASE_SEC * growth)


def flat_latency(_in_flight: int) -> float:
    """10 ms whatever the load."""
    return FLAT_SEC


MODELS: Final[dict[str, Callable[[int], float]]] = {
    "quadratic": quadratic_latency,
    "flat": flat_latency,
}


class Downstream:
    """The service of one worker process: counts its calls in flight."""

    def __init__(self, model: str) -> None:
        self.latency = MODELS[model]
        self.in_flight = 0
        self.calls = 0

    async def call(self) -> None:
        self.in_flight += 1
        self.calls += 1
        try:
            await asyncio.sleep(self.latency(self.in_flight))
        finally:
            self.in_flight -= 1


def zipf_keys(count: int, *, keys: int = 10_000, s: float = 1.1, seed: int = 28) -> list[int]:
    """``count`` key numbers in [0, keys), key k drawn with weight 1 / (k + 1)^s."""
    weights = itertools.accumulate(1.0 / (rank**s) for rank in range(1, keys + 1))
    cumulative = list(weights)
    total = cumulative[-1]
    draw = random.Random(seed).random
    return [bisect.bisect_left(cumulative, draw() * total) for _ in range(count)]
