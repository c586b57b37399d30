"""Exactly-once against at-least-once on the same pipeline, in paired runs.

    python -m bench.exactly_once [--bootstrap HOST:PORT] [--repeat 5] [--cases io,noop]
                                 [--out docs/exactly-once.md]

The pipeline: 20,000 pre-produced messages over 4 partitions; each handler (awaiting 10 ms for
``io``, nothing for ``noop``) publishes one result with ``broker.publish`` and counts as
handled once that publish was acknowledged; limit 100, ``commit_batch_size=100``,
``commit_batch_timeout_sec=1``, ``isolation_level="read_committed"`` for both. Each repeat runs
both guarantees back to back, in alternating order (ABBA), each in a fresh worker process and
consumer group on the same input topic, so a drift of the machine's speed hits both alike. The
report gives per case both medians, the ratio of the medians and the median of the per-repeat
ratios (exactly-once / at-least-once), and the commits (transactions) per 1000 messages.
Nothing here asserts a speed.
"""

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from bench.kafka_io import create_topic, fill, unique
from bench.model import RunResult
from bench.paired import case, emit, pick_cases
from bench.plan import abba
from bench.run import delete_topics, machine_info, run_worker

GUARANTEES = ("at_least_once", "exactly_once")

_BATCHES = {"concurrency_limit": 100, "commit_batch_size": 100, "commit_batch_timeout_sec": 1.0}
CASES = {
    "io": case("eos/io", handler="sleep", sleep_sec=0.01, results_topic="", **_BATCHES),
    "noop": case("eos/noop", results_topic="", **_BATCHES),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cases", default="io,noop", help=f"of {', '.join(CASES)}")
    parser.add_argument("--out", type=Path, help="append the report to this markdown file")
    return parser.parse_args(argv)


def per_thousand(result: RunResult) -> float:
    """Commit requests (transactions, for exactly-once) per 1000 messages, final one included."""
    commits = result.transactions_committed or result.commit_requests or 0
    return 1000 * commits / max(1, result.processed or result.handled)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    cases = pick_cases(args.cases, CASES)
    if cases is None:
        return 2
    machine = machine_info()
    lines = [
        f"## Exactly-once against at-least-once, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Broker {args.bootstrap}; {machine['CPU']}; {machine['Python']}, aiokafka "
        f"{machine['aiokafka']}, faststream {machine['faststream']}, library "
        f"{machine['faststream_concurrent_aiokafka']}. {args.repeat} repeats in ABBA order; "
        "msg/s (a message is handled once its result's publish was acknowledged), medians; "
        "ratio = exactly-once / at-least-once.",
        "",
        "| case | at-least-once | exactly-once | ratio of medians | median of ratios | "
        "ratios | commits per 1000 msg (ALO / EOS) | aborted | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-eos-") as tmp:
        scratch = Path(tmp)
        index = 0
        for name in cases:
            base = CASES[name]
            topic = unique(f"bench-eos-{name}")
            asyncio.run(fill(args.bootstrap, topic, base.partitions, base.messages))
            results: dict[str, list[RunResult]] = {g: [] for g in GUARANTEES}
            created = [topic]
            try:
                for repeat in range(args.repeat):
                    for guarantee in abba(list(GUARANTEES), repeat):
                        out = unique(f"bench-eos-out-{name}")
                        asyncio.run(create_topic(args.bootstrap, out, base.partitions))
                        created.append(out)
                        spec = replace(
                            base,
                            label=f"{base.label}/{guarantee}",
                            bootstrap=args.bootstrap,
                            topic=topic,
                            group=unique("bench-eos-g"),
                            results_topic=out,
                            processing_guarantee=guarantee,
                        )
                        index += 1
                        result = run_worker(spec, scratch, index)
                        if result.error or result.partial:
                            failure = result.error or "partial"
                            print(f"{name} {guarantee}: {failure}", file=sys.stderr)
                            return 1
                        results[guarantee].append(result)
                        print(
                            f"{name} #{repeat + 1} {guarantee}: {result.throughput:,.0f} msg/s, "
                            f"{per_thousand(result):.1f} commits/1000, "
                            f"load {result.loadavg_start:.2f}"
                        )
            finally:
                asyncio.run(delete_topics(args.bootstrap, created))
            lines.append(_row(name, results))
    emit(lines, args.out)
    return 0


def _row(name: str, results: dict[str, list[RunResult]]) -> str:
    alo, eos = results["at_least_once"], results["exactly_once"]
    alo_rates = [r.throughput for r in alo]
    eos_rates = [r.throughput for r in eos]
    ratios = [e / a for e, a in zip(eos_rates, alo_rates, strict=True)]
    loads = [r.loadavg_start for r in alo + eos]
    aborted = sum(r.transactions_aborted or 0 for r in eos)
    return (
        f"| {name} | {statistics.median(alo_rates):,.0f} | {statistics.median(eos_rates):,.0f} "
        f"| {statistics.median(eos_rates) / statistics.median(alo_rates):.3f} "
        f"| {statistics.median(ratios):.3f} | {', '.join(f'{r:.2f}' for r in ratios)} "
        f"| {statistics.median(per_thousand(r) for r in alo):.1f} / "
        f"{statistics.median(per_thousand(r) for r in eos):.1f} | {aborted} "
        f"| {min(loads):.2f}-{max(loads):.2f} |"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
