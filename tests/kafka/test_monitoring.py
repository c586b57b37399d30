"""What operators see of a running consumer, against the real broker: the snapshot, health
with its reasons, stall detection, the Prometheus collector and the OpenTelemetry instruments.

(The service example, scraped over HTTP under uvicorn, is in test_examples.py.)
"""

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.middlewares import AckPolicy
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from faststream_concurrent_aiokafka import (
    ConcurrentProcessing,
    KafkaConcurrentProcessingMiddleware,
    configure_subscriber,
    health_report,
    initialize_concurrent_processing,
    is_kafka_handler_healthy,
    processing_snapshot,
    stop_concurrent_processing,
)
from faststream_concurrent_aiokafka.core.snapshot import PartitionSnapshot
from faststream_concurrent_aiokafka.otel import ConcurrentProcessingMetrics
from faststream_concurrent_aiokafka.prometheus import ConcurrentProcessingCollector
from tests.kafka_helpers import (
    concurrent_broker,
    create_topic,
    numbered_topic,
    produce,
    unique,
    wait_committed,
    wait_until,
)

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
LIBRARY_LOGGER = "faststream_concurrent_aiokafka"


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


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus scrape, as parsed by prometheus_client's own parser."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def partition_sample(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    name: str,
    group: str,
    topic: str,
    partition: int,
) -> float:
    labels = (("group", group), ("partition", str(partition)), ("topic", topic))
    return samples[(name, labels)]


def partition_of(broker: KafkaBroker, topic: str, partition: int) -> PartitionSnapshot:
    [found] = [
        p
        for p in processing_snapshot(broker.context).partitions()
        if (p.topic, p.partition) == (topic, partition)
    ]
    return found


def partition_has(broker: KafkaBroker, topic: str, partition: int, **expected: object) -> bool:
    """The partition is in the snapshot (assigned, or with work) with these figures."""
    return any(
        (p.topic, p.partition) == (topic, partition)
        and all(getattr(p, name) == value for name, value in expected.items())
        for p in processing_snapshot(broker.context).partitions()
    )


def otel_points(reader: InMemoryMetricReader, name: str) -> list[tuple[dict[str, Any], float]]:
    """The data points of one instrument in the reader's next collection."""
    data = reader.get_metrics_data()
    assert data is not None
    points = []
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    assert isinstance(point, NumberDataPoint)
                    points.append((dict(point.attributes or {}), float(point.value)))
    return points


# ---- the snapshot ----------------------------------------------------------------------


async def test_snapshot_shows_running_queued_held_and_uncommitted_then_all_committed() -> None:
    """One partition, key ordering, a subscriber limit of 2 and handlers that wait: keys
    a a b b c c admit a and b to run, c to wait for a slot, and the second of each key to wait
    behind the first."""
    topic, group = unique("mon-snap"), unique("g-mon-snap")
    await create_topic(topic, 1)
    keys = [b"a", b"a", b"b", b"b", b"c", b"c"]
    await produce(topic, [str(i).encode() for i in range(6)], partitions=1, key=keys.__getitem__)
    release = asyncio.Event()
    broker = concurrent_broker()
    subscriber = broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    configure_subscriber(subscriber, concurrency_limit=2, ordering="key")

    @subscriber
    async def handle(body: int) -> None:
        await release.wait()

    async with running(broker, commit_batch_size=1, commit_batch_timeout_sec=0.1):
        await wait_until(lambda: partition_has(broker, topic, 0, uncommitted=6))
        # Read from another thread, as a metrics server thread would.
        snapshot = await asyncio.to_thread(processing_snapshot, broker.context)
        [subscriber_view] = snapshot.subscribers
        assert subscriber_view.group == group
        assert subscriber_view.topics == (topic,)
        assert subscriber_view.settings.concurrency_limit == 2
        assert subscriber_view.settings.ordering == "key"
        [part] = subscriber_view.partitions
        assert (part.assigned, part.in_flight, part.queued, part.held) == (True, 2, 1, 3)
        assert (part.uncommitted, part.finished_above, part.commit_point) == (6, 0, 0)
        assert part.oldest_in_flight_offset == 0
        assert snapshot.in_flight == 2
        assert snapshot.uncommitted == 6

        release.set()
        await wait_committed(group, topic, {0: 6})
        await wait_until(lambda: partition_has(broker, topic, 0, committed=6))
        part = partition_of(broker, topic, 0)
        assert (part.in_flight, part.queued, part.held, part.uncommitted) == (0, 0, 0, 0)
        assert part.commit_point == 6
        assert part.oldest_in_flight_offset is None
        totals = processing_snapshot(broker.context).totals
        assert (totals.ok, totals.failed, totals.dead_lettered, totals.processed) == (6, 0, 0, 6)
        assert totals.commit_requests >= 1
        assert totals.failed_commits == 0
        assert totals.rebalances >= 1
        assert totals.partitions_assigned >= 1

    assert not processing_snapshot(broker.context).running
    assert health_report(broker.context).status == "failed"


# ---- stalls ----------------------------------------------------------------------------


async def test_a_stalled_message_degrades_health_naming_it_until_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first of ten messages on partition 1 would sleep 30 s (it is released once the
    checks are done); stall_warning_sec=2."""
    caplog.set_level(logging.INFO, logger=LIBRARY_LOGGER)
    topic, group = await numbered_topic("mon-stall", 20, 2)
    slow_offset = 0
    started = asyncio.Event()
    release = asyncio.Event()
    broker = concurrent_broker()

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(msg: KafkaMessage) -> None:
        raw = msg.raw_message
        assert not isinstance(raw, tuple)
        if (raw.partition, raw.offset) == (1, slow_offset):
            started.set()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(release.wait(), 30)
            return

    registry = CollectorRegistry()
    registry.register(ConcurrentProcessingCollector(broker.context))
    reader = InMemoryMetricReader()
    otel = ConcurrentProcessingMetrics(broker.context, meter_provider=MeterProvider([reader]))
    where = f"{topic}[1]@{slow_offset}"

    async with running(
        broker, stall_warning_sec=2, commit_batch_size=1, commit_batch_timeout_sec=0.1
    ):
        await asyncio.wait_for(started.wait(), 30)

        def degraded_naming_it() -> bool:
            report = health_report(broker.context)
            return report.status == "degraded" and any(where in r for r in report.reasons)

        await wait_until(degraded_naming_it, timeout=3.0)
        assert is_kafka_handler_healthy(broker.context), "degraded still counts as healthy"

        samples = scrape(registry)
        oldest = "faststream_concurrent_oldest_in_flight_seconds"
        uncommitted = "faststream_concurrent_uncommitted_messages"
        assert partition_sample(samples, oldest, group, topic, 1) > 2
        assert partition_sample(samples, uncommitted, group, topic, 1) > 0
        assert partition_sample(samples, oldest, group, topic, 0) == 0
        assert samples[("faststream_concurrent_health", (("status", "degraded"),))] == 1
        stall_total = "faststream_concurrent_stalls_total"
        assert samples[(stall_total, (("group", group), ("topic", topic)))] == 1
        # The same figures through OpenTelemetry.
        [(attributes, value)] = [
            point for point in otel_points(reader, oldest) if point[0]["partition"] == "1"
        ]
        assert attributes == {"group": group, "topic": topic, "partition": "1"}
        assert value > 2
        # The other partition, and the later messages of this one, went on.
        await wait_committed(group, topic, {0: 10, 1: slow_offset})
        assert partition_of(broker, topic, 1).finished_above == 9

        release.set()
        await wait_until(lambda: health_report(broker.context).status == "ok")
        await wait_committed(group, topic, {0: 10, 1: 10})
        samples = scrape(registry)
        assert partition_sample(samples, uncommitted, group, topic, 1) == 0
        assert partition_sample(samples, oldest, group, topic, 1) == 0
        processed = "faststream_concurrent_processed_messages_total"
        labels = (("group", group), ("outcome", "ok"), ("topic", topic))
        assert samples[(processed, labels)] == 20
        await wait_until(
            lambda: (
                sum(v for a, v in otel_points(reader, "faststream_concurrent_processed_messages")
                    if a["outcome"] == "ok") == 20
            )
        )  # fmt: skip

    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "stall_warning_sec" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert where in warnings[0]
    assert any(
        r.levelno == logging.INFO
        and "Stalled message" in r.getMessage()
        and where in r.getMessage()
        for r in caplog.records
    )
    del otel


# ---- consuming stopped by an error -----------------------------------------------------


async def test_a_fetch_that_keeps_failing_fails_health_naming_the_subscriber() -> None:
    """A new group with auto_offset_reset="none" has no position to fetch from: every fetch
    raises, FastStream logs it and tries again. Nothing is consumed, and health says so."""
    topic, group = await numbered_topic("mon-fetch", 3, 1)
    seen: list[int] = []
    broker = concurrent_broker()

    @broker.subscriber(topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="none")
    async def handle(body: int) -> None:
        seen.append(body)

    async with running(broker):

        def failed_naming_it() -> bool:
            report = health_report(broker.context)
            return report.status == "failed" and any(
                "stopped by an error" in r and topic in r for r in report.reasons
            )

        await wait_until(failed_naming_it, timeout=15)
        assert not is_kafka_handler_healthy(broker.context)
        assert seen == []


# ---- the broker stops ------------------------------------------------------------------


def free_port_pair() -> int:
    """A port whose successor is free too (kafka.sh puts the controller on port + 1)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    msg = "no two adjacent free ports"
    raise RuntimeError(msg)


def kafka_sh(command: str, port: int) -> str:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SASL_PORT"}
    }
    env["KAFKA_PORT"] = str(port)
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "kafka.sh"), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@contextmanager
def own_broker() -> Iterator[int]:
    """A broker of this test's own (its port), to stop under a running consumer."""
    port = free_port_pair()
    kafka_sh("start", port)
    try:
        yield port
    finally:
        kafka_sh("stop", port)


async def fill_topic(bootstrap: str, topic: str, count: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(count):
            await producer.send(topic, str(i).encode(), partition=0)
        await producer.flush()
    finally:
        await producer.stop()


async def test_commits_failing_three_times_after_the_broker_stopped_degrade_health() -> None:
    """Ten messages finish and are committed, ten wait; the broker stops; the waiting ones
    are released and their commits fail (each cut off by commit_timeout_sec, since aiokafka
    itself waits for a coordinator forever)."""
    with own_broker() as port:
        bootstrap = f"127.0.0.1:{port}"
        topic, group = unique("mon-down"), unique("g-mon-down")
        await fill_topic(bootstrap, topic, 20)
        release = asyncio.Event()
        done: list[int] = []
        broker = KafkaBroker(bootstrap, logger=None)
        broker.add_middleware(KafkaConcurrentProcessingMiddleware)

        @broker.subscriber(
            topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
        )
        async def handle(body: int) -> None:
            if body >= 10:
                await release.wait()
            done.append(body)

        await initialize_concurrent_processing(
            broker.context,
            broker=broker,
            concurrency_limit=20,
            commit_batch_size=1,
            commit_batch_timeout_sec=0.2,
            commit_timeout_sec=0.5,
        )
        try:
            await broker.start()
            await wait_until(lambda: partition_has(broker, topic, 0, committed=10))
            assert health_report(broker.context).status == "ok"

            await asyncio.to_thread(kafka_sh, "stop", port)
            release.set()
            await wait_until(lambda: len(done) == 20)

            def degraded_by_commits() -> bool:
                report = health_report(broker.context)
                return report.status == "degraded" and any(
                    "commits in a row failed" in r and group in r for r in report.reasons
                )

            await wait_until(degraded_by_commits, timeout=20)
            assert processing_snapshot(broker.context).totals.failed_commits >= 3
            assert partition_of(broker, topic, 0).committed == 10
            assert is_kafka_handler_healthy(broker.context), "degraded: a restart would not help"
        finally:
            # Each commit attempt of the drain is bounded too: the shutdown ends.
            await asyncio.wait_for(stop_concurrent_processing(broker.context), 30)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(broker.stop(), 15)
