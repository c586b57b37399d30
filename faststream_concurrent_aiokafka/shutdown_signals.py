"""SIGTERM/SIGINT for apps that nobody else handles signals for (a bare broker).

FastStream's runner and uvicorn install their own handlers, which stop the broker and so
drain through the subscribers; those are left alone. Otherwise the library drains and
commits, stops the consumers (so the group rebalances at once), then hands the signal to
whatever handled it before, so the process ends the way it would have without us.
"""

import asyncio
import functools
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from faststream_concurrent_aiokafka.handler import KafkaConcurrentHandler

logger = logging.getLogger("faststream_concurrent_aiokafka")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _nobody_drains(previous: Any) -> bool:
    """The default dispositions, and asyncio.run()'s SIGINT handler (it cancels every task)."""
    if previous in (signal.SIG_DFL, signal.default_int_handler):
        return True
    method = previous.func if isinstance(previous, functools.partial) else previous
    return isinstance(getattr(method, "__self__", None), asyncio.Runner)


def install_signal_handlers(
    handler: "KafkaConcurrentHandler", drain: Callable[[], Awaitable[None]]
) -> None:
    loop = asyncio.get_running_loop()
    for sig in _SIGNALS:
        previous = signal.getsignal(sig)
        if not _nobody_drains(previous):
            continue
        try:
            loop.add_signal_handler(sig, _on_signal, handler, drain, sig)
        except (NotImplementedError, RuntimeError, ValueError):
            continue  # not the main thread, or no signal support on this platform
        handler.signal_handlers[sig] = previous


def remove_signal_handlers(handler: "KafkaConcurrentHandler") -> None:
    """Give each signal back to the handler it had before."""
    loop = asyncio.get_running_loop()
    for sig, previous in handler.signal_handlers.items():
        loop.remove_signal_handler(sig)
        signal.signal(sig, previous)
    handler.signal_handlers = {}


def _on_signal(
    handler: "KafkaConcurrentHandler", drain: Callable[[], Awaitable[None]], sig: signal.Signals
) -> None:
    logger.warning("Received %s: draining in-flight messages before exiting", sig.name)
    consumers = [lane.consumer for lane in handler.lanes]

    async def drain_then_reraise() -> None:
        try:
            await drain()
            if consumers:  # leave the group now rather than after the session timeout
                await asyncio.wait([asyncio.ensure_future(c.stop()) for c in consumers], timeout=5)
        finally:
            remove_signal_handlers(handler)
            os.kill(os.getpid(), sig)

    handler.shutdown_task = asyncio.ensure_future(drain_then_reraise())
