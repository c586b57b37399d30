"""Run the whole benchmark against a live broker and write the report.

    python -m bench.run [--quick] [--bootstrap HOST:PORT] [--out docs]

Every measured run happens in its own worker process (``bench.worker``), one after the other;
this process only creates and fills the topics, starts the workers and writes the report.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from bench import report
from bench.fleet import run_fleet
from bench.kafka_io import cluster_info, create_topic, produce, unique
from bench.model import RunResult, RunSpec, read_result, result_for, result_from_dict, write_json
from bench.plan import FULL, QUICK, Params, Topics, build

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ["noop", "io", "shapes", "uvloop", "fleet", "mem", "profile", "obs"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See bench/README.md.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer messages (about 2 minutes)")
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    parser.add_argument(
        "--out", default="docs", help="the report and its plots, for the docs (default: docs)"
    )
    parser.add_argument(
        "--data-out",
        default="bench/results",
        help="raw results and profiles, kept out of the docs (default: bench/results)",
    )
    parser.add_argument("--repeat", type=int, help="repeats of the no-op throughput runs")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only these sections (repeatable); the report marks the others as not run",
    )
    parser.add_argument(
        "--other-python",
        metavar="PYTHON",
        help="the interpreter of a virtualenv holding the other package (faststream-"
        "concurrent-aiokafka 0.7.x from the package index, see bench/README.md); "
        "without it its runs are left out",
    )
    parser.add_argument("--broker-label", default="", help="e.g. 'Kafka 4.1.1, KRaft, 1 node'")
    parser.add_argument("--keep-topics", action="store_true", help="do not delete the topics")
    parser.add_argument(
        "--from-results",
        metavar="JSON",
        help="run nothing: rewrite the report and plots from a saved bench-results.json",
    )
    return parser.parse_args(argv)


def _read(path: str) -> str:
    with contextlib.suppress(OSError):
        return Path(path).read_text()
    return ""


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def machine_info(other_python: str | None = None, other_version: str = "") -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kib = next(
        (
            int(line.split()[1])
            for line in _read("/proc/meminfo").splitlines()
            if line.startswith("MemTotal:")
        ),
        0,
    )
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    if _git("status", "--porcelain", "--", "faststream_concurrent_aiokafka"):
        commit += " (with uncommitted changes to the library)"
    return {
        "platform": platform.platform(),
        "CPU": f"{cpu}, {os.cpu_count()} logical cores",
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB" if mem_kib else "unknown",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "faststream": metadata.version("faststream"),
        "aiokafka": metadata.version("aiokafka"),
        "faststream_concurrent_aiokafka": f"git {commit}",
        "the other package": (
            f"faststream-concurrent-aiokafka {other_version} from the package index, in "
            f"{other_python}"
            if other_python
            else "not run (no --other-python)"
        ),
        "uvloop": _version("uvloop"),
    }


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (5 min {five:.1f}) at {datetime.now(UTC):%H:%M:%S}"


async def prepare(params: Params, bootstrap: str, specs: list[RunSpec]) -> list[str]:
    """Create the topics the runs use; fill those that are read pre-produced."""
    wanted: dict[str, tuple[int, int, str]] = {}  # topic -> messages, partitions, payload
    for spec in specs:
        count = spec.warmup if spec.kind == "memory" else spec.messages
        have = wanted.get(spec.topic, (0, spec.partitions, spec.payload))
        wanted[spec.topic] = (max(have[0], count), spec.partitions, spec.payload)
        if spec.output_topic:
            wanted.setdefault(spec.output_topic, (0, params.partitions, "int"))
    for name, (count, partitions, payload) in wanted.items():
        await create_topic(bootstrap, name, partitions)
        if count:
            seconds = await produce(bootstrap, name, count, partitions, payload=payload)
            print(f"produced {count:,} messages to {name} in {seconds:.1f} s", flush=True)
    return list(wanted)


async def delete_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


def harness_only(workdir: Path) -> Path:
    """A folder holding only the harness (``bench``), for interpreters that must import
    another ``faststream_concurrent_aiokafka`` than this checkout's."""
    folder = workdir / "harness-only"
    if not folder.exists():
        folder.mkdir()
        (folder / "bench").symlink_to(REPO / "bench")
    return folder


def run_worker(
    spec: RunSpec,
    workdir: Path,
    index: int,
    pythonpath: list[Path] | None = None,
    python: str | None = None,
) -> RunResult:
    """One run in a worker process; ``pythonpath`` goes first on its path (bench.paired puts
    another checkout's package there). With ``python`` (the other package's virtualenv) the
    path holds the harness but not this checkout's package."""
    spec_path = workdir / f"{index:03d}-spec.json"
    result_path = workdir / f"{index:03d}-result.json"
    log_path = workdir / f"{index:03d}-worker.log"
    write_json(spec_path, spec)
    env = dict(os.environ)
    first = [str(path) for path in pythonpath or []]
    # Another interpreter gets the harness alone: nothing inherited may lead it to this
    # checkout's package.
    harness = str(harness_only(workdir) if python else REPO)
    inherited = None if python else env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*first, harness, inherited]))
    # The working directory (this checkout) must not come before that path.
    env["PYTHONSAFEPATH"] = "1"
    # A worker that overruns is killed and reported as having written no result.
    with log_path.open("w") as log, contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(
            [python or sys.executable, "-m", "bench.worker", str(spec_path), str(result_path)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=spec.timeout_sec * 2 + 120,
            check=False,
        )
    if result_path.exists():
        return read_result(result_path)
    tail = " | ".join(_read(str(log_path)).strip().splitlines()[-3:])
    return result_for(spec, error=f"worker wrote no result: {tail or 'no output'}")


def _progress(index: int, total: int, result: RunResult) -> str:
    head = f"[{index}/{total}] {result.label}: "
    if result.error:
        return head + f"ERROR {result.error}"
    if result.fleet is not None:
        fleet = result.fleet
        return head + (
            f"{fleet.steady_rate:,.0f} msg/s steady, {fleet.whole_rate:,.0f} whole; per process "
            f"{fleet.per_process}, lost {fleet.lost}, twice {fleet.duplicates}, committed "
            f"{fleet.committed:,} of {fleet.end:,}, {fleet.assignments} assignments"
        )
    if result.memory is not None:
        mem = result.memory
        size = mem.diff_bytes if mem.traced else mem.rss_delta_bytes
        what = "traced" if mem.traced else "RSS"
        return head + f"{mem.held:,} held, {size / max(mem.held, 1):,.0f} B/message ({what})"
    text = f"{result.throughput:,.0f} msg/s ({result.handled:,}/{result.expected:,} in "
    text += f"{result.elapsed_sec:.2f} s)"
    if result.commits_per_1000 is not None:
        text += f", {result.commits_per_1000:.1f} commits/1000"
    return head + text


def _selected(spec: RunSpec, only: list[str] | None) -> bool:
    return only is None or spec.label.split("/", 1)[0] in only


def write_report(out: Path, results: list[RunResult], meta: report.Meta) -> None:
    report.plot_throughput(out / "bench-throughput.png", results)
    report.plot_io(out / "bench-io-bound.png", results, meta.params)
    report.plot_shapes(out / "bench-shapes.png", results)
    report.plot_fleet(out / "bench-workers.png", results)
    report.plot_memory(out / "bench-memory.png", results)
    report.write_markdown(out / "benchmarks.md", results, meta)


def rewrite_report(out: Path, saved: Path) -> int:
    """Only redraw the report and plots from a saved ``bench-results.json``."""
    data = json.loads(saved.read_text())
    meta_data = data["meta"]
    meta_data["params"] = Params(**meta_data["params"])
    meta = report.Meta(**meta_data)
    results = [result_from_dict(run) for run in data["runs"]]
    write_report(out, results, meta)
    print(f"rewrote {out / 'benchmarks.md'} from {saved}")
    return 0


def _other_package(python: str) -> str:
    """The other package's version in that interpreter (by its metadata only), or "".
    Isolated mode (-I): from this checkout's folder, the working directory on the path would
    find this package's own metadata first."""
    probe = (
        "from importlib.metadata import version; print(version('faststream-concurrent-aiokafka'))"
    )
    try:
        done = subprocess.run(
            [python, "-I", "-c", probe], capture_output=True, text=True, check=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as exc:
        print(
            f"--other-python {python}: no faststream-concurrent-aiokafka ({exc!r})", file=sys.stderr
        )
        return ""
    return done.stdout.strip()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.from_results:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        return rewrite_report(out, Path(args.from_results))
    params = QUICK if args.quick else FULL
    if args.repeat is not None:
        params = dataclasses.replace(params, repeat=max(1, args.repeat))
    out, data = Path(args.out), Path(args.data_out)
    out.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    date = f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}"
    loads = [f"start {load_average()}"]

    try:
        cluster = asyncio.run(cluster_info(args.bootstrap))
    except Exception as exc:
        print(f"cannot reach Kafka at {args.bootstrap}: {exc!r}", file=sys.stderr)
        return 2
    if args.broker_label:
        cluster = {"broker": args.broker_label, **cluster}

    other = args.other_python
    other_version = _other_package(other) if other else ""
    if other and not other_version:
        return 2
    planned = build(
        params, args.bootstrap, Topics.fresh(), lambda: unique("bench-mem"), other=bool(other)
    )
    specs = [s for s in planned if _selected(s, args.only)]
    created = asyncio.run(prepare(params, args.bootstrap, specs))

    results: list[RunResult] = []
    profile_texts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fca-bench-") as tmp:
        workdir = Path(tmp)
        for index, planned_spec in enumerate(specs, 1):
            spec = planned_spec
            if spec.kind == "profile":
                spec = dataclasses.replace(spec, profile_path=str(workdir / f"{index:03d}.prof"))
            if spec.kind == "fleet":
                result = run_fleet(spec, workdir, index)
            else:
                result = run_worker(
                    spec, workdir, index, python=other if spec.system == "other" else None
                )
            results.append(result)
            print(_progress(index, len(specs), result), flush=True)
            if spec.profile_path and result.profile is not None:
                profile_texts.append(_read(spec.profile_path))
                result.profile.text_path = str(data / "profile.txt")
                raw = Path(spec.profile_path + ".pstats")
                if raw.exists():  # for snakeviz or pstats; named e.g. profile-mw.pstats
                    shutil.copyfile(raw, data / f"profile-{spec.label.split('/')[-1]}.pstats")
    loads.append(f"end {load_average()}")

    if not args.keep_topics:
        with contextlib.suppress(Exception):
            asyncio.run(delete_topics(args.bootstrap, created))

    command = "python -m bench.run " + shlex.join(argv)
    meta = report.Meta(
        date=date,
        command=command.strip(),
        duration_sec=time.perf_counter() - started,
        machine=machine_info(other, other_version),
        cluster=cluster,
        params=params,
        loadavg=loads,
    )
    saved = {"meta": dataclasses.asdict(meta), "runs": [dataclasses.asdict(r) for r in results]}
    (data / "bench-results.json").write_text(json.dumps(saved, indent=1))
    if profile_texts:
        (data / "profile.txt").write_text(
            f"# cProfile of the no-op runs, {date} ({command.strip()})\n\n"
            + "\n\n".join(profile_texts)
        )
    write_report(out, results, meta)
    failed = [r for r in results if r.error]
    print(
        f"wrote {out / 'benchmarks.md'} in {meta.duration_sec:.0f} s; {len(failed)} run(s) failed"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
