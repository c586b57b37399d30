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
from faststream.kafka.subscriber.usecase import (
    BatchSubscriber,
    ConcurrentBetweenPartitionsSubscriber,
    DefaultSubscriber,
    LogicSubscriber,
)

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
    (``_outer_config.producer._producer.producer``); None when not connected.
    """
    state = subscriber._outer_config.producer._producer
    try:
        producer = state.producer
    except Exception:  # FastStream's empty state raises until the broker connects
        return None
    return producer if isinstance(producer, AIOKafkaProducer) else None


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
