"""Which runs make up a benchmark, with how many messages, in which order."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.kafka_io import unique
from bench.model import Kind, RunSpec, System
from faststream_concurrent_aiokafka.gc_tuning import DEFAULT_GEN0_THRESHOLD

IO_LIMITS = (1, 10, 100, 1000)
# I/O-bound systems: label part -> (system, tuned collector); "-gc" runs call
# tune_garbage_collector() with its default threshold, FastStream's alike for comparison.
IO_SYSTEMS: dict[str, tuple[System, bool]] = {
    "mw": ("middleware", False),
    "fs": ("faststream", False),
    "mw-gc": ("middleware", True),
    "fs-gc": ("faststream", True),
}


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
)


@dataclass(frozen=True)
class Topics:
    noop: str
    io: str
    obs: str


# What each label means, for the report (the label is the key of a configuration).
DESCRIPTIONS: dict[str, str] = {
    "noop/mw-b10": "this middleware, limit 100, commit_batch_size 10 (default)",
    "noop/mw-b100": "this middleware, limit 100, commit_batch_size 100",
    "noop/fs-ack-first": "FastStream alone, ACK_FIRST (auto-commit): the ceiling",
    "noop/fs-ack": "FastStream alone, AckPolicy.ACK (sequential, commit per message)",
    "noop/fs-workers-100": "FastStream max_workers=100, ACK_FIRST",
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
}

OBS_PLAIN = "obs/mw"
OBS_SCRAPED = "obs/mw-scraped"
SCRAPE_INTERVAL_SEC = 1.0


PAIRED_CEILING = "io/ceiling"


def io_label(system: str, limit: int) -> str:
    return f"io/{system}/{limit}"


def build(
    params: Params, bootstrap: str, topics: Topics, memory_topic: Callable[[], str]
) -> list[RunSpec]:
    """All runs in order; ``memory_topic`` names a fresh topic for each memory run.

    The caller creates every topic with ``params.partitions`` partitions and pre-produces
    the no-op and I/O topics (memory runs produce their own messages)."""

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
            partitions=params.partitions,
            messages=messages,
            **{"timeout_sec": params.run_timeout_sec, **kw},
        )

    n = params.noop_messages
    runs: list[RunSpec] = []
    # 1. No-op throughput; repeats interleave the systems so a burst of load hits all alike.
    for _ in range(params.repeat):
        runs += [
            spec("noop/mw-b10", "throughput", "middleware", topics.noop, n, commit_batch_size=10),
            spec("noop/mw-b100", "throughput", "middleware", topics.noop, n, commit_batch_size=100),
            spec("noop/fs-ack-first", "throughput", "faststream", topics.noop, n),
            spec(
                "noop/fs-workers-100", "throughput", "faststream", topics.noop, n, max_workers=100
            ),
        ]
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
    for _ in range(params.io_repeat):
        for limit in IO_LIMITS:
            if limit == top:
                runs.append(
                    spec(PAIRED_CEILING, "throughput", "faststream", topics.io,
                         params.io_messages(top))
                )  # fmt: skip
            for name, (system, tuned) in IO_SYSTEMS.items():
                limits = {"concurrency_limit" if system == "middleware" else "max_workers": limit}
                gc_threshold = DEFAULT_GEN0_THRESHOLD if tuned else None
                runs.append(
                    spec(io_label(name, limit), "throughput", system, topics.io,
                         params.io_messages(limit), gc_gen0_threshold=gc_threshold,
                         **limits, **io)
                )  # fmt: skip
    # 4. Memory.
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
    # 5. CPU profile.
    p = params.profile_messages
    runs += [
        spec("profile/mw", "profile", "middleware", topics.noop, p),
        spec("profile/fs", "profile", "faststream", topics.noop, p),
    ]
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
