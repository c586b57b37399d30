"""setup_concurrent_processing: one call wires a FastStream app."""

import asyncio

import pytest
from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    KafkaConcurrentProcessingMiddleware,
    is_kafka_handler_healthy,
    setup_concurrent_processing,
)
from tests.kafka_helpers import (
    BOOTSTRAP,
    committed_offsets,
    create_topic,
    end_offsets,
    produce,
    unique,
    wait_until,
)

pytestmark = pytest.mark.kafka

PARTITIONS = 2
MESSAGES = 200


async def test_one_call_runs_the_app_concurrently_and_commits_on_exit() -> None:
    topic, group = unique("setup"), unique("g-setup")
    await create_topic(topic, PARTITIONS)
    await produce(topic, (str(i).encode() for i in range(MESSAGES)), partitions=PARTITIONS)
    broker = KafkaBroker(BOOTSTRAP, logger=None)
    seen: set[int] = set()
    running = peak = 0

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(body: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        seen.add(body)

    app = FastStream(broker, logger=None)
    setup_concurrent_processing(app, concurrency_limit=20, commit_batch_timeout_sec=60)
    assert broker.middlewares[0] is KafkaConcurrentProcessingMiddleware

    app_task = asyncio.create_task(app.run())
    try:
        await wait_until(lambda: len(seen) == MESSAGES, timeout=30)
        assert is_kafka_handler_healthy(broker.context)
    finally:
        app.exit()
        await asyncio.wait_for(app_task, 30)

    # Nothing was committed by the 60 s timer: the commits come from the drain at exit.
    assert await committed_offsets(group, topic) == await end_offsets(topic, PARTITIONS)
    assert peak > 1
    assert not is_kafka_handler_healthy(broker.context)


def test_invalid_settings_fail_at_the_call() -> None:
    app = FastStream(KafkaBroker(BOOTSTRAP, logger=None), logger=None)
    with pytest.raises(ValueError, match="concurrency_limit"):
        setup_concurrent_processing(app, concurrency_limit=0)
    with pytest.raises(TypeError):
        # Type checkers refuse it too (the settings are a TypedDict); at run time, TypeError.
        setup_concurrent_processing(app, no_such_setting=1)  # type: ignore[call-arg]
