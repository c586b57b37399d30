"""Exactly-once publishing through FastStream: every publish of an exactly-once message (its
``@publisher`` results, ``reply_to``, ``broker.publish`` in the handler, its dead letter) goes
into its input partition's open transaction.

All of them end in FastStream's producer of the broker, which reads its aiokafka producer
from a state object at each publish. On brokers with exactly-once subscribers that state is
replaced (``compat.faststream.reroute_producer``) by ``RoutedProducerState``, which hands a
publish made from an exactly-once message (its task, or a task it spawned: the ticket is a
context variable) that message's ``TransactionalSender``, and any other publish the broker's
own producer, unchanged.
"""

from collections.abc import Iterable
from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer

from faststream_concurrent_aiokafka.compat import faststream as faststream_compat
from faststream_concurrent_aiokafka.core.errors import ConcurrentProcessingSetupError
from faststream_concurrent_aiokafka.engine.transactional_send import (
    TransactionalSender,
    current_ticket,
)


class RoutedProducerState:
    """FastStream's producer state of one broker, with exactly-once messages' publishes sent
    into their transactions."""

    __slots__ = ("_fast_producer", "inner")

    def __init__(self, inner: Any, fast_producer: Any) -> None:
        self.inner = inner
        self._fast_producer = fast_producer

    @property
    def producer(self) -> Any:
        ticket = current_ticket()
        if ticket is None:
            return self.inner.producer
        owner = ticket.message.lane.pipeline.owner
        if faststream_compat.configured_producer(owner) is not self._fast_producer:
            msg = (
                f"{ticket.message.describe()} (processing_guarantee='exactly_once') published "
                "through another broker than its subscriber's: that record cannot join its "
                "transaction. Publish through the subscriber's broker, or use at_least_once"
            )
            raise ConcurrentProcessingSetupError(msg)
        return TransactionalSender(ticket)

    @property
    def closed(self) -> bool:
        return bool(self.inner.closed)

    def __bool__(self) -> bool:
        return bool(self.inner)

    async def stop(self) -> None:
        await self.inner.stop()

    async def flush(self) -> None:
        await self.inner.flush()


def route_publishes(fast_producers: Iterable[Any]) -> None:
    """Put ``RoutedProducerState`` in front of each of these (connected) FastStream producers;
    idempotent, and needed again after each reconnect, which replaces the state."""
    for fast_producer in fast_producers:
        faststream_compat.reroute_producer(
            fast_producer, partial(_routed, fast_producer=fast_producer), RoutedProducerState
        )


def _routed(state: Any, *, fast_producer: Any) -> RoutedProducerState:
    return RoutedProducerState(state, fast_producer)


def transactional_producer(
    subscriber: Any, transactional_id: str, timeout_ms: int, brokers: Iterable[Any] = ()
) -> AIOKafkaProducer:
    """A new producer for one input partition of an exactly-once ``subscriber``, connected
    and sending as its broker's own producer; routes the publishes of that broker (and of
    ``brokers``, which then refuse an exactly-once message's publish) first."""
    broker = faststream_compat.subscriber_broker(subscriber)
    route_publishes(
        {
            id(fp): fp
            for fp in (
                faststream_compat.configured_producer(subscriber),
                *(faststream_compat.broker_fast_producer(other) for other in brokers),
            )
        }.values()
    )
    return AIOKafkaProducer(
        **faststream_compat.producer_settings(broker),
        transactional_id=transactional_id,
        transaction_timeout_ms=timeout_ms,
    )


def dead_letter_sender(subscriber: Any) -> Any:
    """What a dead letter of ``subscriber`` is sent through with its exact bytes: the running
    exactly-once message's transaction, or the broker's connected aiokafka producer (None
    when there is none, under ``TestKafkaBroker`` for example)."""
    ticket = current_ticket()
    if ticket is not None:
        return TransactionalSender(ticket)
    return faststream_compat.kafka_producer(subscriber)
