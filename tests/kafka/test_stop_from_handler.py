"""A handler asking to stop: ``StopConsume`` stops its subscriber, ``exit()`` and
``StopApplication`` stop the app, as in FastStream's own loop. Either way the other messages
in flight finish and are committed, as on any stop."""

import asyncio
from collections import Counter

import pytest
from faststream import FastStream
from faststream.exceptions import StopApplication, StopConsume
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    initialize_concurrent_processing,
    setup_concurrent_processing,
)
from tests.kafka_helpers import (
    committed_offsets,
    concurrent_broker,
    numbered_topic,
    shut_down,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.smoke]

COUNT = 30
STOPPER = 5
HANDLER_SEC = 0.3


async def test_stop_consume_stops_the_subscriber_after_draining_its_messages() -> None:
    topic, group = await numbered_topic("stop-consume", COUNT, 1)
    broker = concurrent_broker()
    started: Counter[int] = Counter()
    finished: Counter[int] = Counter()

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(body: int) -> None:
        started[body] += 1
        if body == STOPPER:
            await wait_until(lambda: len(started) == COUNT, timeout=20)
            raise StopConsume
        await asyncio.sleep(HANDLER_SEC)
        finished[body] += 1

    await initialize_concurrent_processing(broker.context, concurrency_limit=100, broker=broker)
    async with broker:
        await broker.start()
        (subscriber,) = broker.subscribers
        await wait_until(lambda: not subscriber.running, timeout=30)

        # Every other message was running when the handler asked to stop: all finished.
        assert finished == Counter(i for i in range(COUNT) if i != STOPPER)
        assert max(started.values()) == 1
        assert await committed_offsets(group, topic) == {0: COUNT}
        await shut_down(broker)


@pytest.mark.parametrize("how", ["exit()", "StopApplication"])
async def test_exit_from_a_handler_stops_the_app_after_draining(how: str) -> None:
    topic, group = await numbered_topic("stop-app", COUNT, 1)
    broker = concurrent_broker()
    app = FastStream(broker, logger=None)
    setup_concurrent_processing(app, concurrency_limit=100, shutdown_timeout_sec=10)
    started: Counter[int] = Counter()
    finished: Counter[int] = Counter()

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(body: int) -> None:
        started[body] += 1
        if body == STOPPER:
            await wait_until(lambda: len(started) == COUNT, timeout=20)
            if how == "exit()":
                exit()  # noqa: PLR1722 - the builtin users call
            raise StopApplication
        await asyncio.sleep(HANDLER_SEC)
        finished[body] += 1

    # The app stops by itself; the timeout only keeps a regression from hanging the suite.
    await asyncio.wait_for(app.run(), timeout=60)

    assert finished == Counter(i for i in range(COUNT) if i != STOPPER)
    assert max(started.values()) == 1
    assert await committed_offsets(group, topic) == {0: COUNT}
