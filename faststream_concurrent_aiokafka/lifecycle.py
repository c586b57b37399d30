"""Start, stop and probe the handler stored in FastStream's context."""

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from faststream_concurrent_aiokafka import dispatch
from faststream_concurrent_aiokafka.config import ConcurrencySettings, Ordering
from faststream_concurrent_aiokafka.errors import ConcurrentProcessingSetupError
from faststream_concurrent_aiokafka.handler import KafkaConcurrentHandler
from faststream_concurrent_aiokafka.middleware import KafkaConcurrentProcessingMiddleware
from faststream_concurrent_aiokafka.registry import HANDLER_CONTEXT_KEY, find_handler
from faststream_concurrent_aiokafka.shutdown_signals import (
    install_signal_handlers,
    remove_signal_handlers,
)

if TYPE_CHECKING:
    from faststream import ContextRepo
    from faststream._internal.application import Application
    from faststream._internal.broker import BrokerUsecase

logger = logging.getLogger("faststream_concurrent_aiokafka")


async def initialize_concurrent_processing(  # noqa: PLR0917 - positional, as in the original API
    context: "ContextRepo",
    concurrency_limit: int = 10,
    commit_batch_size: int = 10,
    commit_batch_timeout_sec: float = 10.0,
    shutdown_timeout_sec: float = 20.0,
    max_uncommitted_tasks: int = 10_000,
    rebalance_flush_timeout_sec: float = 10.0,
    *,
    ordering: Ordering = "unordered",
    task_timeout_sec: float | None = None,
    max_retries: int = 0,
    retry_backoff_sec: float = 0.1,
    retry_backoff_max_sec: float = 10.0,
    dead_letter_topic: str | None = None,
    track_completed_offsets: bool = True,
    broker: "BrokerUsecase[Any, Any] | None" = None,
) -> KafkaConcurrentHandler:
    """Create and start the handler and store it in ``context``.

    Call it before the broker starts (lifespan or ``on_startup``): the subscribers of an app
    found in ``context``, and of ``broker`` if given (a bare broker has no app), then get their
    dispatcher and rebalance listener before they subscribe. Others are set up at their first
    message, which outer middlewares then see twice (once ending in ``SkipMessage``).
    """
    return await start_concurrent_processing(
        context,
        ConcurrencySettings(
            concurrency_limit=concurrency_limit,
            commit_batch_size=commit_batch_size,
            commit_batch_timeout_sec=commit_batch_timeout_sec,
            shutdown_timeout_sec=shutdown_timeout_sec,
            max_uncommitted_tasks=max_uncommitted_tasks,
            rebalance_flush_timeout_sec=rebalance_flush_timeout_sec,
            ordering=ordering,
            task_timeout_sec=task_timeout_sec,
            max_retries=max_retries,
            retry_backoff_sec=retry_backoff_sec,
            retry_backoff_max_sec=retry_backoff_max_sec,
            dead_letter_topic=dead_letter_topic,
            track_completed_offsets=track_completed_offsets,
        ),
        broker,
    )


async def start_concurrent_processing(
    context: "ContextRepo",
    settings: ConcurrencySettings,
    broker: "BrokerUsecase[Any, Any] | None" = None,
) -> KafkaConcurrentHandler:
    """``initialize_concurrent_processing`` for settings already built and validated."""
    if find_handler(context) is not None:
        msg = "concurrent processing is already initialised in this context; stop it first"
        raise ConcurrentProcessingSetupError(msg)
    subscribers = [
        sub
        for sub in _known_subscribers(context, broker)
        if dispatch.uses_concurrent_processing(sub, KafkaConcurrentProcessingMiddleware)
    ]
    for subscriber in subscribers:
        dispatch.validate(subscriber, settings)  # fail before anything runs
    handler = KafkaConcurrentHandler(settings)
    await handler.start()
    context.set_global(HANDLER_CONTEXT_KEY, handler)
    for subscriber in subscribers:
        dispatch.install(subscriber, handler)
    install_signal_handlers(handler, partial(stop_concurrent_processing, context))
    return handler


async def stop_concurrent_processing(context: "ContextRepo") -> None:
    """Drain what still runs (up to ``shutdown_timeout_sec``), commit it, stop the handler."""
    handler = find_handler(context)
    if handler is None:
        return
    await handler.drain(handler.lanes, handler.settings.shutdown_timeout_sec)
    handler.forget(handler.lanes)
    handler.is_running = False
    await handler.committer.close()
    remove_signal_handlers(handler)
    context.reset_global(HANDLER_CONTEXT_KEY)


def is_kafka_handler_healthy(context: "ContextRepo") -> bool:
    """True while the handler in ``context`` runs and its committer is alive."""
    handler = find_handler(context)
    return handler is not None and handler.is_healthy


def setup_concurrent_processing(app: "Application", **settings: Any) -> None:
    """One call for a ``FastStream``/``AsgiFastStream`` app: registers the middleware on each
    of its brokers and starts and stops the processing with the app.

    ``settings`` are those of ``initialize_concurrent_processing``, checked right here.
    """
    validated = ConcurrencySettings(**settings)
    brokers = list(app.brokers)
    for broker in brokers:
        if KafkaConcurrentProcessingMiddleware not in broker.middlewares:
            broker.insert_middleware(KafkaConcurrentProcessingMiddleware)

    async def start() -> None:
        for broker in brokers:
            await start_concurrent_processing(broker.context, validated, broker)

    async def stop() -> None:
        for broker in brokers:
            await stop_concurrent_processing(broker.context)

    app.on_startup(start)
    app.after_shutdown(stop)


def _known_subscribers(
    context: "ContextRepo", broker: "BrokerUsecase[Any, Any] | None"
) -> list[Any]:
    """``broker``'s subscribers, and those of the app's brokers that use this context (all of
    the app's, if none does)."""
    app = context.get("app")
    brokers = list(getattr(app, "brokers", None) or [])
    own = [b for b in brokers if b.context is context] or brokers
    if broker is not None and broker not in own:
        own.append(broker)
    return [sub for b in own for sub in b.subscribers]
