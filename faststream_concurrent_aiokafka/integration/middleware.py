"""The FastStream middleware users register; it marks a broker's MANUAL subscribers for
concurrent processing and runs the handler call of each admitted message."""

from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaConsumer
from faststream import BaseMiddleware
from faststream.exceptions import IgnoredException, SkipMessage
from faststream.message import StreamMessage

from faststream_concurrent_aiokafka.core.errors import ConcurrentProcessingSetupError
from faststream_concurrent_aiokafka.core.settings import DEFAULTS
from faststream_concurrent_aiokafka.engine.attempts import is_final_failure
from faststream_concurrent_aiokafka.engine.runner import RUNNING
from faststream_concurrent_aiokafka.integration import subscribers
from faststream_concurrent_aiokafka.integration.consume_scope import call_handler
from faststream_concurrent_aiokafka.integration.handler import find_handler
from faststream_concurrent_aiokafka.integration.inline import DeadLettered, run_inline
from faststream_concurrent_aiokafka.integration.logs import leave_to_the_library, subscriber_logger
from faststream_concurrent_aiokafka.integration.subscriber_options import options_of

NOT_INITIALISED = (
    "A MANUAL-ack subscriber received a message before concurrent processing was set up. "
    "Call `await initialize_concurrent_processing(context=broker.context)` before the broker "
    "starts (in the app's lifespan or an on_startup hook). The message is left uncommitted."
)

HANDED_OVER = "first message of this subscriber handed over to concurrent processing"


class KafkaConcurrentProcessingMiddleware(BaseMiddleware):
    """Register with ``broker.add_middleware(KafkaConcurrentProcessingMiddleware)``.

    Messages of subscribers with ``ack_policy=AckPolicy.MANUAL`` run concurrently as asyncio
    tasks; every other subscriber passes through untouched.
    """

    async def __aenter__(self) -> Self:
        """No on_receive hook to run: two coroutines less per message than the base class."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> bool:
        """A concurrent message's failed attempt (handler, decoding, publishing) is handed to
        the failure policy through its ``attempt_error``. An attempt that will be retried ends
        here: middlewares registered before this one see it end without an error, and
        FastStream does not log it (the policy logs each retry once at INFO). The final failure
        is raised on, so they see it as without the library (an ``ExceptionMiddleware``
        handler runs); the policy logs it once at ERROR, FastStream's own line is left out.
        Cancellation and interrupts pass through."""
        if exc_val is None or not isinstance(exc_val, Exception | SystemExit):
            return False
        if isinstance(exc_val, DeadLettered):
            return True
        admitted = RUNNING.get(id(self.msg))
        if admitted is None:
            return False
        admitted.attempt_error = exc_val
        # FastStream's acknowledgements (msg.nack(), msg.reject() made exceptions by the
        # consume scope) raise nothing without the library: they end here too.
        if isinstance(exc_val, IgnoredException) or not is_final_failure(admitted, exc_val):
            return True
        leave_to_the_library(self.context.get_local("handler_"), exc_val)
        return False

    def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Coroutine[Any, Any, Any]:
        """The coroutine FastStream awaits, returned rather than awaited here: one coroutine
        less per message in flight."""
        admitted = RUNNING.get(id(self.msg))
        if admitted is not None:
            lane = admitted.lane
            return call_handler(lane.settings.task_timeout_sec, call_next, msg, lane.commit_guard)
        return self._first_contact(call_next, msg)

    async def _first_contact(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
        """A message FastStream runs itself: before our dispatcher is in place, or a test."""
        subscriber = self.context.get_local("handler_")
        if not subscribers.uses_concurrent_processing(subscriber, type(self)):
            return await call_next(msg)
        consumer = getattr(msg, "consumer", None)
        handler = find_handler(self.context)
        if not isinstance(consumer, AIOKafkaConsumer):
            # TestKafkaBroker and friends: no offsets to keep; the failure policy runs inline.
            settings = handler.settings if handler is not None else DEFAULTS
            options = settings.for_subscriber(options_of(subscriber))
            return await run_inline(subscriber, options, call_next, msg)
        if handler is None:
            subscriber_logger(subscriber).error(NOT_INITIALISED)
            raise ConcurrentProcessingSetupError(NOT_INITIALISED)
        try:
            subscribers.install(subscriber, handler)
        except (ValueError, ConcurrentProcessingSetupError) as exc:
            handler.setup_errors.append(exc)
            subscriber_logger(subscriber).error(
                "Subscriber cannot run concurrently, its messages stay uncommitted: %s", exc
            )
            raise
        await handler.partitions_assigned(subscriber, consumer.assignment())
        # FastStream started this message itself; hand it to the engine, which runs the whole
        # pipeline again in its own task, and end this run without a result to publish.
        subscribers.admit_record(handler, subscriber, msg.raw_message)
        raise SkipMessage(HANDED_OVER)
