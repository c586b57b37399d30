"""Example pipeline: enrich orders concurrently and publish the results with ``@publisher``.

    orders topic ──▶ enrich_order (≈10 ms customer lookup, up to 100 at once) ──▶ enriched topic

The subscriber is a plain FastStream handler with ``@broker.publisher``: it returns the
enriched order and FastStream publishes it. The library runs up to 100 orders concurrently
and commits an order's offset only after its result was published.

The example creates its own topics, produces the orders, runs the app until every order is
processed, stops it, and checks the result: the output topic holds one enriched order per
input order, and the consumer group committed the input topic to its end.

Run against a broker:  ``KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python -m examples.pipeline``
"""

import argparse
import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    ConcurrentProcessing,
    KafkaConcurrentProcessingMiddleware,
    initialize_concurrent_processing,
    stop_concurrent_processing,
)

LOOKUP_LATENCY_SEC = 0.01
TIERS = ("bronze", "silver", "gold")
DISCOUNT_PERCENT = {"bronze": 0, "silver": 5, "gold": 10}


# ---- the business logic ------------------------------------------------------------------


def make_order(order_id: int) -> dict[str, int]:
    """The input message for order ``order_id``."""
    return {
        "order_id": order_id,
        "customer_id": order_id % 97,
        "amount_cents": 100 + (order_id * 37) % 5000,
    }


def customer_record(customer_id: int) -> dict[str, str]:
    """What the customer service knows about a customer."""
    return {"customer_name": f"customer-{customer_id}", "tier": TIERS[customer_id % len(TIERS)]}


async def lookup_customer(customer_id: int) -> dict[str, str]:
    await asyncio.sleep(LOOKUP_LATENCY_SEC)  # stands for a database or HTTP call
    return customer_record(customer_id)


def enrich(order: dict[str, int], customer: dict[str, str]) -> dict[str, Any]:
    discount = DISCOUNT_PERCENT[customer["tier"]]
    return {
        **order,
        **customer,
        "discount_percent": discount,
        "total_cents": order["amount_cents"] * (100 - discount) // 100,
    }


def expected_result(order_id: int) -> dict[str, Any]:
    """The output message for order ``order_id``, computed without I/O (for checks)."""
    order = make_order(order_id)
    return enrich(order, customer_record(order["customer_id"]))


# ---- the app -----------------------------------------------------------------------------


class Progress:
    """Orders whose handler finished; ``all_done`` is set once every order has been."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done: set[int] = set()
        self.all_done = asyncio.Event()
        self.first_started: float | None = None
        self.last_finished: float | None = None

    def started(self) -> None:
        if self.first_started is None:
            self.first_started = time.monotonic()

    def finished(self, order_id: int) -> None:
        self.done.add(order_id)
        if len(self.done) >= self.total and not self.all_done.is_set():
            self.last_finished = time.monotonic()
            self.all_done.set()


def build_app(
    bootstrap: str,
    *,
    input_topic: str,
    output_topic: str,
    group: str,
    concurrency_limit: int,
    progress: Progress,
    handlers: list[ConcurrentProcessing],
) -> FastStream:
    broker = KafkaBroker(bootstrap, logger=None)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)

    @broker.subscriber(
        input_topic,
        group_id=group,
        ack_policy=AckPolicy.MANUAL,  # MANUAL subscribers run concurrently
        auto_offset_reset="earliest",
    )
    @broker.publisher(output_topic)
    async def enrich_order(order: dict[str, int]) -> dict[str, Any]:
        progress.started()
        customer = await lookup_customer(order["customer_id"])
        progress.finished(order["order_id"])
        return enrich(order, customer)  # published to output_topic by FastStream

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        handler = await initialize_concurrent_processing(
            broker.context,
            concurrency_limit=concurrency_limit,
            commit_batch_size=100,
            commit_batch_timeout_sec=1.0,
        )
        handlers.append(handler)
        try:
            yield
        finally:
            await stop_concurrent_processing(broker.context)

    return FastStream(broker, lifespan=lifespan, logger=None)


# ---- running it --------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineResult:
    input_topic: str
    output_topic: str
    group: str
    partitions: int
    messages: int
    processed: int
    failed: int
    output_records: int
    valid_output_records: int
    committed: dict[int, int]
    end_offsets: dict[int, int]
    seconds: float

    @property
    def all_committed(self) -> bool:
        return self.committed == self.end_offsets

    @property
    def ok(self) -> bool:
        return (
            self.processed == self.messages
            and self.failed == 0
            and self.output_records == self.messages
            and self.valid_output_records == self.messages
            and self.all_committed
        )

    @property
    def throughput(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        committed = "yes" if self.all_committed else "NO"
        return "\n".join(
            [
                f"pipeline {self.input_topic} -> {self.output_topic} (group {self.group})",
                f"  messages produced    {self.messages}",
                f"  processed            {self.processed} ({self.failed} failed)",
                f"  output records       {self.output_records}",
                f"  valid enriched       {self.valid_output_records} (distinct orders)",
                f"  committed == end     {committed}  committed={self.committed} "
                f"end={self.end_offsets}",
                f"  throughput           {self.throughput:.0f} msg/s "
                f"({self.processed} in {self.seconds:.2f} s)",
            ]
        )


async def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, parts, 1) for name, parts in topics.items()])
    finally:
        await admin.close()


async def produce_orders(bootstrap: str, topic: str, messages: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10)
    await producer.start()
    try:
        for order_id in range(messages):
            order = make_order(order_id)
            key = str(order["customer_id"]).encode()  # a customer's orders share a partition
            await producer.send(topic, json.dumps(order).encode(), key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def read_output(bootstrap: str, topic: str, partitions: int) -> tuple[int, int]:
    """Read ``topic`` from the beginning to its current end: (records, records holding the
    expected enriched order; an order's second copy does not count)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        count = 0
        valid: set[int] = set()
        remaining = set(tps)
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=500)
            for records in batch.values():
                count += len(records)
                for record in records:
                    order_id = valid_result(record.value)
                    if order_id is not None:
                        valid.add(order_id)
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
        return count, len(valid)
    finally:
        await consumer.stop()


def valid_result(value: bytes | None) -> int | None:
    """The order id of an output record holding exactly the expected enriched order."""
    try:
        result = json.loads(value) if value else None
    except ValueError:
        return None
    if not isinstance(result, dict):
        return None
    order_id = result.get("order_id")
    if not isinstance(order_id, int) or order_id < 0 or result != expected_result(order_id):
        return None
    return order_id


async def group_offsets(
    bootstrap: str, group: str, topic: str, partitions: int
) -> tuple[dict[int, int], dict[int, int]]:
    """(committed offsets of ``group``, end offsets) of ``topic``, by partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    committed = {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        await consumer.stop()
    return dict(sorted(committed.items())), {tp.partition: ends[tp] for tp in sorted(ends)}


async def run_pipeline(
    bootstrap: str,
    messages: int = 2000,
    *,
    partitions: int = 4,
    concurrency_limit: int = 100,
    timeout: float = 120.0,
) -> PipelineResult:
    """Create the topics, produce ``messages`` orders, run the app until all are processed,
    stop it, and report what the topics and the consumer group hold."""
    run_id = uuid.uuid4().hex[:8]
    input_topic, output_topic = f"orders-{run_id}", f"enriched-orders-{run_id}"
    group = f"enricher-{run_id}"
    await create_topics(bootstrap, {input_topic: partitions, output_topic: partitions})
    await produce_orders(bootstrap, input_topic, messages)

    progress = Progress(messages)
    handlers: list[ConcurrentProcessing] = []
    app = build_app(
        bootstrap,
        input_topic=input_topic,
        output_topic=output_topic,
        group=group,
        concurrency_limit=concurrency_limit,
        progress=progress,
        handlers=handlers,
    )
    serving = asyncio.create_task(app.run())
    all_done = asyncio.create_task(progress.all_done.wait())
    try:
        await asyncio.wait({serving, all_done}, timeout=timeout, return_when="FIRST_COMPLETED")
    finally:
        all_done.cancel()
        app.exit()  # stops the broker (drains in-flight orders, commits), then the lifespan
        await asyncio.wait_for(serving, timeout)  # re-raises if the app failed
    if not progress.all_done.is_set():
        msg = f"{len(progress.done)} of {messages} orders processed within {timeout} s"
        raise TimeoutError(msg)

    committed, ends = await group_offsets(bootstrap, group, input_topic, partitions)
    output_records, valid_output_records = await read_output(bootstrap, output_topic, partitions)
    started, finished = progress.first_started, progress.last_finished
    [handler] = handlers
    return PipelineResult(
        input_topic=input_topic,
        output_topic=output_topic,
        group=group,
        partitions=partitions,
        messages=messages,
        processed=handler.processed,
        failed=handler.failed,
        output_records=output_records,
        valid_output_records=valid_output_records,
        committed=committed,
        end_offsets=ends,
        seconds=finished - started if started is not None and finished is not None else 0.0,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="Concurrent enrichment pipeline example")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    print(f"Kafka at {bootstrap}: {args.messages} orders, concurrency limit {args.concurrency}")
    result = asyncio.run(run_pipeline(bootstrap, args.messages, concurrency_limit=args.concurrency))
    print(result.summary())
    print("OK" if result.ok else "FAILED: see the summary above")
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
