"""Start, stop and probe the concurrent processing stored in FastStream's context."""

import logging
from functools import partial
from typing import TYPE_CHECKING, Any, Unpack

from faststream_concurrent_aiokafka.core.errors import ConcurrentProcessingSetupError
from faststream_concurrent_aiokafka.core.settings import (
    DEFAULTS,
    ConcurrencySettings,
    KeywordSettings,
    Settings,
)
from faststream_concurrent_aiokafka.integration import subscribers
from faststream_concurrent_aiokafka.integration.handler import (
    HANDLER_CONTEXT_KEY,
    KafkaConcurrentHandler,
    find_handler,
)
from faststream_concurrent_aiokafka.integration.middleware import (
    KafkaConcurrentProcessingMiddleware,
)

if TYPE_CHECKING:
    from faststream import ContextRepo, FastStream
    from faststream.asgi import AsgiFastStream
    from faststream.kafka import KafkaBroker

logger = logging.getLogger("faststream_concurrent_aiokafka")


async def initialize_concurrent_processing(  # noqa: PLR0917 - positional, as in the original API
    context: "ContextRepo",
    concurrency_limit: int = DEFAULTS.concurrency_limit,
    commit_batch_size: int = DEFAULTS.commit_batch_size,
    commit_batch_timeout_sec: float = DEFAULTS.commit_batch_timeout_sec,
    shutdown_timeout_sec: float = DEFAULTS.shutdown_timeout_sec,
    max_uncommitted_tasks: int = DEFAULTS.max_uncommitted_tasks,
    rebalance_flush_timeout_sec: float = DEFAULTS.rebalance_flush_timeout_sec,
    *,
    broker: "KafkaBroker | None" = None,
    **settings: Unpack[KeywordSettings],
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
            **settings,
        ),
        broker,
    )


async def start_concurrent_processing(
    context: "ContextRepo", settings: ConcurrencySettings, broker: Any = None
) -> KafkaConcurrentHandler:
    """``initialize_concurrent_processing`` for settings already built and validated (and a
    broker of any of the app's kinds: only Kafka subscribers are picked up)."""
    if find_handler(context) is not None:
        msg = "concurrent processing is already initialised in this context; stop it first"
        raise ConcurrentProcessingSetupError(msg)
    concurrent = [
        sub
        for sub in _known_subscribers(context, broker)
        if subscribers.uses_concurrent_processing(sub, KafkaConcurrentProcessingMiddleware)
    ]
    for subscriber in concurrent:
        subscribers.validate(subscriber, settings)  # fail before anything runs
    handler = KafkaConcurrentHandler(settings)
    await handler.start()
    context.set_global(HANDLER_CONTEXT_KEY, handler)
    for subscriber in concurrent:
        subscribers.install(subscriber, handler)
    handler.signals.install(
        partial(stop_concurrent_processing, context),
        lambda: [lane.consumer for lane in handler.lanes],
    )
    return handler


async def stop_concurrent_processing(context: "ContextRepo") -> None:
    """Drain what still runs (up to ``shutdown_timeout_sec``), commit it, stop the handler."""
    handler = find_handler(context)
    if handler is None:
        return
    await handler.stop()
    context.reset_global(HANDLER_CONTEXT_KEY)


def is_kafka_handler_healthy(context: "ContextRepo") -> bool:
    """True while the handler in ``context`` runs, its committer is alive, no dead-letter
    publish is stuck and no subscriber's dead-letter brake tripped (``brake_reasons`` says
    which)."""
    handler = find_handler(context)
    return handler is not None and handler.is_healthy


def setup_concurrent_processing(
    app: "FastStream | AsgiFastStream", **settings: Unpack[Settings]
) -> None:
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


def _known_subscribers(context: "ContextRepo", broker: Any) -> list[Any]:
    """``broker``'s subscribers, and those of the app's brokers that use this context (all of
    the app's, if none does)."""
    app = context.get("app")
    brokers = list(getattr(app, "brokers", None) or [])
    own = [b for b in brokers if b.context is context] or brokers
    if broker is not None and broker not in own:
        own.append(broker)
    return [sub for b in own for sub in b.subscribers]
