"""How long messages have been running, and which run too long: seen from outside.

No timestamp is taken per message. A background task looks at every lane's running messages
once per tick and notes the tick at which it first saw each one; a message's age counts from
there. Ages therefore read low by up to one tick (a message that ends between two ticks is
never seen), and a stall is noticed between ``stall_warning_sec`` and that plus two ticks
after the message started. The tick is 1 s, or a tenth of the smallest ``stall_warning_sec``
in force when that is shorter (never below 50 ms). A new lane wakes the watchdog at once
(``wake``), so the first messages of a lane are seen within its own tick, not the idle one.
Times are the event loop's clock (``now``).
"""

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Final

from faststream_concurrent_aiokafka.engine.background import cancel_and_wait
from faststream_concurrent_aiokafka.engine.state import AdmittedMessage, ConsumerLane

MAX_TICK_SEC: Final = 1.0
MIN_TICK_SEC: Final = 0.05


class Watchdog:
    """Ages of running messages; logs each stalled one once (WARNING) and when it ends."""

    def __init__(self, lanes: Callable[[], Iterable[ConsumerLane]]) -> None:
        self._lanes = lanes
        self._first_seen: dict[AdmittedMessage, float] = {}
        self.stalled: dict[AdmittedMessage, ConsumerLane] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.create_task(self._run(), name="kafka-concurrent-watchdog")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self._first_seen.clear()
        self.stalled.clear()

    def wake(self) -> None:
        """Look now, and take the tick anew: a lane was added (its messages are about to run,
        and its ``stall_warning_sec`` may ask for a shorter tick)."""
        self._wake.set()

    def now(self) -> float:
        """The clock ages are measured on: the event loop's the watchdog runs on (the same as
        ``time.monotonic`` but for a test's virtual clock)."""
        return time.monotonic() if self._loop is None else self._loop.time()

    def age(self, message: AdmittedMessage, now: float) -> float:
        """Seconds since the watchdog first saw ``message`` running (0 if not seen yet)."""
        first = self._first_seen.get(message)
        return 0.0 if first is None else now - first

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            lanes = list(self._lanes())
            self.check(lanes, self.now())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick_sec(lanes)):
                    await self._wake.wait()

    def check(self, lanes: list[ConsumerLane], now: float) -> None:
        """One tick: note newly seen messages, report new stalls and ended ones."""
        previous = self._first_seen
        seen: dict[AdmittedMessage, float] = {}
        for lane in lanes:
            limit = lane.settings.stall_warning_sec
            for message in lane.running:
                first = previous.get(message, now)
                seen[message] = first
                if limit is not None and now - first > limit and message not in self.stalled:
                    self._stall_started(lane, message, now - first, limit)
        self._first_seen = seen
        for message in [m for m in self.stalled if m not in seen]:
            lane = self.stalled.pop(message)
            lane.log.info(
                "Stalled message %s ended after about %.0f s",
                message.describe(),
                now - previous.get(message, now),
                extra=message.log_extra(),
            )

    def _stall_started(
        self, lane: ConsumerLane, message: AdmittedMessage, age: float, limit: float
    ) -> None:
        self.stalled[message] = lane
        lane.counters.stalls += 1
        lane.log.warning(
            "Message %s of %s has been running for %.1f s (stall_warning_sec=%g); its "
            "partition's commit point stays behind it until it ends",
            message.describe(),
            lane.name,
            age,
            limit,
            extra=message.log_extra(),
        )


def tick_sec(lanes: Iterable[ConsumerLane]) -> float:
    limits = [
        lane.settings.stall_warning_sec
        for lane in lanes
        if lane.settings.stall_warning_sec is not None
    ]
    tick = min([MAX_TICK_SEC, *(limit / 10 for limit in limits)])
    return max(MIN_TICK_SEC, tick)
