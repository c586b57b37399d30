"""A FastStream app keeps working as before once the middleware is added (real broker).

What FastStream does around a handler must still happen for every message, with the real
return value, while messages run concurrently: ``@publisher`` outputs, ``reply_to`` replies,
publish failures counted as failures of the message, routers, several brokers, the usual
ways to start and stop, sync handlers and batch subscribers. Other broker middlewares are in
``test_faststream_fit_middlewares.py``.

Tests marked with ``mode`` run twice: with a ``FastStream`` app in the broker's context the
subscribers are set up at initialisation; without one (a bare broker) at their first message,
which FastStream has already started to run when the library takes it over.
"""

import asyncio
import json
import logging
import operator
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faststream import ContextRepo, FastStream
from faststream.kafka import KafkaBroker, KafkaMessage, KafkaRouter
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    ConcurrentProcessing,
    KafkaConcurrentProcessingMiddleware,
    initialize_concurrent_processing,
    is_kafka_handler_healthy,
    stop_concurrent_processing,
)
from tests.kafka_helpers import (
    BOOTSTRAP,
    committed_offsets,
    create_topic,
    end_offsets,
    produce,
    read_all,
    unique,
    wait_until,
)

pytestmark = pytest.mark.kafka

# Generous for a slow, shared machine; every wait normally ends within a few seconds.
WAIT = 30.0
# Offsets are read through new Kafka clients each time: poll them less often.
POLL = 0.2
# How long the first handlers wait for a second one to overlap before giving up.
OVERLAP_WAIT = 10.0
LIBRARY_LOGGER = "faststream_concurrent_aiokafka"

Mode = Literal["app", "bare"]
with_each_mode = pytest.mark.parametrize("mode", ["app", "bare"], ids=["app", "bare-broker"])


# ---- helpers -----------------------------------------------------------------------------


class Gauge:
    """Handler calls running at this moment, the most that ever ran together, and an event
    that lets the first calls wait until a second one runs beside them."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.overlapped = asyncio.Event()
        self.gave_up = False

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self.active += 1
        self.peak = max(self.peak, self.active)
        if self.active >= 2:
            self.overlapped.set()
        try:
            yield
        finally:
            self.active -= 1

    async def await_overlap(self) -> None:
        """Wait (once, bounded) for a second call; run sequentially, the wait times out and
        the test's peak assertion fails instead of hanging."""
        if self.overlapped.is_set() or self.gave_up:
            return
        try:
            await asyncio.wait_for(self.overlapped.wait(), OVERLAP_WAIT)
        except TimeoutError:
            self.gave_up = True


def new_broker(mode: Mode = "bare") -> KafkaBroker:
    broker = KafkaBroker(BOOTSTRAP, logger=None)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    if mode == "app":
        FastStream(broker, logger=None)
    return broker


def numbers(count: int, start: int = 0) -> list[bytes]:
    return [str(i).encode() for i in range(start, start + count)]


def position(msg: KafkaMessage) -> tuple[int, int]:
    raw = msg.raw_message
    assert not isinstance(raw, tuple), "a per-message subscriber got a batch"
    return raw.partition, raw.offset


async def create_topic_with_configs(name: str, partitions: int, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
    finally:
        await admin.close()


async def record_count(topic: str, partitions: int) -> int:
    """Records a fresh topic holds: the sum of its end offsets."""
    return sum((await end_offsets(topic, partitions)).values())


async def wait_committed_to_end(group: str, topic: str, partitions: int) -> None:
    ends = await end_offsets(topic, partitions)

    async def reached() -> bool:
        return await committed_offsets(group, topic) == ends

    try:
        await wait_until(reached, timeout=WAIT, interval=POLL)
    except AssertionError:
        actual = await committed_offsets(group, topic)
        msg = f"committed offsets of {group} on {topic}: {actual}, end offsets {ends}"
        raise AssertionError(msg) from None


@asynccontextmanager
async def running(broker: KafkaBroker, **settings: Any) -> AsyncIterator[ConcurrentProcessing]:
    """Processing initialised, broker started; on exit the broker stops (it drains and
    commits), then the processing stops."""
    handler = await initialize_concurrent_processing(broker.context, **settings)
    try:
        await broker.start()
        yield handler
    finally:
        try:
            await broker.stop()
        finally:
            await stop_concurrent_processing(broker.context)


def values_of(records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]) -> list[Any]:
    """JSON bodies of records read back; an empty value (FastStream's ``None``) stays None."""
    return [json.loads(value) if value else None for _key, value, _headers in records]


def enriched(ident: int, partition: int, offset: int) -> dict[str, int]:
    return {"id": ident, "square": ident * ident, "partition": partition, "offset": offset}


# ---- @publisher ----------------------------------------------------------------------------


@pytest.mark.smoke
@with_each_mode
async def test_publisher_gets_the_real_return_value_of_every_message(mode: Mode) -> None:
    count, partitions, limit = 300, 3, 50
    topic, out, group = unique("fit-pub"), unique("fit-pub-out"), unique("g-fit-pub")
    await create_topic(topic, partitions)
    await create_topic(out, 2)
    await produce(topic, numbers(count), partitions=partitions)
    broker = new_broker(mode)
    gauge = Gauge()
    calls: Counter[int] = Counter()

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    @broker.publisher(out)
    async def enrich(body: int, msg: KafkaMessage) -> dict[str, int]:
        partition, offset = position(msg)
        async with gauge.running():
            await asyncio.sleep(0.01)  # the enrichment's I/O
        calls[body] += 1
        return enriched(body, partition, offset)

    async with running(
        broker, concurrency_limit=limit, commit_batch_size=50, commit_batch_timeout_sec=0.5
    ) as handler:
        await wait_until(lambda: len(calls) == count, timeout=WAIT)
        # An offset is committed after its message's publish: committed to the end means
        # every output was acknowledged by Kafka.
        await wait_committed_to_end(group, topic, partitions)

    assert await record_count(out, 2) == count, "one output record per message, no more"
    values = values_of(await read_all(out, count))
    assert None not in values, "a None/empty result was published"
    assert sorted(v["id"] for v in values) == list(range(count))
    # Produced round-robin: message i sits at partition i % partitions, offset i // partitions.
    for value in values:
        ident = value["id"]
        assert value == enriched(ident, ident % partitions, ident // partitions)
    assert calls == Counter(range(count)), "every handler ran exactly once"
    assert handler.failed == 0
    assert 1 < gauge.peak <= limit


# ---- a failing publish -------------------------------------------------------------------


async def test_failed_publish_fails_the_message_and_dead_letters_it_before_the_commit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LIBRARY_LOGGER)
    count = 3
    topic, out, dead, group = (
        unique("fit-pubfail"),
        unique("fit-pubfail-out"),
        unique("fit-pubfail-dlt"),
        unique("g-fit-pubfail"),
    )
    await create_topic(topic, 1)
    # The broker refuses record batches above 512 bytes on the output topic: publishing a
    # result of 4 KiB fails after the handler returned.
    await create_topic_with_configs(out, 1, {"max.message.bytes": "512"})
    await create_topic(dead, 1)
    await produce(topic, numbers(count), partitions=1)
    broker = new_broker()
    calls: Counter[int] = Counter()

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    @broker.publisher(out)
    async def oversized(body: int) -> dict[str, Any]:
        calls[body] += 1
        return {"id": body, "padding": "x" * 4096}

    def first_attempts_failed() -> int:
        return sum(
            1
            for r in caplog.records
            if r.name == LIBRARY_LOGGER and r.getMessage().startswith("Attempt 1 of")
        )

    # (committed offset, dead letters) sampled in that order while the test runs: a commit
    # point above the number of dead letters means a failed message was committed first.
    samples: list[tuple[int, int]] = []

    async def watch() -> None:
        while True:
            committed = (await committed_offsets(group, topic)).get(0, 0)
            samples.append((committed, await record_count(dead, 1)))
            await asyncio.sleep(POLL)

    async with running(
        broker,
        max_retries=1,
        # Backoff of 0.5-1 s: a wide window between the failed first attempt and the
        # dead letter, in which a premature commit would show.
        retry_backoff_sec=1.0,
        retry_backoff_max_sec=1.0,
        dead_letter_topic=dead,
        commit_batch_size=1,
        commit_batch_timeout_sec=0.1,
    ) as handler:
        watcher = asyncio.create_task(watch())
        try:
            await wait_until(lambda: first_attempts_failed() == count, timeout=WAIT)
            # Every message is now between its failed first attempt and its retry.
            committed = (await committed_offsets(group, topic)).get(0, 0)
            letters = await record_count(dead, 1)
            assert committed <= letters, "committed before the message was dead-lettered"
            await wait_until(lambda: handler.failed == count, timeout=WAIT)
            await wait_committed_to_end(group, topic, 1)
            # Committed to the end, so every dead letter must exist already.
            assert await record_count(dead, 1) == count, "committed before dead-lettering"
        finally:
            watcher.cancel()
    assert samples, "the watcher took no sample"
    assert [s for s in samples if s[0] > s[1]] == [], f"commit ahead of dead letters: {samples}"

    assert calls == dict.fromkeys(range(count), 2), "max_retries=1: each handler ran twice"
    assert handler.processed == count
    assert await record_count(out, 1) == 0, "nothing was published to the output topic"
    letters_read = await read_all(dead, count)
    assert sorted(value for _key, value, _headers in letters_read) == numbers(count)
    for _key, _value, headers in letters_read:
        found = dict(headers)
        assert found["x-dead-letter-attempts"] == b"2"
        assert found["x-dead-letter-exception-type"].endswith(b"TooLargeError"), found
    offsets = sorted(int(dict(h)["x-dead-letter-offset"]) for _k, _v, h in letters_read)
    assert offsets == list(range(count))


# ---- reply_to ------------------------------------------------------------------------------


class Requester:
    """Request/reply over Kafka: publish with ``reply_to`` and a correlation id, and match
    the replies read from the reply topic by correlation id.

    FastStream 0.7's ``broker.request()`` is only implemented by its test client; on a real
    Kafka broker it raises ``FeatureNotSupportedException``. This is what it would do.
    """

    def __init__(self, replies: str) -> None:
        self.replies = replies
        self.client = KafkaBroker(BOOTSTRAP, logger=None)
        self.pending: dict[str, asyncio.Future[KafkaMessage]] = {}

        @self.client.subscriber(
            replies, group_id=unique("g-requester"), auto_offset_reset="earliest"
        )
        async def on_reply(msg: KafkaMessage) -> None:
            future = self.pending.get(msg.correlation_id)
            if future is not None and not future.done():
                future.set_result(msg)

    async def request(self, body: Any, topic: str) -> tuple[str, KafkaMessage]:
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[KafkaMessage] = asyncio.get_running_loop().create_future()
        self.pending[correlation_id] = future
        await self.client.publish(body, topic, reply_to=self.replies, correlation_id=correlation_id)
        return correlation_id, await asyncio.wait_for(future, WAIT)


@pytest.mark.smoke
@with_each_mode
async def test_reply_to_requests_get_the_real_result(mode: Mode) -> None:
    requests, partitions = 20, 2
    topic, replies, group = unique("fit-rpc"), unique("fit-rpc-reply"), unique("g-fit-rpc")
    await create_topic(topic, partitions)
    await create_topic(replies, 1)
    broker = new_broker(mode)
    gauge = Gauge()

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def double(body: int) -> dict[str, int]:
        async with gauge.running():
            await gauge.await_overlap()
            await asyncio.sleep(0.01)
        return {"id": body, "double": 2 * body}

    requester = Requester(replies)
    async with running(broker, concurrency_limit=10, commit_batch_timeout_sec=0.2) as handler:
        await requester.client.start()
        try:
            answers = await asyncio.gather(*(requester.request(i, topic) for i in range(requests)))
            await wait_committed_to_end(group, topic, partitions)
        finally:
            await requester.client.stop()

    for ident, (correlation_id, reply) in enumerate(answers):
        assert reply.correlation_id == correlation_id
        assert json.loads(reply.body) == {"id": ident, "double": 2 * ident}
    assert await record_count(replies, 1) == requests, "exactly one reply per request"
    assert handler.failed == 0
    assert gauge.peak > 1


# ---- routers and several brokers ---------------------------------------------------------


@with_each_mode
async def test_middleware_on_a_router_runs_its_manual_subscribers_concurrently(
    mode: Mode,
) -> None:
    count, partitions = 100, 2
    topic, group = unique("fit-router"), unique("g-fit-router")
    other, other_group = unique("fit-router-other"), unique("g-fit-router-other")
    for name in (topic, other):
        await create_topic(name, partitions)
        await produce(name, numbers(count), partitions=partitions)
    router = KafkaRouter(middlewares=[KafkaConcurrentProcessingMiddleware])
    broker = KafkaBroker(BOOTSTRAP, logger=None)  # the middleware is on the router only
    gauge, other_gauge = Gauge(), Gauge()
    done: Counter[int] = Counter()
    other_done: Counter[int] = Counter()

    @router.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def routed(body: int) -> None:
        async with gauge.running():
            await gauge.await_overlap()
            await asyncio.sleep(0.005)
        done[body] += 1

    # Outside the router: FastStream's own loop, one message at a time, as before.
    @broker.subscriber(
        other, group_id=other_group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def plain(body: int) -> None:
        async with other_gauge.running():
            await asyncio.sleep(0.002)
        other_done[body] += 1

    broker.include_router(router)
    if mode == "app":
        FastStream(broker, logger=None)
    async with running(broker, concurrency_limit=10, commit_batch_timeout_sec=0.2) as handler:
        await wait_until(lambda: len(done) == count and len(other_done) == count, timeout=WAIT)
        await wait_committed_to_end(group, topic, partitions)

    assert done == Counter(range(count))
    assert handler.processed == count, "only the router's subscriber went through the library"
    assert gauge.peak > 1
    assert other_gauge.peak == 1


async def test_two_brokers_in_one_process_work_independently() -> None:
    limits = {"a": 3, "b": 6}
    count, extra, partitions = 60, 20, 2
    topics = {name: unique(f"fit-two-{name}") for name in limits}
    groups = {name: unique(f"g-fit-two-{name}") for name in limits}
    brokers: dict[str, KafkaBroker] = {}
    gauges = {name: Gauge() for name in limits}
    full = {name: asyncio.Event() for name in limits}
    done: dict[str, Counter[int]] = {name: Counter() for name in limits}

    def make(name: str) -> KafkaBroker:
        broker = new_broker()

        @broker.subscriber(
            topics[name],
            group_id=groups[name],
            ack_policy=AckPolicy.MANUAL,
            auto_offset_reset="earliest",
        )
        async def handle(body: int) -> None:
            async with gauges[name].running():
                if gauges[name].active >= limits[name]:
                    full[name].set()
                # The first calls wait until this broker's own limit is reached: each peak
                # shows which limit applied to it.
                await asyncio.wait_for(full[name].wait(), OVERLAP_WAIT)
                await asyncio.sleep(0.002)
            done[name][body] += 1

        return broker

    for name in limits:
        await create_topic(topics[name], partitions)
        await produce(topics[name], numbers(count), partitions=partitions)
        brokers[name] = make(name)
    a, b = brokers["a"], brokers["b"]
    assert a.context is not b.context
    handlers = {
        name: await initialize_concurrent_processing(
            brokers[name].context, concurrency_limit=limits[name], commit_batch_timeout_sec=0.2
        )
        for name in limits
    }
    stopped_a = False
    try:
        await a.start()
        await b.start()
        await wait_until(lambda: all(len(done[n]) == count for n in limits), timeout=WAIT)
        for name in limits:
            await wait_committed_to_end(groups[name], topics[name], partitions)

        # Stop one: the other keeps consuming, processing and committing.
        await a.stop()
        await stop_concurrent_processing(a.context)
        stopped_a = True
        assert not is_kafka_handler_healthy(a.context)
        assert is_kafka_handler_healthy(b.context)
        await produce(topics["b"], numbers(extra, count), partitions=partitions)
        await wait_until(lambda: len(done["b"]) == count + extra, timeout=WAIT)
        await wait_committed_to_end(groups["b"], topics["b"], partitions)
    finally:
        if not stopped_a:
            await a.stop()
            await stop_concurrent_processing(a.context)
        await b.stop()
        await stop_concurrent_processing(b.context)

    assert handlers["a"] is not handlers["b"]
    assert done["a"] == Counter(range(count))
    assert done["b"] == Counter(range(count + extra))
    assert handlers["a"].processed == count
    assert handlers["b"].processed == count + extra
    assert gauges["a"].peak == limits["a"]
    assert gauges["b"].peak == limits["b"]


# ---- ways to run the broker ----------------------------------------------------------------


async def test_app_with_startup_and_shutdown_hooks_publishes_every_result() -> None:
    """The usual app: processing started in ``on_startup``, stopped in ``on_shutdown``."""
    count, partitions = 100, 2
    topic, out, group = unique("fit-hooks"), unique("fit-hooks-out"), unique("g-fit-hooks")
    await create_topic(topic, partitions)
    await create_topic(out, 1)
    await produce(topic, numbers(count), partitions=partitions)
    broker = KafkaBroker(BOOTSTRAP, logger=None)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    gauge = Gauge()
    calls: Counter[int] = Counter()
    healthy_while_running: list[bool] = []

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    @broker.publisher(out)
    async def handle(body: int) -> dict[str, int]:
        async with gauge.running():
            await gauge.await_overlap()
            await asyncio.sleep(0.005)
        calls[body] += 1
        return {"id": body, "square": body * body}

    async def start_processing(context: ContextRepo) -> None:
        await initialize_concurrent_processing(
            context, concurrency_limit=10, commit_batch_timeout_sec=0.2
        )

    async def stop_processing(context: ContextRepo) -> None:
        await stop_concurrent_processing(context)

    app = FastStream(
        broker, logger=None, on_startup=[start_processing], on_shutdown=[stop_processing]
    )
    serving = asyncio.create_task(app.run())
    try:
        await wait_until(lambda: len(calls) == count, timeout=WAIT)
        await wait_committed_to_end(group, topic, partitions)
        healthy_while_running.append(is_kafka_handler_healthy(broker.context))
        app.exit()
        await asyncio.wait_for(serving, WAIT)
    finally:
        serving.cancel()

    assert healthy_while_running == [True]
    assert not is_kafka_handler_healthy(broker.context), "on_shutdown stopped the processing"
    assert await record_count(out, 1) == count
    values = values_of(await read_all(out, count))
    assert sorted(values, key=lambda v: v["id"]) == [
        {"id": i, "square": i * i} for i in range(count)
    ]
    assert calls == Counter(range(count))
    assert gauge.peak > 1


async def test_bare_broker_as_async_context_manager() -> None:
    """The bare-broker form of docs/getting-started.md: ``async with broker`` + ``start()``,
    processing stopped inside the block while handlers are in flight, then the broker exits."""
    count, partitions, limit = 40, 2, 8
    topic, group = unique("fit-with"), unique("g-fit-with")
    await create_topic(topic, partitions)
    await produce(topic, numbers(count), partitions=partitions)
    broker = new_broker()
    started: dict[int, tuple[int, int]] = {}
    finished: dict[int, tuple[int, int]] = {}
    slots_full = asyncio.Event()
    release = asyncio.Event()

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(body: int, msg: KafkaMessage) -> None:
        started[body] = position(msg)
        if len(started) - len(finished) >= limit:
            slots_full.set()
        await release.wait()
        await asyncio.sleep(0.01 * (body % 3))
        finished[body] = position(msg)

    await initialize_concurrent_processing(
        broker.context, concurrency_limit=limit, shutdown_timeout_sec=WAIT
    )
    try:
        async with broker:
            await broker.start()
            await asyncio.wait_for(slots_full.wait(), WAIT)
            in_flight = len(started) - len(finished)
            release.set()
            await stop_concurrent_processing(broker.context)
            # Drained: every handler that started has finished.
            assert set(started) == set(finished)
    finally:
        release.set()
        await stop_concurrent_processing(broker.context)

    assert in_flight == limit
    assert len(finished) < count, "stopped before everything was processed"
    committed = await committed_offsets(group, topic)
    for partition in range(partitions):
        done = sorted(offset for part, offset in finished.values() if part == partition)
        assert done == list(range(len(done))), f"partition {partition} processed {done}"
        assert committed.get(partition, 0) == len(done), (partition, committed, done)


# ---- sync handlers -------------------------------------------------------------------------


class ThreadGauge:
    """Handler calls running at once, counted under a thread lock (handlers run in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.peak = 0

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1


async def test_sync_handlers_overlap_in_threads_without_blocking_the_loop() -> None:
    count, partitions, limit = 100, 2, 20
    topic, group = unique("fit-sync"), unique("g-fit-sync")
    await create_topic(topic, partitions)
    await produce(topic, numbers(count), partitions=partitions)
    broker = new_broker()
    gauge = ThreadGauge()
    loop_thread = threading.get_ident()
    threads: set[int] = set()
    done: Counter[int] = Counter()
    done_lock = threading.Lock()

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    def blocking(body: int) -> None:
        with gauge.running():
            time.sleep(0.05)  # a blocking call: FastStream runs plain ``def`` handlers in threads
        with done_lock:
            threads.add(threading.get_ident())
            done[body] += 1

    # Ticks counted while some handler is blocked in time.sleep: if a handler blocked the
    # event loop, the ticker could only run between handlers and would count none.
    ticks_during_handlers = 0

    async def ticker() -> None:
        nonlocal ticks_during_handlers
        while True:
            await asyncio.sleep(0.005)
            if gauge.active:
                ticks_during_handlers += 1

    async with running(broker, concurrency_limit=limit, commit_batch_timeout_sec=0.2) as handler:
        ticking = asyncio.create_task(ticker())
        try:
            await wait_until(lambda: len(done) == count, timeout=WAIT)
            await wait_committed_to_end(group, topic, partitions)
        finally:
            ticking.cancel()

    assert done == Counter(range(count))
    assert loop_thread not in threads
    assert 1 < gauge.peak <= limit
    assert ticks_during_handlers > 0, "the event loop did not run while handlers slept"
    assert handler.failed == 0


# ---- batch subscribers ---------------------------------------------------------------------


@with_each_mode
async def test_publisher_on_a_batch_subscriber_publishes_once_per_batch(mode: Mode) -> None:
    count, partitions = 200, 2
    topic, out, group = unique("fit-batch"), unique("fit-batch-out"), unique("g-fit-batch")
    await create_topic(topic, partitions)
    await create_topic(out, 1)
    await produce(topic, numbers(count), partitions=partitions)
    broker = new_broker(mode)
    gauge = Gauge()
    returned: list[dict[str, Any]] = []

    @broker.subscriber(
        topic,
        group_id=group,
        batch=True,
        max_records=10,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
    )
    @broker.publisher(out)
    async def summarise(bodies: list[int]) -> dict[str, Any]:
        async with gauge.running():
            await asyncio.sleep(0.01)
        result = {"ids": bodies, "total": sum(bodies), "batch": uuid.uuid4().hex}
        returned.append(result)
        return result

    async with running(broker, concurrency_limit=4, commit_batch_timeout_sec=0.2) as handler:
        await wait_until(lambda: sum(len(r["ids"]) for r in returned) >= count, timeout=WAIT)
        await wait_committed_to_end(group, topic, partitions)

    batches = len(returned)
    assert await record_count(out, 1) == batches, "one output record per batch"
    published = values_of(await read_all(out, batches))
    by_batch = operator.itemgetter("batch")
    assert sorted(published, key=by_batch) == sorted(returned, key=by_batch)
    assert sorted(i for r in returned for i in r["ids"]) == list(range(count))
    assert handler.failed == 0
    assert handler.processed == batches
