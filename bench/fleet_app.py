"""The app ``bench.fleet`` runs with ``faststream run bench.fleet_app:app --workers N``.

Each worker process builds it from the run's spec (``$FCA_BENCH_FLEET_SPEC``). Before its
broker starts it waits until every worker is up (a file per process in the run's folder), so
that all join the consumer group at about the same time. It records,
per handled message, its id (the JSON int of the message) and the time it finished, and per
partition assignment the time and the partitions. It writes its progress (messages handled)
to ``$FCA_BENCH_FLEET_DIR/progress-<pid>`` every 0.1 s and, after the broker stopped and its
in-flight work drained, everything it recorded to ``result-<pid>.json``.

Times are ``time.perf_counter()``: CLOCK_MONOTONIC on Linux, one clock for all processes.
"""

import asyncio
import json
import os
import time
from array import array
from pathlib import Path
from typing import Any

from aiokafka.abc import ConsumerRebalanceListener
from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from bench.model import read_spec
from faststream_concurrent_aiokafka import setup_concurrent_processing

SPEC = read_spec(Path(os.environ["FCA_BENCH_FLEET_SPEC"]))
OUT = Path(os.environ["FCA_BENCH_FLEET_DIR"])
PID = os.getpid()

ids = array("q")
stamps = array("d")
assignments: list[tuple[float, list[int]]] = []


class RecordAssignments(ConsumerRebalanceListener):  # type: ignore[misc]
    """Given as the subscriber's ``listener=`` (the library calls it after its own)."""

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        assignments.append((time.perf_counter(), sorted(tp.partition for tp in assigned)))


broker = KafkaBroker(SPEC.bootstrap, logger=None)
app = FastStream(broker, logger=None)
concurrent = SPEC.system == "middleware"
if concurrent:
    setup_concurrent_processing(
        app,
        concurrency_limit=SPEC.concurrency_limit,
        commit_batch_size=SPEC.commit_batch_size,
    )
subscriber = broker.subscriber(
    SPEC.topic,
    group_id=SPEC.group,
    ack_policy=AckPolicy.MANUAL if concurrent else AckPolicy[SPEC.ack_policy],
    auto_offset_reset="earliest",
    max_workers=SPEC.max_workers,
    listener=RecordAssignments(),
    # The broker completes a new group's first join at once (scripts/kafka.sh sets
    # group.initial.rebalance.delay.ms=0), so a worker joining a few milliseconds after another
    # starts a second rebalance, which the first one only learns of at its next heartbeat:
    # with the default 3 s it would consume alone until then.
    heartbeat_interval_ms=100,
)
DELAY = SPEC.sleep_sec

if SPEC.handler == "sleep":

    @subscriber
    async def handle_slowly(body: int) -> None:
        await asyncio.sleep(DELAY)
        ids.append(body)
        stamps.append(time.perf_counter())

else:

    @subscriber
    async def handle(body: int) -> None:
        ids.append(body)
        stamps.append(time.perf_counter())


def _write(path: Path, text: str) -> None:
    """Whole or not at all: the orchestrator may read the file at any time."""
    partial = path.with_suffix(".tmp")
    partial.write_text(text)
    partial.replace(path)


async def _report_progress() -> None:
    path = OUT / f"progress-{PID}"
    while True:
        _write(path, str(len(ids)))
        await asyncio.sleep(0.1)


progress: asyncio.Task[None] | None = None


@app.on_startup
async def wait_for_the_others() -> None:
    """Spawned processes are ready seconds apart (imports); without this barrier the first
    would consume much of the topic alone before the others join."""
    _write(OUT / f"ready-{PID}", "")
    while _ready() < SPEC.workers:  # noqa: ASYNC110 - other processes: polled, no event
        await asyncio.sleep(0.01)


def _ready() -> int:
    return len(list(OUT.glob("ready-*")))


@app.after_startup
async def start_reporting() -> None:
    global progress  # noqa: PLW0603 - one per process
    progress = asyncio.create_task(_report_progress())


@app.after_shutdown
async def write_result() -> None:
    if progress is not None:
        progress.cancel()
    result = {
        "pid": PID,
        "ids": ids.tolist(),
        "stamps": stamps.tolist(),
        "assignments": assignments,
    }
    _write(OUT / f"result-{PID}.json", json.dumps(result))
