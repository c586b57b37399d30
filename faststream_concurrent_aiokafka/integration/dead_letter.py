"""Dead-letter records: the original message plus headers saying where and why it failed."""

import asyncio
from typing import Any, Final

from aiokafka import ConsumerRecord

from faststream_concurrent_aiokafka.compat import faststream as faststream_compat
from faststream_concurrent_aiokafka.core.errors import ConcurrentProcessingSetupError

HEADER_TOPIC: Final = "x-dead-letter-topic"
HEADER_PARTITION: Final = "x-dead-letter-partition"
HEADER_OFFSET: Final = "x-dead-letter-offset"
HEADER_EXCEPTION_TYPE: Final = "x-dead-letter-exception-type"
HEADER_EXCEPTION_MESSAGE: Final = "x-dead-letter-exception-message"
HEADER_ATTEMPTS: Final = "x-dead-letter-attempts"

_MAX_MESSAGE_BYTES: Final = 1024


def dead_letter_headers(
    record: "ConsumerRecord[Any, Any]", error: BaseException | None, attempts: int
) -> list[tuple[str, bytes]]:
    """The original headers, then ours (earlier dead-letter headers are replaced)."""
    ours = {
        HEADER_TOPIC: record.topic,
        HEADER_PARTITION: str(record.partition),
        HEADER_OFFSET: str(record.offset),
        HEADER_EXCEPTION_TYPE: type(error).__name__ if error is not None else "",
        HEADER_EXCEPTION_MESSAGE: _clip(str(error)) if error is not None else "",
        HEADER_ATTEMPTS: str(attempts),
    }
    kept = [(name, value) for name, value in record.headers if name not in ours]
    return kept + [(name, value.encode()) for name, value in ours.items()]


def _clip(text: str) -> str:
    """At most _MAX_MESSAGE_BYTES of UTF-8, cut on a character boundary."""
    return text.encode()[:_MAX_MESSAGE_BYTES].decode(errors="ignore")


async def publish_dead_letter(
    subscriber: Any,
    topic: str,
    records: "ConsumerRecord[Any, Any] | tuple[ConsumerRecord[Any, Any], ...]",
    error: BaseException | None,
    attempts: int,
) -> None:
    """Send (every record of a batch) through the broker's own aiokafka producer, so the
    original bytes are kept, and wait for the broker's acknowledgements."""
    producer = faststream_compat.kafka_producer(subscriber)
    if producer is None:
        msg = (
            "dead_letter_topic is set but the broker has no connected Kafka producer; "
            "do not use consumer-only brokers with a dead-letter topic"
        )
        raise ConcurrentProcessingSetupError(msg)
    batch = records if isinstance(records, tuple) else (records,)
    sent = [
        await producer.send(
            topic,
            value=record.value,
            key=record.key,
            headers=dead_letter_headers(record, error, attempts),
        )
        for record in batch
    ]
    await asyncio.gather(*sent)
