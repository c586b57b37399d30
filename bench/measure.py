"""The measured runs, executed inside a worker process (one run per process, fresh loop).

Every run builds its own broker, app and subscriber in a fresh consumer group, waits for the
asked number of handled messages (or its time budget), and stops the broker the way a service
would (``broker.stop()`` drains the middleware's in-flight work, then
``stop_concurrent_processing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import dataclasses
import gc
import json
import os
import pstats
import resource
import sys
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faststream import FastStream
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.middlewares import AckPolicy

from bench import instrument
from bench.downstream import Downstream
from bench.model import (
    LatencyResult,
    MemoryResult,
    ProfileResult,
    ProfileRow,
    RunResult,
    RunSpec,
    is_straggler,
    quantile_grid,
    result_for,
)
from bench.shapes import Order, Receipt, receipt

# Only the names the other package documents (its original API) are imported at the top: the
# same harness runs it, in a virtualenv of its own, as a black box. The rest of this
# library's API is imported where only its runs reach.
from faststream_concurrent_aiokafka import (
    KafkaConcurrentProcessingMiddleware,
    initialize_concurrent_processing,
    stop_concurrent_processing,
)

if TYPE_CHECKING:
    from faststream_concurrent_aiokafka import ConcurrentProcessing

OURS = "faststream_concurrent_aiokafka"
CONCURRENT = ("middleware", "other")  # the systems that run the middleware


class Probe:
    """Counts handler entries and exits and timestamps the measured window.

    The instrument counters (fetches, pauses) and the middleware's commit counters are read
    when the last counted message is handled; the counters start at zero with the process,
    right before the broker starts.
    """

    def __init__(self, target: int, warmup: int = 0) -> None:
        self.target = target
        self.warmup_left = warmup
        self.warmed = asyncio.Event()
        if warmup == 0:
            self.warmed.set()
        self.started = 0
        self.done = 0
        self.first: float | None = None
        self.last = 0.0
        # CPU time of the process (every thread) at the first handled message and the last
        # counted one: its cost per message, less sensitive to a shared machine than the rate.
        self.cpu_first = 0.0
        self.cpu_last = 0.0
        self.handler: ConcurrentProcessing | None = None
        self.loop = asyncio.get_running_loop()
        self.lock = threading.Lock()  # sync handlers count from FastStream's worker threads
        self.at_first = instrument.Counters()
        self.at_last = instrument.Counters()
        self.window_processed: int | None = None
        self.window_commit_requests: int | None = None
        self.all_started = asyncio.Event()
        self.finished = asyncio.Event()
        self.release = asyncio.Event()
        self.records: list[Any] = []
        self.latency_skip = 0  # latency runs: message numbers below this are the warm-up
        self.others_ms: list[float] = []
        self.stragglers_ms: list[float] = []
        self.starts_ms: list[float] = []
        self.loop_lag_ms: list[float] = []

    def note_start(self, number: int, create_time_ms: int) -> None:
        """Milliseconds from the record's CreateTime to its handler's start."""
        if number >= self.latency_skip:
            self.starts_ms.append(time.time() * 1000.0 - create_time_ms)

    def note_latency(self, number: int, create_time_ms: int, straggler: bool) -> None:
        """Milliseconds from the record's CreateTime to now (the handler's end)."""
        if number < self.latency_skip:
            return
        waited = time.time() * 1000.0 - create_time_ms
        (self.stragglers_ms if straggler else self.others_ms).append(waited)

    def warming(self) -> bool:
        """True for the warm-up messages (handled before the measurement, not counted)."""
        if self.warmup_left <= 0:
            return False
        self.warmup_left -= 1
        if self.warmup_left == 0:
            self.warmed.set()
        return True

    def enter(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()
            self.cpu_first = time.process_time()
            self.at_first = dataclasses.replace(instrument.COUNTERS)
        self.started += 1
        if self.started == self.target:
            self.all_started.set()

    def leave(self) -> None:
        self.done += 1
        if self.done <= self.target:
            self.last = time.perf_counter()
            if self.done == self.target:
                self.snapshot_counters()
                self.finished.set()

    def count_from_thread(self) -> None:
        """``enter`` and ``leave`` for a sync handler, which runs in a worker thread."""
        with self.lock:
            self.enter()
            self.done += 1
            if self.done <= self.target:
                self.last = time.perf_counter()
                if self.done == self.target:
                    self.snapshot_counters()
                    self.loop.call_soon_threadsafe(self.finished.set)

    def snapshot_counters(self) -> None:
        self.cpu_last = time.process_time()
        self.at_last = dataclasses.replace(instrument.COUNTERS)
        if self.handler is not None:
            self.window_processed = self.handler.processed
            self.window_commit_requests = self.handler.committer.commit_requests


@dataclass
class Running:
    broker: KafkaBroker
    app: FastStream
    subscriber: Any
    handler: ConcurrentProcessing | None
    started_at: float
    scraper: Scraper | None = None


class Scraper:
    """Scrapes ``ConcurrentProcessingCollector`` every ``interval`` seconds on the event loop,
    as a service's /metrics route would: the cost of the snapshot and the exposition."""

    def __init__(self, broker: KafkaBroker, interval: float) -> None:
        # Imported here: the other package's virtualenv runs this harness without them.
        from prometheus_client import CollectorRegistry, generate_latest

        from faststream_concurrent_aiokafka.prometheus import ConcurrentProcessingCollector

        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(ConcurrentProcessingCollector(broker))
        self._expose = generate_latest
        self.interval = interval
        self.count = 0
        self.seconds = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            started = time.perf_counter()
            self._expose(self.registry)
            self.seconds += time.perf_counter() - started
            self.count += 1


def _subscribe(spec: RunSpec, broker: KafkaBroker, probe: Probe) -> Any:
    policy = AckPolicy.MANUAL if spec.system in CONCURRENT else AckPolicy[spec.ack_policy]
    extra: dict[str, Any] = {}
    if spec.session_timeout_ms is not None:
        extra["session_timeout_ms"] = spec.session_timeout_ms
        extra["heartbeat_interval_ms"] = spec.session_timeout_ms // 10
    if spec.results_topic is not None:
        extra["isolation_level"] = "read_committed"  # exactly-once needs it; equal for both
    subscriber = broker.subscriber(
        spec.topic,
        group_id=spec.group,
        ack_policy=policy,
        auto_offset_reset="earliest",
        max_workers=spec.max_workers,
        **extra,
    )
    subscriber(_handler(spec, broker, probe))
    return subscriber


def _handler(spec: RunSpec, broker: KafkaBroker, probe: Probe) -> Callable[..., Any]:
    """The handler of ``spec.handler``; each counts itself with the probe and nothing else."""
    delay = spec.sleep_sec
    results = spec.results_topic
    if results is not None:

        async def pipeline(body: int) -> None:
            probe.enter()
            if delay:
                await asyncio.sleep(delay)
            await broker.publish(body, results)
            probe.leave()

        return pipeline

    async def noop(body: int) -> None:
        probe.enter()
        probe.leave()

    async def sleeper(body: int) -> None:
        probe.enter()
        await asyncio.sleep(delay)
        probe.leave()

    async def blocker(msg: KafkaMessage) -> None:
        if probe.warming():
            return
        probe.records.append(msg.raw_message)
        probe.enter()
        await probe.release.wait()
        probe.leave()

    async def with_dict(body: dict[str, Any]) -> None:
        probe.enter()
        probe.leave()

    async def with_dict_and_message(body: dict[str, Any], msg: KafkaMessage) -> None:
        probe.enter()
        if msg.raw_message is None:  # reads the message as such a handler would
            raise AssertionError
        probe.leave()

    async def with_dict_reading_the_message(body: dict[str, Any]) -> None:
        probe.enter()
        if broker.context.get_local("message") is None:  # the same message, no Context()
            raise AssertionError
        probe.leave()

    async def with_model_and_message(body: Order, msg: KafkaMessage) -> None:
        probe.enter()
        if msg.raw_message is None:
            raise AssertionError
        probe.leave()

    async def publishing(body: Order) -> Receipt:
        probe.enter()
        result = receipt(body)
        probe.leave()  # counted before FastStream publishes the result
        return result

    def blocking(body: Order) -> None:  # a plain def: FastStream runs it in a worker thread
        probe.count_from_thread()

    every, straggling = spec.straggler_every, spec.straggler_sec

    async def timed(body: int, msg: KafkaMessage) -> None:
        probe.enter()
        created: int = getattr(msg.raw_message, "timestamp", 0)  # one record, not a batch
        probe.note_start(body, created)
        straggler = is_straggler(body, every)
        await asyncio.sleep(straggling if straggler else delay)
        probe.note_latency(body, created, straggler)
        probe.leave()

    service = Downstream(spec.downstream)

    async def calling(body: int) -> None:
        probe.enter()
        await service.call()
        probe.leave()

    handlers: dict[str, Callable[..., Any]] = {
        "noop": noop,
        "sleep": sleeper,
        "block": blocker,
        "dict": with_dict,
        "dict_msg": with_dict_and_message,
        "dict_local": with_dict_reading_the_message,
        "model_msg": with_model_and_message,
        "publish": publishing,
        "sync": blocking,
        "downstream": calling,
        "latency": timed,
    }
    handler = handlers[spec.handler]
    if spec.handler == "publish":
        return broker.publisher(spec.output_topic)(handler)
    return handler


@asynccontextmanager
async def running(spec: RunSpec, probe: Probe) -> AsyncIterator[Running]:
    broker = KafkaBroker(spec.bootstrap, logger=None)
    if spec.system in CONCURRENT:
        broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    # With the app in the context the middleware installs itself before the consumer
    # subscribes (the eager path), as in a service started by `FastStream(broker).run()`.
    app = FastStream(broker, logger=None)
    subscriber = _subscribe(spec, broker, probe)
    handler: ConcurrentProcessing | None = None
    if spec.system == "middleware":
        from faststream_concurrent_aiokafka import configure_subscriber

        if spec.subscriber_limit is not None:
            configure_subscriber(subscriber, concurrency_limit=spec.subscriber_limit)
        # Only what a run changes: bench.paired runs this harness with older libraries too.
        newer: dict[str, Any] = {}
        if spec.processing_guarantee != RunSpec.processing_guarantee:
            newer["processing_guarantee"] = spec.processing_guarantee
        if spec.measure_processing_time:
            newer["measure_processing_time"] = True
        newer.update(_flow_control(spec))
        if spec.max_uncommitted_tasks is not None:
            newer["max_uncommitted_tasks"] = spec.max_uncommitted_tasks
        handler = await initialize_concurrent_processing(
            app.context,
            concurrency_limit=spec.concurrency_limit,
            commit_batch_size=spec.commit_batch_size,
            commit_batch_timeout_sec=spec.commit_batch_timeout_sec,
            **newer,
        )
    elif spec.system == "other":
        # The other package's documented call: keywords it lists, the broker's context.
        await initialize_concurrent_processing(
            context=broker.context,
            concurrency_limit=spec.concurrency_limit,
            commit_batch_size=spec.commit_batch_size,
        )
    probe.handler = handler
    if spec.gc_gen0_threshold is not None:
        from faststream_concurrent_aiokafka import tune_garbage_collector

        tune_garbage_collector(gen0_threshold=spec.gc_gen0_threshold)
    scraper = None
    if spec.scrape_interval_sec is not None and handler is not None:
        scraper = Scraper(broker, spec.scrape_interval_sec)
    started_at = time.perf_counter()
    await broker.start()
    if scraper is not None:
        scraper.start()
    try:
        yield Running(broker, app, subscriber, handler, started_at, scraper)
    finally:
        if scraper is not None:
            await scraper.stop()
        await broker.stop()
        if spec.system == "middleware":
            await stop_concurrent_processing(app.context)
        elif spec.system == "other":
            await stop_concurrent_processing(broker.context)


def _account(record: Any) -> Any:
    """The key function of ``ordering="account"``: the record's ``account`` header."""
    for name, value in record.headers:
        if name == "account":
            return value
    return None


def _flow_control(spec: RunSpec) -> dict[str, Any]:
    """The flow-control settings a run changes (none by default: older libraries lack them)."""
    settings: dict[str, Any] = {}
    if spec.ordering != RunSpec.ordering:
        settings["ordering"] = _account if spec.ordering == "account" else spec.ordering
    if spec.max_messages_per_sec is not None:
        settings["max_messages_per_sec"] = spec.max_messages_per_sec
    if spec.adaptive_concurrency:
        settings["adaptive_concurrency"] = True
    return settings


def _new_result(spec: RunSpec) -> RunResult:
    return result_for(spec, loadavg_start=os.getloadavg()[0])


def _fill_window(result: RunResult, probe: Probe, run: Running) -> None:
    result.handled = min(probe.done, probe.target)
    if probe.first is not None:
        result.elapsed_sec = probe.last - probe.first
        result.startup_sec = probe.first - run.started_at
        result.cpu_sec = probe.cpu_last - probe.cpu_first
    if not probe.finished.is_set():
        probe.snapshot_counters()
    result.fetch_requests = probe.at_last.fetch_requests
    result.fetched_bytes = probe.at_last.fetched_bytes
    first, last = probe.at_first, probe.at_last
    result.gc_collections = [
        last.gc_gen0 - first.gc_gen0,
        last.gc_gen1 - first.gc_gen1,
        last.gc_gen2 - first.gc_gen2,
    ]
    result.gc_sec = last.gc_sec - first.gc_sec
    if run.handler is not None:
        result.pauses = probe.at_last.pauses
        result.window_processed = probe.window_processed
        result.window_commit_requests = probe.window_commit_requests


def _fill_handler_stats(result: RunResult, handler: ConcurrentProcessing) -> None:
    """After the broker stopped: totals with the final flush."""
    result.processed = handler.processed
    result.commit_requests = handler.committer.commit_requests
    # Read by name: bench.paired runs this harness with older libraries too.
    counters = getattr(getattr(handler, "engine", None), "counters", None)
    committed = getattr(counters, "transactions_committed", 0)
    aborted = getattr(counters, "transactions_aborted", 0)
    if committed or aborted:
        result.transactions_committed, result.transactions_aborted = committed, aborted


class LimitSampler:
    """Reads the adaptive limit of every lane every 50 ms: how it moved during the run."""

    def __init__(self, handler: ConcurrentProcessing) -> None:
        self.handler = handler
        self.limits: list[int] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            for lane in self.handler.lanes:
                if lane.flow.adaptive is not None:
                    self.limits.append(lane.flow.adaptive.limit)

    async def stop(self) -> str:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if not self.limits:
            return "adaptive limit: no sample"
        ordered = sorted(self.limits)
        baselines = [
            lane.flow.adaptive.baseline_sec
            for lane in self.handler.lanes
            if lane.flow.adaptive is not None and lane.flow.adaptive.baseline_sec is not None
        ]
        tenth = len(ordered) // 10
        baseline = f", baseline {1000 * min(baselines):.1f} ms" if baselines else ""
        return (
            f"adaptive limit p10/p50/p90 {ordered[tenth]}/{ordered[len(ordered) // 2]}/"
            f"{ordered[-1 - tenth]}, last {self.limits[-1]}{baseline}"
        )


async def run_throughput(spec: RunSpec, profiler: cProfile.Profile | None = None) -> RunResult:
    result = _new_result(spec)
    probe = Probe(spec.messages)
    async with running(spec, probe) as run:
        if profiler is not None:
            profiler.enable()
        sampler = (
            LimitSampler(run.handler)
            if spec.adaptive_concurrency and run.handler is not None
            else None
        )
        try:
            await asyncio.wait_for(probe.finished.wait(), spec.timeout_sec)
        except TimeoutError:
            result.notes.append(f"time budget of {spec.timeout_sec:.0f} s reached")
        finally:
            if profiler is not None:
                profiler.disable()
            if sampler is not None:
                result.notes.append(await sampler.stop())
        _fill_window(result, probe, run)
        if run.scraper is not None:
            result.scrapes = run.scraper.count
            result.scrape_sec = run.scraper.seconds
    if run.handler is not None:
        _fill_handler_stats(result, run.handler)
    result.loadavg_end = os.getloadavg()[0]
    return result


async def _produce_paced(spec: RunSpec) -> dict[str, float]:
    """bench.paced in another process, so producing takes nothing from this event loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.paced",
        spec.bootstrap,
        spec.topic,
        str(spec.rate),
        str(spec.duration_sec),
        str(spec.partitions),
        spec.keying,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    if process.returncode != 0:
        msg = "the paced producer failed"
        raise RuntimeError(msg)
    produced: dict[str, float] = json.loads(out)
    return produced


async def _loop_lag(lags: list[float]) -> None:
    """How late a 5 ms sleep wakes up, over and over: the event loop's stalls (CPU taken by
    other processes, long callbacks, collections), which every latency includes."""
    while True:
        started = time.perf_counter()
        await asyncio.sleep(0.005)
        lags.append(1000.0 * (time.perf_counter() - started - 0.005))


async def run_latency(spec: RunSpec) -> RunResult:
    """Offer ``spec.rate`` messages per second to a consumer that already holds its partitions
    and note each one's latency from its CreateTime to its handler's end."""
    result = _new_result(spec)
    probe = Probe(spec.messages)
    probe.latency_skip = int(spec.rate * spec.warmup_sec)
    async with running(spec, probe) as run:
        consumer = run.subscriber.consumer
        await _wait_for(lambda: bool(consumer.assignment()), 60, "the partition assignment")
        await asyncio.sleep(1.0)  # the first (empty) fetches are out; the consumer is idle
        cpu = time.process_time()
        lag = asyncio.create_task(_loop_lag(probe.loop_lag_ms))
        produced = await _produce_paced(spec)
        try:
            await asyncio.wait_for(probe.finished.wait(), spec.timeout_sec)
        except TimeoutError:
            result.notes.append(f"{probe.done} of {spec.messages} handled in the time budget")
        cpu = time.process_time() - cpu
        lag.cancel()
        _fill_window(result, probe, run)
        result.notes.append(
            f"consumer CPU {cpu:.1f} s ({1e6 * cpu / max(1, probe.done):.0f} us per message)"
        )
    if run.handler is not None:
        _fill_handler_stats(result, run.handler)
    result.latency = LatencyResult(
        counted=len(probe.others_ms),
        others_ms=quantile_grid(probe.others_ms),
        stragglers_ms=quantile_grid(probe.stragglers_ms),
        starts_ms=quantile_grid(probe.starts_ms),
        loop_lag_ms=quantile_grid(probe.loop_lag_ms),
        skipped=probe.latency_skip,
        producer=produced,
    )
    result.loadavg_end = os.getloadavg()[0]
    return result


# ---- memory ---------------------------------------------------------------------------


def owner_of(filename: str) -> str:
    """Which package a traced allocation or profiled function belongs to."""
    path = filename.replace("\\", "/")
    if f"/{OURS}/" in path:
        return OURS
    for package in ("faststream", "fast_depends", "aiokafka", "anyio", "pydantic", "asyncio"):
        if f"/{package}/" in path:
            return package
    if "/bench/" in path:
        return "bench (handler, probe)"
    if path == "~":
        return "builtins (C)"
    if path == "<unknown>":
        return "no Python frame"
    return "other (stdlib, ...)"


def _deep_record_size(record: Any) -> int:
    """Bytes one ConsumerRecord holds on its own (topic strings are shared, not counted)."""
    size = sys.getsizeof(record)
    inner = getattr(record, "__dict__", None)
    if inner is not None:
        size += sys.getsizeof(inner)
    for name in ("offset", "timestamp", "key", "value", "serialized_key_size"):
        value = getattr(record, name, None)
        if value is not None and not (isinstance(value, int) and -5 <= value <= 256):
            size += sys.getsizeof(value)
    headers = getattr(record, "headers", None)
    if headers is not None:
        size += sys.getsizeof(headers)
    return size


def _rss_bytes() -> int:
    """Current resident set size (Linux); the peak RSS elsewhere."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return pages * os.sysconf("SC_PAGE_SIZE")


async def _produce_elsewhere(spec: RunSpec, count: int) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.kafka_io",
        spec.bootstrap,
        spec.topic,
        str(count),
        str(spec.partitions),
    )
    if await process.wait() != 0:
        msg = "producing the memory run's messages failed"
        raise RuntimeError(msg)


async def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            msg = f"timed out waiting for {what}"
            raise TimeoutError(msg)
        await asyncio.sleep(0.05)


def _queued_jobs(handler: ConcurrentProcessing | None) -> list[Any]:
    if handler is None:
        return []
    return [job for lane in handler.lanes for job in lane.ready]


def _attribute(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot
) -> tuple[dict[str, int], dict[str, int]]:
    """Traced growth by package, and the files that allocated most of it."""
    ignore = {tracemalloc.__file__, "<frozen importlib._bootstrap>"}
    by_owner: dict[str, int] = {}
    by_file: dict[str, int] = {}
    for stat in after.compare_to(before, "filename"):
        filename = stat.traceback[0].filename
        if filename in ignore:
            continue
        owner = owner_of(filename)
        by_owner[owner] = by_owner.get(owner, 0) + stat.size_diff
        short = _short_path(filename)
        by_file[short] = by_file.get(short, 0) + stat.size_diff
    top = dict(sorted(by_file.items(), key=lambda kv: -kv[1])[:12])
    return by_owner, top


async def run_memory(spec: RunSpec) -> RunResult:
    """Hold ``spec.messages`` messages (in flight, or queued) and measure what they cost.

    The topic is empty when the consumer joins; the baseline is taken then, and the messages
    are produced by another process, so the difference holds what the held messages cost in
    this process: records, FastStream's per-message objects and coroutine frames, this
    library's bookkeeping and tasks. Traced runs diff two tracemalloc snapshots (allocations
    attributed to the innermost Python frame, so C objects count for the Python file that
    made them); untraced runs only read the resident set size.
    """
    result = _new_result(spec)
    running_slots = spec.concurrency_limit if spec.queued else spec.messages
    total = spec.messages + (running_slots if spec.queued else 0)
    probe = Probe(running_slots, warmup=spec.warmup)
    before: tracemalloc.Snapshot | None = None
    after: tracemalloc.Snapshot | None = None
    async with running(spec, probe) as run:
        consumer = run.subscriber.consumer
        await _wait_for(lambda: bool(consumer.assignment()), 60, "the partition assignment")
        await asyncio.wait_for(probe.warmed.wait(), 60)
        await asyncio.sleep(1.0)  # warm-up messages finish and the next (empty) fetches settle
        gc.collect()
        if spec.trace:
            tracemalloc.start(1)
            before = tracemalloc.take_snapshot()
        rss_before = _rss_bytes()
        phase = time.perf_counter()
        await _produce_elsewhere(spec, total)
        if spec.queued:
            await _wait_for(
                lambda: (
                    probe.started >= running_slots
                    and len(_queued_jobs(run.handler)) >= spec.messages
                ),
                spec.timeout_sec,
                f"{spec.messages} queued messages",
            )
        else:
            await asyncio.wait_for(probe.all_started.wait(), spec.timeout_sec)
        result.notes.append(f"{time.perf_counter() - phase:.1f} s to hold the messages")
        phase = time.perf_counter()
        gc.collect()
        rss_delta = _rss_bytes() - rss_before
        peak = 0
        if spec.trace:
            after = tracemalloc.take_snapshot()
            _current, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        records = list(probe.records) + [job.record for job in _queued_jobs(run.handler)]
        held, record_bytes = len(records), sum(_deep_record_size(r) for r in records)
        del records
        result.notes.append(f"{time.perf_counter() - phase:.1f} s to measure")
        phase = time.perf_counter()
        result.handled = probe.started
        probe.target = total
        probe.release.set()
        await _wait_for(lambda: probe.done >= total, spec.timeout_sec, "the held messages")
        result.notes.append(f"{time.perf_counter() - phase:.1f} s to finish them")
        phase = time.perf_counter()
    result.notes.append(f"{time.perf_counter() - phase:.1f} s to stop")
    phase = time.perf_counter()
    by_owner, top_files = _attribute(before, after) if before and after else ({}, {})
    result.notes.append(f"{time.perf_counter() - phase:.1f} s to attribute")
    result.memory = MemoryResult(
        held=held,
        running=result.handled,
        traced=spec.trace,
        diff_bytes=sum(by_owner.values()),
        by_owner=by_owner,
        top_files=top_files,
        record_bytes=record_bytes,
        traced_peak_bytes=peak,
        rss_delta_bytes=rss_delta if not spec.trace else 0,
    )
    result.loadavg_end = os.getloadavg()[0]
    return result


# ---- profile --------------------------------------------------------------------------


def _short_path(filename: str) -> str:
    path = filename.replace("\\", "/")
    for marker in ("site-packages/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    if "/lib/python" in path:
        return "stdlib/" + path.split("/lib/python", 1)[1].split("/", 1)[-1]
    return path


def _row(key: tuple[str, int, str], value: tuple[Any, ...]) -> ProfileRow:
    filename, line, function = key
    _cc, ncalls, tottime, cumtime = value[0], value[1], value[2], value[3]
    location = _short_path(filename) if filename != "~" else "(built-in)"
    if line:
        location = f"{location}:{line}"
    return ProfileRow(
        function=function,
        location=location,
        ncalls=int(ncalls),
        tottime=float(tottime),
        cumtime=float(cumtime),
    )


def _table(title: str, rows: list[ProfileRow]) -> str:
    lines = [title, f"{'ncalls':>9} {'tottime':>9} {'cumtime':>9}  function (location)"]
    lines += [
        f"{r.ncalls:>9} {r.tottime:>9.3f} {r.cumtime:>9.3f}  {r.function} ({r.location})"
        for r in rows
    ]
    return "\n".join(lines)


def _is_idle(filename: str, function: str) -> bool:
    """The event loop waiting for I/O (epoll/poll/select): wall time, not work."""
    return filename == "~" and "of 'select." in function


def summarise_profile(profiler: cProfile.Profile, spec: RunSpec, result: RunResult) -> None:
    """Own time (tottime) by package, over the busy time: cProfile measures wall time, so the
    time the loop waited in ``select`` is set apart as idle."""
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    idle = sum(float(v[2]) for (f, _l, fn), v in raw.items() if _is_idle(f, fn))
    total = sum(float(value[2]) for value in raw.values()) - idle
    by_owner: dict[str, float] = {}
    builtins_from_ours = 0.0
    for (filename, _line, function), value in raw.items():
        if _is_idle(filename, function):
            continue
        owner = owner_of(filename)
        by_owner[owner] = by_owner.get(owner, 0.0) + float(value[2])
        if filename == "~":
            # callers: caller -> (cc, nc, tottime, cumtime) of this built-in from that caller
            for caller, timing in value[4].items():
                if owner_of(caller[0]) == OURS:
                    builtins_from_ours += float(timing[2])
    ours_incl = by_owner.get(OURS, 0.0) + builtins_from_ours
    items = list(raw.items())
    top_cumulative = [_row(k, v) for k, v in sorted(items, key=lambda kv: -kv[1][3])[:15]]
    top_tottime = [_row(k, v) for k, v in sorted(items, key=lambda kv: -kv[1][2])[:15]]
    ours = [kv for kv in items if owner_of(kv[0][0]) == OURS]
    top_ours = [_row(k, v) for k, v in sorted(ours, key=lambda kv: -kv[1][2])[:15]]
    text_path = spec.profile_path or "profile.txt"
    handled = max(result.handled, 1)
    header = [
        f"== {spec.label}: {result.handled} messages, profiled wall time "
        f"{result.elapsed_sec:.2f} s, busy {total:.2f} s ({1e6 * total / handled:.0f} us per "
        f"message), idle in select {idle:.2f} s",
        "busy own time (tottime) by package: "
        + ", ".join(
            f"{owner} {100 * t / total:.1f}%"
            for owner, t in sorted(by_owner.items(), key=lambda kv: -kv[1])
        ),
        f"{OURS} with the built-ins it calls directly: {100 * ours_incl / total:.1f}% "
        f"({1e6 * ours_incl / handled:.0f} us per message)",
    ]
    text = "\n\n".join(
        [
            "\n".join(header),
            _table("-- top 15 by cumulative time", top_cumulative),
            _table("-- top 15 by own time (tottime)", top_tottime),
            _table(f"-- top 15 functions of {OURS} by own time", top_ours),
        ]
    )
    Path(text_path).write_text(text + "\n")
    result.profile = ProfileResult(
        total_tottime=total,
        idle_tottime=idle,
        tottime_by_owner=by_owner,
        ours_incl_builtins=ours_incl,
        top_cumulative=top_cumulative,
        top_tottime=top_tottime,
        top_ours=top_ours,
        text_path=text_path,
    )


async def run_profile(spec: RunSpec) -> RunResult:
    profiler = cProfile.Profile()
    result = await run_throughput(spec, profiler)
    summarise_profile(profiler, spec, result)
    if spec.profile_path:
        profiler.dump_stats(spec.profile_path + ".pstats")
    return result


def library_origin(spec: RunSpec) -> str:
    """Which distribution of ``faststream_concurrent_aiokafka`` this process imported, and
    from where; the other package's runs refuse this checkout's copy (a wrong path)."""
    import faststream_concurrent_aiokafka as library

    where = Path(library.__file__ or "?").resolve().parent
    checkout = Path(__file__).resolve().parent.parent
    if spec.system == "other" and where.is_relative_to(checkout):
        msg = f"the other package's run imported this checkout's library ({where})"
        raise RuntimeError(msg)
    try:
        version = metadata.version("faststream-concurrent-aiokafka")
    except metadata.PackageNotFoundError:
        version = "not installed"
    return f"{version} at {where}"


async def run(spec: RunSpec) -> RunResult:
    origin = library_origin(spec) if spec.system != "faststream" else ""
    instrument.install(pauses=spec.system == "middleware")
    if spec.kind == "memory":
        result = await run_memory(spec)
    elif spec.kind == "profile":
        result = await run_profile(spec)
    elif spec.kind == "latency":
        result = await run_latency(spec)
    else:
        result = await run_throughput(spec)
    if spec.system == "other":
        result.notes.append(f"library {origin}")
    return result
