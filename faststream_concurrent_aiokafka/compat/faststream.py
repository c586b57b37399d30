"""FastStream internals the library reads or replaces, each behind one named function.

Supported: FastStream 0.7.0 to 0.7.x (CI runs both ends). Pinned by
``tests/unit/test_compat_faststream.py`` against the installed version, so an upgrade that
moves one fails loudly. FastStream 0.7 has no public hook to run a subscriber's messages
concurrently, so the library takes over the template methods its consume loop calls.
"""

import logging
import typing
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from faststream import ContextRepo
from faststream.kafka.response import KafkaPublishCommand
from faststream.kafka.subscriber.usecase import (
    BatchSubscriber,
    ConcurrentBetweenPartitionsSubscriber,
    DefaultSubscriber,
    LogicSubscriber,
)
from faststream.response.publish_type import PublishType

from faststream_concurrent_aiokafka.compat import aiokafka as aiokafka_compat

KafkaSubscriber = LogicSubscriber

# Subscribers whose get_msg is FastStream's own getone(): only those are fetched in batches.
_GETONE_FETCHERS = (DefaultSubscriber.get_msg, ConcurrentBetweenPartitionsSubscriber.get_msg)


_CONTEXT_REPO_CLASS: type = typing.get_args(ContextRepo)[0]


def is_context_repo(value: object) -> bool:
    """A FastStream ``ContextRepo`` (as opposed to a broker or an app that has one).

    Why internal: ``faststream.ContextRepo`` is exported as ``Annotated[<the class>, ...]``
    for dependency injection, which ``isinstance`` refuses; the class is its first argument.
    """
    return isinstance(value, _CONTEXT_REPO_CLASS)


def is_kafka_subscriber(subscriber: object) -> bool:
    """A subscriber of FastStream's Kafka broker (single, batch or ``max_workers``).

    Why internal: the subscriber classes are not exported; ``faststream.kafka.subscriber``'s
    ``usecase`` module defines them in every 0.7 release.
    """
    return isinstance(subscriber, LogicSubscriber)


def is_batch_subscriber(subscriber: object) -> bool:
    """A ``batch=True`` subscriber, whose messages are tuples of records."""
    return isinstance(subscriber, BatchSubscriber)


def fetches_one_at_a_time(subscriber: object) -> bool:
    """A subscriber using FastStream's record-by-record ``getone()`` fetch (not a batch one,
    not a subclass with a fetch of its own): only those get the batch fetch."""
    return getattr(type(subscriber), "get_msg", None) in _GETONE_FETCHERS


def broker_middlewares(subscriber: Any) -> Sequence[Any]:
    """The broker-level middlewares a subscriber runs (to find ours among them).

    Why private: FastStream exposes them per broker (``broker.middlewares``) but a subscriber
    only has the private ``_broker_middlewares`` view, which includes a router's.
    """
    middlewares: Sequence[Any] = subscriber._broker_middlewares
    return middlewares


def subscriber_context(subscriber: Any) -> ContextRepo:
    """The ``ContextRepo`` the subscriber's messages run in (where the app is found).

    Why private: only the subscriber's configuration knows it. FastStream 0.7.0 keeps it at
    ``_outer_config.fd_config.context``; later 0.7 releases also at ``_outer_config.context``.
    """
    config = subscriber._outer_config
    context = getattr(config, "context", None)
    if context is None:
        context = config.fd_config.context
    return cast("ContextRepo", context)


def rebalance_listener(subscriber: Any) -> ConsumerRebalanceListener | None:
    """The ``listener=`` the subscriber hands to ``consumer.subscribe()`` at every start.

    Why private: FastStream stores it as ``_listener`` and offers no setter.
    """
    listener: ConsumerRebalanceListener | None = subscriber._listener
    return listener


def set_rebalance_listener(subscriber: Any, listener: ConsumerRebalanceListener) -> None:
    """Replace the listener the subscriber subscribes with (see ``rebalance_listener``)."""
    subscriber._listener = listener


def kafka_producer(subscriber: Any) -> AIOKafkaProducer | None:
    """The broker's connected aiokafka producer, for dead letters that keep the original bytes.

    Why private: FastStream's producer wraps aiokafka's in a private state object
    (``_outer_config.producer._producer.producer``); None when not connected, and under
    ``TestKafkaBroker`` (whose producer has no such state).
    """
    state = getattr(configured_producer(subscriber), "_producer", None)
    try:
        producer = state.producer  # type: ignore[union-attr]
    except Exception:  # FastStream's empty state raises until the broker connects
        return None
    return producer if isinstance(producer, AIOKafkaProducer) else None


def configured_producer(subscriber: Any) -> Any:
    """FastStream's producer of the subscriber's broker (``broker.config.producer``): the
    innermost step of ``broker.publish``, the test producer under ``TestKafkaBroker``; false
    while not connected.

    Why private: a subscriber reaches its broker's configuration only as ``_outer_config``.
    """
    return subscriber._outer_config.producer


def publish_command(
    body: bytes | None,
    *,
    topic: str,
    key: bytes | None,
    headers: dict[str, str],
    correlation_id: str | None,
) -> KafkaPublishCommand:
    """The command ``broker.publish(body, topic, key=..., headers=...)`` hands its publish
    middlewares, for a publish the library runs through them itself.

    Why internal: FastStream builds it inside ``publish``; its constructor takes the publish
    type as the private keyword ``_publish_type``.
    """
    return KafkaPublishCommand(
        body,
        topic=topic,
        key=key,
        headers=headers,
        correlation_id=correlation_id,
        _publish_type=PublishType.PUBLISH,
    )


# What a consumer, a producer and an admin client all accept: where the cluster is and how to
# log in. The rest of FastStream's keyword arguments belong to one kind of client only.
_CONNECTION_KEYS = frozenset(
    {
        "bootstrap_servers",
        "client_id",
        "request_timeout_ms",
        "retry_backoff_ms",
        "metadata_max_age_ms",
        "connections_max_idle_ms",
        "security_protocol",
        "ssl_context",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "sasl_kerberos_service_name",
        "sasl_kerberos_domain_name",
        "sasl_oauth_token_provider",
    }
)


def connection_settings(broker: Any) -> dict[str, Any]:
    """The connection settings of a ``KafkaBroker`` (servers, security: SASL, SSL), as keyword
    arguments for any aiokafka client, so a client the library opens itself connects as the
    broker does.

    Why private: FastStream keeps what it passes to its clients only as the broker's
    ``_connection_kwargs`` (the same in every 0.7 release).
    """
    given: dict[str, Any] = broker._connection_kwargs
    return {
        key: value for key, value in given.items() if key in _CONNECTION_KEYS and value is not None
    }


def broker_logger(subscriber: Any) -> logging.Logger | None:
    """The ``logging.Logger`` FastStream logs the subscriber's messages to (the broker's
    ``logger=``, by default ``faststream.access.kafka``); None when the broker logs nothing,
    its logger is not a ``logging.Logger``, or it is not set up yet (before the broker starts).

    Why private: the broker's logger state is only reachable as ``_outer_config.logger``.
    """
    proxy = subscriber._outer_config.logger.logger
    real = getattr(proxy, "logger", None)
    return real if isinstance(real, logging.Logger) else None


def take_over_consume_one(subscriber: Any, admit: Callable[[Any], Awaitable[None]]) -> None:
    """Make FastStream's consume loop hand what it fetched to ``admit`` instead of running it.

    Why: the loop awaits ``self.consume_one(msg)`` for each fetch before fetching again, and a
    middleware only sees the inside of that await; replaced on the instance only.
    """
    subscriber.consume_one = admit


def take_over_get_msg(subscriber: Any, fetch: Callable[[AIOKafkaConsumer], Awaitable[Any]]) -> None:
    """Make FastStream's consume loop fetch with ``fetch(consumer)`` (a batch per call)."""
    subscriber.get_msg = fetch


def take_over_stop(subscriber: Any, stop: Callable[[], Awaitable[None]]) -> Callable[[], Any]:
    """Run ``stop`` instead of the subscriber's ``stop()``; returns the original, bound.

    Why: FastStream stops a subscriber's consumer inside ``stop()``, and the drain must run
    before that, while the consumer can still commit.
    """
    original: Callable[[], Any] = type(subscriber).stop.__get__(subscriber)
    subscriber.stop = stop
    return original


# A producer's own settings FastStream passes to aiokafka besides the connection ones; an
# exactly-once producer keeps them, so its records are sent as the broker's producer sends
# them (acks and idempotence are forced by the transactional id, the id and timeout are ours).
_PRODUCER_KEYS = frozenset(
    {
        "key_serializer",
        "value_serializer",
        "compression_type",
        "max_batch_size",
        "partitioner",
        "max_request_size",
        "linger_ms",
    }
)


def producer_settings(broker: Any) -> dict[str, Any]:
    """Keyword arguments for an ``AIOKafkaProducer`` that connects and sends as the broker's
    own producer does: the connection settings (servers, SASL, SSL) and the producer's
    tuning; without acks, idempotence or a transactional id.

    Why private: as ``connection_settings``, from the broker's ``_connection_kwargs``.
    """
    given: dict[str, Any] = broker._connection_kwargs
    tuning = {key: value for key, value in given.items() if key in _PRODUCER_KEYS}
    return {**connection_settings(broker), **tuning}


def broker_transactional_id(broker: Any) -> str | None:
    """The ``KafkaBroker(transactional_id=...)`` given to the broker's own producer, if any.

    Why private: as ``connection_settings``.
    """
    value: str | None = broker._connection_kwargs.get("transactional_id")
    return value


def subscriber_broker(subscriber: Any) -> Any:
    """The ``KafkaBroker`` a subscriber belongs to (through any router).

    Why private: FastStream hands the broker to its handlers as the context value
    ``broker``, kept in the configuration's ``extra_context``, which a subscriber reaches
    only as ``_outer_config`` (the same in every 0.7 release).
    """
    return subscriber._outer_config.extra_context["broker"]


def is_consumer_only(subscriber: Any) -> bool:
    """The subscriber's broker was made with ``consumer_only=True``: it has no producer.

    Why private: only the broker's configuration (``_outer_config``) knows it.
    """
    return bool(getattr(subscriber._outer_config, "consumer_only", False))


def consumer_option(subscriber: Any, name: str) -> Any:
    """A consumer setting given to ``broker.subscriber(...)`` (``isolation_level``, ...).

    Why private: FastStream keeps them as the subscriber's ``_connection_args`` until it
    builds the consumer at start.
    """
    return subscriber._connection_args.get(name)


def set_consumer_option(subscriber: Any, name: str, value: Any) -> bool:
    """Set a consumer setting of a subscriber whose consumer is not built yet; False (and
    nothing set) once it is: the consumer would not take it.

    Why private: FastStream keeps the settings given to ``broker.subscriber(...)`` as the
    subscriber's ``_connection_args`` and passes them to its consumer when it starts (in every
    0.7 release, 0.7.0 to 0.7.8); before that nothing has read them.
    """
    if getattr(subscriber, "running", False) or getattr(subscriber, "consumer", None) is not None:
        return False
    subscriber._connection_args[name] = value
    return True


def assigns_partitions(subscriber: Any) -> bool:
    """The subscriber was given ``partitions=[...]``: its consumer assigns them itself, out
    of the group's rebalancing (no listener is ever called).

    Why private: FastStream keeps them as ``_partitions``.
    """
    return bool(subscriber._partitions)


def result_publishers(subscriber: Any) -> list[Any]:
    """The ``@publisher``s decorating the subscriber's handlers (they publish the result).

    Why private: FastStream keeps them on each handler wrapper as ``_publishers``.
    """
    return [publisher for call in subscriber.calls for publisher in call.handler._publishers]


def publisher_producer(publisher: Any) -> Any:
    """FastStream's producer a publisher sends through (its broker's)."""
    return publisher._outer_config.producer


def broker_fast_producer(broker: Any) -> Any:
    """FastStream's producer of a broker (``broker.config.producer``), the innermost step of
    its ``publish``."""
    return broker.config.producer


def reroute_producer(fast_producer: Any, wrap: Callable[[Any], Any], marker: type) -> None:
    """Replace the state object behind a FastStream producer with ``wrap(state)``, unless it
    is a ``marker`` already or the producer is not connected; every publish through that
    producer (results, ``reply_to``, ``broker.publish``) reads its aiokafka producer from it.

    Why private: FastStream's producer keeps the aiokafka producer in a private state object
    (``_producer``, a ``RealProducer`` once connected) and replaces it at every connect and
    disconnect; it offers no hook to send through another producer.
    """
    state = getattr(fast_producer, "_producer", None)
    if state is not None and state and not isinstance(state, marker):
        fast_producer._producer = wrap(state)


def subscribe_also(subscriber: Any, topic: str) -> int:
    """Make the subscriber's consumers read ``topic`` too, in its group, through the same
    rebalance listener: from their first ``subscribe()`` for consumers it builds from now on
    (no extra rebalance), at once for those already started (a rebalance follows); returns
    how many of those there were.

    Why internal: FastStream builds its consumers and subscribes them inside ``start()`` to
    the topics given to ``broker.subscriber(...)``, kept privately (as ``str`` in 0.7.0, as
    prefixed ``Topic``s in later 0.7 releases). The one per-subscriber step before that
    ``subscribe()`` is the ``builder`` property (every 0.7 release, single and ``max_workers``
    subscribers), so the instance gets a subclass whose builder makes consumers that add the
    topic to what they are subscribed to.
    """
    started = _consumers(subscriber)
    for consumer in started:
        _add_topic(consumer, topic)
    cls = type(subscriber)
    build = cls.builder

    def builder(self: Any) -> Callable[..., AIOKafkaConsumer]:
        make = build.__get__(self)

        def make_also_subscribing(*args: Any, **kwargs: Any) -> AIOKafkaConsumer:
            consumer = make(*args, **kwargs)
            subscribe = consumer.subscribe

            def subscribe_also_to(*a: Any, topics: Any = (), **kw: Any) -> None:
                topics = list(topics)
                subscribe(*a, topics=topics if topic in topics else [*topics, topic], **kw)

            consumer.subscribe = subscribe_also_to
            return consumer

        return make_also_subscribing

    namespace = {"__slots__": (), "__module__": cls.__module__, "builder": property(builder)}
    subscriber.__class__ = type(cls.__name__, (cls,), namespace)
    return len(started)


def _consumers(subscriber: Any) -> list[AIOKafkaConsumer]:
    """The subscriber's started consumers (several with ``max_workers``)."""
    subgroup = getattr(subscriber, "consumer_subgroup", None) or [subscriber.consumer]
    return [c for c in subgroup if isinstance(c, AIOKafkaConsumer)]


def _add_topic(consumer: AIOKafkaConsumer, topic: str) -> None:
    topics = consumer.subscription()
    if topic not in topics:
        consumer.subscribe(
            topics=[*topics, topic], listener=aiokafka_compat.subscription_listener(consumer)
        )
