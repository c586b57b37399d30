"""Dead-letter records: the original message plus headers saying where and why it failed."""

import asyncio
from typing import Any, Final

from aiokafka import AIOKafkaProducer, ConsumerRecord

from faststream_concurrent_aiokafka.errors import ConcurrentProcessingSetupError

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


def producer_of(subscriber: Any) -> AIOKafkaProducer:
    """The broker's own aiokafka producer, so dead letters keep the original bytes."""
    fast_producer = subscriber._outer_config.producer
    state = getattr(fast_producer, "_producer", None)
    producer = getattr(state, "producer", None)
    if not isinstance(producer, AIOKafkaProducer):
        msg = (
            "dead_letter_topic is set but the broker has no connected Kafka producer; "
            "do not use consumer-only brokers with a dead-letter topic"
        )
        raise ConcurrentProcessingSetupError(msg)
    return producer


async def publish_dead_letter(
    subscriber: Any,
    topic: str,
    records: "ConsumerRecord[Any, Any] | tuple[ConsumerRecord[Any, Any], ...]",
    error: BaseException | None,
    attempts: int,
) -> None:
    """Send (every record of a batch) and wait for the broker's acknowledgements."""
    producer = producer_of(subscriber)
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
