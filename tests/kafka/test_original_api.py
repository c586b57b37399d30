"""The original project's documented usage, unchanged, against the real broker.

Users of the other package with the same import name switch by changing nothing: the
middleware registered on the broker, an ``AsgiFastStream`` lifespan that initialises with
``broker.context`` (positional settings included) and stops, MANUAL subscribers run
concurrently while the others pass through, the health probe, the rebalance listener made by
the handler, and the names the original documents.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from faststream import ContextRepo
from faststream.asgi import AsgiFastStream
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

import faststream_concurrent_aiokafka
from faststream_concurrent_aiokafka import (
    ConcurrentProcessing,
    KafkaConcurrentProcessingMiddleware,
    initialize_concurrent_processing,
    is_kafka_handler_healthy,
    stop_concurrent_processing,
)
from tests.kafka_helpers import (
    BOOTSTRAP,
    committed_offsets,
    end_offsets,
    numbered_topic,
    wait_until,
)

# The original names that moved still work, with a DeprecationWarning (tests/unit/
# test_public_api.py checks the warnings); here they are used as the original documents them.
pytestmark = [
    pytest.mark.kafka,
    pytest.mark.smoke,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

COUNT = 200
ORIGINAL_NAMES = (
    "KafkaConcurrentProcessingMiddleware",
    "KafkaConcurrentHandler",
    "KafkaBatchCommitter",
    "KafkaCommitTask",
    "CommitterIsDeadError",
    "initialize_concurrent_processing",
    "stop_concurrent_processing",
    "is_kafka_handler_healthy",
)


def test_every_documented_name_is_importable() -> None:
    missing = [name for name in ORIGINAL_NAMES if not hasattr(faststream_concurrent_aiokafka, name)]
    assert missing == []


async def test_the_documented_asgi_lifespan_runs_manual_subscribers_concurrently() -> None:
    manual_topic, manual_group = await numbered_topic("orig-manual", COUNT, 2)
    other_topic, other_group = await numbered_topic("orig-other", 20, 1)
    handlers: list[ConcurrentProcessing] = []
    health: list[bool] = []
    seen_manual: set[int] = set()
    seen_other: set[int] = set()
    running = 0
    most_at_once = 0

    broker = KafkaBroker(BOOTSTRAP, logger=None)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)

    @asynccontextmanager
    async def lifespan(_context: ContextRepo) -> AsyncIterator[None]:
        # As documented: broker.context, not the lifespan's argument; settings by position.
        handler = await initialize_concurrent_processing(broker.context, 20, 100, 5.0)
        handlers.append(handler)
        try:
            yield
        finally:
            await stop_concurrent_processing(broker.context)
            health.append(is_kafka_handler_healthy(broker.context))

    app = AsgiFastStream(broker, lifespan=lifespan, logger=None)

    @broker.subscriber(
        manual_topic,
        group_id=manual_group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
    )
    async def handle(msg: int) -> None:
        nonlocal running, most_at_once
        running += 1
        most_at_once = max(most_at_once, running)
        await wait_until(lambda: most_at_once > 1 or len(seen_manual) > 0, timeout=10)
        seen_manual.add(msg)
        running -= 1

    @broker.subscriber(other_topic, group_id=other_group, auto_offset_reset="earliest")
    async def handle_other(msg: int) -> None:
        seen_other.add(msg)

    async with app.start_lifespan_context():
        (handler,) = handlers
        assert isinstance(handler, faststream_concurrent_aiokafka.KafkaConcurrentHandler)
        assert is_kafka_handler_healthy(broker.context)
        await wait_until(lambda: len(seen_manual) == COUNT and len(seen_other) == 20)

    assert seen_manual == set(range(COUNT))
    assert seen_other == set(range(20))
    assert most_at_once > 1  # the MANUAL subscriber ran concurrently
    assert health == [False]  # stopped
    assert await committed_offsets(manual_group, manual_topic) == await end_offsets(manual_topic, 2)


async def test_the_handler_s_rebalance_listener_can_be_passed_by_hand() -> None:
    topic, group = await numbered_topic("orig-listener", 50, 2)
    broker = KafkaBroker(BOOTSTRAP, logger=None)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    handler = await initialize_concurrent_processing(context=broker.context, concurrency_limit=10)
    seen: set[int] = set()

    @broker.subscriber(
        topic,
        group_id=group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        listener=handler.create_rebalance_listener(),
    )
    async def handle(msg: int) -> None:
        seen.add(msg)

    try:
        async with broker:
            await broker.start()
            await wait_until(lambda: len(seen) == 50)
    finally:
        await stop_concurrent_processing(broker.context)

    assert await committed_offsets(group, topic) == await end_offsets(topic, 2)
