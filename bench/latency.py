"""End-to-end latency at a fixed offered rate, and what one slow record does to the others.

    python -m bench.latency [--bootstrap HOST:PORT] [--duration 10] [--out docs]
                            [--others --other-python /work/other-venv/bin/python]

Per contender, in worker processes of their own (``bench.worker``), one after the other:

1. its **capacity**: the rate of 10 ms handlers on a pre-produced topic (4 partitions), then
   the rate it sustains while records arrive live at 1.25 times that (the producer shares
   the machine), which the loads below are fractions of;
2. **latency at 50% and 80%** of that capacity: ``bench.paced`` produces at that rate for
   ``--duration`` seconds (``linger_ms=0``) into an empty topic the consumer already holds;
   each handler awaits 10 ms and notes the time from its record's CreateTime to its end;
   the first second is not counted;
3. **a straggler** at 50%: one record in 1,000 takes 5 s; the others' percentiles and the
   stragglers' own latency are reported apart.

Contenders: this library unordered and key-ordered (``ordering="key"``, Zipf keys), limit 100;
with ``--others`` also FastStream alone (one message at a time), FastStream
``max_workers=100`` (ACK_FIRST) and, with ``--other-python``, the other package (limit 100),
run as a black box as ``bench.run`` does. Writes ``benchmarks-latency.md`` and
``bench-latency.png`` to ``--out`` and ``latency-results.json`` to ``--data-out``. Nothing here
asserts a speed.
"""

import argparse
import asyncio
import json
import os
import shlex
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.kafka_io import create_topic, fill, unique
from bench.model import RunResult, RunSpec, is_straggler, result_from_dict
from bench.run import delete_topics, machine_info, run_worker

HANDLER_SEC = 0.01
STRAGGLER_EVERY = 1000
STRAGGLER_SEC = 5.0
PARTITIONS = 4
SATURATION = "saturation"  # the run measuring the capacity with records arriving live
OVERLOAD = 1.25  # its offered rate, over the pre-produced capacity


@dataclass(frozen=True)
class Contender:
    name: str
    fields: dict[str, Any]
    keying: str = "none"
    capacity_messages: int = 6_000  # pre-produced for the capacity run
    capacity_budget_sec: float = 60.0
    other: bool = False  # needs --others


CONTENDERS = [
    Contender("this library, unordered", {"system": "middleware", "concurrency_limit": 100}),
    Contender(
        'this library, ordering="key" (Zipf keys)',
        {"system": "middleware", "concurrency_limit": 100, "ordering": "key"},
        keying="zipf",
    ),
    Contender(
        "FastStream alone (one at a time)",
        {"system": "faststream", "max_workers": 1},
        capacity_messages=600,
        capacity_budget_sec=10.0,
        other=True,
    ),
    Contender(
        "FastStream max_workers=100 (ACK_FIRST)",
        {"system": "faststream", "max_workers": 100},
        other=True,
    ),
    Contender(
        "the other package 0.7.2 (limit 100)",
        {"system": "other", "concurrency_limit": 100},
        capacity_messages=3_000,
        other=True,
    ),
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds offered per run")
    parser.add_argument("--others", action="store_true", help="also FastStream, the other pkg")
    parser.add_argument("--other-python", help="the other package's interpreter (see README)")
    parser.add_argument("--only", help="comma-separated contender numbers (1-5) to run")
    parser.add_argument(
        "--loads", default="0.5,0.8", help="offered rates, as fractions of the capacity"
    )
    parser.add_argument("--no-straggler", action="store_true", help="skip the straggler runs")
    parser.add_argument(
        "--max-uncommitted",
        type=int,
        help="this library's max_uncommitted_tasks (default: the library's own default)",
    )
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--data-out", type=Path, default=Path("bench/results"))
    parser.add_argument("--broker-label", default="")
    parser.add_argument("--from-results", type=Path, help="run nothing: redraw from this JSON")
    return parser.parse_args(argv)


def _base(contender: Contender, args: argparse.Namespace, label: str) -> RunSpec:
    return RunSpec(
        label=label,
        kind="latency",
        bootstrap=args.bootstrap,
        topic="",
        group=unique("bench-latency-g"),
        partitions=PARTITIONS,
        messages=0,
        sleep_sec=HANDLER_SEC,
        keying=contender.keying,
        max_uncommitted_tasks=args.max_uncommitted,
        **contender.fields,
    )


def _run(spec: RunSpec, scratch: Path, index: list[int], args: argparse.Namespace) -> RunResult:
    index[0] += 1
    python = args.other_python if spec.system == "other" else None
    result = run_worker(spec, scratch, index[0], python=python)
    print(f"{spec.label}: {summary(result)}", flush=True)
    return result


def measure_capacity(
    contender: Contender, args: argparse.Namespace, scratch: Path, index: list[int]
) -> RunResult:
    topic = unique("bench-latency-cap")
    count = contender.capacity_messages
    asyncio.run(fill(args.bootstrap, topic, PARTITIONS, count, keying=contender.keying))
    try:
        spec = replace(
            _base(contender, args, f"{contender.name} | capacity"),
            kind="throughput",
            handler="sleep",
            topic=topic,
            messages=count,
            timeout_sec=contender.capacity_budget_sec,
        )
        return _run(spec, scratch, index, args)
    finally:
        asyncio.run(delete_topics(args.bootstrap, [topic]))


def measure_latency(
    contender: Contender,
    args: argparse.Namespace,
    scratch: Path,
    index: list[int],
    *,
    case: str,
    rate: float,
    straggler: bool,
) -> RunResult:
    # A straggler run lasts long enough for two counted stragglers, however slow the rate.
    duration = args.duration
    if straggler:
        second = _second_straggler(int(rate * RunSpec.warmup_sec))
        duration = min(90.0, max(duration, (second + 1) / rate + 1.0))
    topic = unique("bench-latency")
    asyncio.run(create_topic(args.bootstrap, topic, PARTITIONS))
    try:
        spec = replace(
            _base(contender, args, f"{contender.name} | {case}"),
            handler="latency",
            topic=topic,
            rate=rate,
            duration_sec=duration,
            messages=max(1, int(rate * duration)),
            straggler_every=STRAGGLER_EVERY if straggler else 0,
            straggler_sec=STRAGGLER_SEC,
            timeout_sec=duration + STRAGGLER_SEC + 60,
        )
        return _run(spec, scratch, index, args)
    finally:
        asyncio.run(delete_topics(args.bootstrap, [topic]))


def _second_straggler(first_counted: int) -> int:
    """The number of the second straggler past the warm-up."""
    found = 0
    number = first_counted
    while True:
        if is_straggler(number, STRAGGLER_EVERY):
            found += 1
            if found == 2:
                return number
        number += 1


def percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


def offered(result: RunResult) -> float:
    """The rate the producer kept up, from what it reported."""
    produced = result.latency.producer if result.latency else {}
    return produced.get("sent", 0.0) / max(produced.get("seconds", 1.0), 1e-9)


def summary(result: RunResult) -> str:
    if result.error:
        return f"error: {result.error}"
    if result.latency is None:
        return f"{result.throughput:,.0f} msg/s, load {result.loadavg_start:.1f}"
    lat = result.latency.others_ms
    return (
        f"p50/p99/p99.9 {percentile(lat, 0.5):.1f}/{percentile(lat, 0.99):.1f}/"
        f"{percentile(lat, 0.999):.1f} ms over {result.latency.counted:,} at "
        f"{offered(result):,.0f} msg/s "
        f"(handled {result.throughput:,.0f}/s), start p99 "
        f"{percentile(result.latency.starts_ms, 0.99):.1f}, loop lag p99 "
        f"{percentile(result.latency.loop_lag_ms, 0.99):.1f}, pauses {result.pauses}, "
        f"load {result.loadavg_start:.1f}; {'; '.join(result.notes)}"
    )


def run_all(args: argparse.Namespace) -> list[RunResult]:
    chosen = [
        c
        for number, c in enumerate(CONTENDERS, 1)
        if (args.others or not c.other)
        and (c.fields["system"] != "other" or args.other_python)
        and (not args.only or str(number) in args.only.split(","))
    ]
    results: list[RunResult] = []
    index = [0]
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        scratch = Path(tmp)
        for contender in chosen:
            first = measure_capacity(contender, args, scratch, index)
            results.append(first)
            if not first.ok or first.throughput <= 0:
                continue
            # The producer takes CPU from the same machine: what the consumer sustains while
            # records arrive live, offered more than it took pre-produced.
            capacity = measure_latency(
                contender,
                args,
                scratch,
                index,
                case=SATURATION,
                rate=round(OVERLOAD * first.throughput, 1),
                straggler=False,
            )
            results.append(capacity)
            if not capacity.ok or capacity.throughput <= 0:
                continue
            loads = [float(x) for x in args.loads.split(",")]
            cases = [(f"{round(100 * load)}% load", load, False) for load in loads]
            if not args.no_straggler:
                cases.append((f"{round(100 * loads[0])}% load, straggler", loads[0], True))
            for case, load, straggler in cases:
                results.append(
                    measure_latency(
                        contender,
                        args,
                        scratch,
                        index,
                        case=case,
                        rate=round(load * capacity.throughput, 1),
                        straggler=straggler,
                    )
                )
    return results


def _by_label(results: list[RunResult]) -> dict[str, RunResult]:
    return {r.label: r for r in results}


def table(results: list[RunResult]) -> list[str]:
    lines = [
        "| contender | capacity msg/s: pre-produced / live | case | offered msg/s | p50 ms "
        "| p99 ms | p99.9 ms | max ms | counted | stragglers: p50 / max ms "
        "| p99 / no-straggler p99 | to start p50 / p99 ms | loop lag p99 / max ms | pauses "
        "| producer behind, max ms | load avg | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    labels = _by_label(results)
    for r in results:
        if r.latency is None:
            continue
        name, case = r.label.split(" | ")
        capacity = labels.get(f"{name} | {SATURATION}")
        first = labels.get(f"{name} | capacity")
        capacities = " / ".join(f"{c.throughput:,.0f}" if c else "?" for c in (first, capacity))
        lat = r.latency.others_ms
        strag = r.latency.stragglers_ms
        plain = labels.get(f"{name} | {case.split(',')[0]}")
        ratio = (
            f"{percentile(lat, 0.99) / percentile(plain.latency.others_ms, 0.99):.2f}"
            if plain is not None and plain is not r and plain.latency and plain.latency.others_ms
            else ""
        )
        stragglers = (
            f"{percentile(strag, 0.5):,.0f} / {strag[-1]:,.0f} ({len(strag)})" if strag else ""
        )
        note = f" ({r.error or 'partial'})" if r.error or r.partial else ""
        lines.append(
            f"| {name} | {capacities} | {case}{note} | {offered(r):,.0f} "
            f"| {percentile(lat, 0.5):.1f} | {percentile(lat, 0.99):.1f} "
            f"| {percentile(lat, 0.999):.1f} | {lat[-1] if lat else float('nan'):,.1f} "
            f"| {r.latency.counted:,} | {stragglers} | {ratio} "
            f"| {percentile(r.latency.starts_ms, 0.5):.1f} / "
            f"{percentile(r.latency.starts_ms, 0.99):.1f} "
            f"| {percentile(r.latency.loop_lag_ms, 0.99):.1f} / "
            f"{max(r.latency.loop_lag_ms, default=float('nan')):.1f} "
            f"| {'' if r.pauses is None else r.pauses} "
            f"| {r.latency.producer.get('behind_max_ms', 0):.0f} "
            f"| {r.loadavg_start:.1f}-{r.loadavg_end:.1f} | {'; '.join(r.notes)} |"
        )
    return lines


def plot(path: Path, results: list[RunResult]) -> None:
    """Left: the latency distribution at 50% load (percentile against ms); right: p99 per
    case and contender."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = list(dict.fromkeys(r.label.split(" | ")[0] for r in results))
    cases = [
        case
        for case in dict.fromkeys(r.label.split(" | ")[1] for r in results if r.latency)
        if case != SATURATION
    ]
    quantiles = [0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999]
    labels = _by_label(results)
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        half = labels.get(f"{name} | {cases[0]}") if cases else None
        if half is not None and half.latency and half.latency.others_ms:
            left.plot(
                range(len(quantiles)),
                [percentile(half.latency.others_ms, q) for q in quantiles],
                marker="o",
                label=name,
            )
        heights = []
        for case in cases:
            run = labels.get(f"{name} | {case}")
            lat = run.latency.others_ms if run and run.latency else []
            heights.append(percentile(lat, 0.99) if lat else 0.0)
        right.bar([c + i * width for c in range(len(cases))], heights, width, label=name)
    left.set_xticks(range(len(quantiles)))
    left.set_xticklabels([f"p{100 * q:g}" for q in quantiles])
    left.set_yscale("log")
    left.set_ylabel("ms from CreateTime to the handler's end")
    left.set_title(f"{cases[0] if cases else ''}: latency percentiles")
    left.axhline(3000 * HANDLER_SEC, color="grey", linestyle=":", label="3 x handler time")
    left.legend(fontsize=7)
    right.set_xticks([c + width * (len(names) - 1) / 2 for c in range(len(cases))])
    right.set_xticklabels(cases, fontsize=8)
    right.set_yscale("log")
    right.set_ylabel("p99 ms (stragglers not counted)")
    right.set_title("p99 by case")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(args: argparse.Namespace, results: list[RunResult], meta: dict[str, Any]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    plot(args.out / "bench-latency.png", results)
    machine = meta["machine"]
    lines = [
        "# Latency benchmark",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} UTC; see bench/README.md "
        '("Latency") for what it does. Handlers await 10 ms; latency runs from each record\'s '
        "CreateTime (set by the producer client when it sent the record, `linger_ms=0`) to "
        "its handler's end, on one machine's clock; the first second of each run is not "
        "counted; straggler runs: one record in 1,000 takes 5 s, its latency is given apart "
        "and the percentiles are the other records'. Capacity: pre-produced, then sustained "
        "while offered 1.25 times that live (the loads are fractions of this one; its run is "
        "the `saturation` row). To start: CreateTime to the handler's start. Loop lag: how "
        "late a 5 ms sleep woke up in the consumer's process.",
        "",
        f"- machine: {machine['CPU']}, {machine['memory']}; {machine['platform']}",
        f"- {machine['Python']}; faststream {machine['faststream']}, aiokafka "
        f"{machine['aiokafka']}; this library {machine['faststream_concurrent_aiokafka']}",
        f"- the other package: {machine['the other package']}",
        f"- broker: {meta['broker']}; topics of {PARTITIONS} partitions",
        f"- load average (1 min): {meta['load_start']} at the start, {meta['load_end']} at the "
        "end; per run in the table",
        "",
        "![latency](bench-latency.png)",
        "",
        *table(results),
        "",
    ]
    (args.out / "benchmarks-latency.md").write_text("\n".join(lines))


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    data = args.data_out / "latency-results.json"
    if args.from_results:
        saved = json.loads(args.from_results.read_text())
        write_report(args, [result_from_dict(r) for r in saved["results"]], saved["meta"])
        return 0
    meta: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "bench.latency", *argv]),
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
        "broker": f"{args.broker_label or 'Kafka'} at {args.bootstrap}",
        "load_start": f"{os.getloadavg()[0]:.1f}",
        "machine": machine_info(args.other_python, "0.7.2" if args.other_python else ""),
    }
    results = run_all(args)
    meta["load_end"] = f"{os.getloadavg()[0]:.1f}"
    args.data_out.mkdir(parents=True, exist_ok=True)
    data.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]}))
    write_report(args, results, meta)
    print("\n".join(table(results)))
    return 1 if any(not r.ok for r in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
