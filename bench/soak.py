"""Soak run: a steady stream for several minutes while a second member joins and leaves the
group every ``--churn-sec`` seconds; the long-lived member's memory and per-partition state
are sampled throughout.

    python -m bench.soak [--bootstrap HOST:PORT] [--minutes 8] [--rate 400] [--out docs]

Three kinds of process: this one (creates the topic, produces at a steady rate, starts and
stops the churning member, writes the report), the measured member ``A``
(``python -m bench.soak member --measure ...``, up for the whole run) and the churning member
``B`` (the same without ``--measure``, started and sent SIGTERM in turn). Both members are
FastStream apps run by ``FastStream.run()``, with ``concurrency_limit=100`` and handlers that
await 10 ms. ``A`` samples every ``--sample-sec`` seconds: its resident set size, the memory
tracemalloc traces (one frame) grouped by the package that allocated it, and the library's
per-partition state (offset trackers, partitions kept through a rejoin, held messages, tasks)
next to the partitions its consumer holds at that moment.
"""

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import signal
import statistics
import sys
import sysconfig
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from faststream import ContextRepo, FastStream
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from bench.kafka_io import create_topic, unique
from faststream_concurrent_aiokafka import (
    ConcurrentProcessing,
    KafkaConcurrentProcessingMiddleware,
    initialize_concurrent_processing,
    stop_concurrent_processing,
)
from faststream_concurrent_aiokafka.engine import runner

PARTITIONS = 12
HANDLER_SEC = 0.01
WARMUP_SEC = 60.0
REPO = Path(__file__).resolve().parent.parent
_STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


# ---- the members -----------------------------------------------------------------------


def package_of(filename: str) -> str:
    """The package a traced allocation's file belongs to (stdlib modules by their name)."""
    if filename.startswith("<"):
        return "<frozen or generated>"
    path = Path(filename)
    parts = path.parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].split(".")[0].removesuffix(".py")
    if "faststream_concurrent_aiokafka" in parts:
        return "faststream_concurrent_aiokafka"
    with contextlib.suppress(ValueError):
        relative = path.resolve().relative_to(_STDLIB)
        return f"stdlib:{relative.parts[0].removesuffix('.py')}"
    return "other"


def state_of(handler: ConcurrentProcessing) -> dict[str, int]:
    """The library's per-partition and per-message state, next to what the consumer holds."""
    assigned = trackers = stale = kept = held = 0
    for lane in handler.lanes:
        holds = lane.consumer.assignment()
        assigned += len(holds)
        trackers += len(lane.offsets.trackers)
        stale += len(set(lane.offsets.trackers) - holds)
        kept += len(lane.offsets.awaiting_rejoin)
        held += lane.gate.held_count + len(lane.ready)
    return {
        "lanes": len(handler.lanes),
        "assigned": assigned,
        "trackers": trackers,
        "stale_trackers": stale,
        "awaiting_rejoin": kept,
        "held": held,
        "running": handler.in_flight,
        "running_records": len(runner.RUNNING),
        "tasks": len(asyncio.all_tasks()),
    }


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def sample_forever(
    handler: ConcurrentProcessing, out: Path, every: float, started: float
) -> None:
    with out.open("a", encoding="utf-8", buffering=1) as fh:
        while True:
            await asyncio.sleep(every)
            gc.collect()
            by_package: dict[str, int] = {}
            for stat in tracemalloc.take_snapshot().statistics("filename"):
                name = package_of(stat.traceback[0].filename)
                by_package[name] = by_package.get(name, 0) + stat.size
            sample = {
                "t": round(time.monotonic() - started, 1),
                "rss_kib": rss_kib(),
                "traced": sum(by_package.values()),
                "by_package": by_package,
                "processed": handler.processed,
                **state_of(handler),
            }
            fh.write(json.dumps(sample) + "\n")


def member(args: argparse.Namespace) -> None:
    """A member of the soak group, run the usual way: ``FastStream.run()`` handles SIGTERM."""
    if args.measure:
        tracemalloc.start(1)
    started = time.monotonic()
    bootstrap: str = args.bootstrap
    topic: str = args.topic
    group: str = args.group
    broker = KafkaBroker(bootstrap, logger=None)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)

    @broker.subscriber(
        topic,
        group_id=group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        heartbeat_interval_ms=1000,
    )
    async def handle(body: int) -> None:
        await asyncio.sleep(HANDLER_SEC)

    @asynccontextmanager
    async def lifespan(context: ContextRepo) -> AsyncIterator[None]:
        handler = await initialize_concurrent_processing(context, concurrency_limit=100)
        sampler = None
        if args.measure:
            sampler = asyncio.create_task(
                sample_forever(handler, Path(args.samples), args.sample_sec, started)
            )
        try:
            yield
        finally:
            if sampler is not None:
                sampler.cancel()
            await stop_concurrent_processing(context)

    asyncio.run(FastStream(broker, lifespan=lifespan, logger=None).run())


# ---- the orchestrator -----------------------------------------------------------------


@dataclass
class Soak:
    bootstrap: str
    minutes: float
    rate: float
    churn_sec: float
    sample_sec: float
    topic: str = ""
    group: str = ""
    events: list[tuple[float, str]] = field(default_factory=list)
    produced: int = 0


async def start_member(
    soak: Soak, name: str, samples: Path | None, log: Path
) -> asyncio.subprocess.Process:
    argv = [
        sys.executable,
        "-m",
        "bench.soak",
        "member",
        *("--bootstrap", soak.bootstrap, "--topic", soak.topic, "--group", soak.group),
        *("--sample-sec", str(soak.sample_sec)),
    ]
    if samples is not None:
        argv += ["--measure", "--samples", str(samples)]
    with log.open("ab") as fh:
        return await asyncio.create_subprocess_exec(
            *argv, cwd=REPO, stdout=fh, stderr=fh, env={**os.environ, "PYTHONPATH": str(REPO)}
        )


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 60)
        except TimeoutError:
            process.kill()
            await process.wait()


async def produce_steadily(soak: Soak, seconds: float) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=soak.bootstrap, linger_ms=5)
    await producer.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        while (now := loop.time()) < started + seconds:
            due = int((now - started) * soak.rate)
            while soak.produced < due:
                await producer.send(soak.topic, str(soak.produced).encode())
                soak.produced += 1
            await asyncio.sleep(0.02)
        await producer.flush()
    finally:
        await producer.stop()


async def orchestrate(soak: Soak, work: Path) -> Path:
    soak.topic, soak.group = unique("soak"), unique("soak-group")
    await create_topic(soak.bootstrap, soak.topic, PARTITIONS)
    samples = work / "samples.jsonl"
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    a = await start_member(soak, "A", samples, work / "A.log")
    soak.events.append((0.0, "A starts"))
    producing = asyncio.create_task(produce_steadily(soak, soak.minutes * 60))
    b: asyncio.subprocess.Process | None = None
    try:
        while not producing.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(producing), soak.churn_sec)
            if producing.done():
                break
            if b is None:
                b = await start_member(soak, "B", None, work / "B.log")
                soak.events.append((loop.time() - t0, "B joins"))
            else:
                await stop(b)
                b = None
                soak.events.append((loop.time() - t0, "B leaves"))
            print(f"{loop.time() - t0:7.1f} s  {soak.events[-1][1]}  produced {soak.produced}")
        await producing
    finally:
        if b is not None:
            await stop(b)
        await stop(a)
    return samples


def summarise(soak: Soak, samples: list[dict[str, Any]]) -> dict[str, Any]:
    warm = [s for s in samples if s["t"] >= WARMUP_SEC]
    first = [s["rss_kib"] for s in warm if s["t"] < WARMUP_SEC + 60]
    last = [s["rss_kib"] for s in warm if s["t"] >= warm[-1]["t"] - 60]
    first_traced = [s["traced"] for s in warm if s["t"] < WARMUP_SEC + 60]
    last_traced = [s["traced"] for s in warm if s["t"] >= warm[-1]["t"] - 60]
    rss_start, rss_end = statistics.median(first), statistics.median(last)
    traced_start, traced_end = statistics.median(first_traced), statistics.median(last_traced)
    return {
        "rss_after_warmup_kib": rss_start,
        "rss_last_minute_kib": rss_end,
        "rss_growth": (rss_end - rss_start) / rss_start,
        "rss_max_kib": max(s["rss_kib"] for s in warm),
        "traced_after_warmup": traced_start,
        "traced_last_minute": traced_end,
        "traced_growth": (traced_end - traced_start) / traced_start,
        "max_stale_trackers": max(s["stale_trackers"] for s in samples),
        "max_awaiting_rejoin": max(s["awaiting_rejoin"] for s in samples),
        "max_trackers": max(s["trackers"] for s in samples),
        "max_lanes": max(s["lanes"] for s in samples),
        "processed": samples[-1]["processed"],
        "produced": soak.produced,
    }


def plot(soak: Soak, samples: list[dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] for s in samples]
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    top.plot(t, [s["rss_kib"] / 1024 for s in samples], label="resident set (MiB)")
    top.plot(t, [s["traced"] / 2**20 for s in samples], label="traced by tracemalloc (MiB)")
    top.set_ylabel("MiB")
    top.set_title(
        f"Soak: {soak.rate:g} msg/s for {soak.minutes:g} min, a member joining or leaving "
        f"every {soak.churn_sec:g} s"
    )
    totals: dict[str, int] = {}
    for s in samples:
        for name, size in s["by_package"].items():
            totals[name] = max(totals.get(name, 0), size)
    for name in sorted(totals, key=totals.__getitem__, reverse=True)[:7]:
        middle.plot(t, [s["by_package"].get(name, 0) / 2**20 for s in samples], label=name)
    middle.set_ylabel("traced MiB by package")
    bottom.plot(t, [s["assigned"] for s in samples], label="partitions held")
    bottom.plot(t, [s["trackers"] for s in samples], label="offset trackers")
    bottom.plot(t, [s["stale_trackers"] for s in samples], label="trackers of partitions not held")
    bottom.plot(t, [s["awaiting_rejoin"] for s in samples], label="kept through a rejoin")
    bottom.set_ylabel("partitions")
    bottom.set_xlabel("seconds since A started")
    for axis in (top, middle, bottom):
        for when, what in soak.events[1:]:
            axis.axvline(when, color="grey", alpha=0.3, linestyle="--" if "leaves" in what else ":")
        axis.axvspan(0, WARMUP_SEC, color="grey", alpha=0.08)
        axis.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def write_report(
    soak: Soak, samples: list[dict[str, Any]], out: Path, data: Path, command: str
) -> None:
    summary = summarise(soak, samples)
    plot(soak, samples, out / "soak.png")
    data.mkdir(parents=True, exist_ok=True)
    (data / "soak-results.json").write_text(
        json.dumps({"soak": asdict(soak), "summary": summary, "samples": samples}, indent=1)
    )
    mib = 1 / 1024
    lines = [
        "# Soak run",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, `{command}`, on {platform.node()} "
        f"({os.cpu_count()} CPUs, Python {platform.python_version()}), broker {soak.bootstrap}.",
        "",
        f"{soak.rate:g} messages per second for {soak.minutes:g} minutes into {PARTITIONS} "
        f"partitions; member A (measured, tracemalloc on, one frame) up throughout, member B "
        f"joining and leaving (SIGTERM) in turn every {soak.churn_sec:g} s; handlers await "
        f"{HANDLER_SEC * 1000:g} ms, concurrency_limit=100. Samples every {soak.sample_sec:g} s "
        f"after a full collection; warm-up: the first {WARMUP_SEC:g} s.",
        "",
        "| | |",
        "|---|---|",
        f"| produced / processed by A | {summary['produced']} / {summary['processed']} |",
        f"| RSS, median of the minute after warm-up | "
        f"{summary['rss_after_warmup_kib'] * mib:.1f} MiB |",
        f"| RSS, median of the last minute | {summary['rss_last_minute_kib'] * mib:.1f} MiB |",
        f"| RSS growth after warm-up | {summary['rss_growth']:+.1%} |",
        f"| RSS, highest after warm-up | {summary['rss_max_kib'] * mib:.1f} MiB |",
        f"| traced memory growth after warm-up | {summary['traced_growth']:+.1%} "
        f"({summary['traced_after_warmup'] / 2**20:.2f} to "
        f"{summary['traced_last_minute'] / 2**20:.2f} MiB) |",
        f"| offset trackers of partitions A did not hold, most at one sample | "
        f"{summary['max_stale_trackers']} |",
        f"| partitions kept through a rejoin, most at one sample | "
        f"{summary['max_awaiting_rejoin']} |",
        f"| offset trackers, most at one sample (of {PARTITIONS} partitions) | "
        f"{summary['max_trackers']} |",
        f"| consumer lanes, most at one sample | {summary['max_lanes']} |",
        "",
        "![soak](soak.png)",
        "",
        "Events: " + "; ".join(f"{when:.0f} s {what}" for when, what in soak.events) + ".",
        "",
    ]
    (out / "soak.md").write_text("\n".join(lines))
    print("\n".join(lines))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("role", nargs="?", default="run", choices=["run", "member"])
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=400.0, help="messages per second")
    parser.add_argument("--churn-sec", type=float, default=30.0)
    parser.add_argument("--sample-sec", type=float, default=5.0)
    parser.add_argument("--out", default="docs", help="soak.md and soak.png (default: docs)")
    parser.add_argument(
        "--data-out", default="bench/results", help="soak-results.json (default: bench/results)"
    )
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--group", help=argparse.SUPPRESS)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--samples", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.role == "member":
        member(args)
        return 0
    soak = Soak(args.bootstrap, args.minutes, args.rate, args.churn_sec, args.sample_sec)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fca-soak-"))
    print(f"members' logs and samples: {work}")
    samples_file = asyncio.run(orchestrate(soak, work))
    samples = [json.loads(line) for line in samples_file.read_text().splitlines() if line]
    command = "python -m bench.soak " + " ".join(argv)
    write_report(soak, samples, out, Path(args.data_out), command)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
