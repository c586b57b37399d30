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
from typing import Any

from aiokafka import AIOKafkaConsumer

logger = logging.getLogger("faststream_concurrent_aiokafka")  # process-wide: no subscriber

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _nobody_drains(previous: Any) -> bool:
    """The default dispositions, and asyncio.run()'s SIGINT handler (it cancels every task)."""
    if previous in (signal.SIG_DFL, signal.default_int_handler):
        return True
    method = previous.func if isinstance(previous, functools.partial) else previous
    return isinstance(getattr(method, "__self__", None), asyncio.Runner)


class ShutdownSignals:
    """The signal handlers one handler installed, and the drain a signal started."""

    def __init__(self) -> None:
        self.previous: dict[signal.Signals, Any] = {}
        self.shutdown_task: asyncio.Future[None] | None = None

    def install(
        self,
        drain: Callable[[], Awaitable[None]],
        consumers: Callable[[], list[AIOKafkaConsumer]],
    ) -> None:
        """Handle the signals nobody else drains for: ``drain``, stop ``consumers()``, re-raise."""
        loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            previous = signal.getsignal(sig)
            if not _nobody_drains(previous):
                continue
            try:
                loop.add_signal_handler(sig, self._on_signal, drain, consumers, sig)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # not the main thread, or no signal support on this platform
            self.previous[sig] = previous

    def remove(self) -> None:
        """Give each signal back to the handler it had before."""
        loop = asyncio.get_running_loop()
        for sig, previous in self.previous.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous)
        self.previous = {}

    def _on_signal(
        self,
        drain: Callable[[], Awaitable[None]],
        consumers: Callable[[], list[AIOKafkaConsumer]],
        sig: signal.Signals,
    ) -> None:
        logger.warning("Received %s: draining in-flight messages before exiting", sig.name)
        to_stop = consumers()

        async def drain_then_reraise() -> None:
            try:
                await drain()
                if to_stop:  # leave the group now rather than after the session timeout
                    await asyncio.wait(
                        [asyncio.ensure_future(c.stop()) for c in to_stop], timeout=5
                    )
            finally:
                self.remove()
                os.kill(os.getpid(), sig)

        self.shutdown_task = asyncio.ensure_future(drain_then_reraise())
