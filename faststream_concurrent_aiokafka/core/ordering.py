"""Ordering gate: holds back a message while an earlier one with the same key runs.

Pure: no I/O. The key is chosen by the ordering mode (see ``ordering_key``) or computed by the
user's key function (see ``key_of_records``); a message with no key is never held back. Held
messages wait here, outside the concurrency limit, so a hot key cannot take slots from other
keys. Keys are any hashable values.
"""

from collections import deque
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, TypeVar

from faststream_concurrent_aiokafka.core.settings import KeyFunction, Ordering, OrderingSetting

T = TypeVar("T")


def ordering_key(mode: Ordering, topic: str, partition: int, key: Any) -> Hashable | None:
    """The key two messages must share to be run one after the other."""
    if mode == "unordered":
        return None
    if mode == "partition":
        return (topic, partition)
    if key is None:
        return None
    return (topic, partition, key)


RecordKey = Callable[[Any], Hashable | None]


def key_of_records(ordering: OrderingSetting) -> RecordKey:
    """The function admission calls once per record (aiokafka's ``ConsumerRecord``, read by
    attribute) for its key. A key function's key is scoped to the record's partition, as the
    record key is in ``"key"`` mode; whatever the function raises, or an unhashable key,
    propagates: the engine fails that record through the failure policy."""
    if isinstance(ordering, str):
        mode = ordering
        return lambda record: ordering_key(mode, record.topic, record.partition, record.key)
    return _scoped(ordering)


def _scoped(function: KeyFunction) -> RecordKey:
    def key_of(record: Any) -> Hashable | None:
        key = function(record)
        if key is None:
            return None
        scoped = (record.topic, record.partition, key)
        hash(scoped)  # an unhashable key fails its record now, not inside the gate
        return scoped

    return key_of


class OrderingGate(Generic[T]):
    """Per key, one item runs at a time and the rest wait in arrival order."""

    __slots__ = ("_held_count", "_waiting")

    def __init__(self) -> None:
        # A key is present while one of its items runs; its deque holds the items behind it.
        self._waiting: dict[Hashable, deque[T]] = {}
        self._held_count = 0

    @property
    def held_count(self) -> int:
        """Items waiting behind a running item of their key."""
        return self._held_count

    def held(self) -> Iterator[T]:
        """The items waiting, in no particular order (read by snapshots, not by admission)."""
        for queue in self._waiting.values():
            yield from queue

    def submit(self, item: T, key: Hashable | None) -> bool:
        """True if the item may run now; otherwise it is held until its key is released."""
        if key is None:
            return True
        queue = self._waiting.get(key)
        if queue is None:
            self._waiting[key] = deque()
            return True
        queue.append(item)
        self._held_count += 1
        return False

    def release(self, key: Hashable | None) -> T | None:
        """The running item of ``key`` finished: return the next one, which now runs."""
        if key is None:
            return None
        queue = self._waiting.get(key)
        if queue is None:
            return None
        if queue:
            self._held_count -= 1
            return queue.popleft()
        del self._waiting[key]
        return None

    def release_past(self, key: Hashable | None, gone: Callable[[T], bool]) -> T | None:
        """``release``, skipping held items that are ``gone`` (their partition went away):
        each of those is released in turn, so the key ends with an item that runs or free."""
        successor = self.release(key)
        while successor is not None and gone(successor):
            successor = self.release(key)
        return successor

    def drop(self, predicate: Callable[[T], bool]) -> list[T]:
        """Remove held items matching ``predicate`` (their partition was revoked)."""
        dropped: list[T] = []
        for queue in self._waiting.values():
            keep = [item for item in queue if not predicate(item)]
            if len(keep) != len(queue):
                dropped.extend(item for item in queue if predicate(item))
                queue.clear()
                queue.extend(keep)
        self._held_count -= len(dropped)
        return dropped
