"""Each FastStream seam in ``compat.faststream`` against the installed FastStream.

If an upgrade moves one of these internals, a test here fails by name instead of the library
falling back to something silently wrong.
"""

from typing import Any

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
