"""The handler call inside a concurrent message's consume scope: its timeout, and FastStream's
acknowledgements read as outcomes instead of commits or seeks."""

import asyncio
from functools import partial
from typing import Any

from faststream.exceptions import NackMessage, RejectMessage
from faststream.message import AckStatus, StreamMessage

from faststream_concurrent_aiokafka.core.errors import TaskTimeoutError
from faststream_concurrent_aiokafka.engine.state import CommitGuard


async def _record_reject(message: StreamMessage[Any]) -> None:
    """FastStream's Kafka ``reject()`` is an ``ack()``; here it means "dead-letter this"."""
    if message.committed is None:
        message.committed = AckStatus.REJECTED


async def call_handler(
    timeout: float | None,
    call_next: Any,
    message: StreamMessage[Any],
    consumer: CommitGuard | None = None,
) -> Any:
    """The handler call: timeout, and acks turned into outcomes.

    ``msg.nack()`` and ``msg.reject()`` become ``NackMessage``/``RejectMessage`` so the
    failure policy sees them and FastStream publishes no result for the message. ``consumer``,
    if given, replaces the message's consumer (commits and seeks dropped).
    """
    if consumer is not None:
        message.consumer = consumer  # type: ignore[attr-defined]
    message.reject = partial(_record_reject, message)  # type: ignore[method-assign]
    try:
        if timeout is None:
            result = await call_next(message)
        else:
            try:
                async with asyncio.timeout(timeout) as scope:
                    result = await call_next(message)
            except TimeoutError as exc:
                if scope.expired():
                    msg = f"handler ran longer than task_timeout_sec={timeout}"
                    raise TaskTimeoutError(msg) from exc
                raise
    finally:
        # The partial refers back to the message: left in place, every message would end
        # as a reference cycle that only the garbage collector's full passes free.
        del message.reject
    if message.committed is AckStatus.NACKED:
        raise NackMessage
    if message.committed is AckStatus.REJECTED:
        raise RejectMessage
    return result
