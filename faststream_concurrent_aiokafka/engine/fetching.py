"""Fetching for admission: one ``getmany()`` per batch instead of one ``getone()`` per record.

FastStream's loop asks its subscriber for one record at a time, and aiokafka's ``getone()``
costs more per record than the handler's own work does for fast handlers. Admission takes
whatever one ``getmany()`` returned as one unit, so nothing is ever buffered outside aiokafka
and the library: the records go straight into the lane's offset tracking. Partitions are
served in turn (see ``compat.aiokafka.rotate_buffered_partitions``).
"""

from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from faststream_concurrent_aiokafka.compat import aiokafka as aiokafka_compat
from faststream_concurrent_aiokafka.engine.state import ConsumerLane

# How long one getmany() waits for records before FastStream's loop checks whether it stops.
FETCH_WAIT_MS = 500


class FetchedRecords:
    """The records one ``getmany()`` returned, and the consumer that fetched them."""

    __slots__ = ("consumer", "records")

    def __init__(self, consumer: AIOKafkaConsumer, records: "list[ConsumerRecord[Any, Any]]"):
        self.consumer = consumer
        self.records = records


async def fetch_records(consumer: AIOKafkaConsumer, max_records: int) -> FetchedRecords | None:
    """Up to ``max_records`` buffered records of the consumer's unpaused partitions; None when
    none arrived within FETCH_WAIT_MS (FastStream's loop then just asks again)."""
    user_cap = aiokafka_compat.max_poll_records(consumer)
    if user_cap is not None and user_cap < max_records:
        max_records = user_cap
    batches = await consumer.getmany(timeout_ms=FETCH_WAIT_MS, max_records=max_records)
    if not batches:
        return None
    records: list[ConsumerRecord[Any, Any]] = []
    for batch in batches.values():
        records += batch
    aiokafka_compat.rotate_buffered_partitions(consumer, batches)
    return FetchedRecords(consumer, records)


async def fetch_for(lane: ConsumerLane, max_records: int) -> FetchedRecords | None:
    """``fetch_records`` for a lane, which keeps the error of a failing fetch (FastStream's
    loop logs it and tries again after a pause) for health until a fetch succeeds."""
    try:
        fetched = await fetch_records(lane.consumer, max_records)
    except Exception as exc:
        lane.fetching.error = exc
        raise
    lane.fetching.error = None
    return fetched
