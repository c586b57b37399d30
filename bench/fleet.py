"""One fleet run: ``faststream run bench.fleet_app:app --workers N`` over a pre-produced topic.

Started as users start a service, in a process group of its own; once the processes together
handled every message, the run is stopped with SIGTERM (FastStream's supervisor passes it to
each worker, which drains and commits), and then checked: every message id handled (0 lost),
how many twice, and the group's committed offsets against the partitions' end offsets.

Throughput, from the times each process recorded (one clock for all, see bench.fleet_app):

* whole: distinct messages / (first handled message to the last, over all processes); it
  includes the group's first rebalances, when one process already consumes while the other
  still joins (the broker's ``group.initial.rebalance.delay.ms`` is 0 in scripts/kafka.sh);
* steady: messages handled while every process was consuming its final assignment (from the
  last process's first message after its last assignment to the first process running out
  of work), divided by that window: a fleet's rate once it has settled.
"""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.model import FleetResult, RunResult, RunSpec, result_for, write_json

REPO = Path(__file__).resolve().parent.parent
LOOPS = {"asyncio": "asyncio:new_event_loop", "uvloop": "uvloop:new_event_loop"}


def command(spec: RunSpec) -> list[str]:
    """The command line, with the event loop named: `faststream run` would otherwise pick
    uvloop by itself whenever it is installed."""
    return [
        sys.executable,
        "-m",
        "faststream",
        "run",
        "bench.fleet_app:app",
        "--workers",
        str(spec.workers),
        "--loop",
        LOOPS[spec.loop],
    ]


def _progress(folder: Path) -> int:
    total = 0
    for path in folder.glob("progress-*"):
        with contextlib.suppress(OSError, ValueError):
            total += int(path.read_text())
    return total


def _stop(process: subprocess.Popen[bytes], timeout: float) -> str | None:
    """SIGTERM to the `faststream run` process, as a service manager would; SIGKILL to the
    whole group if it outlives ``timeout``."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return f"did not stop within {timeout:.0f} s of SIGTERM; killed"
    return None


async def _offsets(spec: RunSpec) -> tuple[int, int]:
    """Sum of the group's committed offsets, and of the partitions' end offsets."""
    admin = AIOKafkaAdminClient(bootstrap_servers=spec.bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(spec.group)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=spec.bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(spec.topic, p) for p in range(spec.partitions)]
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    done = sum(meta.offset for tp, meta in committed.items() if tp.topic == spec.topic)
    return done, sum(ends.values())


def summarise(
    spec: RunSpec, reports: list[dict[str, Any]], committed: int, end: int
) -> FleetResult:
    """The checks and both rates from what each process recorded (pure, unit-tested)."""
    all_ids = [i for report in reports for i in report["ids"]]
    distinct = set(all_ids)
    stamps = [report["stamps"] for report in reports]
    busy = [s for s in stamps if s]
    whole = max(s[-1] for s in busy) - min(s[0] for s in busy) if busy else 0.0
    # Steady window: every process is on its final assignment and still has work. The
    # assignments after a process's last message are the shutdown's (a worker that stops
    # first hands its partitions to the others), not part of the run.
    starts = []
    for report in reports:
        if not report["stamps"]:
            continue
        last = report["stamps"][-1]
        settled = max((t for t, _ in report["assignments"] if t <= last), default=0.0)
        starts.append(next(t for t in report["stamps"] if t >= settled))
    start = max(starts) if len(starts) == len(reports) and starts else 0.0
    stop = min(s[-1] for s in busy) if len(busy) == len(reports) and busy else 0.0
    steady_handled = sum(1 for s in stamps for t in s if start <= t <= stop)
    return FleetResult(
        workers=spec.workers,
        processes=len(reports),
        per_process=[len(report["ids"]) for report in reports],
        distinct=len(distinct),
        lost=sum(1 for i in range(spec.messages) if i not in distinct),
        duplicates=len(all_ids) - len(distinct),
        committed=committed,
        end=end,
        whole_sec=whole,
        steady_sec=max(stop - start, 0.0) if start else 0.0,
        steady_handled=steady_handled if start and stop > start else 0,
        assignments=sum(
            1
            for report in reports
            for t, _ in report["assignments"]
            if report["stamps"] and t <= report["stamps"][-1]
        ),
    )


def run_fleet(spec: RunSpec, workdir: Path, index: int) -> RunResult:
    folder = workdir / f"{index:03d}-fleet"
    folder.mkdir()
    spec_path = folder / "spec.json"
    write_json(spec_path, spec)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["FCA_BENCH_FLEET_SPEC"] = str(spec_path)
    env["FCA_BENCH_FLEET_DIR"] = str(folder)
    result = result_for(spec, loadavg_start=os.getloadavg()[0])
    log_path = folder / "faststream-run.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command(spec), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + spec.timeout_sec
        while _progress(folder) < spec.messages and process.poll() is None:
            if time.monotonic() > deadline:
                result.notes.append(f"time budget of {spec.timeout_sec:.0f} s reached")
                break
            time.sleep(0.1)
        exited = process.poll()
        if exited is not None:
            result.error = f"`faststream run` exited early with {exited}"
        elif note := _stop(process, 90.0):
            result.notes.append(note)
    reports = []
    for path in sorted(folder.glob("result-*.json")):
        reports.append(json.loads(path.read_text()))
    if len(reports) != spec.workers and result.error is None:
        result.error = f"{len(reports)} of {spec.workers} processes wrote their result"
    if not reports:
        tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
        result.error = f"{result.error}: {tail}"
        return result
    committed, end = asyncio.run(_offsets(spec))
    fleet = summarise(spec, reports, committed, end)
    result.fleet = fleet
    result.handled = fleet.distinct
    result.elapsed_sec = fleet.whole_sec
    result.loadavg_end = os.getloadavg()[0]
    return result
