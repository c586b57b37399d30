"""A static member of a consumer group (``group_instance_id`` from FCA_APP_INSTANCE_ID),
run the usual way, ``asyncio.run(app.run())``. Each finished message id goes to the output
file; each call of its rebalance listener to FCA_APP_EVENTS as "assigned 0,3,6" or
"revoked 0,3,6". The session timeout (FCA_APP_SESSION_MS) bounds how long a restart may take
without the group rebalancing.
"""

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import ConsumerRebalanceListener
from faststream import ContextRepo, FastStream
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    KafkaConcurrentProcessingMiddleware,
    stop_concurrent_processing,
)
from tests.apps._common import AppSettings, configure_logging, initialize


class RecordingListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Writes each call, flushed at once (it must survive the process being stopped)."""

    def __init__(self, path: str) -> None:
        self.events = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - app-long

    def _write(self, kind: str, partitions: Any) -> None:
        numbers = ",".join(str(tp.partition) for tp in sorted(partitions))
        self.events.write(f"{kind} {numbers}\n")

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self._write("revoked", revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._write("assigned", assigned)


def main() -> None:
    configure_logging()
    settings = AppSettings.from_env()
    broker = KafkaBroker(settings.bootstrap, logger=None)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    output = settings.output.open("a", encoding="utf-8", buffering=1)
    session_ms = int(os.environ["FCA_APP_SESSION_MS"])

    @broker.subscriber(
        settings.topic,
        group_id=settings.group,
        group_instance_id=os.environ["FCA_APP_INSTANCE_ID"],
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=1000,
        listener=RecordingListener(os.environ["FCA_APP_EVENTS"]),
    )
    async def record(body: int) -> None:
        await asyncio.sleep(settings.handler_sec)
        output.write(f"{body}\n")

    @asynccontextmanager
    async def lifespan(context: ContextRepo) -> AsyncIterator[None]:
        await initialize(context, settings)
        try:
            yield
        finally:
            await stop_concurrent_processing(context)

    app = FastStream(broker, lifespan=lifespan, logger=None)
    asyncio.run(app.run())


if __name__ == "__main__":
    main()
