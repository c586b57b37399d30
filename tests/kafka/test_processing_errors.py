"""The processing contract's failure paths against a real Kafka broker.

Handler exceptions, subscribers that are passed through or refused, a missing
initialisation, and ``msg.ack()`` / ``msg.nack()`` called inside concurrent handlers.
"""

import asyncio
import logging
from collections import Counter

import pytest
from faststream import FastStream
from faststream.kafka import KafkaBroker, KafkaMessage, TopicPartition
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    ConcurrentProcessingSetupError,
    initialize_concurrent_processing,
    is_kafka_handler_healthy,
    stop_concurrent_processing,
)
from tests.kafka_helpers import (
    committed_offsets,
    concurrent_broker,
    create_topic,
    end_offsets,
    numbers,
    produce,
    shut_down,
    unique,
    wait_committed,
    wait_until,
)

pytestmark = pytest.mark.kafka

WAIT = 20.0
POLL = 0.2
LIBRARY_LOGGER = "faststream_concurrent_aiokafka"
# FastStream logs what escapes a handler's middlewares to the broker's logger.
BROKER_LOGGER = "tests.kafka.processing_errors.broker"


def errors_logged(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and r.levelno == logging.ERROR]


def setup_errors(caplog: pytest.LogCaptureFixture) -> list[BaseException]:
    """ConcurrentProcessingSetupErrors FastStream logged for the broker's messages."""
    return [
        r.exc_info[1]
        for r in errors_logged(caplog, BROKER_LOGGER)
        if r.exc_info is not None and isinstance(r.exc_info[1], ConcurrentProcessingSetupError)
    ]


# ---- handler exceptions --------------------------------------------------------------


async def test_handler_exception_is_logged_counted_and_committed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger=LIBRARY_LOGGER)
    count, partitions = 70, 2
    topic, group = unique("raises"), unique("g-raises")
    await create_topic(topic, partitions)
    await produce(topic, numbers(count), partitions=partitions)
    broker = concurrent_broker()
    attempted: set[int] = set()
    failing = {i for i in range(count) if i % 7 == 0}

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(body: int) -> None:
        attempted.add(body)
        await asyncio.sleep(0)
        if body in failing:
            msg = f"boom {body}"
            raise ValueError(msg)

    handler = await initialize_concurrent_processing(
        broker.context, commit_batch_size=10, commit_batch_timeout_sec=0.2
    )
    try:
        await broker.start()
        await wait_until(lambda: handler.processed >= count, timeout=WAIT)
        # Later messages ran although earlier ones failed, and the failures are committed.
        assert attempted == set(range(count))
        await wait_committed(group, topic, await end_offsets(topic, partitions))
    finally:
        await shut_down(broker)

    assert handler.failed == len(failing)
    assert handler.processed == count
    messages = [r.getMessage() for r in errors_logged(caplog, LIBRARY_LOGGER)]
    for value in sorted(failing):
        # produce() sends value i to partition i % 2, where it gets offset i // 2.
        where = f"{topic}[{value % partitions}]@{value // partitions}"
        assert any(where in m for m in messages), f"no ERROR log names {where}: {messages}"
    for value in set(range(count)) - failing:
        where = f"{topic}[{value % partitions}]@{value // partitions}"
        assert not any(f"{where} " in m or m.endswith(where) for m in messages)


# ---- subscribers the library leaves alone or refuses ---------------------------------


async def test_subscriber_without_manual_ack_is_passed_through_sequentially() -> None:
    count = 30
    topic, group = unique("passthru"), unique("g-passthru")
    await create_topic(topic, 1)
    await produce(topic, numbers(count), partitions=1)
    broker = concurrent_broker()
    active = 0
    peak = 0
    received: list[int] = []

    @broker.subscriber(topic, group_id=group, auto_offset_reset="earliest")
    async def handle(body: int) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await asyncio.sleep(0.002)  # concurrent calls, if any, would overlap here
        finally:
            active -= 1
        received.append(body)

    handler = await initialize_concurrent_processing(broker.context, concurrency_limit=10)
    try:
        await broker.start()
        await wait_until(lambda: len(received) >= count, timeout=WAIT)
    finally:
        await shut_down(broker)

    assert received == list(range(count))
    assert peak == 1
    assert handler.processed == 0, "the library took over a non-MANUAL subscriber"


def add_manual_batch_subscriber(
    broker: KafkaBroker, topic: str, group: str, calls: list[object]
) -> None:
    @broker.subscriber(
        topic,
        group_id=group,
        batch=True,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
    )
    async def handle(body: list[int]) -> None:
        calls.append(body)


async def test_ordered_batch_subscriber_is_refused_at_initialisation_when_the_app_is_known() -> (
    None
):
    # A batch mixes keys and partitions: an ordering mode cannot apply to it.
    broker = concurrent_broker()
    add_manual_batch_subscriber(broker, unique("batch"), unique("g-batch"), [])
    FastStream(broker)
    try:
        with pytest.raises(ConcurrentProcessingSetupError, match="batch"):
            await initialize_concurrent_processing(broker.context, ordering="key")
    finally:
        await stop_concurrent_processing(broker.context)


async def test_failed_initialisation_leaves_no_running_handler() -> None:
    # A refused setup should not leave a half-initialised handler (and its committer task)
    # in the context: the service is not set up, and a corrected retry must be possible.
    broker = concurrent_broker()
    add_manual_batch_subscriber(broker, unique("batch"), unique("g-batch"), [])
    FastStream(broker)
    try:
        with pytest.raises(ConcurrentProcessingSetupError):
            await initialize_concurrent_processing(broker.context, ordering="partition")
        assert is_kafka_handler_healthy(broker.context) is False
        # A second attempt meets the same problem, not a leftover "already initialised".
        with pytest.raises(ConcurrentProcessingSetupError, match="batch"):
            await initialize_concurrent_processing(broker.context, ordering="partition")
    finally:
        await stop_concurrent_processing(broker.context)


async def test_ordered_batch_subscriber_found_at_first_message_fails_loudly_uncommitted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger=BROKER_LOGGER)
    topic, group = unique("batch-late"), unique("g-batch-late")
    await create_topic(topic, 1)
    await produce(topic, numbers(3), partitions=1)
    broker = concurrent_broker(logging.getLogger(BROKER_LOGGER))
    calls: list[object] = []
    add_manual_batch_subscriber(broker, topic, group, calls)

    # No app in the context: the subscriber is only seen at its first message.
    await initialize_concurrent_processing(
        broker.context, commit_batch_timeout_sec=0.2, ordering="key"
    )
    try:
        await broker.start()
        await wait_until(lambda: len(setup_errors(caplog)) >= 1, timeout=WAIT)
    finally:
        await shut_down(broker)

    assert "batch" in str(setup_errors(caplog)[0])
    assert calls == []
    assert await committed_offsets(group, topic) == {}


@pytest.mark.parametrize("broker_logger", [True, False], ids=["broker-logger", "logger-none"])
async def test_manual_subscriber_without_initialisation_logs_setup_error_and_commits_nothing(
    caplog: pytest.LogCaptureFixture, broker_logger: bool
) -> None:
    # Whoever logs it (FastStream through the broker's logger, or this library), the
    # mistake must show up at ERROR, also for a broker created with logger=None.
    caplog.set_level(logging.ERROR)
    topic, group = unique("noinit"), unique("g-noinit")
    await create_topic(topic, 1)
    await produce(topic, numbers(3), partitions=1)
    broker = concurrent_broker(logging.getLogger(BROKER_LOGGER) if broker_logger else None)
    calls: list[int] = []

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(body: int) -> None:
        calls.append(body)

    def reported() -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.levelno >= logging.ERROR and "initialize_concurrent_processing" in r.getMessage()
        ]

    try:
        await broker.start()
        try:
            await wait_until(lambda: len(reported()) >= 1, timeout=10)
        except AssertionError:
            msg = "no ERROR log mentioning initialize_concurrent_processing"
            raise AssertionError(msg) from None
    finally:
        await broker.stop()

    assert calls == []
    assert await committed_offsets(group, topic) == {}


# ---- msg.ack() and msg.nack() inside concurrent handlers ------------------------------


async def test_msg_ack_in_a_handler_never_commits_past_a_running_message() -> None:
    count = 30
    topic, group = unique("ack"), unique("g-ack")
    await create_topic(topic, 1)
    await produce(topic, numbers(count), partitions=1)
    broker = concurrent_broker()
    release = asyncio.Event()
    acked: set[int] = set()

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(body: int, msg: KafkaMessage) -> None:
        if body == 0:
            await release.wait()
        await msg.ack()
        acked.add(body)

    # The library itself commits nothing before the shutdown here, so whatever is committed
    # while the broker runs was committed by an ack(); a real consumer.commit() would have
    # committed the consumer's position (past everything fetched) before the handler returned.
    await initialize_concurrent_processing(
        broker.context, commit_batch_size=10_000, commit_batch_timeout_sec=60
    )
    try:
        await broker.start()
        await wait_until(lambda: acked == set(range(1, count)), timeout=WAIT)
        assert await committed_offsets(group, topic) == {}

        release.set()
        await wait_until(lambda: 0 in acked, timeout=WAIT)
    finally:
        release.set()
        await shut_down(broker)

    assert await committed_offsets(group, topic) == {0: count}


async def test_msg_nack_in_a_handler_neither_seeks_nor_redelivers() -> None:
    count, sentinel = 40, 1000
    topic, group = unique("nack"), unique("g-nack")
    await create_topic(topic, 1)
    await produce(topic, numbers(count), partitions=1)
    broker = concurrent_broker()
    seen: Counter[int] = Counter()

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(body: int, msg: KafkaMessage) -> None:
        seen[body] += 1
        await asyncio.sleep(0)
        if body % 2:
            await msg.nack()

    handler = await initialize_concurrent_processing(
        broker.context, commit_batch_size=5, commit_batch_timeout_sec=0.2
    )
    try:
        await broker.start()
        await wait_until(lambda: set(seen) == set(range(count)), timeout=WAIT)
        # Had a nack() sought back, the consumer would re-read from that offset before it
        # reaches a message produced after all nacks returned.
        await produce(topic, numbers(1, start=sentinel), partitions=1)
        await wait_until(lambda: sentinel in seen, timeout=WAIT)
        await wait_committed(group, topic, {0: count + 1})
    finally:
        await shut_down(broker)

    assert {value: n for value, n in seen.items() if n > 1} == {}, "redelivered after nack()"
    assert handler.failed == count // 2


# ---- a concurrent subscriber without a consumer group -------------------------------------


@pytest.mark.parametrize("assignment", ["topics", "partitions"])
async def test_subscriber_without_group_is_refused_at_initialisation_naming_the_fix(
    assignment: str,
) -> None:
    topic = unique("nogroup")
    broker = concurrent_broker()
    if assignment == "topics":
        subscriber = broker.subscriber(topic, ack_policy=AckPolicy.MANUAL)
    else:
        subscriber = broker.subscriber(
            partitions=[TopicPartition(topic, 0)], ack_policy=AckPolicy.MANUAL
        )

    @subscriber
    async def handle(body: int) -> None:
        del body

    FastStream(broker)
    try:
        with pytest.raises(ConcurrentProcessingSetupError, match="no group_id") as error:
            await initialize_concurrent_processing(broker.context)
        assert "Give it a group_id" in str(error.value)
    finally:
        await stop_concurrent_processing(broker.context)


async def test_subscriber_without_group_found_at_first_message_fails_once_without_commits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    topic = unique("nogroup-late")
    await create_topic(topic, 1)
    await produce(topic, numbers(3), partitions=1)
    broker = concurrent_broker(logging.getLogger(BROKER_LOGGER))
    calls: list[int] = []

    @broker.subscriber(topic, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest")
    async def handle(body: int) -> None:
        calls.append(body)

    # No app in the context: the subscriber is only seen at its first message.
    handler = await initialize_concurrent_processing(broker.context, commit_batch_timeout_sec=0.1)
    try:
        await broker.start()
        await wait_until(lambda: len(setup_errors(caplog)) >= 1, timeout=WAIT)
        assert not is_kafka_handler_healthy(broker.context)
        (subscriber,) = broker.subscribers
        # Never taken over, so there is nothing to commit and no commit to fail again and again.
        assert handler.lanes_of(subscriber) == []
        assert handler.engine.counters.failed_commits == 0
    finally:
        await shut_down(broker)

    assert "no group_id" in str(setup_errors(caplog)[0])
    assert not [r for r in caplog.records if "Commit of" in r.getMessage()]
