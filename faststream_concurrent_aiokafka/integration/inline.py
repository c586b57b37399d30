"""Messages FastStream runs itself, outside the engine: under ``TestKafkaBroker``.

There are no offsets to keep there, so the handler runs inline, in the test's ``publish``.
The failure policy still runs as in production, so users can unit-test it: attempts with
backoff, ``task_timeout_sec``, ``no_retry_on``, ``msg.nack()``/``msg.reject()``, and dead
letters published to the test broker (a test subscriber of the dead-letter topic receives
them; ``publish`` then returns normally). Without a dead-letter topic the final failure is
raised from ``publish``, as FastStream's test client does with any handler error. The
dead-letter brake is about commits and does not apply here.
"""

import asyncio
from typing import Any

from faststream.exceptions import SkipMessage
from faststream.message import StreamMessage

from faststream_concurrent_aiokafka.core.failure_policy import Outcome, backoff_delay
from faststream_concurrent_aiokafka.core.settings import SubscriberSettings
from faststream_concurrent_aiokafka.engine.runner import log_traceback, summary
from faststream_concurrent_aiokafka.integration.consume_scope import call_handler
from faststream_concurrent_aiokafka.integration.dead_letter import publish_dead_letter
from faststream_concurrent_aiokafka.integration.logs import subscriber_logger
from faststream_concurrent_aiokafka.integration.pipeline import FASTSTREAM_POLICY


class DeadLettered(SkipMessage):
    """Ends a message that was dead-lettered inline: FastStream publishes no result for it,
    and the middleware's exit swallows it, so the test's ``publish`` returns normally."""


async def run_inline(
    subscriber: Any, settings: SubscriberSettings, call_next: Any, message: StreamMessage[Any]
) -> Any:
    """The handler call with retries, timeout and dead-lettering, for a test broker."""
    policy = FASTSTREAM_POLICY.with_no_retry(settings.no_retry_on)
    attempt = 0
    while True:
        attempt += 1
        message.committed = None  # an earlier attempt's nack must not read as this one's
        try:
            return await call_handler(settings.task_timeout_sec, call_next, message)
        except (Exception, SystemExit) as error:
            outcome = policy.classify(error)
            if outcome is Outcome.DONE or outcome is Outcome.STOP:
                raise
            retry = outcome is Outcome.RETRY and attempt <= settings.max_retries
            if not retry and settings.dead_letter_topic is None:
                raise  # FastStream's test client raises it from publish (and logs it)
            await _after_failure(subscriber, settings, message, error, attempt, retry=retry)


async def _after_failure(
    subscriber: Any,
    settings: SubscriberSettings,
    message: StreamMessage[Any],
    error: BaseException,
    attempt: int,
    *,
    retry: bool,
) -> None:
    """Wait before the next attempt, or dead-letter the message and end it; logged as the
    engine logs them (a retry at INFO, the final failure at ERROR)."""
    log = subscriber_logger(subscriber)
    raw = message.raw_message
    first = raw[0] if isinstance(raw, tuple) else raw
    where = f"{first.topic}[{first.partition}]@{first.offset}"
    extra = {"topic": first.topic, "partition": first.partition, "offset": first.offset}
    text = summary(error)
    if retry:
        delay = backoff_delay(attempt, settings.retry_backoff_sec, settings.retry_backoff_max_sec)
        log.info(
            "Attempt %d of %s failed (%s); retrying in %.3f s",
            attempt,
            where,
            text,
            delay,
            extra=extra,
        )
        await asyncio.sleep(delay)
        return
    topic = settings.dead_letter_topic
    assert topic is not None
    log.error(
        "Message %s failed after %d attempt(s) (%s); dead-lettering to %r",
        where,
        attempt,
        text,
        topic,
        exc_info=log_traceback(error),
        extra=extra,
    )
    await publish_dead_letter(
        subscriber,
        topic,
        raw,
        error=error,
        attempts=attempt,
        exception_text=settings.dead_letter_exception_text,
    )
    raise DeadLettered from error
