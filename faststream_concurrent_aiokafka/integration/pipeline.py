"""A FastStream subscriber as the engine's ``Pipeline``: what runs its messages, how their
failures read, where their dead letters go and how a handler stops consuming."""

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from faststream.exceptions import AckMessage, RejectMessage, SkipMessage, StopConsume

from faststream_concurrent_aiokafka.compat import faststream as faststream_compat
from faststream_concurrent_aiokafka.core.failure_policy import FailurePolicy
from faststream_concurrent_aiokafka.core.settings import (
    ConcurrencySettings,
    ExceptionText,
    SubscriberSettings,
)
from faststream_concurrent_aiokafka.integration.dead_letter import (
    publish_dead_letter,
    publish_record,
)
from faststream_concurrent_aiokafka.integration.logs import subscriber_logger
from faststream_concurrent_aiokafka.integration.subscriber_options import options_of
from faststream_concurrent_aiokafka.integration.transactional_publish import (
    transactional_producer,
)

FASTSTREAM_POLICY = FailurePolicy(
    done=(AckMessage, SkipMessage),
    dead_letter=(RejectMessage,),
    stop=(StopConsume, SystemExit),
)
"""FastStream's control exceptions: ``AckMessage``/``SkipMessage`` settle the message,
``RejectMessage`` dead-letters it at once, ``StopConsume`` stops the subscriber and
``SystemExit`` (``exit()``, ``StopApplication``) the app; anything else is a failure."""

_background: set["asyncio.Task[Any]"] = set()


class SubscriberPipeline:
    """Runs one subscriber's messages through its own ``process_message``: every middleware,
    the handler, its ``@publisher``s and ``reply_to``, exactly as FastStream runs them."""

    def __init__(
        self,
        subscriber: Any,
        settings: ConcurrencySettings,
        brokers: Callable[[], Iterable[Any]] = tuple,
    ) -> None:
        self.owner = subscriber
        self.policy = FASTSTREAM_POLICY
        self.process = subscriber.process_message
        self._settings = settings
        self._brokers = brokers

    @property
    def name(self) -> str:
        return f"group={self.group or '-'} topics={','.join(self.topics)}"

    @property
    def group(self) -> str:
        return getattr(self.owner, "group_id", None) or ""

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(getattr(self.owner, "topic_names", None) or ())

    def settings(self) -> SubscriberSettings:
        return self._settings.for_subscriber(options_of(self.owner))

    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        return subscriber_logger(self.owner)

    async def dead_letter(
        self,
        topic: str,
        record: Any,
        error: BaseException | None,
        attempts: int,
        exception_text: ExceptionText | None,
    ) -> None:
        await publish_dead_letter(
            self.owner, topic, record, error=error, attempts=attempts, exception_text=exception_text
        )

    async def publish_retry(
        self, topic: str, record: Any, headers: list[tuple[str, bytes]]
    ) -> None:
        await publish_record(self.owner, topic, key=record.key, value=record.value, headers=headers)

    def transactional_producer(self, transactional_id: str, timeout_ms: int) -> AIOKafkaProducer:
        """A producer for one input partition, connected as the broker's own; publishes of
        this broker (and the app's other Kafka brokers) are routed into transactions first."""
        return transactional_producer(self.owner, transactional_id, timeout_ms, self._brokers())

    def stop_requested(self, error: BaseException) -> None:
        """``StopConsume`` stops this subscriber (its stop drains the other messages first);
        ``SystemExit`` also asks the app to exit, as FastStream's own loop does."""
        _in_background(self.owner.stop())
        if isinstance(error, SystemExit):
            app = faststream_compat.subscriber_context(self.owner).get("app")
            if app is not None:
                app.exit()


def _in_background(coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
