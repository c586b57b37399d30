"""Running one admitted message: FastStream's whole pipeline inside the message's task.

The task calls the subscriber's own ``process_message``, so every middleware, the handler,
its ``@publisher``s and ``reply_to`` run exactly as FastStream runs them, only concurrently;
the offset is committed after all of it, publishes included.
"""

import asyncio
import logging
from contextvars import ContextVar
from typing import Any

from faststream.exceptions import HandlerException, NackMessage, StopConsume
from faststream.message import AckStatus, StreamMessage

from faststream_concurrent_aiokafka.commit_task import KafkaCommitTask

logger = logging.getLogger("faststream_concurrent_aiokafka")

CURRENT_JOB: ContextVar[KafkaCommitTask | None] = ContextVar("fca_current_job", default=None)

_background: set["asyncio.Task[Any]"] = set()


class CommitGuard:
    """Stands in for ``message.consumer`` while a message runs concurrently.

    FastStream's ``ack()`` commits every assigned partition's position and ``nack()`` seeks
    back; with other messages in flight either would commit past or re-read unfinished work.
    Here acknowledgements are only recorded on the message; commits stay in the committer.
    """

    __slots__ = ("_consumer",)

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer

    async def commit(self, *_args: Any, **_kwargs: Any) -> None:
        return None

    def seek(self, *_args: Any, **_kwargs: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


async def run_job(job: KafkaCommitTask) -> None:
    """Task body of one message; failures are recorded on the job, never raised."""
    CURRENT_JOB.set(job)
    subscriber = job.lane.subscriber
    try:
        await subscriber.process_message(job.record)
    except StopConsume:
        _in_background(subscriber.stop())
    except HandlerException:
        pass  # Ack/Nack/Reject/Skip: the outcome was recorded in call_handler
    except Exception as exc:
        if job.error is None:
            job.error = exc
            logger.error(
                "Message %s failed outside its handler (%s: %s); it is committed as processed",
                job.describe(),
                type(exc).__name__,
                exc,
            )
    except SystemExit:
        _in_background(subscriber.stop())
        app = subscriber._outer_config.context.get("app")
        if app is not None:
            app.exit()


def _in_background(coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def call_handler(job: KafkaCommitTask, call_next: Any, message: StreamMessage[Any]) -> Any:
    """The handler call inside the consume scope: timeout, failure logging, safe acks."""
    message.consumer = CommitGuard(job.lane.consumer)  # type: ignore[attr-defined]
    timeout = job.lane.options.task_timeout_sec
    try:
        if timeout is None:
            result = await call_next(message)
        else:
            async with asyncio.timeout(timeout) as scope:
                result = await call_next(message)
    except HandlerException as exc:
        if isinstance(exc, NackMessage):
            _record_failure(job, exc, "was nacked")
        raise
    except TimeoutError as exc:
        if timeout is not None and scope.expired():
            _record_failure(job, exc, f"timed out after {timeout} s", level=logging.WARNING)
        else:
            _record_failure(job, exc, "failed")
        raise
    except Exception as exc:
        _record_failure(job, exc, "failed")
        raise
    if message.committed is AckStatus.NACKED:
        _record_failure(job, None, "was nacked")
    return result


def _record_failure(
    job: KafkaCommitTask, exc: BaseException | None, what: str, level: int = logging.ERROR
) -> None:
    job.error = exc if exc is not None else RuntimeError("nacked")
    logger.log(
        level,
        "Handler for %s %s%s; it is committed as processed",
        job.describe(),
        what,
        f" ({type(exc).__name__}: {exc})" if exc is not None else "",
    )
