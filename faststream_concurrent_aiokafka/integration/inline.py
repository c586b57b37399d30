"""Messages FastStream runs itself, outside the engine: under ``TestKafkaBroker``.

There are no offsets to keep there, so the handler runs inline, in the test's ``publish``.
The failure policy still runs as in production, down the engine's one failure path
(``engine.attempts``), so users can unit-test it: attempts with backoff,
``task_timeout_sec``, ``no_retry_on``, ``msg.nack()``/``msg.reject()``, and dead letters
published to the test broker (a test subscriber of the dead-letter topic receives them;
``publish`` then returns normally). Without a dead-letter topic the final failure is raised
from ``publish``, as FastStream's test client does with any handler error. A record older
than ``max_message_age_sec`` (``publish(..., timestamp_ms=...)``) is not run, as in the
engine. The dead-letter brake is about commits and does not apply here.
"""

from typing import Any

from faststream.exceptions import SkipMessage
from faststream.message import StreamMessage

from faststream_concurrent_aiokafka.core.failure_policy import AttemptRecord, Outcome
from faststream_concurrent_aiokafka.core.retry_topic import retry_headers
from faststream_concurrent_aiokafka.core.settings import SubscriberSettings
from faststream_concurrent_aiokafka.engine.attempts import Attempts
from faststream_concurrent_aiokafka.engine.expiry import expired_error, record_age_sec
from faststream_concurrent_aiokafka.engine.flow_control import LaneFlow
from faststream_concurrent_aiokafka.engine.retry_topic import next_hop
from faststream_concurrent_aiokafka.engine.state import Counters
from faststream_concurrent_aiokafka.integration.consume_scope import call_handler
from faststream_concurrent_aiokafka.integration.dead_letter import (
    publish_dead_letter,
    publish_record,
)
from faststream_concurrent_aiokafka.integration.logs import subscriber_logger
from faststream_concurrent_aiokafka.integration.pipeline import FASTSTREAM_POLICY


class DeadLettered(SkipMessage):
    """Ends a message that was dead-lettered inline: FastStream publishes no result for it,
    and the middleware's exit swallows it, so the test's ``publish`` returns normally."""


async def run_inline(
    subscriber: Any, settings: SubscriberSettings, call_next: Any, message: StreamMessage[Any]
) -> Any:
    """The handler call with retries, timeout and dead-lettering, for a test broker."""
    attempts = InlineAttempts(subscriber, settings, call_next, message)
    limit = settings.max_message_age_sec
    age = None if limit is None else record_age_sec(message.raw_message, limit)
    if limit is not None and age is not None:
        await attempts.expire(age, limit)
    else:
        await attempts.resume(None)
    return attempts.result


class InlineAttempts(Attempts):
    """A test broker's message: what ends it (an acknowledgement, a stop, a final failure
    without a dead-letter topic, a dead letter) is raised to FastStream's test client."""

    __slots__ = ("call_next", "message", "result", "subscriber")

    def __init__(
        self,
        subscriber: Any,
        settings: SubscriberSettings,
        call_next: Any,
        message: StreamMessage[Any],
    ) -> None:
        # No lane: the counters are this message's own, read by no one.
        policy = FASTSTREAM_POLICY.with_no_retry(settings.no_retry_on)
        super().__init__(subscriber_logger(subscriber), settings, policy, Counters())
        self.subscriber = subscriber
        self.call_next = call_next
        self.message = message
        self.result: Any = None

    async def attempt(self, number: int) -> BaseException | None:
        message = self.message
        message.committed = None  # an earlier attempt's nack must not read as this one's
        try:
            key_error = _key_error(self.settings, message)
            if key_error is not None:
                raise key_error  # as the engine fails it: before the handler, not retried
            self.result = await call_handler(
                self.settings.task_timeout_sec, self.call_next, message
            )
        except (Exception, SystemExit) as error:
            return error
        return None

    async def expire(self, age: float, limit: float) -> None:
        """Too old (``max_message_age_sec``): not run; dead-lettered (``publish`` returns
        normally) or, without a dead-letter topic, logged and dropped (``publish`` returns
        None). Logged every time: a test publishes few."""
        error = expired_error(age, limit)
        topic = self.settings.dead_letter_topic
        then = "counted expired" if topic is None else f"dead-lettering to {topic!r}"
        self.log.warning(
            "Message %s not run (%s); %s", self.describe(), error, then, extra=self.log_extra()
        )
        if topic is not None:
            await self.final(AttemptRecord(0, error, final=True, retried=False, counted=True))

    def _first(self) -> Any:
        raw = self.message.raw_message
        return raw[0] if isinstance(raw, tuple) else raw

    def describe(self) -> str:
        first = self._first()
        return f"{first.topic}[{first.partition}]@{first.offset}"

    def log_extra(self) -> dict[str, Any]:
        first = self._first()
        return {"topic": first.topic, "partition": first.partition, "offset": first.offset}

    def settled(self, error: BaseException, outcome: Outcome) -> bool:
        raise error  # FastStream's test client handles an acknowledgement or a stop

    def log_final_failure(self, record: AttemptRecord) -> None:
        if self.settings.dead_letter_topic is None:
            raise record.error  # FastStream's test client raises it from publish (and logs it)
        super().log_final_failure(record)

    async def publish_dead_letter(self, topic: str, error: BaseException, attempts: int) -> None:
        await publish_dead_letter(
            self.subscriber,
            topic,
            self.message.raw_message,
            error=error,
            attempts=attempts,
            exception_text=self.settings.dead_letter_exception_text,
        )

    async def later(self, record: AttemptRecord) -> bool:
        """With a retry topic the record is published there through the test broker, as in
        production; nothing reads it back under the test broker, so the test ends here."""
        raw = self.message.raw_message
        topic = self.settings.retry_topic
        if (
            topic is None
            or isinstance(raw, tuple)
            or self.policy.classify(record.error) is not Outcome.RETRY
        ):
            return False
        hop = next_hop(
            raw, self.settings, getattr(self.subscriber, "group_id", None), record.attempts
        )
        if hop is None:
            return False
        await publish_record(
            self.subscriber,
            topic,
            key=raw.key,
            value=raw.value,
            headers=retry_headers(raw.headers, hop),
        )
        raise SentToRetryTopic from record.error

    def dead_letter_failed(
        self, record: AttemptRecord, topic: str, error: Exception, delay: float
    ) -> bool:
        raise error

    def dead_lettered(self, record: AttemptRecord, topic: str) -> bool:
        raise DeadLettered from record.error


class SentToRetryTopic(DeadLettered):
    """Ends a message sent to the retry topic inline: ``publish`` returns normally (a test
    subscriber of the retry topic receives the record; the handler does not run it again)."""


def _key_error(settings: SubscriberSettings, message: StreamMessage[Any]) -> Exception | None:
    """The error of an ``ordering`` key function that fails on this message's record (the
    ordering itself means nothing inline: one message runs at a time)."""
    if isinstance(settings.ordering, str) or isinstance(message.raw_message, tuple):
        return None
    return LaneFlow.key_error_of(settings.ordering, message.raw_message)
