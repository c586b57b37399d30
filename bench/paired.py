"""Paired runs of this checkout's library against another checkout's, same harness and topics.

    python -m bench.paired --against ../older-checkout [--repeat 5] [--cases noop,io1000,eos]
    python -m bench.paired --toggle measure_processing_time [--repeat 5] [--cases noop]
    python -m bench.paired --faststream [--repeat 9] [--cases noop]

With ``--toggle`` (a boolean setting of the run, ``RunSpec``'s field of that name) both sides
are this checkout: the setting on against off. With ``--faststream`` the other side is
FastStream alone on the same handler and topic, ACK_FIRST (auto-commit, at-most-once): the
ceiling the no-op is measured against.

Each repeat runs one case for both libraries back to back, in alternating order (ABBA), so a
drift of the machine's speed hits both alike; the report gives, per case, both medians and the
median of the per-repeat ratios (this / other). Only the library is swapped: the harness, the
topics and the broker are the same. Nothing here asserts a speed.
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.kafka_io import create_topic, fill, unique
from bench.model import RunResult, RunSpec
from bench.plan import abba
from bench.run import REPO, delete_topics, load_average, run_worker


def case(label: str, **fields: Any) -> RunSpec:
    """A paired case: 20,000 pre-produced messages over 4 partitions, this library's
    middleware; the broker, topic and group are filled in per run."""
    return RunSpec(
        label=label,
        kind="throughput",
        system="middleware",
        bootstrap="",
        topic="",
        group="",
        partitions=4,
        messages=20_000,
        **fields,
    )


CASES = {
    "noop": case("paired/noop", concurrency_limit=100, commit_batch_size=10),
    "io1000": case("paired/io1000", handler="sleep", sleep_sec=0.01, concurrency_limit=1000),
    # bench.exactly_once's no-op pipeline, exactly-once only: each run publishes its results
    # into a topic of its own.
    "eos": case(
        "paired/eos",
        results_topic="",
        processing_guarantee="exactly_once",
        concurrency_limit=100,
        commit_batch_size=100,
        commit_batch_timeout_sec=1.0,
    ),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sides = parser.add_mutually_exclusive_group(required=True)
    sides.add_argument("--against", type=Path, help="the other checkout")
    sides.add_argument("--toggle", choices=TOGGLES, help="this checkout, the setting on vs off")
    sides.add_argument(
        "--faststream", action="store_true", help="this checkout vs FastStream alone, ACK_FIRST"
    )
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cases", default="noop,io1000", help=f"of {', '.join(CASES)}")
    parser.add_argument("--out", type=Path, help="append the report to this markdown file")
    return parser.parse_args(argv)


def library_dir(checkout: Path, scratch: Path) -> Path:
    """A folder holding only the checkout's package, to put first on the worker's path (the
    harness itself always comes from this checkout)."""
    folder = scratch / f"lib-{abs(hash(checkout.resolve()))}"
    folder.mkdir(exist_ok=True)
    link = folder / "faststream_concurrent_aiokafka"
    if not link.exists():
        link.symlink_to(checkout.resolve() / "faststream_concurrent_aiokafka")
    return folder


def pick_cases(names: str, known: Mapping[str, object]) -> list[str] | None:
    """The comma-separated case names, or None (after saying which) if one is unknown."""
    cases = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in cases if name not in known]
    if unknown:
        print(f"unknown case(s): {', '.join(unknown)}", file=sys.stderr)
        return None
    return cases


def emit(lines: list[str], out: Path | None) -> None:
    """Print the report; with ``out``, also append it to that markdown file."""
    report = "\n".join(lines) + "\n"
    print(report)
    if out is not None:
        with out.open("a", encoding="utf-8") as fh:
            fh.write("\n" + report)


def measure(spec: RunSpec, library: Path, scratch: Path, index: int) -> RunResult:
    return run_worker(spec, scratch, index, pythonpath=[library])


TOGGLES = ("measure_processing_time",)

Side = tuple[str, Path, dict[str, Any]]
"""Who runs: a name for the report, the library folder, RunSpec fields set for it."""


def sides_of(args: argparse.Namespace, scratch: Path) -> tuple[str, Side, Side]:
    """The report's first line and the two sides to pair."""
    mine = library_dir(REPO, scratch)
    if args.faststream:
        what = f"This checkout ({REPO}) against FastStream alone, ACK_FIRST"
        return what, ("this", mine, {}), ("ACK_FIRST", mine, {"system": "faststream"})
    if args.toggle is not None:
        what = f"This checkout ({REPO}), {args.toggle} on against off"
        return what, ("on", mine, {args.toggle: True}), ("off", mine, {})
    what = f"This checkout ({REPO}) against {args.against.resolve()}"
    return what, ("this", mine, {}), ("other", library_dir(args.against, scratch), {})


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    cases = pick_cases(args.cases, CASES)
    if cases is None:
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-paired-") as tmp:
        scratch = Path(tmp)
        what, first, second = sides_of(args, scratch)
        a, b = first[0], second[0]
        start_load = load_average()
        lines = [
            f"## Paired runs, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "",
            f"{what}; {args.repeat} repeats in ABBA order, broker {args.bootstrap}. msg/s, "
            f"medians; ratio = median of the per-repeat ratios ({a} / {b}); CPU = the worker "
            "process's CPU time per message over the same window (us, medians), and the "
            f"median of its per-repeat ratios ({b} / {a}, so that above 1 means {a} is cheaper).",
            "",
            f"| case | {a} | {b} | ratio | ratios | CPU {a} | CPU {b} | CPU ratio |",
            "|---|---|---|---|---|---|---|---|",
        ]
        index = 0
        for name in cases:
            base = CASES[name]
            topic = unique(f"bench-paired-{name}")
            asyncio.run(fill(args.bootstrap, topic, base.partitions, base.messages))
            rates: dict[str, list[float]] = {a: [], b: []}
            cpu: dict[str, list[float]] = {a: [], b: []}
            created = [topic]
            try:
                for repeat in range(args.repeat):
                    for who, library, fields in abba([first, second], repeat):
                        spec = replace(
                            base,
                            bootstrap=args.bootstrap,
                            topic=topic,
                            group=unique("bench-g"),
                            **fields,
                        )
                        if base.results_topic is not None:
                            out = unique(f"bench-paired-out-{name}")
                            asyncio.run(create_topic(args.bootstrap, out, base.partitions))
                            created.append(out)
                            spec = replace(spec, results_topic=out)
                        index += 1
                        result = measure(spec, library, scratch, index)
                        if result.error or result.partial:
                            print(f"{name} {who}: {result.error or 'partial'}", file=sys.stderr)
                            return 1
                        rates[who].append(result.throughput)
                        cpu[who].append(result.cpu_us_per_message)
                        print(
                            f"{name} #{repeat + 1} {who}: {result.throughput:,.0f} msg/s, "
                            f"{result.cpu_us_per_message:.1f} us CPU per message"
                        )
            finally:
                asyncio.run(delete_topics(args.bootstrap, created))
            ratios = [x / y for x, y in zip(rates[a], rates[b], strict=True)]
            cpu_ratios = [y / x for x, y in zip(cpu[a], cpu[b], strict=True) if x > 0]
            lines.append(
                f"| {name} | {statistics.median(rates[a]):,.0f} "
                f"| {statistics.median(rates[b]):,.0f} "
                f"| {statistics.median(ratios):.3f} "
                f"| {', '.join(f'{r:.2f}' for r in ratios)} "
                f"| {statistics.median(cpu[a]):.1f} | {statistics.median(cpu[b]):.1f} "
                f"| {statistics.median(cpu_ratios) if cpu_ratios else 0:.3f} |"
            )
        lines += ["", f"Load average (1 min): start {start_load}, end {load_average()}."]
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
