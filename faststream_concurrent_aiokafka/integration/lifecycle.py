"""Start, stop and probe the concurrent processing stored in FastStream's context."""

import logging
from functools import partial
from typing import TYPE_CHECKING, Any, Unpack

from faststream.kafka import KafkaBroker

from faststream_concurrent_aiokafka.compat import faststream as faststream_compat
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
    ConcurrentProcessing,
    find_handler,
)
from faststream_concurrent_aiokafka.integration.middleware import (
    KafkaConcurrentProcessingMiddleware,
)
from faststream_concurrent_aiokafka.integration.monitoring import health_report

if TYPE_CHECKING:
    from faststream import ContextRepo, FastStream
    from faststream.asgi import AsgiFastStream

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
) -> ConcurrentProcessing:
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
) -> ConcurrentProcessing:
    """``initialize_concurrent_processing`` for settings already built and validated (and a
    broker of any of the app's kinds: only Kafka subscribers are picked up)."""
    _check_context(context)
    if find_handler(context) is not None:
        msg = "concurrent processing is already initialised in this context; stop it first"
        raise ConcurrentProcessingSetupError(msg)
    brokers = _known_brokers(context, broker)
    concurrent = [
        sub
        for b in brokers
        for sub in b.subscribers
        if subscribers.uses_concurrent_processing(sub, KafkaConcurrentProcessingMiddleware)
    ]
    for subscriber in concurrent:
        subscribers.validate(subscriber, settings)  # fail before anything runs
    subscribers.check_retry_topics(concurrent, settings)
    handler = ConcurrentProcessing(settings)
    handler.brokers = [b for b in brokers if isinstance(b, KafkaBroker)]
    await handler.start()
    context.set_global(HANDLER_CONTEXT_KEY, handler)
    for subscriber in concurrent:
        subscribers.install(subscriber, handler)
    handler.signals.install(
        partial(stop_concurrent_processing, context),
        lambda: [lane.consumer for lane in handler.lanes],
    )
    return handler


def _check_context(context: object) -> None:
    """Refuse anything but FastStream's context store, naming where to get it."""
    if not faststream_compat.is_context_repo(context):
        msg = (
            "initialize_concurrent_processing needs FastStream's ContextRepo as its first "
            "argument (the `context: ContextRepo` a lifespan or on_startup hook receives, or "
            f"app.context / broker.context), got {type(context).__name__}"
        )
        raise TypeError(msg)


async def stop_concurrent_processing(context: "ContextRepo") -> None:
    """Drain what still runs (up to ``shutdown_timeout_sec``), commit it, stop the handler."""
    handler = find_handler(context)
    if handler is None:
        return
    await handler.stop()
    context.reset_global(HANDLER_CONTEXT_KEY)


def is_kafka_handler_healthy(context: "ContextRepo") -> bool:
    """False when ``health_report(context)`` says failed: the processing is not running, its
    committer died, a subscriber could not be set up or stopped consuming by an error.
    True when ok and when degraded: degraded processing goes on, and a restart would not
    help what it waits for (a broker, a dead-letter topic, a slow message)."""
    return not health_report(context).is_failed


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


def _known_brokers(context: "ContextRepo", broker: Any) -> list[Any]:
    """``broker``, and the app's brokers that use this context (all of the app's, if none
    does)."""
    app = context.get("app")
    brokers = list(getattr(app, "brokers", None) or [])
    own = [b for b in brokers if b.context is context] or brokers
    if broker is not None and broker not in own:
        own.append(broker)
    return own
