"""Each FastStream seam in ``compat.faststream`` against the installed FastStream.

If an upgrade moves one of these internals, a test here fails by name instead of the library
falling back to something silently wrong.
"""

from typing import Any

import pytest
from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import ConsumerStoppedError
from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import KafkaConcurrentProcessingMiddleware
from faststream_concurrent_aiokafka.compat import faststream as compat


class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    async def on_partitions_revoked(self, revoked: Any) -> None:
        del revoked

    async def on_partitions_assigned(self, assigned: Any) -> None:
        del assigned


def broker_with_middleware() -> KafkaBroker:
    broker = KafkaBroker("127.0.0.1:9", logger=None)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    return broker


def test_subscriber_kinds_are_recognised() -> None:
    broker = KafkaBroker("127.0.0.1:9", logger=None)
    single = broker.subscriber("a", group_id="g")
    batch = broker.subscriber("b", group_id="g", batch=True)
    workers = broker.subscriber("c", group_id="g", max_workers=2, ack_policy=AckPolicy.MANUAL)

    assert all(compat.is_kafka_subscriber(s) for s in (single, batch, workers))
    assert not compat.is_kafka_subscriber(object())
    assert compat.is_batch_subscriber(batch)
    assert not compat.is_batch_subscriber(single)
    assert compat.fetches_one_at_a_time(single)
    assert compat.fetches_one_at_a_time(workers)
    assert not compat.fetches_one_at_a_time(batch)


def test_broker_middlewares_of_a_subscriber_include_the_broker_s() -> None:
    broker = broker_with_middleware()
    subscriber = broker.subscriber("t", group_id="g", ack_policy=AckPolicy.MANUAL)

    assert KafkaConcurrentProcessingMiddleware in compat.broker_middlewares(subscriber)


def test_broker_middlewares_of_a_router_subscriber_include_the_router_s() -> None:
    from faststream.kafka import KafkaRouter

    router = KafkaRouter(middlewares=[KafkaConcurrentProcessingMiddleware])
    subscriber = router.subscriber("t", group_id="g", ack_policy=AckPolicy.MANUAL)
    KafkaBroker("127.0.0.1:9", logger=None).include_router(router)

    assert KafkaConcurrentProcessingMiddleware in compat.broker_middlewares(subscriber)


def test_subscriber_context_is_the_broker_s_and_holds_the_app() -> None:
    broker = KafkaBroker("127.0.0.1:9", logger=None)
    subscriber = broker.subscriber("t", group_id="g")
    app = FastStream(broker)

    context = compat.subscriber_context(subscriber)

    assert context is broker.context
    assert context.get("app") is app


def test_rebalance_listener_is_read_and_replaced() -> None:
    broker = KafkaBroker("127.0.0.1:9", logger=None)
    own = Listener()
    subscriber = broker.subscriber("t", group_id="g", listener=own)
    plain = broker.subscriber("u", group_id="g")

    assert compat.rebalance_listener(subscriber) is own
    assert compat.rebalance_listener(plain) is None
    replacement = Listener()
    compat.set_rebalance_listener(subscriber, replacement)
    assert compat.rebalance_listener(subscriber) is replacement


def test_kafka_producer_is_none_before_the_broker_connects() -> None:
    broker = KafkaBroker("127.0.0.1:9", logger=None)
    subscriber = broker.subscriber("t", group_id="g")

    assert compat.kafka_producer(subscriber) is None


async def test_the_consume_loop_fetches_and_hands_over_through_the_taken_over_methods() -> None:
    broker = KafkaBroker("127.0.0.1:9", logger=None)
    subscriber = broker.subscriber("t", group_id="g", ack_policy=AckPolicy.MANUAL)
    fetched = iter(["first", "second"])
    handed: list[Any] = []

    async def fetch(consumer: Any) -> Any:
        del consumer
        try:
            return next(fetched)
        except StopIteration:
            raise ConsumerStoppedError from None

    async def admit(msg: Any) -> None:
        handed.append(msg)

    compat.take_over_get_msg(subscriber, fetch)
    compat.take_over_consume_one(subscriber, admit)
    subscriber.running = True
    await subscriber._run_consume_loop(object())

    assert handed == ["first", "second"]


async def test_take_over_stop_runs_the_replacement_and_returns_the_original() -> None:
    broker = KafkaBroker("127.0.0.1:9", logger=None)
    subscriber = broker.subscriber("t", group_id="g")
    calls: list[str] = []

    async def stop() -> None:
        calls.append("replacement")

    original = compat.take_over_stop(subscriber, stop)
    await subscriber.stop()

    assert calls == ["replacement"]
    assert original.__func__ is type(subscriber).stop  # type: ignore[attr-defined]
    assert original.__self__ is subscriber  # type: ignore[attr-defined]


def test_a_context_repo_is_told_from_a_broker_or_an_app() -> None:
    broker = KafkaBroker("127.0.0.1:9", logger=None)
    app = FastStream(broker)

    assert compat.is_context_repo(broker.context)
    assert compat.is_context_repo(app.context)
    assert not compat.is_context_repo(broker)
    assert not compat.is_context_repo(app)


def test_connection_settings_of_a_broker_carry_its_servers_and_sasl() -> None:
    from faststream.security import SASLScram512

    broker = KafkaBroker(
        ["h1:1", "h2:2"],
        security=SASLScram512(username="u", password="p"),
        client_id="svc",
        linger_ms=7,  # a producer-only setting: not for every client
        logger=None,
    )

    settings = compat.connection_settings(broker)

    assert settings["bootstrap_servers"] == ["h1:1", "h2:2"]
    assert settings["client_id"] == "svc"
    assert settings["security_protocol"] == "SASL_PLAINTEXT"
    assert settings["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (settings["sasl_plain_username"], settings["sasl_plain_password"]) == ("u", "p")
    assert "linger_ms" not in settings
    assert None not in settings.values()


def test_connection_settings_of_a_broker_carry_its_ssl_context() -> None:
    import ssl

    from faststream.security import BaseSecurity

    context = ssl.create_default_context()
    broker = KafkaBroker("h:1", security=BaseSecurity(ssl_context=context), logger=None)

    settings = compat.connection_settings(broker)

    assert settings["security_protocol"] == "SSL"
    assert settings["ssl_context"] is context


def test_publish_command_is_what_broker_publish_hands_its_middlewares() -> None:
    from faststream.response.publish_type import PublishType

    command = compat.publish_command(
        b"body", topic="dlq", key=b"k", headers={"h": "v"}, correlation_id="c-1"
    )

    assert command.destination == "dlq"
    assert command.body == b"body"
    assert command.key == b"k"
    assert command.headers == {"h": "v"}
    assert command.correlation_id == "c-1"
    assert command.publish_type is PublishType.PUBLISH
    assert command.headers_to_publish() == {"correlation_id": "c-1", "h": "v"}


async def test_the_configured_producer_is_the_test_broker_s_under_test_kafka_broker() -> None:
    from faststream.kafka import TestKafkaBroker

    broker = KafkaBroker("127.0.0.1:9", logger=None)
    subscriber = broker.subscriber("t", group_id="g")
    assert not compat.configured_producer(subscriber)  # not connected

    async with TestKafkaBroker(broker):
        producer = compat.configured_producer(subscriber)
        assert producer is broker.config.producer
        assert producer  # the test producer counts as connected
        assert compat.kafka_producer(subscriber) is None  # no aiokafka producer inside


# ---- exactly-once seams ----------------------------------------------------------------


def test_producer_settings_carry_the_connection_and_the_producer_s_tuning_only() -> None:
    from faststream.security import SASLPlaintext

    broker = KafkaBroker(
        "h:1",
        security=SASLPlaintext(username="u", password="p"),
        linger_ms=7,
        compression_type="gzip",
        max_batch_size=1234,
        acks=1,
        enable_idempotence=False,
        logger=None,
    )

    settings = compat.producer_settings(broker)

    assert settings["bootstrap_servers"] == ["h:1"]
    assert settings["security_protocol"] == "SASL_PLAINTEXT"
    assert (settings["sasl_plain_username"], settings["sasl_plain_password"]) == ("u", "p")
    assert (settings["linger_ms"], settings["compression_type"]) == (7, "gzip")
    assert settings["max_batch_size"] == 1234
    # A transactional producer needs acks=all and idempotence; the id is ours.
    for key in ("acks", "enable_idempotence", "transactional_id", "transaction_timeout_ms"):
        assert key not in settings
    assert "loop" not in settings


def test_a_broker_s_own_transactional_id_is_read() -> None:
    assert compat.broker_transactional_id(KafkaBroker("h:1", logger=None)) is None
    broker = KafkaBroker("h:1", transactional_id="mine", logger=None)
    assert compat.broker_transactional_id(broker) == "mine"


def test_a_subscriber_knows_its_broker_and_its_consumer_settings_through_a_router() -> None:
    from faststream.kafka import KafkaRouter

    router = KafkaRouter(prefix="p.")
    subscriber = router.subscriber(
        "t", group_id="g", ack_policy=AckPolicy.MANUAL, isolation_level="read_committed"
    )
    plain = router.subscriber("u", group_id="g")
    broker = KafkaBroker("h:1", logger=None)
    broker.include_router(router)

    assert compat.subscriber_broker(subscriber) is broker
    assert compat.consumer_option(subscriber, "isolation_level") == "read_committed"
    assert compat.consumer_option(plain, "isolation_level") == "read_uncommitted"
    assert not compat.is_consumer_only(subscriber)
    assert compat.is_consumer_only(
        KafkaBroker("h:1", consumer_only=True, logger=None).subscriber("t", group_id="g")
    )
    assert compat.configured_producer(subscriber) is compat.broker_fast_producer(broker)


def test_manual_partitions_and_result_publishers_of_a_subscriber_are_read() -> None:
    from faststream.kafka import TopicPartition

    broker = KafkaBroker("h:1", logger=None)
    other = KafkaBroker("h:2", logger=None)
    assigned = broker.subscriber(partitions=[TopicPartition("t", 0)], group_id="g")
    subscribed = broker.subscriber("t", group_id="g")
    results = broker.publisher("results")
    elsewhere = other.publisher("elsewhere")

    @subscribed
    @results
    @elsewhere
    async def handle(body: str) -> str:
        return body

    assert compat.assigns_partitions(assigned)
    assert not compat.assigns_partitions(subscribed)
    assert set(compat.result_publishers(subscribed)) == {results, elsewhere}
    assert compat.publisher_producer(results) is compat.configured_producer(subscribed)
    assert compat.publisher_producer(elsewhere) is compat.broker_fast_producer(other)


async def test_the_producer_state_is_rerouted_once_connected_and_once_only() -> None:
    from faststream.kafka.publisher.state import RealProducer

    class Marker:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

    broker = KafkaBroker("h:1", logger=None)
    fast_producer = compat.broker_fast_producer(broker)
    compat.reroute_producer(fast_producer, Marker, Marker)
    assert not isinstance(fast_producer._producer, Marker)  # not connected: nothing to route

    real = RealProducer(object())
    fast_producer._producer = real  # what connect() puts there
    compat.reroute_producer(fast_producer, Marker, Marker)
    routed = fast_producer._producer
    assert isinstance(routed, Marker)
    assert routed.inner is real
    compat.reroute_producer(fast_producer, Marker, Marker)
    assert fast_producer._producer is routed  # idempotent


def test_a_consumer_setting_is_set_before_the_consumer_is_built_and_not_after() -> None:
    broker = KafkaBroker("h:1", logger=None)
    subscriber = broker.subscriber("t", group_id="g")

    assert compat.set_consumer_option(subscriber, "isolation_level", "read_committed")
    assert compat.consumer_option(subscriber, "isolation_level") == "read_committed"
    # What FastStream hands its consumer builder at start (AIOKafkaConsumer's keywords).
    assert subscriber._connection_args["isolation_level"] == "read_committed"

    subscriber.running = True
    assert not compat.set_consumer_option(subscriber, "isolation_level", "read_uncommitted")
    assert compat.consumer_option(subscriber, "isolation_level") == "read_committed"


@pytest.mark.parametrize("max_workers", [None, 2])
async def test_subscribe_also_makes_the_consumers_it_builds_subscribe_to_one_more_topic(
    max_workers: int | None,
) -> None:
    broker = KafkaBroker("h:1", logger=None)
    extra: dict[str, Any] = {} if max_workers is None else {"max_workers": max_workers}
    subscriber = broker.subscriber("t", group_id="g", **extra)
    kind = type(subscriber)
    assert compat.subscribe_also(subscriber, "t-retry") == 0  # none started yet
    compat.subscribe_also(subscriber, "t-retry")  # a second handler: still once

    # What FastStream's start() does with the consumer it builds, in every 0.7 release.
    consumer = subscriber.builder(group_id="g")
    consumer.subscribe(topics=["t"])
    assert consumer.subscription() == {"t", "t-retry"}
    await consumer.stop()
    # Still the subscriber it was: its kind, its fetch, its topics.
    assert isinstance(subscriber, kind)
    assert type(subscriber).get_msg is kind.get_msg
    assert subscriber.topic_names == ["t"]


async def test_subscribe_also_adds_the_topic_to_a_consumer_already_subscribed() -> None:
    broker = KafkaBroker("h:1", logger=None)
    subscriber = broker.subscriber("t", group_id="g")
    consumer = subscriber.builder(group_id="g")
    consumer.subscribe(topics=["t"])
    subscriber.consumer = consumer

    assert compat.subscribe_also(subscriber, "t-retry") == 1

    assert consumer.subscription() == {"t", "t-retry"}
    await consumer.stop()
