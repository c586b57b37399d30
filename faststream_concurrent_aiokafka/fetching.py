"""Fetching for admission: one ``getmany()`` per batch instead of one ``getone()`` per record.

FastStream's loop asks its subscriber for one record at a time, and aiokafka's ``getone()``
costs more per record than the handler's own work does for fast handlers. Admission takes
whatever one ``getmany()`` returned as one unit, so nothing is ever buffered outside aiokafka
and the library: the records go straight into the lane's offset tracking. Partitions are
served in turn (see ``_serve_in_turn``).
"""

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from faststream.kafka.subscriber.usecase import (
    ConcurrentBetweenPartitionsSubscriber,
    DefaultSubscriber,
)

# How long one getmany() waits for records before FastStream's loop checks whether it stops.
FETCH_WAIT_MS = 500

# Subscribers whose get_msg is FastStream's own getone(): only those are fetched in batches.
_GETONE_FETCHERS = (DefaultSubscriber.get_msg, ConcurrentBetweenPartitionsSubscriber.get_msg)


class FetchedRecords:
    """The records one ``getmany()`` returned, and the consumer that fetched them."""

    __slots__ = ("consumer", "records")

    def __init__(self, consumer: AIOKafkaConsumer, records: "list[ConsumerRecord[Any, Any]]"):
        self.consumer = consumer
        self.records = records


def fetches_one_at_a_time(subscriber: object) -> bool:
    """A subscriber using FastStream's record-by-record fetch (not a batch one, not a subclass
    with a fetch of its own)."""
    return getattr(type(subscriber), "get_msg", None) in _GETONE_FETCHERS


async def fetch_records(consumer: AIOKafkaConsumer, max_records: int) -> FetchedRecords | None:
    """Up to ``max_records`` buffered records of the consumer's unpaused partitions; None when
    none arrived within FETCH_WAIT_MS (FastStream's loop then just asks again)."""
    user_cap = getattr(consumer, "_max_poll_records", None)
    if isinstance(user_cap, int) and user_cap < max_records:
        max_records = user_cap
    batches = await consumer.getmany(timeout_ms=FETCH_WAIT_MS, max_records=max_records)
    if not batches:
        return None
    records: list[ConsumerRecord[Any, Any]] = []
    for batch in batches.values():
        records += batch
    _serve_in_turn(consumer, batches)
    return FetchedRecords(consumer, records)


def _serve_in_turn(consumer: AIOKafkaConsumer, served: Iterable[TopicPartition]) -> None:
    """Move the partitions just served behind the others in aiokafka's buffer.

    aiokafka hands out buffered records partition by partition in the order they arrived and
    stays on one until its buffer (up to max_partition_fetch_bytes) is empty; with fetches
    capped by free slots, one partition would then take every slot while the others wait.
    """
    buffered = getattr(getattr(consumer, "_fetcher", None), "_records", None)
    if not isinstance(buffered, OrderedDict):
        return
    for tp in served:
        if tp in buffered:
            buffered.move_to_end(tp)
