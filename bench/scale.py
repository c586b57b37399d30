"""A thousand partitions in one consumer, against eight at the same load (issue 30).

``python -m bench.scale --bootstrap HOST:PORT [--messages N] [--repeat R] [--out docs]``

Each run is a fresh process (``--child``) so its resident set is its own. The parent creates
the topics, pre-produces the messages round-robin over every partition (the same total for
every layout: the same load), prepares the commit metadata, and writes the report
(``docs/benchmarks-scale.md``) and the raw results (``bench/results/scale-results.json``).

Layouts: one topic of 8 partitions, 10 topics of 100 partitions, one topic of 1,000
partitions. Per run: throughput from the first handled message to the last (no-op handler,
``concurrency_limit=100``, ``commit_batch_size=100``), the resident set per partition against
the 8-partition run, a rebalance (a second member joins, then leaves), and the commit
requests. The set-up run gives every partition commit metadata of about 4 KiB to decode
first. A last run reads messages of 1 MB. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata
from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from bench.kafka_io import produce, unique
from bench.measure import _rss_bytes
from bench.run import load_average, machine_info
from faststream_concurrent_aiokafka import (
    KafkaConcurrentProcessingMiddleware,
    initialize_concurrent_processing,
    stop_concurrent_processing,
)
from faststream_concurrent_aiokafka.core.offset_codec import encode_finished_offsets
from faststream_concurrent_aiokafka.engine.committer import split_commit

LAYOUTS = {"8 partitions": (1, 8), "10 topics x 100": (10, 100), "1 topic x 1000": (1, 1000)}
SETTINGS = {"concurrency_limit": 100, "commit_batch_size": 100, "commit_batch_timeout_sec": 1.0}
MB = 1_000_000
MB_FETCH = {"max_partition_fetch_bytes": 2 * 1024 * 1024, "fetch_max_bytes": 16 * 1024 * 1024}
MB_MESSAGES = 400
MB_PARTITIONS = 8
MB_UNCOMMITTED = 64
# Claims per partition: a random half of this span encodes to just under 4,096 characters.
CLAIM_SPAN = 30_000


class LoopLag:
    """The longest the event loop was late for a 5 ms tick: how long something blocked it."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, loop.time() - before - 0.005)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


class Watch:
    """The times the bench reads: assignments (start and end of the library's set-up, the
    number of partitions) and the handled messages."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.handled = 0
        self.first: float | None = None
        self.last = 0.0
        self.done = asyncio.Event()
        self.assignments: list[tuple[float, float, int]] = []
        self.assigned = asyncio.Event()

    def handle(self) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.handled += 1
        self.last = now
        if self.handled >= self.target:
            self.done.set()


def _instrument(handler: Any, watch: Watch) -> None:
    """Time the library's own assignment set-up (claims read, trackers made)."""
    original = handler.partitions_assigned

    async def timed(subscriber: Any, assigned: set[TopicPartition]) -> None:
        started = time.perf_counter()
        await original(subscriber, assigned)
        watch.assignments.append((started, time.perf_counter(), len(assigned)))
        watch.assigned.set()

    handler.partitions_assigned = timed


async def _next_assignment(
    watch: Watch, seen: int, count: int, timeout: float
) -> tuple[float, float, int]:
    """The first assignment of ``count`` partitions after the first ``seen`` ones."""
    async with asyncio.timeout(timeout):
        while True:
            watch.assigned.clear()
            for entry in watch.assignments[seen:]:
                if entry[2] == count:
                    return entry
            await watch.assigned.wait()


async def _rebalance(
    args: argparse.Namespace, topics: list[str], total: int, watch: Watch
) -> dict[str, float]:
    """A second member joins (this one keeps about half), then leaves (all back here)."""
    other = AIOKafkaConsumer(
        *topics, bootstrap_servers=args.bootstrap, group_id=args.group, enable_auto_commit=False
    )
    seen, joined = len(watch.assignments), time.perf_counter()
    await other.start()  # returns once the group is joined: this consumer may be set up by then
    half = await _next_assignment(watch, seen, total - total // 2, 120)
    join_sec = half[1] - joined
    seen, left = len(watch.assignments), time.perf_counter()
    await other.stop()
    back = await _next_assignment(watch, seen, total, 120)
    return {"join_sec": join_sec, "leave_sec": back[1] - left, "join_setup_sec": half[1] - half[0]}


async def child(args: argparse.Namespace) -> dict[str, Any]:
    topics = args.topics.split(",")
    watch = Watch(args.count)
    broker = KafkaBroker(args.bootstrap, logger=None)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    app = FastStream(broker, logger=None)
    fetch: dict[str, Any] = dict(MB_FETCH) if args.mode == "mb" else {}
    subscriber = broker.subscriber(
        *topics,
        group_id=args.group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        **fetch,
    )

    async def handle(body: Any) -> None:
        watch.handle()

    subscriber(handle)

    settings = dict(SETTINGS)
    if args.mode == "mb":
        settings["max_uncommitted_tasks"] = MB_UNCOMMITTED
    handler = await initialize_concurrent_processing(app.context, **settings)  # type: ignore[arg-type]
    _instrument(handler, watch)
    lag = LoopLag()
    rss_before = _rss_bytes()
    lag.start()
    started = time.perf_counter()
    await broker.start()
    result: dict[str, Any] = {"rss_before": rss_before}
    try:
        if args.mode == "setup":
            async with asyncio.timeout(300):
                await watch.done.wait()  # the target of a set-up run is its first message
            assigned, first = watch.assignments[0], watch.first or 0.0
            result |= {
                "setup_sec": assigned[1] - assigned[0],
                "assign_to_first_sec": first - assigned[0],
                "start_to_first_sec": first - started,
                "loop_lag_max_sec": lag.worst,
                "skipped": sum(c.claims_accepted for _, c in handler.engine.counters_by_pipeline()),
            }
        else:
            async with asyncio.timeout(600):
                await watch.done.wait()
            print(f"handled {watch.handled}", file=sys.stderr)
            result |= {
                "handled": watch.handled,
                "window_sec": watch.last - (watch.first or watch.last),
                "rate": (watch.handled - 1) / max(watch.last - (watch.first or 0.0), 1e-9),
                "rss_steady": _rss_bytes(),
                "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "commit_requests": handler.engine.committer.commit_requests,
                "loop_lag_max_sec": lag.worst,
            }
            if args.mode == "throughput":
                result |= await _rebalance(args, topics, args.partitions, watch)
    finally:
        lag.stop()
        stopping = time.perf_counter()
        await broker.stop()
        await stop_concurrent_processing(app.context)
        result["stop_sec"] = time.perf_counter() - stopping
    return result


# --- the parent: topics, messages, claims, runs, report ---------------------------------


async def _create(bootstrap: str, layout: tuple[int, int], prefix: str) -> list[str]:
    count, partitions = layout
    names = [unique(prefix) for _ in range(count)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1) for name in names])
    finally:
        await admin.close()
    return names


async def _delete(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


def _claim(seed: int) -> str:
    """Commit metadata of about 4 KiB: a random half of ``CLAIM_SPAN`` offsets above 0."""
    finished = random.Random(seed).sample(range(1, CLAIM_SPAN), CLAIM_SPAN // 2)
    return encode_finished_offsets(0, finished)


async def prepare_claims(
    bootstrap: str, group: str, topics: list[str], partitions: int
) -> dict[str, Any]:
    """Commit offset 0 with ~4 KiB of claims on every partition, in one request: its size and
    duration, what the broker says to metadata one byte over its 4,096 limit."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        consumer.assign(tps)
        offsets = {tp: OffsetAndMetadata(0, _claim(i % 16)) for i, tp in enumerate(tps)}
        size = sum(len(m.metadata) + len(group) + len(tp.topic) + 96 for tp, m in offsets.items())
        one = "accepted"
        try:
            await consumer.commit(offsets)
        except Exception as exc:  # the broker's answer is the figure
            one = f"refused ({type(exc).__name__})"
        started = time.perf_counter()
        requests = split_commit(offsets, group)
        for request in requests:  # as the library's committer sends them
            await consumer.commit(request)
        took = time.perf_counter() - started
        over = "accepted"
        try:
            await consumer.commit({tps[0]: OffsetAndMetadata(0, "x" * 4097)})
        except Exception as exc:  # the broker's answer is the figure
            over = f"{type(exc).__name__}"
        await consumer.commit({tps[0]: offsets[tps[0]]})
    finally:
        await consumer.stop()
    lengths = [len(m.metadata) for m in offsets.values()]
    return {
        "commit_partitions": len(offsets),
        "commit_bytes": size,
        "commit_sec": took,
        "commit_one_request": one,
        "commit_requests": len(requests),
        "metadata_max": max(lengths),
        "metadata_min": min(lengths),
        "metadata_4097": over,
    }


async def produce_mb(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=2 * MB, acks=1)
    await producer.start()
    try:
        body = os.urandom(MB)
        for i in range(MB_MESSAGES):
            await producer.send(topic, body, partition=i % MB_PARTITIONS)
        await producer.flush()
    finally:
        await producer.stop()


def run_child(
    bootstrap: str, mode: str, topics: list[str], *, partitions: int, count: int, group: str
) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "bench.scale", "--child", mode, "--bootstrap", bootstrap,
        "--topics", ",".join(topics), "--partitions", str(partitions), "--count", str(count),
        "--group", group,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["load"] = load_average()
    return result


async def parent(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"runs": {}, "setup": {}, "load_start": load_average()}
    created: list[str] = []
    try:
        layouts = {}
        for name, layout in LAYOUTS.items():
            topics = await _create(args.bootstrap, layout, "scale")
            created += topics
            for topic in topics:
                await produce(args.bootstrap, topic, args.messages // len(topics), layout[1])
            layouts[name] = (topics, layout[0] * layout[1])
        for round_ in range(args.repeat):
            for name, (topics, partitions) in layouts.items():
                run = run_child(
                    args.bootstrap,
                    "throughput",
                    topics,
                    partitions=partitions,
                    count=args.messages,
                    group=unique("scale-g"),
                )
                print(f"round {round_} {name}: {run}", file=sys.stderr)
                results["runs"].setdefault(name, []).append(run)
        for name, (topics, partitions) in layouts.items():
            if partitions < 100:
                continue
            group = unique("scale-claims")
            prepared = await prepare_claims(
                args.bootstrap, group, topics, partitions // len(topics)
            )
            run = run_child(
                args.bootstrap, "setup", topics, partitions=partitions, count=1, group=group
            )
            print(f"setup {name}: {prepared} {run}", file=sys.stderr)
            results["setup"][name] = prepared | run
        mb_topic = (await _create(args.bootstrap, (1, MB_PARTITIONS), "scale-mb"))[0]
        created.append(mb_topic)
        await produce_mb(args.bootstrap, mb_topic)
        results["mb"] = run_child(
            args.bootstrap,
            "mb",
            [mb_topic],
            partitions=MB_PARTITIONS,
            count=MB_MESSAGES,
            group=unique("scale-g"),
        )
        print(f"mb: {results['mb']}", file=sys.stderr)
    finally:
        await _delete(args.bootstrap, created)
    results["load_end"] = load_average()
    return results


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="docs")
    parser.add_argument("--data-out", default="bench/results")
    parser.add_argument("--broker-label", default="Apache Kafka 4.1.1 (KRaft, single node, local)")
    parser.add_argument("--child", choices=["throughput", "setup", "mb"])
    parser.add_argument("--topics", default="")
    parser.add_argument("--partitions", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--group", default="")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.child:
        args.mode = args.child
        print(json.dumps(asyncio.run(child(args))))
        return 0
    from bench.scale_report import write_report

    results = asyncio.run(parent(args))
    results["machine"] = machine_info()
    results["broker"] = args.broker_label
    results["command"] = "python -m bench.scale " + " ".join(argv)
    Path(args.data_out).mkdir(parents=True, exist_ok=True)
    (Path(args.data_out) / "scale-results.json").write_text(json.dumps(results, indent=1))
    write_report(Path(args.out) / "benchmarks-scale.md", results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
