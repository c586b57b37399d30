"""A FastStream app with a retry topic (``RETRY_TOPIC``): every 10th message fails its first
two attempts (counted over every run: ``current_attempt()`` reads the attempts its retry
records carry), the others succeed; each success is appended to the output file (flushed per
line, so it survives SIGKILL). The first trip through the retry topic waits 8 s, long enough
for a test to kill the app while the failing messages wait there.
"""

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    KafkaConcurrentProcessingMiddleware,
    current_attempt,
    initialize_concurrent_processing,
    stop_concurrent_processing,
)
from tests.apps._common import AppSettings, configure_logging


class DownstreamError(Exception):
    """The failing service behind the handler."""


def main() -> None:
    configure_logging()
    settings = AppSettings.from_env()
    broker = KafkaBroker(settings.bootstrap, logger=None)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    output = settings.output.open("a", encoding="utf-8", buffering=1)

    @broker.subscriber(
        settings.topic,
        group_id=settings.group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    async def handle(body: int) -> None:
        if body % 10 == 0 and current_attempt() <= 2:
            raise DownstreamError(body)
        await asyncio.sleep(settings.handler_sec)
        output.write(f"{body}\n")

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        await initialize_concurrent_processing(
            broker.context,
            concurrency_limit=settings.concurrency_limit,
            commit_batch_timeout_sec=0.2,
            shutdown_timeout_sec=settings.shutdown_timeout_sec,
            retry_topic=os.environ["RETRY_TOPIC"],
            retry_topic_delays_sec=(8.0, 1.0),
        )
        try:
            yield
        finally:
            await stop_concurrent_processing(broker.context)

    asyncio.run(FastStream(broker, lifespan=lifespan, logger=None).run())


if __name__ == "__main__":
    main()
