"""A FastStream app whose first message of partition 0 straggles: it sleeps STRAGGLER_SEC while
the others, ~5 ms each, finish. Each finished message is appended to OUTPUT as
"partition:offset"."""

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


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    env = os.environ
    straggler_sec = float(env["STRAGGLER_SEC"])
    track = env["TRACK_COMPLETED_OFFSETS"] == "1"
    broker = KafkaBroker(env["BOOTSTRAP"], logger=None)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    output = open(env["OUTPUT"], "a", buffering=1)  # noqa: SIM115 - lives as long as the app

    @broker.subscriber(
        env["TOPIC"],
        group_id=env["GROUP"],
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
    )
    async def handle(message: KafkaMessage) -> None:
        record = message.raw_message
        assert not isinstance(record, tuple)  # a per-message subscriber
        straggler = record.partition == 0 and record.offset == 0
        await asyncio.sleep(straggler_sec if straggler else 0.005)
        output.write(f"{record.partition}:{record.offset}\n")

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        await initialize_concurrent_processing(
            broker.context,
            concurrency_limit=100,
            commit_batch_timeout_sec=1.0,
            shutdown_timeout_sec=2.0,
            track_completed_offsets=track,
        )
        try:
            yield
        finally:
            await stop_concurrent_processing(broker.context)

    asyncio.run(FastStream(broker, lifespan=lifespan, logger=None).run())


if __name__ == "__main__":
    main()
