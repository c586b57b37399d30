"""The engine's background tasks (the watchdog's and the lag reader's ticks): how one ends."""

import asyncio
import contextlib


async def cancel_and_wait(task: "asyncio.Task[None] | None") -> None:
    """Cancel ``task`` (if any) and wait until it ended: nothing of it runs after a close."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
