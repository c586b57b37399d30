"""How an exactly-once message's publishes reach its partition's transaction.

The message's task carries a ``Ticket`` in ``CURRENT`` (a context variable, so tasks the
handler spawns carry it too); a publish made with one set gets a ``TransactionalSender``, whose
``send``/``send_batch`` are ``AIOKafkaProducer``'s, into the transaction the ticket names.
"""

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer

from faststream_concurrent_aiokafka.core.errors import TransactionalPublishError
from faststream_concurrent_aiokafka.engine.state import AdmittedMessage


class OpenTransaction(Protocol):
    """A partition's transaction as a ticket sees it (``partition_transaction``)."""

    @property
    def epoch(self) -> int:
        """Moves on with every abort or release: tickets of an earlier one are refused."""

    @property
    def producer(self) -> AIOKafkaProducer | None:
        """The partition's producer, None once it is gone."""

    def unavailable(self) -> str:
        """Why a publish cannot join the transaction any more."""

    async def send(
        self,
        ticket: "Ticket",
        send: Callable[[AIOKafkaProducer], Awaitable["asyncio.Future[Any]"]],
    ) -> "asyncio.Future[Any]":
        """One publish of the ticket's message into the open transaction."""

    def send_record(  # noqa: PLR0917 - AIOKafkaProducer.send's arguments
        self,
        ticket: "Ticket",
        topic: str,
        value: Any,
        key: Any,
        partition: int | None,
        timestamp_ms: int | None,
        headers: Any,
    ) -> Coroutine[Any, Any, "asyncio.Future[Any]"]:
        """One record of the ticket's message into the open transaction."""


CURRENT: contextvars.ContextVar["Ticket | None"] = contextvars.ContextVar(
    "faststream_concurrent_aiokafka_transaction", default=None
)
"""The ticket of the exactly-once message whose task (or a task it spawned) runs now."""


def current_ticket() -> "Ticket | None":
    """The ticket of the exactly-once message running in this task, if any."""
    return CURRENT.get()


class Ticket:
    """What an exactly-once message's task carries: the message, its partition's transaction
    and that transaction's epoch when the message started (an abort moves it on)."""

    __slots__ = ("epoch", "message", "partition")

    def __init__(self, message: AdmittedMessage, partition: OpenTransaction) -> None:
        self.message = message
        self.partition = partition
        self.epoch = partition.epoch


class TransactionalSender:
    """What a publish of an exactly-once message sends through instead of the broker's own
    producer: ``AIOKafkaProducer``'s ``send``/``send_batch`` into the message's partition's
    open transaction."""

    __slots__ = ("_ticket",)

    def __init__(self, ticket: Ticket) -> None:
        self._ticket = ticket

    def send(  # noqa: PLR0917 - AIOKafkaProducer.send's signature
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Any = None,
    ) -> Coroutine[Any, Any, "asyncio.Future[Any]"]:
        """A coroutine as ``AIOKafkaProducer.send``'s (not one more frame around it)."""
        ticket = self._ticket
        return ticket.partition.send_record(
            ticket, topic, value, key, partition, timestamp_ms, headers
        )

    async def send_and_wait(self, topic: str, value: Any = None, key: Any = None, **kw: Any) -> Any:
        return await (await self.send(topic, value, key, **kw))

    def create_batch(self) -> Any:
        producer = self._ticket.partition.producer
        if producer is None:
            raise TransactionalPublishError(self._ticket.partition.unavailable())
        return producer.create_batch()

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> "asyncio.Future[Any]":
        return await self._ticket.partition.send(
            self._ticket, lambda producer: producer.send_batch(batch, topic, partition=partition)
        )
