"""An exactly-once pipeline as a FastStream app: each message of the input topic is awaited
for FCA_APP_HANDLER_SEC and its result, "partition:offset" of the input, is published to
FCA_APP_RESULTS through ``@publisher``, inside the input partition's transaction.

Besides, every message whose handler ran is appended to the output file as "partition:offset"
(flushed per line): how often work was done, which may be more than once; the results topic,
read with ``isolation_level="read_committed"``, is what must hold each input exactly once.
Logs go to stderr at INFO for the library, so a test can see a zombie being fenced.
"""

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faststream import FastStream
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    KafkaConcurrentProcessingMiddleware,
    initialize_concurrent_processing,
    stop_concurrent_processing,
)
from tests.apps._common import AppSettings

ENV_RESULTS = "FCA_APP_RESULTS"


def main() -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    library = logging.getLogger("exactly_once_app")
    library.setLevel(logging.INFO)
    settings = AppSettings.from_env()
    # FastStream's own line per message at DEBUG (not shown); the library's at their levels.
    broker = KafkaBroker(settings.bootstrap, logger=library, log_level=logging.DEBUG)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    output = settings.output.open("a", encoding="utf-8", buffering=1)
    results = broker.publisher(os.environ[ENV_RESULTS])

    @broker.subscriber(
        settings.topic,
        group_id=settings.group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    @results
    async def handle(body: int, message: KafkaMessage) -> str:
        del body
        record = message.raw_message
        assert not isinstance(record, tuple)
        await asyncio.sleep(settings.handler_sec)
        where = f"{record.partition}:{record.offset}"
        output.write(f"{where}\n")
        return where

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        await initialize_concurrent_processing(
            broker.context,
            concurrency_limit=settings.concurrency_limit,
            commit_batch_size=100,
            commit_batch_timeout_sec=1.0,
            shutdown_timeout_sec=settings.shutdown_timeout_sec,
            processing_guarantee="exactly_once",
            transactional_id_prefix="fcak-test.",
        )
        try:
            yield
        finally:
            await stop_concurrent_processing(broker.context)

    asyncio.run(FastStream(broker, lifespan=lifespan, logger=None).run())


if __name__ == "__main__":
    main()
