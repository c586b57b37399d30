"""Exactly-once refuses, at start-up and with the fix in the message, the set-ups it cannot
honour; and the broker's producer state routes a message's publishes into its transaction."""

from typing import Any

import pytest
from faststream.kafka import KafkaBroker, TopicPartition
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    ConcurrentProcessingSetupError,
    KafkaConcurrentProcessingMiddleware,
    configure_subscriber,
    initialize_concurrent_processing,
    stop_concurrent_processing,
)
from faststream_concurrent_aiokafka.compat import faststream as compat
from faststream_concurrent_aiokafka.engine.transactional_send import CURRENT, TransactionalSender
from faststream_concurrent_aiokafka.integration.transactional_publish import (
    RoutedProducerState,
)

READ_COMMITTED: dict[str, Any] = {
    "group_id": "g",
    "ack_policy": AckPolicy.MANUAL,
    "isolation_level": "read_committed",
}


def broker(**kwargs: Any) -> KafkaBroker:
    made = KafkaBroker("127.0.0.1:9", logger=None, **kwargs)
    made.add_middleware(KafkaConcurrentProcessingMiddleware)
    return made


async def refusal(made: KafkaBroker, **settings: Any) -> str:
    """The start-up error initialising exactly-once on ``made`` raises."""
    with pytest.raises(ConcurrentProcessingSetupError) as error:
        await initialize_concurrent_processing(
            made.context, broker=made, processing_guarantee="exactly_once", **settings
        )
    await stop_concurrent_processing(made.context)
    return str(error.value)


async def test_a_well_wired_subscriber_is_accepted() -> None:
    made = broker()

    @made.subscriber(
        "t", group_id="g", ack_policy=AckPolicy.MANUAL, isolation_level="read_committed"
    )
    @made.publisher("results")
    async def handle(body: str) -> str:
        return body

    handler = await initialize_concurrent_processing(
        made.context, broker=made, processing_guarantee="exactly_once"
    )
    assert handler.is_running
    await stop_concurrent_processing(made.context)


async def test_a_batch_subscriber_is_refused() -> None:
    made = broker()
    made.subscriber("t", batch=True, **READ_COMMITTED)
    message = await refusal(made)
    assert "batch=True" in message
    assert "subscribe without batch=True" in message


async def test_a_subscriber_declared_without_isolation_level_reads_committed_records() -> None:
    # Issue 26 item 12: as Kafka Streams does under exactly-once, set rather than refused.
    made = broker()
    subscriber = made.subscriber("t", group_id="g", ack_policy=AckPolicy.MANUAL)

    await initialize_concurrent_processing(
        made.context, broker=made, processing_guarantee="exactly_once"
    )
    await stop_concurrent_processing(made.context)

    assert compat.consumer_option(subscriber, "isolation_level") == "read_committed"


async def test_a_subscriber_whose_consumer_reads_uncommitted_records_already_is_refused() -> None:
    made = broker()
    subscriber = made.subscriber("t", group_id="g", ack_policy=AckPolicy.MANUAL)
    subscriber.running = True  # its consumer was built (the broker started) before the set-up
    message = await refusal(made)
    assert "too late to set read_committed" in message
    assert "call initialize_concurrent_processing before the broker starts" in message
    assert "add isolation_level='read_committed' to broker.subscriber(...)" in message


async def test_a_subscriber_with_its_own_partitions_is_refused() -> None:
    made = broker()
    made.subscriber(partitions=[TopicPartition("t", 0)], **READ_COMMITTED)
    message = await refusal(made)
    assert "partitions=[...]" in message
    assert "subscribe to topics (or a pattern) instead" in message


async def test_a_consumer_only_broker_is_refused() -> None:
    made = broker(consumer_only=True)
    made.subscriber("t", **READ_COMMITTED)
    assert "consumer_only=True" in await refusal(made)


async def test_a_broker_with_its_own_transactional_id_is_refused() -> None:
    made = broker(transactional_id="mine")
    made.subscriber("t", **READ_COMMITTED)
    message = await refusal(made)
    assert "KafkaBroker(transactional_id=...)" in message
    assert "remove transactional_id" in message


async def test_a_result_publisher_of_another_broker_is_refused() -> None:
    made = broker()
    other = KafkaBroker("127.0.0.1:10", logger=None)

    @made.subscriber(
        "t", group_id="g", ack_policy=AckPolicy.MANUAL, isolation_level="read_committed"
    )
    @other.publisher("elsewhere")
    async def handle(body: str) -> str:
        return body

    assert "belongs to another broker" in await refusal(made)


async def test_only_the_exactly_once_subscriber_is_checked() -> None:
    made = broker()
    plain = made.subscriber("plain", group_id="g", ack_policy=AckPolicy.MANUAL)  # at least once
    checked = configure_subscriber(
        made.subscriber("eos", group_id="g", ack_policy=AckPolicy.MANUAL, batch=True),
        processing_guarantee="exactly_once",
    )
    del checked
    with pytest.raises(ConcurrentProcessingSetupError, match="the subscriber of eos"):
        await initialize_concurrent_processing(made.context, broker=made)
    await stop_concurrent_processing(made.context)
    assert compat.consumer_option(plain, "isolation_level") == "read_uncommitted"


async def test_settings_exactly_once_cannot_work_with_are_refused_per_subscriber() -> None:
    made = broker()
    configure_subscriber(
        made.subscriber("t", **READ_COMMITTED),
        processing_guarantee="exactly_once",
        transaction_timeout_sec=10,
    )
    with pytest.raises(ValueError, match=r"commit_batch_timeout_sec \(10\) must be at most"):
        await initialize_concurrent_processing(made.context, broker=made)
    await stop_concurrent_processing(made.context)


# ---- routing ---------------------------------------------------------------------------


class _State:
    """FastStream's connected producer state, as far as the routing reads it."""

    producer = "the broker's own aiokafka producer"
    closed = False

    def __bool__(self) -> bool:
        return True


def test_publishes_outside_an_exactly_once_message_use_the_broker_s_producer() -> None:
    made = KafkaBroker("127.0.0.1:9", logger=None)
    routed = RoutedProducerState(_State(), made.config.producer)
    assert routed.producer == "the broker's own aiokafka producer"
    assert routed and not routed.closed


def test_an_exactly_once_message_publishes_into_its_transaction_on_its_own_broker_only() -> None:
    own = KafkaBroker("127.0.0.1:9", logger=None)
    other = KafkaBroker("127.0.0.1:10", logger=None)
    subscriber = own.subscriber("t", group_id="g")

    class Ticket:
        class message:
            describe = staticmethod(lambda: "t[0]@5")

            class lane:
                class pipeline:
                    owner = subscriber

    token = CURRENT.set(Ticket())  # type: ignore[arg-type]
    try:
        assert isinstance(
            RoutedProducerState(_State(), own.config.producer).producer, TransactionalSender
        )
        with pytest.raises(ConcurrentProcessingSetupError, match="through another broker"):
            _ = RoutedProducerState(_State(), other.config.producer).producer
    finally:
        CURRENT.reset(token)
