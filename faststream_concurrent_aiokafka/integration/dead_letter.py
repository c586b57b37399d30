"""Publishing dead letters: the original record plus headers saying where and why it failed
(``core.dead_letters``), through the broker's own publish path.

Each dead letter goes through the publish middlewares of the subscriber's broker (and router),
as ``broker.publish`` would send it, so FastStream's Prometheus and OpenTelemetry middlewares
count and trace it. The innermost step differs: with a connected aiokafka producer the record
is sent with its original bytes (FastStream's producer would turn headers into a ``dict`` of
``str``, losing repeated and non-UTF-8 headers); headers a middleware added (trace context)
are sent too. Under ``TestKafkaBroker`` the broker's own (test) producer sends it, so a test
subscriber of the dead-letter topic receives it.
"""

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from aiokafka import ConsumerRecord

from faststream_concurrent_aiokafka.compat import faststream as faststream_compat
from faststream_concurrent_aiokafka.core.dead_letters import (
    RETRY_HOPS,
    VALUE_DROPPED,
    Headers,
    Origin,
    PublishFailure,
    classify_publish_error,
    dead_letter_headers,
    without_value,
)
from faststream_concurrent_aiokafka.core.errors import ConcurrentProcessingSetupError
from faststream_concurrent_aiokafka.core.retry_topic import read_retry, user_headers
from faststream_concurrent_aiokafka.core.settings import ExceptionText
from faststream_concurrent_aiokafka.integration.logs import subscriber_logger
from faststream_concurrent_aiokafka.integration.transactional_publish import dead_letter_sender


def record_headers(
    record: "ConsumerRecord[Any, Any]",
    group: str | None,
    error: BaseException | None,
    attempts: int,
    exception_text: ExceptionText | None,
) -> Headers:
    """The headers of the dead letter of ``record``; one read back from a retry topic names
    its original place, and how many trips through the retry topic it made."""
    hop = read_retry(record.headers)
    if hop is None:
        origin = Origin(record.topic, record.partition, record.offset, record.timestamp, group)
        return dead_letter_headers(record.headers, origin, error, attempts, exception_text)
    headers = dead_letter_headers(
        user_headers(record.headers), hop.origin, error, attempts, exception_text
    )
    return [*headers, (RETRY_HOPS, str(hop.hop).encode())]


async def publish_record(
    subscriber: Any, topic: str, *, key: bytes | None, value: bytes | None, headers: Headers
) -> None:
    """One record sent as a dead letter is (the same producer, the same middlewares), and
    acknowledged: what the retry topic gets."""
    exact = dead_letter_sender(subscriber)
    producer = faststream_compat.configured_producer(subscriber)
    if exact is None and not producer:
        msg = (
            f"retry_topic {topic!r} is set but the broker has no connected Kafka producer; "
            "do not use consumer-only brokers with a retry topic"
        )
        raise ConcurrentProcessingSetupError(msg)
    await _publish(subscriber, exact, producer, topic=topic, key=key, value=value, headers=headers)


async def publish_dead_letter(
    subscriber: Any,
    topic: str,
    records: "ConsumerRecord[Any, Any] | tuple[ConsumerRecord[Any, Any], ...]",
    *,
    error: BaseException | None,
    attempts: int,
    exception_text: ExceptionText | None,
) -> None:
    """Publish the dead letter of each record (every record of a batch) and wait for the
    broker's acknowledgement of each."""
    exact = dead_letter_sender(subscriber)
    producer = faststream_compat.configured_producer(subscriber)
    if exact is None and not producer:
        msg = (
            "dead_letter_topic is set but the broker has no connected Kafka producer; "
            "do not use consumer-only brokers with a dead-letter topic"
        )
        raise ConcurrentProcessingSetupError(msg)
    group = getattr(subscriber, "group_id", None)
    for record in records if isinstance(records, tuple) else (records,):
        headers = record_headers(record, group, error, attempts, exception_text)
        publish = partial(_publish, subscriber, exact, producer, topic=topic, key=record.key)
        try:
            await publish(value=record.value, headers=headers)
        except Exception as exc:
            if classify_publish_error(exc) is not PublishFailure.TOO_LARGE or not record.value:
                raise
            size = len(record.value)
            subscriber_logger(subscriber).warning(
                "Dead letter of %s[%d]@%d is over the size limit of %r (%s); sent without its "
                "%d-byte value (header %s), which stays at its original place",
                record.topic,
                record.partition,
                record.offset,
                topic,
                type(exc).__name__,
                size,
                VALUE_DROPPED,
            )
            # Empty, not null: aiokafka refuses a record without key and value, and a null
            # value is a tombstone to a compacted topic.
            await publish(value=b"", headers=without_value(headers, size))


async def _publish(
    subscriber: Any,
    exact: Any,
    producer: Any,
    *,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
) -> None:
    """One dead letter through the broker's publish middlewares, sent with its exact bytes
    through ``exact`` (see ``_send_exact``), or by FastStream's ``producer`` without one."""
    as_text = {name: text.decode(errors="replace") for name, text in headers}
    command = faststream_compat.publish_command(
        value, topic=topic, key=key, headers=as_text, correlation_id=as_text.get("correlation_id")
    )
    send = producer.publish if exact is None else partial(_send_exact, exact, headers)
    await _through_middlewares(subscriber, send, command)


async def _through_middlewares(
    subscriber: Any, send: Callable[[Any], Awaitable[Any]], command: Any
) -> Any:
    """``send(command)`` wrapped in the publish scope of every broker middleware, the first
    outermost, as ``broker.publish`` does."""
    context = faststream_compat.subscriber_context(subscriber)
    publish = send
    for middleware in reversed(faststream_compat.broker_middlewares(subscriber)):
        publish = partial(middleware(None, context=context).publish_scope, publish)
    return await publish(command)


async def _send_exact(producer: Any, headers: Headers, command: Any) -> Any:
    """Send the record's bytes with ``headers``, plus any header a middleware added, through
    the broker's aiokafka producer (or an exactly-once message's transaction)."""
    ours = {name for name, _ in headers}
    added = [
        (name, str(value).encode()) for name, value in command.headers.items() if name not in ours
    ]
    sent = await producer.send(
        command.destination, value=command.body, key=command.key, headers=headers + added
    )
    return await sent
