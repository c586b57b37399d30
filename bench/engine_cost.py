"""The engine's own CPU cost per message, without a broker: admission, slots, settling and
offset tracking around a no-op pipeline, fed in fetch-sized batches.

    python -m bench.engine_cost [--messages 200000] [--batch 200] [--limit 100] [--repeat 5]

A microbenchmark for the no-op's bookkeeping (docs/benchmarks.md, "The no-op's own cost"):
FastStream's pipeline and aiokafka are left out, so what it prints is what this library adds
per message, free of the broker's and the machine's noise (CPU time of the process, median of
the repeats). Uses the unit tests' fake consumer (``tests.fakes``); run from the repository
root. Nothing here asserts a speed.
"""

import argparse
import asyncio
import gc
import logging
import statistics
import sys
import time
from typing import Any

from aiokafka import ConsumerRecord

from faststream_concurrent_aiokafka.core.failure_policy import FailurePolicy
from faststream_concurrent_aiokafka.core.settings import ConcurrencySettings, SubscriberSettings
from faststream_concurrent_aiokafka.engine.engine import Engine
from tests.fakes import FakeConsumer, tp

TOPIC = "t"


class NoopPipeline:
    """The engine's ``Pipeline`` with a handler that returns at once."""

    policy = FailurePolicy()
    name = "noop"
    group = "bench"
    topics = (TOPIC,)
    owner = object()

    def __init__(self, settings: SubscriberSettings) -> None:
        self._settings = settings
        self.handled = 0
        self.target = 0
        self.reached = asyncio.Event()

    def settings(self) -> SubscriberSettings:
        return self._settings

    def logger(self) -> Any:
        return logging.getLogger("bench.engine_cost")

    async def process(self, record: Any) -> None:
        self.handled += 1
        if self.handled == self.target:
            self.reached.set()


async def one_run(messages: int, batch: int, limit: int, partitions: int) -> float:
    """CPU microseconds per message of one run."""
    engine = Engine(ConcurrencySettings(concurrency_limit=limit))
    await engine.start()
    consumer = FakeConsumer(assignment=[tp(p) for p in range(partitions)])
    pipeline = NoopPipeline(SubscriberSettings())
    lane = engine.lane_for(consumer, pipeline)  # type: ignore[arg-type]
    per = -(-messages // partitions)  # a fetch brings runs of one partition's records
    records = [
        ConsumerRecord(TOPIC, index // per, index % per, 0, 0, None, b"1", None, 0, 1, [])
        for index in range(messages)
    ]
    gc.collect()
    started = time.process_time()
    for first in range(0, messages, batch):
        pipeline.target = min(messages, first + batch)
        pipeline.reached.clear()
        engine.admit(lane, records[first : first + batch])
        await pipeline.reached.wait()
    spent = time.process_time() - started
    assert engine.counters.processed == messages, engine.counters.processed
    await engine.close()
    return spent / messages * 1e6


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=200, help="records per admission (fetch)")
    parser.add_argument("--limit", type=int, default=100, help="concurrency_limit")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    costs = [
        asyncio.run(one_run(args.messages, args.batch, args.limit, args.partitions))
        for _ in range(args.repeat)
    ]
    print(
        f"engine CPU per message: {statistics.median(costs):.2f} us (median of {args.repeat}; "
        f"{', '.join(f'{c:.2f}' for c in costs)}), {args.messages:,} messages in batches of "
        f"{args.batch}, limit {args.limit}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
