"""Flow control against slow downstreams, in paired runs: adaptive concurrency, ordering by a
key function and by Zipf-distributed record keys, the rate limit.

    python -m bench.flow [--bootstrap HOST:PORT] [--repeat 3] [--cases adaptive-quadratic,...]
                         [--out docs/benchmarks-downstream.md]

Each case runs its variants back to back on one pre-produced topic (4 partitions), in
alternating order from repeat to repeat (ABBA), each in a fresh worker process and consumer
group, so a drift of the machine's speed hits every variant alike. The report gives per case
each variant's median rate and the median of the per-repeat ratios to the case's reference
variant (the first). Nothing here asserts a speed.
"""

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.kafka_io import fill, unique
from bench.model import RunResult, RunSpec
from bench.paired import case, emit, pick_cases
from bench.plan import abba
from bench.run import delete_topics, machine_info, run_worker


@dataclass(frozen=True)
class Case:
    """Variants of one run on one topic; the first is what the others are divided by."""

    what: str
    messages: int
    keying: str
    variants: dict[str, dict[str, Any]]


_QUADRATIC = {"handler": "downstream", "downstream": "quadratic"}
_FLAT = {"handler": "downstream", "downstream": "flat"}
_IO = {"handler": "sleep", "sleep_sec": 0.01, "concurrency_limit": 100}

CASES = {
    "adaptive-quadratic": Case(
        "quadratic downstream (20 ms up to 20 in flight, x (n/20)^2 beyond, capped at 5 s)",
        6_000,
        "none",
        {
            "fixed 20": {**_QUADRATIC, "concurrency_limit": 20},
            "adaptive, ceiling 1000": {
                **_QUADRATIC,
                "concurrency_limit": 1000,
                "adaptive_concurrency": True,
            },
            "fixed 1000": {**_QUADRATIC, "concurrency_limit": 1000},
        },
    ),
    "adaptive-flat": Case(
        "flat downstream (10 ms at any concurrency)",
        40_000,
        "none",
        {
            "fixed 1000": {**_FLAT, "concurrency_limit": 1000},
            "adaptive, ceiling 1000": {
                **_FLAT,
                "concurrency_limit": 1000,
                "adaptive_concurrency": True,
            },
        },
    ),
    "keyfn": Case(
        "10 ms handlers, limit 100; random record keys, an `account` header of 50 values",
        10_000,
        "accounts",
        {
            "unordered": _IO,
            "ordering=key function (the account header)": {**_IO, "ordering": "account"},
        },
    ),
    "zipf": Case(
        "10 ms handlers, limit 100; record keys Zipf(s=1.1) over 10,000 keys",
        10_000,
        "zipf",
        {"unordered": _IO, 'ordering="key"': {**_IO, "ordering": "key"}},
    ),
    "adaptive-noop": Case(
        "no-op handlers, limit 100: the adaptive limit's cost per message",
        20_000,
        "none",
        {
            "adaptive off": {"concurrency_limit": 100},
            "adaptive on": {"concurrency_limit": 100, "adaptive_concurrency": True},
        },
    ),
    "rate": Case(
        "no-op handlers, max_messages_per_sec=300 (3,000 messages: about 9 s with the burst)",
        3_000,
        "none",
        {"max_messages_per_sec=300": {"max_messages_per_sec": 300.0}},
    ),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES), help=f"of {', '.join(CASES)}")
    parser.add_argument("--messages", type=float, default=1.0, help="scale every case's count")
    parser.add_argument("--out", type=Path, help="append the report to this markdown file")
    return parser.parse_args(argv)


def _spec(name: str, variant: str, fields: dict[str, Any], messages: int) -> RunSpec:
    return replace(case(f"flow/{name}/{variant}", **fields), messages=messages, timeout_sec=120)


def run_case(
    name: str, flow: Case, args: argparse.Namespace, scratch: Path, index: int
) -> tuple[dict[str, list[RunResult]], int]:
    messages = max(100, int(flow.messages * args.messages))
    topic = unique(f"bench-flow-{name}")
    asyncio.run(fill(args.bootstrap, topic, 4, messages, keying=flow.keying))
    results: dict[str, list[RunResult]] = {variant: [] for variant in flow.variants}
    try:
        for repeat in range(args.repeat):
            for variant in abba(list(flow.variants), repeat):
                spec = replace(
                    _spec(name, variant, flow.variants[variant], messages),
                    bootstrap=args.bootstrap,
                    topic=topic,
                    group=unique("bench-flow-g"),
                    repeat=repeat,
                )
                index += 1
                result = run_worker(spec, scratch, index)
                if result.error or result.partial:
                    print(f"{name} {variant}: {result.error or 'partial'}", file=sys.stderr)
                results[variant].append(result)
                print(
                    f"{name} #{repeat + 1} {variant}: {result.throughput:,.0f} msg/s "
                    f"({result.handled:,} in {result.elapsed_sec:.2f} s), load "
                    f"{result.loadavg_start:.2f} {'; '.join(result.notes)}",
                    flush=True,
                )
    finally:
        asyncio.run(delete_topics(args.bootstrap, [topic]))
    return results, index


def rows(name: str, flow: Case, results: dict[str, list[RunResult]]) -> list[str]:
    """One row per variant: median rate, and the median ratio to the reference per repeat."""
    reference = next(iter(flow.variants))
    base = [r.throughput for r in results[reference]]
    lines = []
    for variant, runs in results.items():
        rates = [r.throughput for r in runs]
        ratios = [a / b if b else 0.0 for a, b in zip(rates, base, strict=True)]
        notes = sorted({note for r in runs for note in r.notes})
        partial = sum(r.partial or r.error is not None for r in runs)
        lines.append(
            f"| {name} | {variant} | {statistics.median(rates):,.0f} "
            f"| {statistics.median(ratios):.3f} | {', '.join(f'{x:.2f}' for x in ratios)} "
            f"| {min(r.loadavg_start for r in runs):.1f}-{max(r.loadavg_start for r in runs):.1f} "
            f"| {partial} | {'; '.join(notes)[:200]} |"
        )
    return lines


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    cases = pick_cases(args.cases, CASES)
    if cases is None:
        return 2
    machine = machine_info()
    lines = [
        f"## Flow-control runs, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"`python -m bench.flow {' '.join(argv)}`; broker {args.bootstrap}; {machine['CPU']}; "
        f"{machine['Python']}, library {machine['faststream_concurrent_aiokafka']}. "
        f"{args.repeat} repeats, variants in ABBA order; msg/s from the first handled message "
        "to the last, medians; ratio = variant / the case's first variant, per repeat.",
        "",
        "| case | variant | msg/s | median ratio | ratios | load avg | failed runs | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-flow-") as tmp:
        index = 0
        for name in cases:
            results, index = run_case(name, CASES[name], args, Path(tmp), index)
            lines.extend(rows(name, CASES[name], results))
    lines += ["", *(f"- {name}: {CASES[name].what}" for name in cases)]
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
