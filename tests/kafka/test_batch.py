"""batch=True subscribers: each batch is one task, committed when it finishes."""

import asyncio

import pytest
from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    KafkaConcurrentProcessingMiddleware,
    initialize_concurrent_processing,
    stop_concurrent_processing,
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

PARTITIONS = 4
MESSAGES = 400


@pytest.mark.smoke
@pytest.mark.parametrize("with_app", [True, False], ids=["app", "bare-broker"])
async def test_batches_run_concurrently_and_commit_when_they_finish(with_app: bool) -> None:
    topic, group = unique("batch"), unique("g-batch")
    await create_topic(topic, PARTITIONS)
    await produce(topic, (str(i).encode() for i in range(MESSAGES)), partitions=PARTITIONS)
    broker = KafkaBroker(BOOTSTRAP, logger=None)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    seen: list[int] = []
    running = peak = 0
    release = asyncio.Event()

    @broker.subscriber(
        topic,
        group_id=group,
        batch=True,
        max_records=20,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
    )
    async def handle(bodies: list[int]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if peak >= 2:
            release.set()
        await asyncio.wait_for(release.wait(), 10)  # the first two batches overlap for sure
        await asyncio.sleep(0.01)
        seen.extend(bodies)
        running -= 1

    if with_app:
        FastStream(broker)
    handler = await initialize_concurrent_processing(
        broker.context, concurrency_limit=3, commit_batch_size=5, commit_batch_timeout_sec=0.2
    )
    try:
        await broker.start()
        await wait_until(lambda: len(seen) >= MESSAGES, timeout=30)
        ends = await end_offsets(topic, PARTITIONS)
        await wait_until(lambda: _committed_equals(group, topic, ends), timeout=15)
    finally:
        await broker.stop()
        await stop_concurrent_processing(broker.context)

    assert sorted(seen) == list(range(MESSAGES)), "every message exactly once"
    assert 2 <= peak <= 3, "batches overlap, within the limit"
    assert handler.failed == 0


async def _committed_equals(group: str, topic: str, ends: dict[int, int]) -> bool:
    return await committed_offsets(group, topic) == ends
