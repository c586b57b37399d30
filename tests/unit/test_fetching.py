"""Batch fetching for admission: which subscribers get it and what one fetch returns.

The consumer here is a stub recording the getmany() call; what Kafka does with it is covered
by the real-broker tests.
"""

from collections import OrderedDict
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from faststream.kafka import KafkaBroker

from faststream_concurrent_aiokafka.compat.faststream import fetches_one_at_a_time
from faststream_concurrent_aiokafka.engine.fetching import (
    FETCH_WAIT_MS,
    FetchedRecords,
    fetch_records,
)


def record(partition: int, offset: int) -> "ConsumerRecord[Any, Any]":
    return ConsumerRecord("t", partition, offset, 0, 0, None, b"1", None, 1, 1, ())


class StubFetcher:
    """Where aiokafka keeps its buffered records (rotated after each fetch)."""

    def __init__(self) -> None:
        self._records: OrderedDict[TopicPartition, object] = OrderedDict()


class StubConsumer:
    def __init__(self, batches: dict[TopicPartition, list[Any]], cap: int | None = None):
        self._batches = batches
        self._max_poll_records = cap
        self._fetcher = StubFetcher()
        self.calls: list[dict[str, Any]] = []

    async def getmany(self, **kwargs: Any) -> dict[TopicPartition, list[Any]]:
        self.calls.append(kwargs)
        return self._batches


async def test_returns_every_partition_s_records_in_order_with_their_consumer() -> None:
    batches = {
        TopicPartition("t", 0): [record(0, 5), record(0, 6)],
        TopicPartition("t", 1): [record(1, 9)],
    }
    consumer = StubConsumer(batches)
    fetched = await fetch_records(consumer, 10)
    assert isinstance(fetched, FetchedRecords)
    assert fetched.consumer is consumer
    assert [(r.partition, r.offset) for r in fetched.records] == [(0, 5), (0, 6), (1, 9)]
    assert consumer.calls == [{"timeout_ms": FETCH_WAIT_MS, "max_records": 10}]


async def test_nothing_fetched_is_none() -> None:
    assert await fetch_records(StubConsumer({}), 10) is None


@pytest.mark.parametrize(("room", "cap", "asked"), [(10, None, 10), (10, 3, 3), (2, 50, 2)])
async def test_asks_for_the_room_but_never_past_the_user_s_max_poll_records(
    room: int, cap: int | None, asked: int
) -> None:
    consumer = StubConsumer({}, cap)
    await fetch_records(consumer, room)
    assert consumer.calls[0]["max_records"] == asked


def test_only_record_by_record_subscribers_are_fetched_in_batches() -> None:
    broker = KafkaBroker()
    single = broker.subscriber("a", group_id="g")
    batch = broker.subscriber("b", group_id="g", batch=True)
    assert fetches_one_at_a_time(single)
    assert not fetches_one_at_a_time(batch)
    assert not fetches_one_at_a_time(object())
