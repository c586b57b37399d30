"""A lane's flow control: its ordering key function, its rate limit and its adaptive
concurrency limit, with what they count for the snapshot.

The decisions are the core's (``core.ordering``, ``core.rate_limit``, ``core.adaptive_limit``);
this module applies them on the event loop's clock. Nothing here runs for a lane that uses
neither a rate nor an adaptive limit, beyond one attribute read per admission and per slot.
"""

import asyncio
import time
from collections.abc import Callable
from typing import Any

from faststream_concurrent_aiokafka.core.adaptive_limit import AdaptiveLimit
from faststream_concurrent_aiokafka.core.errors import OrderingKeyError
from faststream_concurrent_aiokafka.core.ordering import RecordKey, key_of_records
from faststream_concurrent_aiokafka.core.rate_limit import TokenBucket
from faststream_concurrent_aiokafka.core.settings import KeyFunction, SubscriberSettings


class LaneFlow:
    """The key function, token bucket and adaptive limit of one lane, and their counts."""

    __slots__ = (
        "_clock",
        "adaptive",
        "bucket",
        "key_errors",
        "key_of",
        "ordered",
        "rate_limited",
        "rate_wait_sec",
        "rate_waits",
        "started",
        "waited",
        "waiting_for_rate",
    )

    def __init__(self, settings: SubscriberSettings) -> None:
        self._clock = _clock()
        now = self._clock()
        self.key_of: RecordKey = key_of_records(settings.ordering)
        # Unordered: no record has a key, and admission asks no function for one.
        self.ordered = settings.ordering != "unordered"
        # Messages whose key function failed, until they settle or are dropped (rarely any).
        self.key_errors: dict[Any, OrderingKeyError] = {}
        rate = settings.max_messages_per_sec
        self.bucket = TokenBucket(rate, now) if rate is not None else None
        self.adaptive = (
            AdaptiveLimit(settings.concurrency_limit, now)
            if settings.adaptive_concurrency
            else None
        )
        # When each running message of an adaptive lane started (its latency sample).
        self.started: dict[Any, float] = {}
        self.waiting_for_rate = False  # the poll loop waits for a token now
        self.waited = False  # ... and the next admission comes after such a wait
        self.rate_waits = 0  # times the poll loop waited for a token
        self.rate_wait_sec = 0.0  # how long, in all
        self.rate_limited = 0  # messages admitted after such a wait

    def key(self, record: Any) -> tuple[Any, OrderingKeyError | None]:
        """The record's ordering key; a key function that raises (or returns an unhashable
        key) gives no key and the error its message fails with, through the failure policy."""
        return _key_or_error(self.key_of, record)

    @staticmethod
    def key_error_of(ordering: KeyFunction, record: Any) -> OrderingKeyError | None:
        """What a key function's record fails with, if anything (for records run outside
        the engine: under TestKafkaBroker)."""
        return _key_or_error(key_of_records(ordering), record)[1]

    # ---- rate ----------------------------------------------------------------------------

    def tokens(self) -> int | None:
        """Messages the next fetch may bring for the rate (None: no rate limit)."""
        if self.bucket is None:
            return None
        return self.bucket.available(self._clock())

    def took(self, count: int) -> None:
        """``count`` messages were admitted: they take their tokens."""
        if self.bucket is not None:
            self.bucket.take(count, self._clock())
            if self.waited:
                self.waited = False
                self.rate_limited += count

    async def wait_for_token(self, budget_sec: float) -> bool:
        """Wait until a message may be admitted, at most ``budget_sec``; False if the wait
        was cut short by the budget (the caller pauses fetching then)."""
        if self.bucket is None:
            return True
        wait = self.bucket.wait_sec(self._clock())
        if wait <= 0:
            return True
        self.rate_waits += 1
        self.waiting_for_rate = self.waited = True
        started = self._clock()
        try:
            await asyncio.sleep(min(wait, budget_sec))
        finally:
            self.waiting_for_rate = False
            self.rate_wait_sec += self._clock() - started
        return wait <= budget_sec

    # ---- adaptive limit --------------------------------------------------------------------

    def running_limit(self, configured: int) -> int:
        adaptive = self.adaptive
        return configured if adaptive is None else adaptive.limit

    def started_running(self, message: Any) -> None:
        self.started[message] = self._clock()

    def stopped_running(self, message: Any, *, failed: bool, in_flight: int) -> None:
        """A message of an adaptive lane settled: its latency is a sample."""
        adaptive = self.adaptive
        started = self.started.pop(message, None)
        if adaptive is not None and started is not None:
            now = self._clock()
            adaptive.sample(now - started, failed=failed, in_flight=in_flight, now=now)


def _clock() -> Callable[[], float]:
    """The event loop's clock (the engine's timers run on it), or a monotonic one before
    there is a loop."""
    try:
        return asyncio.get_running_loop().time
    except RuntimeError:
        return time.monotonic


def _key_or_error(key_of: RecordKey, record: Any) -> tuple[Any, OrderingKeyError | None]:
    try:
        return key_of(record), None
    except Exception as exc:  # the user's function: whatever it raises fails the record
        return None, OrderingKeyError.of(exc)


def raise_key_error(message: Any) -> None:
    """Fail a message whose key function failed, in its slot, before its handler runs: the
    error takes the failure policy's path (a dead letter saying why). Kept until the message
    settles: an exactly-once message runs again after an abort, and fails again."""
    error = message.lane.flow.key_errors.get(message)
    if error is not None:
        raise error
