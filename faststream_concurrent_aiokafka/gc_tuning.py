"""Opt-in garbage-collector settings for consumers with many handlers awaiting I/O at once.

Each message in flight keeps about a hundred container objects alive (mostly FastStream's
pipeline) while its handler awaits, and CPython's default first-generation threshold (700
allocations) runs the collector over them again and again: even with slot tasks, which keep
its counter low, about an eighth of the benchmark's limit-1000 run. A threshold above the
objects that messages in flight hold (about 100 x concurrency_limit) lets them finish before a
collection sees them. The library never changes the collector unless this is called: it is
process-wide, so it is the application's decision.
"""

import gc
from dataclasses import dataclass

# Above the ~90,000 objects 1000 awaiting messages hold, measured with the benchmark handler.
DEFAULT_GEN0_THRESHOLD = 100_000


@dataclass(frozen=True)
class GcThresholds:
    """The collector's thresholds before the call, to restore them with ``gc.set_threshold``."""

    gen0: int
    gen1: int
    gen2: int


def tune_garbage_collector(
    *, gen0_threshold: int = DEFAULT_GEN0_THRESHOLD, freeze: bool = False
) -> GcThresholds:
    """Raise the first-generation threshold (the other two stay); with ``freeze=True`` also
    move every object alive now (modules, app setup) out of all future collections.

    Call it once at start-up, after imports and app setup. Costs: cyclic garbage waits
    longer to be freed (at most ``gen0_threshold`` new objects), and a frozen object is never
    collected, even if it later becomes garbage.
    """
    if isinstance(gen0_threshold, bool) or not isinstance(gen0_threshold, int):
        msg = f"gen0_threshold must be an int, got {gen0_threshold!r}"
        raise ValueError(msg)
    if gen0_threshold < 1:
        msg = f"gen0_threshold must be at least 1, got {gen0_threshold}"
        raise ValueError(msg)
    before = GcThresholds(*gc.get_threshold())
    gc.set_threshold(gen0_threshold, before.gen1, before.gen2)
    if freeze:
        gc.freeze()
    return before
