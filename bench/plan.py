"""Which runs make up a benchmark, with how many messages, in which order."""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.kafka_io import unique
from bench.model import HandlerMode, Kind, Loop, RunSpec, System
from faststream_concurrent_aiokafka.gc_tuning import DEFAULT_GEN0_THRESHOLD

IO_LIMITS = (1, 10, 100, 1000)
# I/O-bound systems: label part -> (system, tuned collector); "-gc" runs call
# tune_garbage_collector() with its default threshold, FastStream's alike for comparison.
IO_SYSTEMS: dict[str, tuple[System, bool]] = {
    "mw": ("middleware", False),
    "fs": ("faststream", False),
    "mw-gc": ("middleware", True),
    "fs-gc": ("faststream", True),
    "other": ("other", False),
}
# Handler shapes (bench.shapes; the handlers are in bench.measure) and what they look like.
SHAPES: dict[HandlerMode, str] = {
    "dict": "`async def h(body: dict)`",
    "dict_msg": "`async def h(body: dict, msg: KafkaMessage)`",
    "dict_local": '`async def h(body: dict)` + `broker.context.get_local("message")`',
    "model_msg": "`async def h(body: Order, msg: KafkaMessage)` (pydantic model)",
    "publish": "`@publisher` + `async def h(body: Order) -> Receipt`",
    "sync": "`def h(body: Order)` (FastStream runs it in a worker thread)",
}
# The systems every shape runs on: label part -> (system, FastStream max_workers).
SHAPE_SYSTEMS: dict[str, tuple[System, int]] = {
    "mw": ("middleware", 1),
    "fs-ack-first": ("faststream", 1),
    "fs-workers-100": ("faststream", 100),
    "other": ("other", 1),
}
# uvloop pairs: case -> (system, handler, concurrency limit or max_workers).
UVLOOP_CASES: dict[str, tuple[System, HandlerMode, int]] = {
    "mw-noop": ("middleware", "noop", 100),
    "mw-io1000": ("middleware", "sleep", 1000),
    "fs-noop": ("faststream", "noop", 1),
}
LOOPS: tuple[Loop, ...] = ("asyncio", "uvloop")
FLEET_WORKERS = (1, 2)
# Fleet cases: case -> (handler, concurrency_limit per process).
FLEET_CASES: dict[str, tuple[HandlerMode, int]] = {"noop": ("noop", 100), "io": ("sleep", 1000)}
PROFILED_SHAPES: dict[str, HandlerMode] = {"dict-msg": "dict_msg", "model-msg": "model_msg"}


@dataclass(frozen=True, kw_only=True)
class Params:
    quick: bool
    partitions: int = 4
    noop_messages: int
    repeat: int  # no-op throughput runs are repeated; the report shows the median
    io_repeat: int  # the same for the I/O-bound runs
    ack_budget_sec: float  # FastStream AckPolicy.ACK commits per message: cap its run time
    io_sleep_sec: float = 0.01
    io_cap: int
    io_per_limit: int
    memory_messages: int
    queued_limit: int = 10
    profile_messages: int
    # The monitoring overhead runs: long enough for several scrapes (a default, so that saved
    # results from before this section still load).
    obs_messages: int = 200_000
    run_timeout_sec: float
    shape_messages: int
    shape_repeat: int
    uvloop_repeat: int
    fleet_partitions: int = 8
    fleet_messages: int
    fleet_repeat: int

    def io_messages(self, limit: int) -> int:
        return min(self.io_cap, self.io_per_limit * limit)

    @property
    def io_topic_messages(self) -> int:
        return max(self.io_messages(limit) for limit in IO_LIMITS)


FULL = Params(
    quick=False,
    noop_messages=20_000,
    repeat=5,
    io_repeat=5,
    ack_budget_sec=30.0,
    io_cap=20_000,
    io_per_limit=200,
    memory_messages=10_000,
    profile_messages=20_000,
    run_timeout_sec=120.0,
    shape_messages=20_000,
    shape_repeat=5,
    uvloop_repeat=5,
    fleet_messages=60_000,
    fleet_repeat=5,
)

QUICK = Params(
    quick=True,
    noop_messages=5_000,
    repeat=1,
    io_repeat=1,
    ack_budget_sec=8.0,
    io_cap=5_000,
    io_per_limit=100,
    memory_messages=2_000,
    profile_messages=5_000,
    obs_messages=20_000,
    run_timeout_sec=60.0,
    shape_messages=5_000,
    shape_repeat=1,
    uvloop_repeat=1,
    fleet_messages=15_000,
    fleet_repeat=1,
)


@dataclass(frozen=True)
class Topics:
    noop: str
    io: str
    shapes: str = ""  # JSON orders (bench.shapes)
    published: str = ""  # where the publishing handler's results go
    fleet: str = ""  # params.fleet_partitions partitions
    obs: str = ""  # the monitoring overhead runs

    @classmethod
    def fresh(cls) -> "Topics":
        return cls(
            noop=unique("bench-noop"),
            io=unique("bench-io"),
            shapes=unique("bench-shapes"),
            published=unique("bench-published"),
            fleet=unique("bench-fleet"),
            obs=unique("bench-obs"),
        )


# What each label means, for the report (the label is the key of a configuration).
DESCRIPTIONS: dict[str, str] = {
    "noop/mw-b10": "this middleware, limit 100, commit_batch_size 10 (default)",
    "noop/mw-b100": "this middleware, limit 100, commit_batch_size 100",
    "noop/fs-ack-first": "FastStream alone, ACK_FIRST (auto-commit): the ceiling",
    "noop/fs-ack": "FastStream alone, AckPolicy.ACK (sequential, commit per message)",
    "noop/fs-workers-100": "FastStream max_workers=100, ACK_FIRST",
    "noop/other": "the other package (0.7.x), limit 100, commit_batch_size 10",
    "io/ceiling": "FastStream alone, ACK_FIRST, no-op handler, on the I/O topic (paired ceiling)",
    "mem/mw-inflight": "this middleware, messages in flight (limit = held)",
    "mem/mw-inflight-rss": "same, without tracemalloc (RSS only)",
    "mem/mw-queued": "this middleware, messages queued (global limit 10)",
    "mem/fs-inflight": "FastStream max_workers = held, ACK_FIRST, in flight",
    "mem/fs-inflight-rss": "same, without tracemalloc (RSS only)",
    "profile/mw": "this middleware, limit 100, batch 10, no-op handler",
    "profile/fs": "FastStream alone, ACK_FIRST, no-op handler",
    "obs/mw": "this middleware, limit 100, batch 10, no-op handler",
    "obs/mw-scraped": "the same with ConcurrentProcessingCollector registered, scraped every 1 s",
    "profile/mw-dict-msg": "this middleware, limit 100, `body: dict, msg: KafkaMessage`",
    "profile/fs-dict-msg": "FastStream alone, ACK_FIRST, `body: dict, msg: KafkaMessage`",
    "profile/mw-model-msg": "this middleware, limit 100, `body: Order, msg: KafkaMessage`",
    "profile/fs-model-msg": "FastStream alone, ACK_FIRST, `body: Order, msg: KafkaMessage`",
}
SYSTEM_NAMES = {
    "mw": "this library (limit 100)",
    "fs-ack-first": "FastStream ACK_FIRST",
    "fs-workers-100": "FastStream max_workers=100",
    "other": "the other package (limit 100)",
}

OBS_PLAIN = "obs/mw"
OBS_SCRAPED = "obs/mw-scraped"
SCRAPE_INTERVAL_SEC = 1.0


PAIRED_CEILING = "io/ceiling"


def io_label(system: str, limit: int) -> str:
    return f"io/{system}/{limit}"


def shape_label(shape: str, system: str) -> str:
    return f"shapes/{shape}/{system}"


def uvloop_label(case: str, loop: str) -> str:
    return f"uvloop/{case}/{loop}"


def fleet_label(case: str, workers: int) -> str:
    return f"fleet/{case}/w{workers}"


def abba(items: list[Any], repeat: int) -> list[Any]:
    """Every other repeat in reverse order, so a drift of the machine's speed during a repeat
    hits each system at the same mean position."""
    return list(reversed(items)) if repeat % 2 else list(items)


def build(
    params: Params,
    bootstrap: str,
    topics: Topics,
    memory_topic: Callable[[], str],
    *,
    other: bool = False,
) -> list[RunSpec]:
    """All runs in order; ``memory_topic`` names a fresh topic for each memory run; ``other``:
    include the other package's runs (it needs its own interpreter, see bench.run).

    The caller creates every topic a run names, with the run's partitions, and pre-produces
    ``messages`` of the run's payload into it (memory runs produce their own messages)."""

    def spec(
        label: str, kind: Kind, system: System, topic: str, messages: int, **kw: Any
    ) -> RunSpec:
        return RunSpec(
            label=label,
            kind=kind,
            system=system,
            bootstrap=bootstrap,
            topic=topic,
            group=unique("bench-group"),
            messages=messages,
            **{"timeout_sec": params.run_timeout_sec, "partitions": params.partitions, **kw},
        )

    n = params.noop_messages
    runs: list[RunSpec] = []
    # 1. No-op throughput; repeats interleave the systems so a burst of load hits all alike.
    for repeat in range(params.repeat):
        one = [
            spec("noop/mw-b10", "throughput", "middleware", topics.noop, n, commit_batch_size=10),
            spec("noop/mw-b100", "throughput", "middleware", topics.noop, n, commit_batch_size=100),
            spec("noop/fs-ack-first", "throughput", "faststream", topics.noop, n),
            spec(
                "noop/fs-workers-100", "throughput", "faststream", topics.noop, n, max_workers=100
            ),
        ]
        if other:
            one.append(spec("noop/other", "throughput", "other", topics.noop, n))
        runs += [dataclasses.replace(r, repeat=repeat) for r in abba(one, repeat)]
    runs.append(
        spec(
            "noop/fs-ack",
            "throughput",
            "faststream",
            topics.noop,
            n,
            ack_policy="ACK",
            timeout_sec=params.ack_budget_sec,
        )
    )
    # 2. I/O-bound handlers; repeats interleave the systems as above. Right before each
    # repeat's top-limit runs, a ceiling run: this machine's speed drifts over minutes, so
    # the top limit is also compared with a ceiling measured next to it.
    io = {"handler": "sleep", "sleep_sec": params.io_sleep_sec}
    top = IO_LIMITS[-1]
    io_systems = {k: v for k, v in IO_SYSTEMS.items() if other or v[0] != "other"}
    for repeat in range(params.io_repeat):
        for limit in IO_LIMITS:
            if limit == top:
                runs.append(
                    spec(PAIRED_CEILING, "throughput", "faststream", topics.io,
                         params.io_messages(top), repeat=repeat)
                )  # fmt: skip
            one = []
            for name, (system, tuned) in io_systems.items():
                limits = {"max_workers" if system == "faststream" else "concurrency_limit": limit}
                gc_threshold = DEFAULT_GEN0_THRESHOLD if tuned else None
                one.append(
                    spec(io_label(name, limit), "throughput", system, topics.io,
                         params.io_messages(limit), gc_gen0_threshold=gc_threshold,
                         repeat=repeat, **limits, **io)
                )  # fmt: skip
            runs += abba(one, repeat)
    # 3. Handler shapes as users write them, each on every system, on JSON orders.
    m = params.shape_messages
    shapes = {"payload": "order", "output_topic": topics.published}
    shape_systems = {k: v for k, v in SHAPE_SYSTEMS.items() if other or v[0] != "other"}
    for repeat in range(params.shape_repeat):
        for shape in SHAPES:
            one = [
                spec(shape_label(shape, name), "throughput", system, topics.shapes, m,
                     handler=shape, max_workers=workers, repeat=repeat, **shapes)
                for name, (system, workers) in shape_systems.items()
            ]  # fmt: skip
            runs += abba(one, repeat)
    # 4. The event loop: the same run on asyncio's loop and on uvloop, back to back.
    for repeat in range(params.uvloop_repeat):
        for case, (system, handler, limit) in UVLOOP_CASES.items():
            topic = topics.io if handler == "sleep" else topics.noop
            count = params.io_messages(limit) if handler == "sleep" else n
            limits = {"max_workers" if system == "faststream" else "concurrency_limit": limit}
            one = [
                spec(uvloop_label(case, loop), "throughput", system, topic, count,
                     handler=handler, sleep_sec=params.io_sleep_sec, loop=loop, repeat=repeat,
                     **limits)
                for loop in LOOPS
            ]  # fmt: skip
            runs += abba(one, repeat)
    # 5. Every core: `faststream run --workers N`, N = 1 and 2 back to back.
    for repeat in range(params.fleet_repeat):
        for case, (handler, limit) in FLEET_CASES.items():
            one = [
                spec(fleet_label(case, workers), "fleet", "middleware", topics.fleet,
                     params.fleet_messages, partitions=params.fleet_partitions,
                     handler=handler, sleep_sec=params.io_sleep_sec, concurrency_limit=limit,
                     workers=workers, repeat=repeat, timeout_sec=4 * params.run_timeout_sec)
                for workers in FLEET_WORKERS
            ]  # fmt: skip
            runs += abba(one, repeat)
    # 6. Memory.
    held = params.memory_messages
    big = held * 10
    blocked = {"handler": "block", "session_timeout_ms": 60_000, "warmup": 50}
    runs += [
        spec("mem/mw-inflight", "memory", "middleware", memory_topic(), held,
             concurrency_limit=held, max_uncommitted_tasks=big, **blocked),
        spec("mem/mw-inflight-rss", "memory", "middleware", memory_topic(), held,
             concurrency_limit=held, max_uncommitted_tasks=big, trace=False, **blocked),
        spec("mem/mw-queued", "memory", "middleware", memory_topic(), held,
             concurrency_limit=params.queued_limit, subscriber_limit=2 * held,
             max_uncommitted_tasks=big, queued=True, **blocked),
        spec("mem/fs-inflight", "memory", "faststream", memory_topic(), held,
             max_workers=held, **blocked),
        spec("mem/fs-inflight-rss", "memory", "faststream", memory_topic(), held,
             max_workers=held, trace=False, **blocked),
    ]  # fmt: skip
    # 7. CPU profile: the no-op, and the shapes that take the KafkaMessage.
    p = params.profile_messages
    runs += [
        spec("profile/mw", "profile", "middleware", topics.noop, p),
        spec("profile/fs", "profile", "faststream", topics.noop, p),
    ]
    for name, shape in PROFILED_SHAPES.items():
        runs += [
            spec(f"profile/mw-{name}", "profile", "middleware", topics.shapes, p,
                 handler=shape, payload="order"),
            spec(f"profile/fs-{name}", "profile", "faststream", topics.shapes, p,
                 handler=shape, payload="order"),
        ]  # fmt: skip
    # 6. Monitoring overhead: the no-op run with and without the collector scraped every
    # second, paired; which of the two goes first alternates, so drift hits both alike.
    m = params.obs_messages
    for repeat in range(params.repeat):
        pair = [
            spec(OBS_PLAIN, "throughput", "middleware", topics.obs, m),
            spec(OBS_SCRAPED, "throughput", "middleware", topics.obs, m,
                 scrape_interval_sec=SCRAPE_INTERVAL_SEC),
        ]  # fmt: skip
        runs += pair if repeat % 2 == 0 else pair[::-1]
    return runs
