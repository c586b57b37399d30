"""How long the at-least-once set-up takes to read commit metadata claims, and what it keeps:
the bitmap the library decodes into against the set of ints it decoded into before. Pure CPU,
no broker: ``python -m bench.metadata_claims``. Nothing here asserts a speed."""

import random
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from faststream_concurrent_aiokafka.core.offset_codec import (
    decode_finished_bitmap,
    decode_finished_offsets,
    encode_finished_offsets,
)

SPAN = 1 << 20
PARTITIONS = 20
CASES = {
    "2**20 offsets, one run": range(1, SPAN + 1),
    "every other of 2**20": range(1, SPAN + 1, 2),
    "a random half of 64,000": random.Random(1).sample(range(1, 64_001), 32_000),
}


def measure(decode: Callable[[str, int], Any], metadata: str) -> tuple[float, int]:
    """Seconds to decode ``PARTITIONS`` claims, and bytes one decoded claim keeps."""
    started = time.perf_counter()
    for _ in range(PARTITIONS):
        decode(metadata, 0)
    elapsed = time.perf_counter() - started
    tracemalloc.start()
    try:
        kept = decode(metadata, 0)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del kept
    return elapsed, held


def main() -> None:
    print(f"| claim | characters | decoded as | {PARTITIONS} partitions | kept per partition |")
    print("|---|---|---|---|---|")
    for name, finished in CASES.items():
        metadata = encode_finished_offsets(0, finished)
        for label, decode in (
            ("bitmap", decode_finished_bitmap),
            ("set of ints", decode_finished_offsets),
        ):
            elapsed, held = measure(decode, metadata)
            print(
                f"| {name} | {len(metadata)} | {label} | {elapsed * 1000:.0f} ms "
                f"| {held / 2**20:.2f} MiB |"
            )


if __name__ == "__main__":
    main()
