"""What every subprocess app shares: settings from the environment and the recording broker."""

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from faststream import ContextRepo
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    ConcurrentProcessing,
    KafkaConcurrentProcessingMiddleware,
    initialize_concurrent_processing,
)

ENV_TOPIC = "FCA_APP_TOPIC"
ENV_GROUP = "FCA_APP_GROUP"
ENV_BOOTSTRAP = "FCA_APP_BOOTSTRAP"
ENV_OUTPUT = "FCA_APP_OUTPUT"
ENV_HANDLER_SEC = "FCA_APP_HANDLER_SEC"
ENV_CONCURRENCY = "FCA_APP_CONCURRENCY"
ENV_SHUTDOWN_SEC = "FCA_APP_SHUTDOWN_SEC"
ENV_FAIL = "FCA_APP_FAIL"


@dataclass(frozen=True, slots=True)
class AppSettings:
    topic: str
    group: str
    bootstrap: str
    output: Path
    handler_sec: float = 0.01
    concurrency_limit: int = 100
    shutdown_timeout_sec: float = 3.0

    @classmethod
    def from_env(cls) -> "AppSettings":
        env = os.environ
        return cls(
            topic=env[ENV_TOPIC],
            group=env[ENV_GROUP],
            bootstrap=env[ENV_BOOTSTRAP],
            output=Path(env[ENV_OUTPUT]),
            handler_sec=float(env.get(ENV_HANDLER_SEC, "0.01")),
            concurrency_limit=int(env.get(ENV_CONCURRENCY, "100")),
            shutdown_timeout_sec=float(env.get(ENV_SHUTDOWN_SEC, "3")),
        )


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def build_broker(settings: AppSettings) -> KafkaBroker:
    """A broker whose one concurrent subscriber writes each finished message id to the output."""
    broker = KafkaBroker(settings.bootstrap, logger=None)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    # Line-buffered and flushed per line: what was written survives the process dying.
    output = settings.output.open("a", encoding="utf-8", buffering=1)

    @broker.subscriber(
        settings.topic,
        group_id=settings.group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        # A process killed by its signal never leaves the group; the broker's minimum session
        # timeout keeps the wait for its partitions at the restart short.
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    async def record(body: int) -> None:
        await asyncio.sleep(settings.handler_sec)
        output.write(f"{body}\n")
        output.flush()

    return broker


async def initialize(context: ContextRepo, settings: AppSettings) -> ConcurrentProcessing:
    return await initialize_concurrent_processing(
        context,
        concurrency_limit=settings.concurrency_limit,
        shutdown_timeout_sec=settings.shutdown_timeout_sec,
    )
