"""Demo: the same I/O-bound consumer, first as FastStream runs it alone, then concurrently.

Run with ``scripts/demo.sh`` (starts a local Kafka) or, against a running broker,
``KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python -m examples.demo``.
"""

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    KafkaConcurrentProcessingMiddleware,
    initialize_concurrent_processing,
    processing_snapshot,
    stop_concurrent_processing,
)

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
PARTITIONS = 4


@dataclass
class Run:
    """What one consumer run saw."""

    name: str
    total: int
    seen: Counter[int] = field(default_factory=Counter)
    commits: int = 0
    started: float = 0.0
    finished: float = 0.0
    committed_all: bool = False

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    @property
    def rate(self) -> float:
        return len(self.seen) / self.seconds if self.seconds > 0 else 0.0

    @property
    def duplicates(self) -> int:
        return sum(count - 1 for count in self.seen.values())


class CommitCounter:
    """Counts commit requests sent by aiokafka consumers, whoever sends them."""

    def __init__(self) -> None:
        self.count = 0
        self._original: Callable[..., Awaitable[None]] = AIOKafkaConsumer.commit

    @asynccontextmanager
    async def counting(self) -> AsyncIterator[None]:
        original = self._original

        async def commit(consumer: AIOKafkaConsumer, *args: Any, **kwargs: Any) -> None:
            self.count += 1
            await original(consumer, *args, **kwargs)

        AIOKafkaConsumer.commit = commit
        try:
            yield
        finally:
            AIOKafkaConsumer.commit = original


async def prepare_topic(messages: int) -> str:
    topic = f"demo-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=10)
    await producer.start()
    try:
        for i in range(messages):
            await producer.send(topic, str(i).encode(), partition=i % PARTITIONS)
        await producer.flush()
    finally:
        await producer.stop()
    return topic


async def all_committed(group: str, topic: str) -> bool:
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=group)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
        committed = [await consumer.committed(tp) for tp in tps]
        return all(offset == ends[tp] for offset, tp in zip(committed, tps, strict=True))
    finally:
        await consumer.stop()


# Where standard output is not a terminal (CI, `| tee`, a container log), a plain line this
# often instead of a bar redrawn with carriage returns.
PLAIN_LINE_EVERY_SEC = 2.0


def engine_view(broker: KafkaBroker | None) -> str:
    """What the library is doing right now, from its snapshot (nothing for FastStream alone)."""
    if broker is None:
        return ""
    snapshot = processing_snapshot(broker)
    paused = sum(p.paused for p in snapshot.partitions() if p.assigned)
    queued = sum(p.queued + p.held for p in snapshot.partitions())
    return (
        f" | in flight {snapshot.in_flight:>4} queued {queued:>5} "
        f"paused {paused} uncommitted {snapshot.uncommitted:>5}"
    )


def progress_line(run: Run, broker: KafkaBroker | None, *, bar_width: int | None) -> str:
    count = len(run.seen)
    elapsed = time.monotonic() - run.started if run.started else 0.0
    rate = count / elapsed if elapsed > 0 else 0.0
    figures = f"{count:>6}/{run.total} {rate:>7.0f} msg/s{engine_view(broker)}"
    if bar_width is None:
        return f"  {run.name:<12} {figures}"
    filled = bar_width * count // run.total
    return f"  {run.name:<12} [{'#' * filled}{'.' * (bar_width - filled)}] {figures}"


async def show_progress(run: Run, done: asyncio.Event, broker: KafkaBroker | None) -> None:
    """A bar redrawn in place on a terminal; elsewhere a plain line every few seconds."""
    interactive = sys.stdout.isatty()
    interval = 0.2 if interactive else PLAIN_LINE_EVERY_SEC
    while True:
        if interactive:
            sys.stdout.write("\r" + progress_line(run, broker, bar_width=30) + "\033[K")
        else:
            sys.stdout.write(progress_line(run, broker, bar_width=None) + "\n")
        sys.stdout.flush()
        if done.is_set():
            if interactive:
                sys.stdout.write("\n")
            return
        try:
            await asyncio.wait_for(done.wait(), interval)
        except TimeoutError:
            continue


async def consume(topic: str, run: Run, latency: float, concurrent: bool, limit: int) -> None:
    group = f"{run.name}-{uuid.uuid4().hex[:6]}"
    broker = KafkaBroker(BOOTSTRAP, logger=None)
    if concurrent:
        broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    done = asyncio.Event()

    @broker.subscriber(
        topic,
        group_id=group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL if concurrent else AckPolicy.ACK,
    )
    async def handle(body: int) -> None:
        if not run.started:
            run.started = time.monotonic()
        await asyncio.sleep(latency)  # stands for a database or HTTP call
        run.seen[body] += 1
        if len(run.seen) == run.total and not done.is_set():
            run.finished = time.monotonic()
            done.set()

    counter = CommitCounter()
    async with counter.counting():
        if concurrent:
            await initialize_concurrent_processing(
                broker.context, concurrency_limit=limit, commit_batch_size=100
            )
        progress = asyncio.create_task(show_progress(run, done, broker if concurrent else None))
        await broker.start()
        await done.wait()
        await progress
        await broker.stop()
        if concurrent:
            await stop_concurrent_processing(broker.context)
    run.commits = counter.count
    run.committed_all = await all_committed(group, topic)


def print_table(runs: list[Run]) -> None:
    header = (
        f"{'mode':<12} {'messages':>8} {'seconds':>8} {'msg/s':>8} "
        f"{'commits':>8} {'duplicates':>10} {'all committed':>14}"
    )
    print("\n" + header)
    print("-" * len(header))
    for run in runs:
        print(
            f"{run.name:<12} {len(run.seen):>8} {run.seconds:>8.2f} {run.rate:>8.0f} "
            f"{run.commits:>8} {run.duplicates:>10} {'yes' if run.committed_all else 'NO':>14}"
        )
    if len(runs) == 2 and runs[0].rate > 0:
        print(f"\nconcurrent / sequential throughput: {runs[1].rate / runs[0].rate:.1f}x")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()

    print(f"Kafka at {BOOTSTRAP}: producing {args.messages} messages over {PARTITIONS} partitions")
    topic = await prepare_topic(args.messages)
    latency = args.latency_ms / 1000
    print(f"Each handler awaits {args.latency_ms:.0f} ms of simulated I/O.\n")
    sequential = Run("sequential", args.messages)
    await consume(topic, sequential, latency, concurrent=False, limit=1)
    concurrent = Run("concurrent", args.messages)
    await consume(topic, concurrent, latency, concurrent=True, limit=args.concurrency)
    print_table([sequential, concurrent])


if __name__ == "__main__":
    asyncio.run(main())
