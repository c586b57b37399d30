"""What one measured run is asked to do, and what it reports back.

Both travel between the orchestrator (``bench.run``) and a worker process (``bench.worker``)
as JSON files, so every field is a plain JSON value.
"""

import json
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Kind = Literal["throughput", "memory", "profile", "fleet", "latency"]
# "middleware": this library; "other": the package-index project of the same name, run in a
# virtualenv of its own through its documented API only; "faststream": FastStream alone.
System = Literal["middleware", "faststream", "other"]
# "noop": return at once; "sleep": await asyncio.sleep(sleep_sec);
# "block": wait on an asyncio.Event until the memory snapshot was taken.
# Handler shapes as users write them (on "order" payloads, see bench.shapes):
# "dict": `body: dict`; "dict_msg": `body: dict, msg: KafkaMessage`; "dict_local": `body: dict`
# reading the message with `broker.context.get_local("message")`; "model_msg": a pydantic
# model body and the KafkaMessage; "publish": a model body, its result returned to a
# `@publisher`; "sync": a plain `def` taking the model.
# "downstream": call bench.downstream's model named by `downstream`.
# "latency": await `sleep_sec` (one in `straggler_every`: `straggler_sec`), then note the time
# from the record's CreateTime.
HandlerMode = Literal[
    "latency",
    "noop",
    "sleep",
    "block",
    "dict",
    "dict_msg",
    "dict_local",
    "model_msg",
    "publish",
    "sync",
    "downstream",
]
# What the pre-produced messages hold: a JSON int, or a small JSON order (bench.shapes).
Payload = Literal["int", "order"]
Loop = Literal["asyncio", "uvloop"]


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    label: str
    kind: Kind
    system: System
    bootstrap: str
    topic: str
    group: str
    partitions: int
    messages: int  # handled messages to wait for (memory: messages to hold)
    handler: HandlerMode = "noop"
    sleep_sec: float = 0.0
    payload: Payload = "int"
    output_topic: str = ""  # where the "publish" handler's results go
    loop: Loop = "asyncio"  # the worker's event loop
    repeat: int = 0  # which repeat this run belongs to, to pair it with the others of it
    workers: int = 1  # fleet runs: `faststream run --workers N`
    # FastStream subscriber options (the middleware always uses AckPolicy.MANUAL).
    ack_policy: str = "ACK_FIRST"
    max_workers: int = 1
    # Middleware settings.
    concurrency_limit: int = 100
    commit_batch_size: int = 10
    subscriber_limit: int | None = None  # configure_subscriber(concurrency_limit=...)
    max_uncommitted_tasks: int | None = 10_000  # None: the library's default
    # Memory runs: messages handled (not held) before the baseline, so one-off allocations
    # (lazy imports, caches) stay out of the measurement.
    warmup: int = 0
    # Memory runs: hold messages in the middleware's queue instead of in flight; trace with
    # tracemalloc (False: only the growth of the resident set size is measured).
    queued: bool = False
    trace: bool = True
    session_timeout_ms: int | None = None  # memory runs: snapshots block the loop for a while
    # tune_garbage_collector(gen0_threshold=...) before the broker starts; None: as shipped.
    gc_gen0_threshold: int | None = None
    timeout_sec: float = 60.0
    profile_path: str | None = None
    # Middleware: register ConcurrentProcessingCollector and scrape it this often (None: no
    # collector), as a /metrics route would, on the event loop.
    scrape_interval_sec: float | None = None
    # A pipeline: each handler publishes one result to this topic (broker.publish, awaited)
    # before it counts as handled; its subscriber reads with isolation_level="read_committed".
    results_topic: str | None = None
    processing_guarantee: str = "at_least_once"
    commit_batch_timeout_sec: float = 10.0
    measure_processing_time: bool = False  # the opt-in processing-time histogram
    # Flow control (bench.flow): the downstream model of handler="downstream"; the record
    # keys and headers produced (bench.kafka_io.keyed); the middleware's ordering, where
    # "account" is a key function reading the `account` header; its rate and adaptive limit.
    downstream: str = "quadratic"
    keying: str = "none"
    ordering: str = "unordered"
    max_messages_per_sec: float | None = None
    adaptive_concurrency: bool = False
    # Latency runs (bench.latency): another process produces `rate` messages per second for
    # `duration_sec` into the empty topic once the consumer holds its partitions
    # (`messages` = rate x duration); the first `warmup_sec` of them are not counted.
    rate: float = 0.0
    duration_sec: float = 0.0
    warmup_sec: float = 1.0
    # 0: none; N: message i with crc32(str(i)) % N == 0 (one in N, on every partition, not in
    # step with the round-robin) takes straggler_sec
    straggler_every: int = 0
    straggler_sec: float = 5.0


def is_straggler(number: int, every: int) -> bool:
    """One message in ``every`` (0: none), by the crc32 of its number: on every partition, not
    in step with the producer's round-robin."""
    return every > 0 and zlib.crc32(b"%d" % number) % every == 0


GRID_POINTS = 1001  # a latency distribution is kept as this many evenly spaced quantiles


def quantile_grid(values: list[float]) -> list[float]:
    """``values`` sorted, thinned to GRID_POINTS quantiles (minimum and maximum included) and
    rounded to 0.01 ms, so a run's result stays small; percentiles are read off it."""
    ordered = sorted(values)
    if len(ordered) > GRID_POINTS:
        last = len(ordered) - 1
        ordered = [ordered[i * last // (GRID_POINTS - 1)] for i in range(GRID_POINTS)]
    return [round(value, 2) for value in ordered]


@dataclass(kw_only=True)
class LatencyResult:
    """Milliseconds from each record's CreateTime to its handler's end (same clock: one
    machine), the stragglers apart; each a ``quantile_grid``."""

    counted: int  # the other records counted (their grid may hold fewer points)
    others_ms: list[float]
    stragglers_ms: list[float]
    starts_ms: list[float]  # ... to the handler's start, stragglers included
    loop_lag_ms: list[float]  # how late a 5 ms sleep woke up, sampled through the run
    skipped: int  # warm-up messages not counted
    producer: dict[str, float]  # what bench.paced reported: sent, seconds, behind_max_ms


@dataclass(kw_only=True)
class MemoryResult:
    held: int  # messages in flight (or queued) at the snapshot
    running: int  # of which running (queued runs: the few holding the slots)
    traced: bool
    diff_bytes: int  # traced bytes at the snapshot minus before the first message
    by_owner: dict[str, int]  # diff_bytes split by the package of the allocating file
    top_files: dict[str, int]  # the files that allocated most of diff_bytes
    record_bytes: int  # deep size of the held ConsumerRecord objects
    traced_peak_bytes: int
    rss_delta_bytes: int  # growth of the resident set size (untraced runs only)


@dataclass(kw_only=True)
class ProfileRow:
    function: str
    location: str
    ncalls: int
    tottime: float
    cumtime: float


@dataclass(kw_only=True)
class ProfileResult:
    total_tottime: float  # own time of all functions, without idle
    idle_tottime: float  # the event loop waiting in select
    tottime_by_owner: dict[str, float]
    # Own time of this library's functions plus that of built-ins they call directly.
    ours_incl_builtins: float
    top_cumulative: list[ProfileRow]
    top_tottime: list[ProfileRow]
    top_ours: list[ProfileRow]
    text_path: str


@dataclass(kw_only=True)
class FleetResult:
    """A `faststream run --workers N` run: what every process handled, and the checks."""

    workers: int
    processes: int  # processes that reported (one per worker)
    per_process: list[int]  # messages each process handled
    distinct: int  # distinct message ids handled over all processes
    lost: int  # ids produced but never handled
    duplicates: int  # handled more than once (a rebalance may hand a message over twice)
    committed: int  # sum of the group's committed offsets at the end
    end: int  # sum of the partitions' end offsets
    whole_sec: float  # first handled message to the last, over all processes
    steady_sec: float  # last assignment to the first process running out of work
    steady_handled: int  # messages handled in that window
    assignments: int  # partition assignments before the shutdown, over all processes

    @property
    def whole_rate(self) -> float:
        return self.distinct / self.whole_sec if self.whole_sec > 0 else 0.0

    @property
    def steady_rate(self) -> float:
        return self.steady_handled / self.steady_sec if self.steady_sec > 0 else 0.0


@dataclass(kw_only=True)
class RunResult:
    label: str
    kind: Kind
    system: System
    expected: int
    handled: int = 0
    elapsed_sec: float = 0.0  # first handled message -> last one counted
    startup_sec: float = 0.0  # broker.start() -> first message handled
    cpu_sec: float = 0.0  # CPU time of the worker process over the same window
    processed: int | None = None  # middleware: messages it finished (may exceed `handled`)
    commit_requests: int | None = None  # ... and its commit requests, final flush included
    # The same two when the last counted message was handled (before the final flush).
    window_processed: int | None = None
    window_commit_requests: int | None = None
    # From broker.start() to the last counted message:
    pauses: int | None = None  # middleware: times a consumer was paused (backpressure)
    fetch_requests: int | None = None  # aiokafka fetch requests sent
    fetched_bytes: int | None = None  # record bytes those fetches brought in
    # CPython's collections (generation 0, 1, 2) and their time, first to last counted message.
    gc_collections: list[int] | None = None
    gc_sec: float | None = None
    loadavg_start: float = 0.0
    loadavg_end: float = 0.0
    memory: MemoryResult | None = None
    profile: ProfileResult | None = None
    scrapes: int | None = None  # collector scrapes made during the run
    transactions_committed: int | None = None  # exactly-once runs, final flush included
    transactions_aborted: int | None = None
    scrape_sec: float | None = None  # ... and the time they took, in all
    fleet: FleetResult | None = None
    latency: LatencyResult | None = None
    repeat: int = 0
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def partial(self) -> bool:
        return self.handled < self.expected

    @property
    def cpu_us_per_message(self) -> float:
        """CPU time per handled message in the window (between the first and the last)."""
        return self.cpu_sec / max(1, self.handled - 1) * 1e6

    @property
    def throughput(self) -> float:
        # The first message starts the clock, so `handled - 1` intervals were measured.
        if self.handled < 2 or self.elapsed_sec <= 0:
            return 0.0
        return (self.handled - 1) / self.elapsed_sec

    @property
    def commits_per_1000(self) -> float | None:
        if self.commit_requests is None or not self.processed:
            return None
        return 1000.0 * self.commit_requests / self.processed

    @property
    def window_commits_per_1000(self) -> float | None:
        if self.window_commit_requests is None or not self.window_processed:
            return None
        return 1000.0 * self.window_commit_requests / self.window_processed

    @property
    def pauses_per_1000(self) -> float | None:
        if self.pauses is None or not self.handled:
            return None
        return 1000.0 * self.pauses / self.handled

    @property
    def gc_share(self) -> float | None:
        """Fraction of the measured window spent in garbage collections."""
        if self.gc_sec is None or self.elapsed_sec <= 0:
            return None
        return self.gc_sec / self.elapsed_sec

    @property
    def fetches_per_1000(self) -> float | None:
        if self.fetch_requests is None or not self.handled:
            return None
        return 1000.0 * self.fetch_requests / self.handled

    @property
    def fetched_bytes_per_message(self) -> float | None:
        if self.fetched_bytes is None or not self.handled:
            return None
        return self.fetched_bytes / self.handled


def result_for(spec: RunSpec, **fields: Any) -> RunResult:
    """An empty result of ``spec``'s run, naming it as every report row does."""
    return RunResult(
        label=spec.label,
        kind=spec.kind,
        system=spec.system,
        expected=spec.messages,
        repeat=spec.repeat,
        **fields,
    )


def write_json(path: Path, value: RunSpec | RunResult) -> None:
    path.write_text(json.dumps(asdict(value), indent=1))


def read_spec(path: Path) -> RunSpec:
    return RunSpec(**json.loads(path.read_text()))


def read_result(path: Path) -> RunResult:
    return result_from_dict(json.loads(path.read_text()))


def result_from_dict(data: dict[str, Any]) -> RunResult:
    memory = data.pop("memory", None)
    profile = data.pop("profile", None)
    fleet = data.pop("fleet", None)
    latency = data.pop("latency", None)
    result = RunResult(**data)
    if latency is not None:
        result.latency = LatencyResult(**latency)
    if fleet is not None:
        result.fleet = FleetResult(**fleet)
    if memory is not None:
        result.memory = MemoryResult(**memory)
    if profile is not None:
        result.profile = ProfileResult(
            total_tottime=profile["total_tottime"],
            idle_tottime=profile.get("idle_tottime", 0.0),
            tottime_by_owner=profile["tottime_by_owner"],
            ours_incl_builtins=profile["ours_incl_builtins"],
            top_cumulative=[ProfileRow(**row) for row in profile["top_cumulative"]],
            top_tottime=[ProfileRow(**row) for row in profile["top_tottime"]],
            top_ours=[ProfileRow(**row) for row in profile["top_ours"]],
            text_path=profile["text_path"],
        )
    return result
