"""Running admitted messages: FastStream's whole pipeline inside a slot's task.

The task calls the subscriber's own ``process_message``, so every middleware, the handler,
its ``@publisher``s and ``reply_to`` run exactly as FastStream runs them, only concurrently;
the offset is committed after all of it, publishes included.
"""

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from faststream.exceptions import NackMessage, RejectMessage, StopConsume
from faststream.message import AckStatus, StreamMessage

from faststream_concurrent_aiokafka.commit_task import KafkaCommitTask
from faststream_concurrent_aiokafka.dead_letter import publish_dead_letter
from faststream_concurrent_aiokafka.errors import TaskTimeoutError
from faststream_concurrent_aiokafka.failure_policy import Outcome, backoff_delay, classify

logger = logging.getLogger("faststream_concurrent_aiokafka")

RUNNING: dict[int, KafkaCommitTask] = {}
"""Jobs whose pipeline runs now, by ``id()`` of the raw message FastStream's middlewares get.

The middleware finds its job here: no context variable to set (and allocate) per message,
and found even when a middleware runs the rest of the pipeline in a task of its own.
"""

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


NextJob = Callable[[KafkaCommitTask], "KafkaCommitTask | None"]


async def run_slot(job: KafkaCommitTask, next_job: NextJob) -> None:
    """Task body of a slot: runs its message, then each one ``next_job`` hands it after that.

    Per message: attempts, backoff, dead-lettering; never raises. FastStream's pipeline is
    awaited right here, not in a helper coroutine: a frame less for every message in flight.
    """
    current: KafkaCommitTask | None = job
    while current is not None:
        key = id(current.record)
        RUNNING[key] = current
        try:
            subscriber = current.lane.subscriber
            attempt = 0
            while True:
                attempt += 1
                error: BaseException | None = None
                try:
                    await subscriber.process_message(current.record)
                except (StopConsume, SystemExit) as exc:
                    _stop_consuming(subscriber, exc)
                except Exception as exc:  # every failure goes through the policy
                    error = exc
                if error is None or not await _retry_after(current, error, attempt):
                    break
        finally:
            del RUNNING[key]
        current = next_job(current)


def _stop_consuming(subscriber: Any, request: BaseException) -> None:
    """A handler raised StopConsume (stop this subscriber) or SystemExit (stop the app)."""
    _in_background(subscriber.stop())
    if isinstance(request, SystemExit):
        app = subscriber._outer_config.context.get("app")
        if app is not None:
            app.exit()


async def _retry_after(job: KafkaCommitTask, error: BaseException, attempt: int) -> bool:
    """An attempt failed: wait and say True to retry, or settle the failure and say False."""
    if isinstance(error, TaskTimeoutError):
        logger.warning("Handler for %s timed out: %s", job.describe(), error)
    outcome = classify(error)
    if outcome is Outcome.DONE:
        return False
    options = job.lane.options
    if outcome is Outcome.RETRY and attempt <= options.max_retries:
        delay = backoff_delay(attempt, options.retry_backoff_sec, options.retry_backoff_max_sec)
        logger.warning(
            "Attempt %d of %s failed (%s); retrying in %.3f s",
            attempt,
            job.describe(),
            _summary(error),
            delay,
        )
        await asyncio.sleep(delay)
        return True
    job.error = error
    await _settle_failure(job, error, attempt)
    return False


async def _settle_failure(job: KafkaCommitTask, error: BaseException | None, attempts: int) -> None:
    """Last attempt failed: dead-letter it (retrying the publish until it succeeds) or log it.

    The offset is only committed after this returns; a stuck dead-letter publish holds the
    partition's commit point, never skips past the message.
    """
    topic = job.lane.options.dead_letter_topic
    if topic is None:
        logger.error(
            "Message %s failed after %d attempt(s) (%s); committed without a dead-letter topic",
            job.describe(),
            attempts,
            _summary(error),
        )
        return
    options = job.lane.options
    stuck = job.lane.dead_letter_stuck
    publish_attempt = 0
    try:
        while True:
            publish_attempt += 1
            try:
                await publish_dead_letter(job.lane.subscriber, topic, job.record, error, attempts)
            except Exception as exc:
                stuck.add(job)
                delay = backoff_delay(
                    publish_attempt, options.retry_backoff_sec, options.retry_backoff_max_sec
                )
                logger.error(
                    "Dead-lettering %s to %r failed (%s); retrying in %.3f s, not committed",
                    job.describe(),
                    topic,
                    _summary(exc),
                    delay,
                )
                await asyncio.sleep(delay)
            else:
                logger.warning(
                    "Message %s dead-lettered to %r after %d attempt(s) (%s)",
                    job.describe(),
                    topic,
                    attempts,
                    _summary(error),
                )
                return
    finally:
        stuck.discard(job)


async def _record_reject(message: StreamMessage[Any]) -> None:
    """FastStream's Kafka ``reject()`` is an ``ack()``; here it means "dead-letter this"."""
    if message.committed is None:
        message.committed = AckStatus.REJECTED


def _summary(error: BaseException | None) -> str:
    return "no error" if error is None else f"{type(error).__name__}: {error}"


def _in_background(coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def call_handler(job: KafkaCommitTask, call_next: Any, message: StreamMessage[Any]) -> Any:
    """The handler call inside the consume scope: timeout, and acks turned into outcomes.

    ``msg.nack()`` and ``msg.reject()`` become ``NackMessage``/``RejectMessage`` so the policy
    sees them and FastStream publishes no result for the message.
    """
    message.consumer = job.lane.commit_guard  # type: ignore[attr-defined]
    message.reject = partial(_record_reject, message)  # type: ignore[method-assign]
    timeout = job.lane.options.task_timeout_sec
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
