"""The opt-in processing time (``measure_processing_time``): each attempt of a subscriber's
pipeline timed into the subscriber's histogram.

The lane's ``process`` is wrapped once, when the lane is made: a subscriber that did not ask
for it runs exactly the code it ran before, and one that did pays two clock reads and a
bucket increment per attempt.
"""

from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

from faststream_concurrent_aiokafka.core.histogram import Histogram


def timed(
    process: Callable[[Any], Awaitable[Any]], histogram: Histogram
) -> Callable[[Any], Awaitable[Any]]:
    """``process``, observing how long each call took (also when it raised)."""
    observe = histogram.observe

    async def run(record: Any) -> Any:
        started = perf_counter()
        try:
            return await process(record)
        finally:
            observe(perf_counter() - started)

    return run
