"""A FastStream app whose handlers stop finishing after FREEZE_AFTER messages started: the
messages started from then on hang. Once nothing moved for a second it writes what
``processing_snapshot`` says (``not_committed``, ``uncommitted``, ``in_flight``) to FIGURES as
JSON, for the test to kill it and count what a restart runs again.

OUTPUT gets "s <id>" when a message starts and "d <id>" when it is done (flushed per line).
FREEZE_AFTER=-1: nothing hangs (the restart). Commits: every 500 finished messages (and, for
the restart, every second).
"""

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    KafkaConcurrentProcessingMiddleware,
    initialize_concurrent_processing,
    processing_snapshot,
    stop_concurrent_processing,
)

QUIET_SEC = 1.0


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    env = os.environ
    freeze_after = int(env["FREEZE_AFTER"])
    figures = Path(env["FIGURES"])
    broker = KafkaBroker(env["BOOTSTRAP"], logger=None)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    output = Path(env["OUTPUT"]).open("a", buffering=1)  # noqa: SIM115 - lives with the app
    hang = asyncio.Event()  # never set
    moved, frozen = asyncio.Event(), asyncio.Event()
    started = 0

    @broker.subscriber(
        env["TOPIC"],
        group_id=env["GROUP"],
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    async def handle(body: int) -> None:
        nonlocal started
        started += 1
        moved.set()
        output.write(f"s {body}\n")
        if 0 <= freeze_after < started:
            frozen.set()
            await hang.wait()
        await asyncio.sleep(0.005)
        output.write(f"d {body}\n")
        moved.set()

    async def report_when_frozen() -> None:
        await frozen.wait()
        while True:  # until nothing started or finished for QUIET_SEC
            moved.clear()
            try:
                async with asyncio.timeout(QUIET_SEC):
                    await moved.wait()
            except TimeoutError:
                break
        snapshot = processing_snapshot(broker.context)
        figure = {
            "not_committed": snapshot.not_committed,
            "uncommitted": snapshot.uncommitted,
            "in_flight": snapshot.in_flight,
        }
        await asyncio.to_thread(figures.write_text, json.dumps(figure))

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        await initialize_concurrent_processing(
            broker.context,
            concurrency_limit=20,
            commit_batch_size=500,
            commit_batch_timeout_sec=60 if freeze_after >= 0 else 1,
            shutdown_timeout_sec=1.0,
        )
        reporter = asyncio.create_task(report_when_frozen()) if freeze_after >= 0 else None
        try:
            yield
        finally:
            if reporter is not None:
                reporter.cancel()
            await stop_concurrent_processing(broker.context)

    asyncio.run(FastStream(broker, lifespan=lifespan, logger=None).run())


if __name__ == "__main__":
    main()
