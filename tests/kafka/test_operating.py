"""What operators read of a group against the real broker: lag per partition (as Burrow and
KEDA compute it), the age of the records in work, and the ``starting`` health status."""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy
from prometheus_client import CollectorRegistry

from faststream_concurrent_aiokafka import (
    ConcurrentProcessing,
    configure_subscriber,
    health_report,
    initialize_concurrent_processing,
    is_kafka_handler_healthy,
    processing_snapshot,
    stop_concurrent_processing,
)
from faststream_concurrent_aiokafka.core.snapshot import PartitionSnapshot
from faststream_concurrent_aiokafka.prometheus import ConcurrentProcessingCollector
from tests.kafka.test_monitoring import scrape
from tests.kafka_helpers import (
    BOOTSTRAP,
    concurrent_broker,
    create_topic,
    numbers,
    produce,
    unique,
    wait_committed,
    wait_until,
)

pytestmark = pytest.mark.kafka

LAG = "faststream_concurrent_lag_messages"
AGE = "faststream_concurrent_oldest_record_age_seconds"


@asynccontextmanager
async def running(broker: KafkaBroker, **settings: Any) -> AsyncIterator[ConcurrentProcessing]:
    handler = await initialize_concurrent_processing(broker.context, broker=broker, **settings)
    try:
        await broker.start()
        yield handler
    finally:
        try:
            await broker.stop()
        finally:
            await stop_concurrent_processing(broker.context)


def partitions(broker: KafkaBroker, topic: str) -> list[PartitionSnapshot]:
    return [p for p in processing_snapshot(broker.context).partitions() if p.topic == topic]


def blocked_subscriber(
    broker: KafkaBroker, topic: str, group: str, release: asyncio.Event, **options: Any
) -> None:
    subscriber = broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    configure_subscriber(subscriber, **options)

    @subscriber
    async def handle(body: int) -> None:
        await release.wait()


async def commit_for_group(group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit ``offsets`` for ``group`` as an earlier member would have."""
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=group)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


# ---- lag -------------------------------------------------------------------------------


async def test_a_consumer_started_1000_behind_reports_a_lag_of_1000() -> None:
    """1,200 records over 4 partitions, 50 per partition committed by an earlier member: as
    soon as lag is known for the assigned partitions, it sums to 1,000 (nothing may finish:
    handlers wait), in the snapshot and in a Prometheus scrape; once all is processed, 0."""
    topic, group = unique("op-lag"), unique("g-op-lag")
    await create_topic(topic, 4)
    await produce(topic, numbers(1200), partitions=4)
    await commit_for_group(group, {TopicPartition(topic, p): 50 for p in range(4)})
    release = asyncio.Event()
    broker = concurrent_broker()
    blocked_subscriber(broker, topic, group, release, concurrency_limit=8)
    registry = CollectorRegistry()
    registry.register(ConcurrentProcessingCollector(broker))

    async with running(broker, commit_batch_size=50, commit_batch_timeout_sec=0.2):
        await wait_until(
            lambda: (
                len(parts := partitions(broker, topic)) == 4
                and all(p.lag is not None for p in parts)
            )
        )
        parts = partitions(broker, topic)
        assert sum(p.lag or 0 for p in parts) == 1000
        assert [p.end_offset for p in parts] == [300] * 4
        samples = scrape(registry)
        assert sum(value for (name, _), value in samples.items() if name == LAG) == 1000
        # Nothing finished: every record from the committed offsets on is unprocessed.
        assert sum(p.unprocessed or 0 for p in parts) == 1000

        release.set()
        await wait_committed(group, topic, dict.fromkeys(range(4), 300))
        await wait_until(lambda: all(p.lag == 0 for p in partitions(broker, topic)))
        assert all(p.unprocessed == 0 for p in partitions(broker, topic))


async def test_a_partition_paused_by_backpressure_shows_its_lag_growing() -> None:
    """Handlers wait, so the uncommitted budget (10) fills and fetching pauses; records then
    produced to the paused partition over 10 s show up as growing lag (its end offset asked
    from the broker, since no fetch brings a high-water mark)."""
    topic, group = unique("op-paused"), unique("g-op-paused")
    await create_topic(topic, 1)
    await produce(topic, numbers(20), partitions=1)
    release = asyncio.Event()
    broker = concurrent_broker()
    blocked_subscriber(broker, topic, group, release, concurrency_limit=5)

    async with running(broker, max_uncommitted_tasks=10, commit_batch_timeout_sec=0.2):
        await wait_until(
            lambda: any(p.paused and p.lag == 20 for p in partitions(broker, topic)), timeout=20
        )
        seen: list[int] = []
        producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=0)
        await producer.start()
        try:
            for step in range(10):
                await producer.send_and_wait(topic, str(100 + step).encode(), partition=0)
                await asyncio.sleep(1.0)  # the production pace of the scenario, not a wait
                [part] = partitions(broker, topic)
                assert part.paused
                assert part.lag is not None
                seen.append(part.lag)
        finally:
            await producer.stop()
        await wait_until(lambda: partitions(broker, topic)[0].lag == 30, timeout=10)
        assert seen == sorted(seen), seen  # never shrinks while nothing is processed
        assert len(set(seen)) >= 5, seen  # and grows as records arrive, not only at the end
        assert partitions(broker, topic)[0].paused
        release.set()
        await wait_committed(group, topic, {0: 30})


# ---- record age ------------------------------------------------------------------------


async def test_records_produced_120_s_ago_read_at_least_120_s_old_while_they_run() -> None:
    topic, group = unique("op-age"), unique("g-op-age")
    await create_topic(topic, 2)
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
    await producer.start()
    try:
        old = int((time.time() - 120) * 1000)
        for i in range(6):
            await producer.send_and_wait(topic, str(i).encode(), partition=i % 2, timestamp_ms=old)
    finally:
        await producer.stop()
    release = asyncio.Event()
    broker = concurrent_broker()
    blocked_subscriber(broker, topic, group, release)
    registry = CollectorRegistry()
    registry.register(ConcurrentProcessingCollector(broker))

    async with running(broker, commit_batch_timeout_sec=0.2):
        await wait_until(lambda: sum(p.in_flight for p in partitions(broker, topic)) == 6)
        ages = [p.oldest_record_age_sec for p in partitions(broker, topic)]
        assert len(ages) == 2
        assert all(age is not None and age >= 120 for age in ages), ages
        samples = scrape(registry)
        scraped = [value for (name, _), value in samples.items() if name == AGE]
        assert len(scraped) == 2
        assert all(value >= 120 for value in scraped)

        release.set()
        await wait_committed(group, topic, {0: 3, 1: 3})
        # Nothing unsettled: no age.
        assert all(p.oldest_record_age_sec is None for p in partitions(broker, topic))


# ---- starting --------------------------------------------------------------------------


class HoldRevocation(ConsumerRebalanceListener):  # type: ignore[misc]
    """Keeps a rebalance open: its revocation waits until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.revoking = asyncio.Event()

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            self.revoking.set()
            await self.release.wait()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        del assigned


async def test_a_consumer_joining_its_group_reads_starting_not_ready_but_alive() -> None:
    """Another member holds the rebalance the new consumer's join starts (its revocation
    waits): until the group completes it, health says starting, with the reason, and the
    consumer is alive (``is_kafka_handler_healthy``) but not ready; then ok.

    ``broker.start()`` waits for the first assignment (aiokafka's ``start()`` does), so it
    runs in a task here, as ``AsgiFastStream`` runs it while its HTTP routes already answer."""
    topic, group = unique("op-start"), unique("g-op-start")
    await create_topic(topic, 2)
    holder = HoldRevocation()
    member = AIOKafkaConsumer(
        bootstrap_servers=BOOTSTRAP,
        group_id=group,
        session_timeout_ms=30_000,
        rebalance_timeout_ms=30_000,
    )
    member.subscribe([topic], listener=holder)
    await member.start()
    polling = asyncio.create_task(poll_forever(member))
    broker = concurrent_broker()
    blocked_subscriber(broker, topic, group, asyncio.Event())
    await initialize_concurrent_processing(broker.context, broker=broker)
    starting = asyncio.create_task(broker.start())
    try:
        await asyncio.wait_for(holder.revoking.wait(), 20)
        report = health_report(broker.context)
        assert report.status == "starting", report
        assert not report.is_ready
        assert is_kafka_handler_healthy(broker.context)
        [reason] = report.reasons
        assert "1 of 1 consumer(s) still joining" in reason
        assert "first partition assignment" in reason

        holder.release.set()
        await asyncio.wait_for(starting, 30)
        await wait_until(lambda: health_report(broker.context).status == "ok")
        assert health_report(broker.context).is_ready
    finally:
        holder.release.set()
        if not starting.done():
            starting.cancel()
        polling.cancel()
        await member.stop()
        await broker.stop()
        await stop_concurrent_processing(broker.context)


async def poll_forever(consumer: AIOKafkaConsumer) -> None:
    """A member takes part in its group's rebalances only while it polls."""
    while True:
        await consumer.getmany(timeout_ms=200)


# ---- processing time -------------------------------------------------------------------


async def test_measured_subscribers_get_a_processing_time_histogram_the_others_none() -> None:
    topic, group = unique("op-time"), unique("g-op-time")
    other_topic = unique("op-untimed")
    await create_topic(topic, 2)
    await create_topic(other_topic, 1)
    await produce(topic, numbers(20), partitions=2)
    await produce(other_topic, numbers(5), partitions=1)
    broker = concurrent_broker()
    timed_subscriber = broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    configure_subscriber(timed_subscriber, measure_processing_time=True)

    @timed_subscriber
    async def slow(body: int) -> None:
        await asyncio.sleep(0.03)

    @broker.subscriber(
        other_topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def untimed(body: int) -> None:
        del body

    registry = CollectorRegistry()
    registry.register(ConcurrentProcessingCollector(broker))
    async with running(broker, commit_batch_timeout_sec=0.2):
        await wait_committed(group, topic, {0: 10, 1: 10})
        await wait_committed(group, other_topic, {0: 5})
        by_topic = {s.topics: s for s in processing_snapshot(broker.context).subscribers}
        measured = by_topic[(topic,)].processing_time
        assert measured is not None
        assert measured.count == 20
        assert dict(measured.buckets)[0.025] == 0  # every attempt slept 30 ms
        assert measured.sum >= 20 * 0.03
        assert by_topic[(other_topic,)].processing_time is None
        samples = scrape(registry)
        name = "faststream_concurrent_processing_seconds"
        where = (("group", group), ("topic", topic))
        assert samples[(f"{name}_count", where)] == 20
        assert samples[(f"{name}_bucket", tuple(sorted((*where, ("le", "+Inf")))))] == 20
        assert not any(
            ("topic", other_topic) in labels for (n, labels) in samples if n.startswith(name)
        )
