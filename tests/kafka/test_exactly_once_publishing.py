"""Exactly-once in one process against the real broker: every kind of publish of a message
joins its transaction (``@publisher`` results, ``reply_to``, ``broker.publish`` in the handler,
the dead letter), an attempt that failed after publishing leaves its records only in an
aborted transaction, messages that keep failing after they publish still end, and the
transactional producers connect as the broker does (SASL)."""

import asyncio
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from faststream.exceptions import RejectMessage
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.middlewares import AckPolicy
from faststream.security import SASLPlaintext

from faststream_concurrent_aiokafka import (
    KafkaConcurrentProcessingMiddleware,
    ProcessingSnapshot,
    initialize_concurrent_processing,
    processing_snapshot,
)
from faststream_concurrent_aiokafka.core.offset_codec import encode_finished_offsets
from faststream_concurrent_aiokafka.core.transactions import MAX_SPAN
from tests.kafka_helpers import (
    BOOTSTRAP,
    committed_offsets,
    concurrent_broker,
    create_topic,
    end_offsets,
    hour_old_evens,
    numbers,
    produce,
    read_all,
    read_committed,
    read_committed_by_partition,
    shut_down,
    unique,
    wait_committed,
    wait_until,
)

pytestmark = pytest.mark.kafka

SASL_BOOTSTRAP = os.environ.get("KAFKA_SASL_BOOTSTRAP_SERVERS")
SASL_USER, SASL_PASSWORD = "fcak-test", "fcak-test-secret"  # scripts/kafka.sh's test user
Handler = Callable[..., Any]
MESSAGES = 40
PARTITIONS = 2
EXACTLY_ONCE: dict[str, Any] = {
    "processing_guarantee": "exactly_once",
    "commit_batch_timeout_sec": 0.5,
    "retry_backoff_sec": 0.01,
    "retry_backoff_max_sec": 0.02,
}


class Topics:
    def __init__(self) -> None:
        self.input = unique("eosp-in")
        self.results = unique("eosp-results")
        self.side = unique("eosp-side")
        self.replies = unique("eosp-replies")
        self.dlq = unique("eosp-dlq")
        self.group = unique("eosp-group")

    async def create(self) -> None:
        for topic in (self.input, self.results, self.side, self.replies, self.dlq):
            await create_topic(topic, PARTITIONS)

    async def produce(self, count: int, *, bootstrap: str = BOOTSTRAP) -> None:
        """Values 0..count-1; the even ones ask for a reply (FastStream's reply_to header)."""
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
        await producer.start()
        try:
            for i in range(count):
                headers = [("reply_to", self.replies.encode())] if i % 2 == 0 else []
                await producer.send(
                    self.input, str(i).encode(), partition=i % PARTITIONS, headers=headers
                )
            await producer.flush()
        finally:
            await producer.stop()


def results_of_input(broker: KafkaBroker, topics: Topics) -> Callable[[Handler], Any]:
    """The pipeline's subscriber: reads the input (committed records only), publishes its
    handler's result to the results topic."""
    subscriber = broker.subscriber(
        topics.input,
        group_id=topics.group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    publisher = broker.publisher(topics.results)
    return lambda handler: subscriber(publisher(handler))


async def run_until_committed(broker: KafkaBroker, topics: Topics) -> ProcessingSnapshot:
    """Start ``broker``, wait until its group committed the whole input, stop it; the
    snapshot taken before the stop."""
    await broker.start()
    try:
        await wait_committed(
            topics.group, topics.input, await end_offsets(topics.input, PARTITIONS), 60
        )
        return processing_snapshot(broker.context)
    finally:
        await shut_down(broker)


def counted(values: list[bytes]) -> Counter[str]:
    return Counter(value.decode().strip('"') for value in values)


async def test_every_publish_of_a_message_joins_its_transaction() -> None:
    """Message 7 fails once after it published its side record (retried: the first attempt's
    record is aborted), message 13 is rejected after publishing (dead-lettered, its side
    record aborted); everything else publishes a side record, a result and, for even values,
    a reply, each committed exactly once."""
    topics = Topics()
    await topics.create()
    await topics.produce(MESSAGES)
    broker = concurrent_broker()
    attempts: Counter[int] = Counter()

    @results_of_input(broker, topics)
    async def handle(body: int, message: KafkaMessage) -> str:
        attempts[body] += 1
        await broker.publish(f"side-{body}", topics.side)
        if body == 7 and attempts[body] == 1:
            raise RuntimeError("flaky, after publishing")
        if body == 13:
            raise RejectMessage  # dead-letter it: after publishing
        del message
        return f"result-{body}"

    await initialize_concurrent_processing(
        broker.context,
        concurrency_limit=8,
        max_retries=1,
        dead_letter_topic=topics.dlq,
        broker=broker,
        **EXACTLY_ONCE,
    )
    totals = (await run_until_committed(broker, topics)).totals

    every = set(range(MESSAGES))
    assert counted(await read_committed(topics.results, PARTITIONS)) == Counter(
        f"result-{i}" for i in every - {13}
    )
    assert counted(await read_committed(topics.side, PARTITIONS)) == Counter(
        f"side-{i}" for i in every - {13}
    )
    assert counted(await read_committed(topics.replies, PARTITIONS)) == Counter(
        f"result-{i}" for i in every - {13} if i % 2 == 0
    )
    dead = await read_committed(topics.dlq, PARTITIONS)
    assert dead == [b"13"]
    # The aborted records are there for a read_uncommitted reader: the aborts did happen (a
    # transaction aborted for one message holds the others' records too: they run again).
    uncommitted = counted([value for _, value, _ in await read_all(topics.side, MESSAGES + 2)])
    assert uncommitted["side-7"] >= 2
    assert uncommitted["side-13"] >= 1
    assert attempts[7] >= 2  # and again if an abort for 13 caught its retry
    assert attempts[13] == 1  # dead-lettered after the abort without running again
    # One abort or two: when 13 is rejected inside the transaction that 7's failure aborts,
    # that one abort drops both side records; the counts above show each was dropped.
    assert totals.transactions_aborted >= 1
    assert totals.dead_lettered == 1


@pytest.mark.skipif(SASL_BOOTSTRAP is None, reason="no SASL listener (KAFKA_SASL_PORT)")
async def test_the_transactional_producers_connect_with_the_broker_s_sasl_settings() -> None:
    assert SASL_BOOTSTRAP is not None
    topics = Topics()
    await topics.create()
    await topics.produce(MESSAGES)
    broker = KafkaBroker(
        SASL_BOOTSTRAP,
        security=SASLPlaintext(username=SASL_USER, password=SASL_PASSWORD),
        logger=None,
    )
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)

    @results_of_input(broker, topics)
    async def handle(body: int) -> str:
        await asyncio.sleep(0)
        return f"result-{body}"

    await initialize_concurrent_processing(broker.context, broker=broker, **EXACTLY_ONCE)
    committed = (await run_until_committed(broker, topics)).totals.transactions_committed
    assert committed >= 1
    assert counted(await read_committed(topics.results, PARTITIONS)) == Counter(
        f"result-{i}" for i in range(MESSAGES)
    )


async def test_a_subscriber_with_several_consumers_publishes_each_result_once() -> None:
    """``max_workers=2``: two consumers of one group in the process, each with the
    transactions of the partitions the group gave it."""
    topics = Topics()
    await topics.create()
    await topics.produce(MESSAGES)
    broker = concurrent_broker()

    @broker.subscriber(
        topics.input,
        group_id=topics.group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_workers=2,
    )
    @broker.publisher(topics.results)
    async def handle(body: int) -> str:
        await asyncio.sleep(0.001)
        return f"result-{body}"

    await initialize_concurrent_processing(broker.context, broker=broker, **EXACTLY_ONCE)
    snapshot = await run_until_committed(broker, topics)
    (subscriber,) = snapshot.subscribers
    assert subscriber.consumers == 2
    assert counted(await read_committed(topics.results, PARTITIONS)) == Counter(
        f"result-{i}" for i in range(MESSAGES)
    )


async def test_exactly_once_without_isolation_level_skips_records_of_aborted_transactions() -> None:
    # Issue 26 item 12: the library sets read_committed itself (as Kafka Streams does) instead
    # of refusing the subscriber; the records of an aborted upstream transaction never run.
    topics = Topics()
    await topics.create()
    upstream = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, transactional_id=unique("upstream"))
    await upstream.start()
    try:
        for value, commit in (("kept-1", True), ("aborted", False), ("kept-2", True)):
            await upstream.begin_transaction()
            await upstream.send_and_wait(topics.input, value.encode(), partition=0)
            await (upstream.commit_transaction() if commit else upstream.abort_transaction())
    finally:
        await upstream.stop()
    broker = concurrent_broker()
    seen: list[str] = []

    @broker.subscriber(
        topics.input,
        group_id=topics.group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
    )
    @broker.publisher(topics.results)
    async def handle(body: str) -> str:
        seen.append(body)
        return f"result-{body}"

    await initialize_concurrent_processing(broker.context, broker=broker, **EXACTLY_ONCE)
    await broker.start()
    try:
        # Offsets 0-5: kept-1, its commit marker, aborted, its abort marker, kept-2, its
        # commit marker (no consumer reads a marker, so the commit point stops before it).
        await wait_committed(topics.group, topics.input, {0: 5}, 60)
    finally:
        await shut_down(broker)

    assert seen == ["kept-1", "kept-2"]
    assert counted(await read_committed(topics.results, PARTITIONS)) == Counter(
        ["result-kept-1", "result-kept-2"]
    )


async def test_transactions_commit_on_the_interval_while_batches_fill_elsewhere() -> None:
    """Issue 26: at a steady rate that fills a commit batch over all partitions more often
    than the interval, but no partition's own, each partition's transaction still commits
    within ``commit_batch_timeout_sec`` + 1 s (before, every full batch pushed the interval
    back, and a partition committed only once it finished a whole batch by itself)."""
    partitions, rate, seconds, interval = 6, 150, 6.0, 1.0
    topic, group = unique("eos-tick-in"), unique("eos-tick-group")
    await create_topic(topic, partitions)
    broker = concurrent_broker()

    @broker.subscriber(
        topic,
        group_id=group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    async def handle(body: bytes) -> None:
        del body

    await initialize_concurrent_processing(
        broker.context,
        processing_guarantee="exactly_once",
        commit_batch_size=100,
        commit_batch_timeout_sec=interval,
        broker=broker,
    )
    await broker.start()
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
    await producer.start()
    loop = asyncio.get_running_loop()
    stale = 0.0  # the longest a partition's committed offset stayed put while fed
    try:
        # One message per partition first: every transaction is set up and committed once.
        for partition in range(partitions):
            await producer.send(topic, b"x", partition=partition)
        await wait_committed(group, topic, dict.fromkeys(range(partitions), 1), 30)
        produced = 0
        started = loop.time()
        last = dict.fromkeys(range(partitions), 1)
        moved_at = dict.fromkeys(range(partitions), started)
        while (now := loop.time()) - started < seconds:
            while produced < (now - started) * rate:
                await producer.send(topic, b"x", partition=produced % partitions)
                produced += 1
            for partition, offset in (await committed_offsets(group, topic)).items():
                if last.get(partition) != offset:
                    last[partition], moved_at[partition] = offset, now
            stale = max([stale, *(now - at for at in moved_at.values())])
            await asyncio.sleep(0.2)
    finally:
        await producer.stop()
        await shut_down(broker)
    assert stale <= interval + 1.0 + 0.5  # 0.5 s: the sampling and a commit's own time


async def test_a_transaction_s_results_without_a_key_go_to_one_partition() -> None:
    """Unkeyed results are not spread over the results topic's partitions record by record
    (aiokafka's random choice): a transaction's go to one partition, in one batch per
    request. The first batch lets the producer learn the topic; the second, 40 messages in
    one transaction, lands whole in one of the 4 partitions."""
    batch = 40
    topics = Topics()
    await create_topic(topics.input, 1)
    await create_topic(topics.results, 4)
    broker = concurrent_broker()

    @results_of_input(broker, topics)
    async def handle(body: int) -> int:
        return body

    await initialize_concurrent_processing(
        broker.context,
        processing_guarantee="exactly_once",
        commit_batch_size=batch,  # one transaction per batch: the interval never comes
        commit_batch_timeout_sec=30.0,
        transaction_timeout_sec=60.0,
        concurrency_limit=8,
        broker=broker,
    )
    await broker.start()
    try:
        for first in (0, batch):
            await produce(
                topics.input, [str(i).encode() for i in range(first, first + batch)], partitions=1
            )
            await wait_committed(topics.group, topics.input, {0: first + batch}, 30)
    finally:
        await shut_down(broker)
    by_partition = await read_committed_by_partition(topics.results, 4)
    second = {str(i).encode() for i in range(batch, 2 * batch)}
    holding = [p for p, values in by_partition.items() if second & set(values)]
    assert len(holding) == 1, {p: len(v) for p, v in by_partition.items()}
    assert sum(map(len, by_partition.values())) == 2 * batch


async def test_a_result_the_broker_refused_is_never_committed_and_its_partition_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiokafka commits a transaction without a record the broker refused; the library must
    not, and the producer cannot go on (its next batch to that partition fails out of
    sequence: before the fix, every later transaction aborted for ever). Message 7's first
    attempt publishes a result larger than the results topic accepts (``max.message.bytes``)
    and the handler swallows the error: the partition's producer is dropped, the member asks
    for a new assignment, a new producer runs the messages again; every result is committed
    once, the refused one never."""
    topics = Topics()
    await create_topic(topics.input, 1)
    await create_topic(topics.results, 1, configs={"max.message.bytes": "2000"})
    await produce(topics.input, [str(i).encode() for i in range(MESSAGES)], partitions=1)
    broker = concurrent_broker()
    attempts: Counter[int] = Counter()
    refused: list[str] = []

    @broker.subscriber(
        topics.input,
        group_id=topics.group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    async def handle(body: int) -> None:
        attempts[body] += 1
        result = "x" * 5000 if body == 7 and attempts[body] == 1 else f"result-{body}"
        try:
            await broker.publish(result, topics.results)
        except Exception as exc:  # the handler goes on regardless
            refused.append(type(exc).__name__)

    await initialize_concurrent_processing(
        broker.context, concurrency_limit=1, broker=broker, **EXACTLY_ONCE
    )
    await broker.start()
    try:
        await wait_committed(topics.group, topics.input, {0: MESSAGES}, 60)
        totals = processing_snapshot(broker.context).totals
    finally:
        await shut_down(broker)
    # Publishes after the refusal, until the partition is dropped, are refused at once.
    assert refused[0] == "MessageSizeTooLargeError"
    assert set(refused[1:]) <= {"TransactionalPublishError"}, refused
    assert totals.transactions_committed >= 1
    stopped = [r.getMessage() for r in caplog.records if "stopped:" in r.getMessage()]
    assert stopped and "MessageSizeTooLarge" in stopped[0], stopped
    assert attempts[7] == 2
    assert counted(await read_committed(topics.results, 1)) == Counter(
        f"result-{i}" for i in range(MESSAGES)
    )


async def test_commit_metadata_claiming_more_than_a_transaction_carries_does_not_spin() -> None:
    """Issue 26: a group whose committed metadata claims an offset further above the commit
    point than a transaction's metadata can carry (another client's, or the at-least-once
    mode's) made every transaction abort, its messages ran again at once, forever. The claim
    is trimmed at set-up (a WARNING says so): every message runs once and is committed."""
    topic, group = unique("eos-claim-in"), unique("eos-claim-group")
    await create_topic(topic, 1)
    claim = encode_finished_offsets(0, {4 * MAX_SPAN})  # as the at-least-once mode may keep
    writer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=group, enable_auto_commit=False)
    await writer.start()
    try:
        writer.assign([TopicPartition(topic, 0)])
        await writer.commit({TopicPartition(topic, 0): OffsetAndMetadata(0, claim)})
    finally:
        await writer.stop()
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
    await producer.start()
    try:
        for value in range(MESSAGES):
            await producer.send(topic, str(value).encode(), partition=0)
        await producer.flush()
    finally:
        await producer.stop()
    broker = concurrent_broker()
    runs: Counter[int] = Counter()

    @broker.subscriber(
        topic,
        group_id=group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    async def handle(body: int) -> None:
        runs[body] += 1

    await initialize_concurrent_processing(broker.context, broker=broker, **EXACTLY_ONCE)
    await broker.start()
    try:
        await wait_committed(group, topic, {0: MESSAGES}, 30)
        totals = processing_snapshot(broker.context).totals
    finally:
        await shut_down(broker)
    assert runs == Counter(range(MESSAGES))
    assert totals.transactions_aborted == 0


@pytest.mark.parametrize("dead_letters", [True, False], ids=["dead-lettered", "counted"])
async def test_exactly_once_expires_records_too_old_inside_their_transaction(
    dead_letters: bool,
) -> None:
    """``max_message_age_sec`` under exactly-once: the even records are an hour old and never
    run; each is dead-lettered inside its transaction (committed exactly once, with the
    expiry header) or counted ``expired``; the fresh ones publish their result; the commit
    passes them all."""
    topics = Topics()
    await topics.create()
    await produce(
        topics.input, numbers(MESSAGES), partitions=PARTITIONS, timestamp_ms=hour_old_evens
    )
    broker = concurrent_broker()
    ran: list[int] = []

    @results_of_input(broker, topics)
    async def handle(body: int) -> str:
        ran.append(body)
        return f"result-{body}"

    await initialize_concurrent_processing(
        broker.context,
        concurrency_limit=8,
        max_message_age_sec=60,
        dead_letter_topic=topics.dlq if dead_letters else None,
        broker=broker,
        **EXACTLY_ONCE,
    )
    totals = (await run_until_committed(broker, topics)).totals

    fresh = set(range(1, MESSAGES, 2))
    assert set(ran) == fresh
    assert counted(await read_committed(topics.results, PARTITIONS)) == Counter(
        f"result-{i}" for i in fresh
    )
    old = MESSAGES // 2
    if dead_letters:
        dead = await read_committed(topics.dlq, PARTITIONS)
        assert sorted(int(value) for value in dead) == list(range(0, MESSAGES, 2))
        letters = await read_all(topics.dlq, old)
        assert all(
            dict(headers)["x-dead-letter-exception-type"] == b"MessageExpiredError"
            for _, _, headers in letters
        )
        assert (totals.dead_lettered, totals.expired) == (old, 0)
    else:
        assert await read_committed(topics.dlq, PARTITIONS) == []
        assert (totals.dead_lettered, totals.expired) == (0, old)


@pytest.mark.parametrize("dead_letters", [True, False], ids=["dead-lettered", "given-up"])
async def test_two_messages_failing_after_publishing_in_separate_fetches_both_end(
    dead_letters: bool,
) -> None:
    """Two messages of one partition fail after publishing on every attempt, the second read
    after the first's abort: each abort one causes must not undo the other's dead letter (or
    giving up) for good; the group commits past both."""
    source, side, dlq, group = (unique(p) for p in ("eosl-in", "eosl-side", "eosl-dlq", "eosl-g"))
    for topic in (source, side, dlq):
        await create_topic(topic, 1)
    await produce(source, [b"0"], partitions=1)
    broker = concurrent_broker()
    attempts: Counter[int] = Counter()

    @broker.subscriber(
        source,
        group_id=group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    async def handle(body: int) -> None:
        attempts[body] += 1
        await broker.publish(f"side-{body}", side)
        raise RuntimeError("always, after publishing")

    await initialize_concurrent_processing(
        broker.context,
        concurrency_limit=8,
        max_retries=0,
        dead_letter_topic=dlq if dead_letters else None,
        broker=broker,
        **EXACTLY_ONCE,
    )
    await broker.start()
    try:
        await wait_until(
            lambda: processing_snapshot(broker.context).totals.transactions_aborted >= 1
        )
        await produce(source, [b"1"], partitions=1)
        await wait_committed(group, source, {0: 2}, 30)
    finally:
        await shut_down(broker)
    assert await read_committed(side, 1) == []
    if dead_letters:
        assert sorted(await read_committed(dlq, 1)) == [b"0", b"1"]
    assert attempts == Counter({0: 1, 1: 1})  # never run again once its record was final
