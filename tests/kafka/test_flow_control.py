"""Flow control against a real broker (issue 28): max_messages_per_sec holds admission to the
rate, ordering by a key function keeps each account's order, a key function that raises
dead-letters its record, adaptive_concurrency caps the messages running; bad settings are
refused at initialisation.

Start times are read from the handlers themselves; waiting is done with ``wait_until``.
"""

import asyncio
import math
import time
from collections import Counter
from collections.abc import Hashable
from typing import Any

import pytest
from faststream import FastStream
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.kafka.subscriber.usecase import DefaultSubscriber
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    configure_subscriber,
    initialize_concurrent_processing,
    processing_snapshot,
)
from faststream_concurrent_aiokafka.core.dead_letters import EXCEPTION_MESSAGE, EXCEPTION_TYPE
from tests.kafka_helpers import (
    BOOTSTRAP,
    committed_offsets,
    concurrent_broker,
    create_topic,
    end_offsets,
    numbered_topic,
    read_all,
    shut_down,
    unique,
    wait_until,
)

pytestmark = pytest.mark.kafka


def subscribe(broker: KafkaBroker, topic: str, group: str) -> DefaultSubscriber:
    return broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )


async def start(broker: KafkaBroker, **settings: Any) -> Any:
    """Initialise (eagerly: an app is in the context) and start the broker."""
    FastStream(broker)
    handler = await initialize_concurrent_processing(broker.context, **settings)
    await broker.start()
    return handler


# ---- the rate ----------------------------------------------------------------------------

RATE = 300
RATE_MESSAGES = 3_000


def busiest_window(starts: list[float], after: float) -> int:
    """The most handler calls started in any one-second window beginning at a start at or
    after ``after`` (the windows that can hold the most start at a call)."""
    starts = sorted(starts)
    most, end = 0, 0
    for begin, at in enumerate(starts):
        if at < after:
            continue
        end = max(end, begin)
        while end < len(starts) and starts[end] < at + 1.0:
            end += 1
        most = max(most, end - begin)
    return most


async def test_max_messages_per_sec_holds_the_rate_after_a_one_second_burst() -> None:
    """3,000 messages at max_messages_per_sec=300: all in 8.5 to 11.5 s, and after the first
    second no one-second window starts more than 330 handler calls."""
    topic, group = await numbered_topic("rate", RATE_MESSAGES, partitions=4)
    broker = concurrent_broker()
    starts: list[float] = []
    ends: list[float] = []

    @subscribe(broker, topic, group)
    async def handle(body: int) -> None:
        starts.append(time.monotonic())
        ends.append(time.monotonic())

    handler = await start(broker, concurrency_limit=100, max_messages_per_sec=RATE)
    try:
        await wait_until(lambda: len(ends) >= RATE_MESSAGES, timeout=30)
        flow = processing_snapshot(broker.context).subscribers[0].flow
    finally:
        await shut_down(broker)

    seconds = max(ends) - min(starts)
    busiest = busiest_window(starts, after=min(starts) + 1.0)
    print(f"\n{RATE_MESSAGES} messages at {RATE}/s: {seconds:.2f} s, busiest window {busiest}")
    assert 8.5 <= seconds <= 11.5
    assert busiest <= RATE * 1.1
    assert handler.processed == RATE_MESSAGES
    assert flow.max_messages_per_sec == RATE
    assert flow.rate_waits > 0
    assert flow.rate_limited > 0
    assert flow.rate_wait_sec > 5


# ---- ordering by a key function ----------------------------------------------------------

ACCOUNTS = 50
KEYFN_MESSAGES = 2_000
KEYFN_PARTITIONS = 4


def account_of(record: Any) -> Hashable | None:
    """The ordering key: the record's ``account`` header."""
    return dict(record.headers).get("account")


async def produce_accounts(topic: str) -> None:
    """Random Kafka keys (so the key mode could not order by account), an ``account`` header
    of 50 values and per account a sequence number, in the value: ``account:seq``."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=5, enable_idempotence=True)
    await producer.start()
    sequence: Counter[int] = Counter()
    try:
        for i in range(KEYFN_MESSAGES):
            account = i * 7 % ACCOUNTS
            sequence[account] += 1
            await producer.send(
                topic,
                f"{account}:{sequence[account]}".encode(),
                key=unique("k").encode(),
                headers=[("account", str(account).encode())],
            )
        await producer.flush()
    finally:
        await producer.stop()


async def test_ordering_by_a_key_function_keeps_each_accounts_order() -> None:
    """Each account's messages start one at a time, in their sequence, within the partition
    the random Kafka key put them in (Kafka orders nothing across partitions); different
    accounts overlap."""
    topic, group = unique("keyfn"), unique("g-keyfn")
    await create_topic(topic, KEYFN_PARTITIONS)
    await produce_accounts(topic)
    broker = concurrent_broker()
    running: Counter[tuple[int, bytes]] = Counter()
    last: dict[tuple[int, bytes], int] = {}
    violations: list[str] = []
    finished = 0
    peak = in_flight = 0

    @subscribe(broker, topic, group)
    async def handle(msg: KafkaMessage) -> None:
        nonlocal finished, peak, in_flight
        record = msg.raw_message
        assert not isinstance(record, tuple)
        account_text, seq_text = record.value.decode().split(":")
        unit, seq = (record.partition, account_text.encode()), int(seq_text)
        if running[unit]:
            violations.append(f"{unit}: {seq} started while another of the account ran")
        if last.get(unit, 0) >= seq:
            violations.append(f"{unit}: {seq} started after {last[unit]}")
        last[unit] = seq
        running[unit] += 1
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1
        running[unit] -= 1
        finished += 1

    await start(broker, concurrency_limit=100, ordering=account_of)
    try:
        await wait_until(lambda: finished >= KEYFN_MESSAGES, timeout=60)
    finally:
        await shut_down(broker)

    assert violations == []
    assert peak > 10  # accounts ran side by side
    assert await committed_offsets(group, topic) == await end_offsets(topic, KEYFN_PARTITIONS)


async def test_a_key_function_that_raises_dead_letters_its_record_and_goes_on() -> None:
    """The consumer goes on; the record whose key function failed goes to the dead-letter
    topic without its handler running, saying why; everything is committed."""
    topic, group = await numbered_topic("keyfn-raise", 40, partitions=2)
    dead_letters = unique("keyfn-raise-dlt")
    await create_topic(dead_letters, 1)
    broker = concurrent_broker()
    handled: list[int] = []

    def picky(record: Any) -> Hashable | None:
        if int(record.value) % 10 == 3:
            msg = f"no account in record {record.offset}"
            raise LookupError(msg)
        return int(record.partition)

    @subscribe(broker, topic, group)
    async def handle(body: int) -> None:
        handled.append(body)

    handler = await start(broker, ordering=picky, dead_letter_topic=dead_letters, max_retries=3)
    try:
        await wait_until(lambda: handler.processed >= 40, timeout=30)
    finally:
        await shut_down(broker)

    failing = {i for i in range(40) if i % 10 == 3}
    assert sorted(handled) == sorted(set(range(40)) - failing)
    letters = await read_all(dead_letters, len(failing))
    assert sorted(int(value) for _, value, _ in letters) == sorted(failing)
    for _, _, headers in letters:
        found = dict(headers)
        assert found[EXCEPTION_TYPE] == b"OrderingKeyError"
        assert b"LookupError" in found[EXCEPTION_MESSAGE]
    assert handler.failed == len(failing)
    assert await committed_offsets(group, topic) == await end_offsets(topic, 2)


# ---- adaptive concurrency ----------------------------------------------------------------


async def test_adaptive_concurrency_caps_running_messages_when_latency_grows_with_load() -> None:
    """A downstream slower with every call in flight past 10: the adaptive limit keeps far
    fewer running than the ceiling of 200, and the snapshot and the concurrency_limit gauge
    show the limit in force."""
    total = 1_500
    topic, group = await numbered_topic("adaptive", total, partitions=2)
    broker = concurrent_broker()
    in_flight = peak_late = finished = 0

    @subscribe(broker, topic, group)
    async def handle(body: int) -> None:
        nonlocal in_flight, peak_late, finished
        in_flight += 1
        if finished > total // 2:
            peak_late = max(peak_late, in_flight)
        await asyncio.sleep(0.01 * max(1.0, in_flight / 10) ** 2)
        in_flight -= 1
        finished += 1

    await start(broker, concurrency_limit=200, adaptive_concurrency=True)
    try:
        await wait_until(lambda: finished >= total, timeout=60)
        subscriber = processing_snapshot(broker.context).subscribers[0]
    finally:
        await shut_down(broker)

    assert subscriber.flow.adaptive_limit is not None
    assert subscriber.flow.adaptive_limit < 100
    assert subscriber.running_limit == subscriber.flow.adaptive_limit
    assert peak_late < 100


# ---- settings refused at initialisation --------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"max_messages_per_sec": 0}, "max_messages_per_sec"),
        ({"max_messages_per_sec": -5}, "max_messages_per_sec"),
        ({"max_messages_per_sec": math.nan}, "max_messages_per_sec"),
        ({"max_messages_per_sec": math.inf}, "max_messages_per_sec"),
        ({"ordering": "by-account"}, "ordering"),
        ({"ordering": 42}, "ordering"),
        ({"adaptive_concurrency": True, "concurrency_limit": 1}, "adaptive_concurrency"),
    ],
)
async def test_bad_flow_control_settings_are_refused_at_initialisation(
    settings: dict[str, Any], named: str
) -> None:
    broker = concurrent_broker()
    FastStream(broker)
    with pytest.raises(ValueError, match=named):
        await initialize_concurrent_processing(broker.context, **settings)


async def test_a_per_subscriber_rate_of_zero_is_refused() -> None:
    broker = concurrent_broker()
    subscriber = subscribe(broker, unique("t"), unique("g"))
    with pytest.raises(ValueError, match="max_messages_per_sec"):
        configure_subscriber(subscriber, max_messages_per_sec=0)
