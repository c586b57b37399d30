"""Lag as operators read it (Burrow, KEDA's Kafka scaler) and the age of the data in work.

Lag of a partition: its end offset minus the group's committed offset. The end offset is the
high-water mark aiokafka keeps from its last fetch response; a paused partition is not
fetched, so its mark freezes: a background tick asks the broker (a bounded ListOffsets) for
the end offsets of partitions paused longer than ``PAUSED_REFRESH_SEC``. The committed offset
is the one this process committed last, or, before it committed anything, the group's as the
tick fetched it once after the partition was assigned (its log start offset without one).
Everything here is read when a snapshot is taken; nothing runs on the per-message path.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition

from faststream_concurrent_aiokafka.compat import aiokafka as aiokafka_compat
from faststream_concurrent_aiokafka.core.offsets import PartitionOffsets
from faststream_concurrent_aiokafka.engine.background import cancel_and_wait
from faststream_concurrent_aiokafka.engine.state import AdmittedMessage, ConsumerLane

logger = logging.getLogger("faststream_concurrent_aiokafka")

TICK_SEC: Final = 1.0
PAUSED_REFRESH_SEC: Final = 3.0
"""A partition paused longer than this gets its end offset from the broker, once a tick."""
REQUEST_TIMEOUT_SEC: Final = 2.0
"""Each request the tick sends waits this long at most (the next tick tries again)."""


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """``lag``: end offset minus committed offset (what Burrow and KEDA see). ``unprocessed``:
    end offset minus the commit point, less what finished above it. None while unknown."""

    end_offset: int | None
    lag: int | None
    unprocessed: int | None


class LagReader:
    """The offsets lag is computed from that aiokafka does not hold: kept by a tick."""

    def __init__(self, lanes: Callable[[], Iterable[ConsumerLane]]) -> None:
        self._lanes = lanes
        self._committed: dict[tuple[AIOKafkaConsumer, TopicPartition], int] = {}
        self._listed_end: dict[tuple[AIOKafkaConsumer, TopicPartition], int] = {}
        self._paused_since: dict[tuple[AIOKafkaConsumer, TopicPartition], float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="kafka-concurrent-lag")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self._committed.clear()
        self._listed_end.clear()
        self._paused_since.clear()

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh(time.monotonic())
            except Exception:  # lag figures are not worth stopping for: tried again next tick
                logger.warning("Reading the offsets for lag failed", exc_info=True)
            await asyncio.sleep(TICK_SEC)

    async def refresh(self, now: float) -> None:
        """One tick: forget partitions no longer assigned, fetch the committed offsets of
        new ones and the end offsets of those paused for a while."""
        seen: set[tuple[AIOKafkaConsumer, TopicPartition]] = set()
        for lane in list(self._lanes()):
            consumer = lane.consumer
            assigned = consumer.assignment()
            paused = consumer.paused()
            seen.update((consumer, tp) for tp in assigned)
            fresh = [tp for tp in assigned if (consumer, tp) not in self._committed]
            for tp in assigned - paused:
                self._paused_since.pop((consumer, tp), None)
                self._listed_end.pop((consumer, tp), None)
            for tp in assigned & paused:
                self._paused_since.setdefault((consumer, tp), now)
            stale = [
                tp
                for tp in assigned & paused
                if now - self._paused_since[consumer, tp] >= PAUSED_REFRESH_SEC
            ]
            if fresh:
                await self._fetch_committed(consumer, fresh)
            if stale:
                await self._list_end_offsets(consumer, stale)
        for known in (self._committed, self._listed_end, self._paused_since):
            for key in [key for key in known if key not in seen]:
                del known[key]

    async def _fetch_committed(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_SEC):
                committed = await aiokafka_compat.fetch_committed_offsets(consumer, tps)
                missing = [tp for tp in tps if tp not in committed or committed[tp].offset < 0]
                starts = await consumer.beginning_offsets(missing) if missing else {}
        except Exception as exc:  # asked again at the next tick
            logger.debug("Committed offsets for lag not read (%r); asked again", exc)
            return
        for tp in tps:
            found = committed.get(tp)
            offset = found.offset if found is not None and found.offset >= 0 else starts.get(tp)
            if offset is not None:
                self._committed[consumer, tp] = offset

    async def _list_end_offsets(
        self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]
    ) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_SEC):
                ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        except Exception as exc:  # asked again at the next tick
            logger.debug("End offsets of paused partitions not read (%r); asked again", exc)
            return
        for tp, offset in ends.items():
            self._listed_end[consumer, tp] = offset

    def read(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, tracker: PartitionOffsets | None
    ) -> PartitionLag:
        """The partition's lag now (``tracker``: the lane's offsets of it, if any)."""
        end = _max_known(
            aiokafka_compat.highwater(consumer, tp), self._listed_end.get((consumer, tp))
        )
        committed = _max_known(
            self._committed.get((consumer, tp)), tracker.committed if tracker else None
        )
        if end is None or committed is None:
            return PartitionLag(end, None, None)
        point = tracker.commit_point if tracker is not None else None
        done_above = tracker.finished_count if tracker is not None else 0
        start = committed if point is None else point
        return PartitionLag(end, max(0, end - committed), max(0, end - start - done_above))


def _max_known(*values: int | None) -> int | None:
    known = [value for value in values if value is not None]
    return max(known) if known else None


def record_timestamps(message: AdmittedMessage) -> Iterator[tuple[TopicPartition, float]]:
    """The Kafka timestamp (seconds since the epoch) of each record of ``message``, with its
    partition; records without one (timestamp missing or negative) are left out."""
    if not isinstance(message.record, tuple):
        stamp = getattr(message.record, "timestamp", None)
        if isinstance(stamp, int) and stamp >= 0:
            yield message.topic_partition, stamp / 1000
        return
    for record in message.record:  # a batch: each record names its own partition
        stamp = getattr(record, "timestamp", None)
        if isinstance(stamp, int) and stamp >= 0:
            yield TopicPartition(record.topic, record.partition), stamp / 1000


def oldest_record_ages(
    messages: Iterable[AdmittedMessage], now: float
) -> dict[TopicPartition, float]:
    """Per partition: ``now`` (epoch seconds) minus the timestamp of its oldest record among
    ``messages`` (the lane's admitted, unsettled ones)."""
    oldest: dict[TopicPartition, float] = {}
    for message in messages:
        for tp, stamp in record_timestamps(message):
            if stamp < oldest.get(tp, float("inf")):
                oldest[tp] = stamp
    return {tp: max(0.0, now - stamp) for tp, stamp in oldest.items()}
