"""The retry-topic record format: a failed message sent to ``retry_topic`` to wait there,
not in memory, for its next attempt.

Pure: no I/O. A retry record is the original record (key, value, the user's headers) plus
``x-retry-`` headers: when it is due, which trip through the retry topic it is on (its hop,
1 for the first delay), how many attempts it had over all hops, and where it was first read
(topic, partition, offset, timestamp, consumer group), so that a dead letter after the last
hop names the original record, and expiry ages it from its original timestamp. Nothing else
of the message (no exception text) is written.
"""

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from faststream_concurrent_aiokafka.core.dead_letters import Headers, Origin

PREFIX: Final = "x-retry-"
DUE: Final = PREFIX + "due"  # epoch milliseconds
HOP: Final = PREFIX + "hop"
ATTEMPTS: Final = PREFIX + "attempts"
# Where the message was first read (its original record), not the retry record's own place.
TOPIC: Final = PREFIX + "origin-topic"
PARTITION: Final = PREFIX + "origin-partition"
OFFSET: Final = PREFIX + "origin-offset"
TIMESTAMP: Final = PREFIX + "origin-timestamp"
CONSUMER_GROUP: Final = PREFIX + "consumer-group"
HEADERS: Final = (DUE, HOP, ATTEMPTS, TOPIC, PARTITION, OFFSET, TIMESTAMP, CONSUMER_GROUP)
"""What every retry record carries after the user's headers, in this order."""

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class RetryHop:
    """One trip of a message through the retry topic."""

    hop: int  # 1 for the first delay of retry_topic_delays_sec
    attempts: int  # attempts made before it was sent, over every hop
    due_ms: int  # when it may run again, in epoch milliseconds
    origin: Origin  # where the message was first read

    def wait_sec(self, now_ms: float, longest: float) -> float:
        """Seconds until it is due (0 when it is), at most ``longest``: a due time further
        away than any delay comes from a clock set wrong, and must not park it for good."""
        return min(max(0.0, (self.due_ms - now_ms) / 1000.0), longest)


def send_hop(
    current: RetryHop | None,
    origin: Origin,
    attempts: int,
    delays: Sequence[float],
    now_ms: float,
) -> RetryHop | None:
    """The hop a message that failed for now goes on: the first (``current`` None: it was
    read from its own topic) or the one after ``current``; None once every delay was used."""
    hop = 1 if current is None else current.hop + 1
    if hop > len(delays):
        return None
    first = origin if current is None else current.origin
    due = math.ceil(now_ms + delays[hop - 1] * 1000.0)
    return RetryHop(hop=hop, attempts=attempts, due_ms=due, origin=first)


def retry_headers(original: Iterable[tuple[str, bytes]], hop: RetryHop) -> Headers:
    """The user's headers (the ones of an earlier hop replaced), then ours."""
    origin = hop.origin
    ours = {
        DUE: str(hop.due_ms),
        HOP: str(hop.hop),
        ATTEMPTS: str(hop.attempts),
        TOPIC: origin.topic,
        PARTITION: str(origin.partition),
        OFFSET: str(origin.offset),
        TIMESTAMP: "" if origin.timestamp is None else str(origin.timestamp),
        CONSUMER_GROUP: origin.group or "",
    }
    return user_headers(original) + [(name, value.encode()) for name, value in ours.items()]


def user_headers(headers: Iterable[tuple[str, bytes]]) -> Headers:
    """The headers without ours: what a dead letter after the last hop keeps."""
    return [(name, value) for name, value in headers if not name.startswith(PREFIX)]


_READ: Final = frozenset(HEADERS)


def read_retry(headers: Iterable[tuple[str, bytes]]) -> RetryHop | None:
    """The retry facts of a record; None when it carries none of ours (or garbled ones)."""
    found = {name: value for name, value in headers if name in _READ}
    if DUE not in found:
        return None
    try:
        timestamp = found[TIMESTAMP]
        hop = RetryHop(
            hop=int(found[HOP]),
            attempts=int(found[ATTEMPTS]),
            due_ms=int(found[DUE]),
            origin=Origin(
                topic=found[TOPIC].decode(),
                partition=int(found[PARTITION]),
                offset=int(found[OFFSET]),
                timestamp=int(timestamp) if timestamp else None,
                group=found[CONSUMER_GROUP].decode() or None,
            ),
        )
    except (KeyError, ValueError):
        return None
    if hop.hop < 1 or hop.attempts < 1:
        return None
    return hop


class WaitingCap(Generic[K]):
    """How many records read back wait for their due time, per retry partition, against
    ``retry_topic_max_waiting``: a partition is *full* from the bound on (its fetching is
    then paused, the records behind stay in Kafka) until it is below the bound again."""

    __slots__ = ("_waiting", "bound", "full")

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self._waiting: dict[K, int] = {}
        self.full: set[K] = set()

    def waiting(self, key: K) -> int:
        return self._waiting.get(key, 0)

    def add(self, key: K) -> bool:
        """One more waits in ``key``; True when it just became full."""
        count = self._waiting[key] = self._waiting.get(key, 0) + 1
        if count >= self.bound and key not in self.full:
            self.full.add(key)
            return True
        return False

    def remove(self, key: K) -> bool:
        """One of ``key`` stopped waiting (due, dropped); True when it was full and has room
        now. A key nothing waits in is left alone."""
        count = self._waiting.get(key, 0) - 1
        if count < 0:
            return False
        if count:
            self._waiting[key] = count
        else:
            del self._waiting[key]
        if count < self.bound and key in self.full:
            self.full.discard(key)
            return True
        return False
