"""Lag and record age from the offsets and records the engine holds (``engine.lag``)."""

from typing import Any

from aiokafka import TopicPartition

from faststream_concurrent_aiokafka.core.offsets import PartitionOffsets
from faststream_concurrent_aiokafka.engine.lag import LagReader, oldest_record_ages
from faststream_concurrent_aiokafka.engine.state import AdmittedMessage

TP = TopicPartition("orders", 0)


def untyped(value: object) -> Any:
    """A stand-in passed where the engine expects its real type."""
    return value


class Consumer:
    def __init__(self, highwater: int | None) -> None:
        self._highwater = highwater

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._highwater


def reader_knowing(consumer: Any, committed: int | None) -> LagReader:
    reader = LagReader(list)
    if committed is not None:
        reader._committed[consumer, TP] = committed
    return reader


def test_lag_is_end_offset_minus_the_groups_committed_offset() -> None:
    consumer: Any = Consumer(highwater=1000)
    lag = reader_knowing(consumer, committed=0).read(consumer, TP, None)
    assert (lag.end_offset, lag.lag, lag.unprocessed) == (1000, 1000, 1000)


def test_unprocessed_discounts_what_finished_above_the_commit_point() -> None:
    consumer: Any = Consumer(highwater=100)
    tracker = PartitionOffsets()
    for offset in range(10, 20):
        tracker.track(offset)
    for offset in (10, 11, 15, 16):  # the commit point moves to 12; 15 and 16 wait above it
        tracker.finish(offset)
    lag = reader_knowing(consumer, committed=10).read(consumer, TP, tracker)
    assert lag.lag == 90  # nothing committed by this process yet: the group's offset counts
    assert lag.unprocessed == 100 - 12 - 2
    tracker.committed = 12
    assert reader_knowing(consumer, committed=10).read(consumer, TP, tracker).lag == 88


def test_lag_is_unknown_without_an_end_offset_or_a_committed_one() -> None:
    assert reader_knowing(Consumer(None), 5).read(untyped(Consumer(None)), TP, None).lag is None
    consumer: Any = Consumer(highwater=9)
    lag = reader_knowing(consumer, None).read(consumer, TP, None)
    assert (lag.end_offset, lag.lag) == (9, None)


def test_a_listed_end_offset_newer_than_the_high_water_mark_wins() -> None:
    consumer: Any = Consumer(highwater=50)
    reader = reader_knowing(consumer, committed=40)
    reader._listed_end[consumer, TP] = 75
    assert reader.read(consumer, TP, None).lag == 35


class Record:
    def __init__(self, partition: int, timestamp: int) -> None:
        self.topic, self.partition, self.timestamp = "orders", partition, timestamp


def message(record: Any) -> AdmittedMessage:
    return AdmittedMessage(record, TP, 0, lane=untyped(None), tracker=PartitionOffsets(), key=None)


def test_record_age_is_now_minus_the_oldest_unsettled_records_timestamp() -> None:
    now = 10_000.0
    ages = oldest_record_ages(
        [
            message(Record(0, 9_000_000)),
            message(Record(0, 9_500_000)),
            message((Record(0, 9_900_000), Record(1, 9_880_000))),  # a batch
            message(Record(0, -1)),  # no timestamp
        ],
        now,
    )
    assert ages == {TP: 1000.0, TopicPartition("orders", 1): 120.0}
