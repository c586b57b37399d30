"""Failure policy against a real broker: retries, dead letters, control exceptions.

Every test uses its own topics and group. Progress is observed through the handler's
counters, the log records of the library and the broker's committed offsets, never by
sleeping.
"""

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError
from faststream import BaseMiddleware
from faststream.exceptions import AckMessage, NackMessage, RejectMessage, SkipMessage
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.kafka.subscriber.usecase import DefaultSubscriber
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    ConcurrentProcessing,
    configure_subscriber,
    health_report,
    initialize_concurrent_processing,
    is_kafka_handler_healthy,
    stop_concurrent_processing,
)
from tests.kafka_helpers import (
    BOOTSTRAP,
    committed_offsets,
    concurrent_broker,
    create_topic,
    end_offsets,
    read_all,
    shut_down,
    unique,
    wait_until,
)

pytestmark = pytest.mark.kafka

LIBRARY_LOGGER = "faststream_concurrent_aiokafka"

# (partition, key, value, headers) of a record to produce.
Outgoing = tuple[int, bytes | None, bytes, list[tuple[str, bytes]]]
# (key, value, headers) as read back by tests.kafka_helpers.read_all.
Incoming = tuple[bytes | None, bytes, list[tuple[str, bytes]]]

BROKER_MAX_MESSAGE_BYTES = 1_048_588  # Kafka's default message.max.bytes

DL_TOPIC = "x-dead-letter-topic"
DL_PARTITION = "x-dead-letter-partition"
DL_OFFSET = "x-dead-letter-offset"
DL_TYPE = "x-dead-letter-exception-type"
DL_MESSAGE = "x-dead-letter-exception-message"
DL_ATTEMPTS = "x-dead-letter-attempts"
DL_HEADERS = (DL_TOPIC, DL_PARTITION, DL_OFFSET, DL_TYPE, DL_MESSAGE, DL_ATTEMPTS)


class PoisonError(Exception):
    """What the test handlers raise for messages that must fail."""


# ---- helpers -----------------------------------------------------------------------------


async def send(topic: str, records: Sequence[Outgoing]) -> None:
    """Produce records to explicit partitions, in order, and wait for all of them."""
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=5)
    await producer.start()
    try:
        for partition, key, value, headers in records:
            await producer.send(topic, value, key=key, partition=partition, headers=headers)
        await producer.flush()
    finally:
        await producer.stop()


async def create_topic_with_configs(name: str, partitions: int, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
    finally:
        await admin.close()


class Unreachable:
    """Makes publishes to one topic fail as an unreachable broker does (a transient error,
    retried), until ``reachable`` is set: a broker middleware, so a dead letter meets it on
    its way to the real broker."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.reachable = False

    def middleware(self) -> type[BaseMiddleware]:
        unreachable = self

        class Cut(BaseMiddleware):
            async def publish_scope(self, call_next: Any, cmd: Any) -> Any:
                if cmd.destination == unreachable.topic and not unreachable.reachable:
                    msg = f"{unreachable.topic} is unreachable (injected by the test)"
                    raise KafkaConnectionError(msg)
                return await call_next(cmd)

        return Cut


async def record_count(topic: str, partitions: int) -> int:
    """How many records the topic holds (fresh topics: sum of the end offsets)."""
    return sum((await end_offsets(topic, partitions)).values())


async def all_committed(group: str, topic: str, partitions: int) -> bool:
    return await committed_offsets(group, topic) == await end_offsets(topic, partitions)


def header_map(headers: Sequence[tuple[str, bytes]]) -> dict[str, bytes]:
    return dict(headers)


def small(partition: int) -> Outgoing:
    return (partition, None, b"small", [])


def publish_failures(caplog: pytest.LogCaptureFixture) -> int:
    """How many dead-letter publishes failed so far (each is logged at ERROR)."""
    return sum(
        1
        for r in library_records(caplog, logging.ERROR)
        if r.getMessage().startswith("Dead-lettering")
    )


@asynccontextmanager
async def running(broker: KafkaBroker, **settings: Any) -> AsyncIterator[ConcurrentProcessing]:
    """Concurrent processing set up, broker started; on exit the broker stops (drain and
    commit) and the handler is stopped."""
    handler = await initialize_concurrent_processing(broker.context, **settings)
    try:
        await broker.start()
        yield handler
    finally:
        try:
            await broker.stop()
        finally:
            await stop_concurrent_processing(broker.context)


def stuck_reported(broker: KafkaBroker, where: str) -> bool:
    """Health is degraded by a stuck dead-letter publish of the message at ``where``."""
    report = health_report(broker.context)
    return report.status == "degraded" and any(
        "dead-letter publish" in reason and where in reason for reason in report.reasons
    )


def position(msg: KafkaMessage) -> tuple[int, int]:
    """(partition, offset) of the record behind a single (non-batch) message."""
    raw = msg.raw_message
    assert not isinstance(raw, tuple)
    return raw.partition, raw.offset


def library_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LIBRARY_LOGGER and r.levelno == level]


def manual_subscriber(broker: KafkaBroker, topic: str, group: str) -> DefaultSubscriber:
    return broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )


def assert_dead_letter_headers(
    headers: Sequence[tuple[str, bytes]],
    *,
    topic: str,
    partition: int,
    offset: int,
    exception_type: str,
    attempts: int,
    exception_message: str | None = None,
) -> None:
    found = header_map(headers)
    assert found[DL_TOPIC] == topic.encode()
    assert found[DL_PARTITION] == str(partition).encode()
    assert found[DL_OFFSET] == str(offset).encode()
    assert found[DL_TYPE] == exception_type.encode()
    assert found[DL_ATTEMPTS] == str(attempts).encode()
    if exception_message is not None:
        assert found[DL_MESSAGE] == exception_message.encode()


# ---- 1. acceptance -----------------------------------------------------------------------


@pytest.mark.smoke
async def test_every_tenth_message_is_retried_then_dead_lettered_and_all_is_committed() -> None:
    topic, dead_letters, group = unique("fp-accept"), unique("fp-accept-dlt"), unique("g")
    await create_topic(topic, 4)
    await create_topic(dead_letters, 2)
    total = 1000
    await send(
        topic,
        [
            (i % 4, f"key-{i}".encode(), str(i).encode(), [("origin", f"o-{i}".encode())])
            for i in range(total)
        ],
    )

    calls: Counter[int] = Counter()
    positions: dict[int, tuple[int, int]] = {}
    broker = concurrent_broker()

    @manual_subscriber(broker, topic, group)
    async def handle(body: int, msg: KafkaMessage) -> None:
        calls[body] += 1
        positions[body] = position(msg)
        if body % 10 == 0:
            raise PoisonError(f"poison {body}")

    async with running(
        broker,
        concurrency_limit=32,
        commit_batch_size=50,
        commit_batch_timeout_sec=0.5,
        max_retries=2,
        retry_backoff_sec=0.01,
        dead_letter_topic=dead_letters,
    ) as handler:
        await wait_until(lambda: handler.processed >= total, timeout=60)

    failing = {i for i in range(total) if i % 10 == 0}
    assert sum(calls.values()) == 1200
    assert {i: n for i, n in calls.items() if n != 1} == dict.fromkeys(failing, 3)
    assert set(calls) == set(range(total))
    assert handler.processed == total
    assert handler.failed == len(failing)

    assert await record_count(dead_letters, 2) == len(failing)
    records = await read_all(dead_letters, len(failing))
    assert len(records) == len(failing)
    seen: set[int] = set()
    for key, value, headers in records:
        i = int(value)
        seen.add(i)
        assert key == f"key-{i}".encode()
        assert headers[0] == ("origin", f"o-{i}".encode())
        partition, offset = positions[i]
        assert partition == i % 4
        assert_dead_letter_headers(
            headers,
            topic=topic,
            partition=partition,
            offset=offset,
            exception_type="PoisonError",
            exception_message=f"poison {i}",
            attempts=3,
        )
    assert seen == failing

    assert await committed_offsets(group, topic) == await end_offsets(topic, 4)


# ---- 2. a dead-letter publish that keeps failing ----------------------------------------


async def test_failing_dead_letter_publish_holds_the_commit_point_until_redelivery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LIBRARY_LOGGER)
    topic, dead_letters, group = unique("fp-stuck"), unique("fp-stuck-dlt"), unique("g")
    await create_topic(topic, 2)
    await create_topic(dead_letters, 1)
    # Every dead-letter publish fails as with the broker out of reach (retried, never ends).
    cut = Unreachable(dead_letters)
    big = b"x" * 4096
    poisoned_offset = 2
    # Partition 0: offsets 0, 1 small, 2 big (poisoned), 3, 4 small. Partition 1: 5 small.
    values = [b"small", b"small", big, b"small", b"small"]
    await send(topic, [(0, None, v, []) for v in values] + [small(1) for _ in range(5)])

    handled: list[tuple[int, int]] = []
    broker = concurrent_broker()
    broker.add_middleware(cut.middleware())

    @manual_subscriber(broker, topic, group)
    async def handle(msg: KafkaMessage) -> None:
        handled.append(position(msg))
        if len(msg.body) > 1000:
            raise PoisonError("too big to handle")

    async with running(
        broker,
        commit_batch_size=1,
        commit_batch_timeout_sec=0.1,
        shutdown_timeout_sec=1.0,
        retry_backoff_sec=0.05,
        retry_backoff_max_sec=0.1,
        dead_letter_topic=dead_letters,
    ) as handler:
        await wait_until(lambda: (0, 4) in handled and (1, 4) in handled)
        await wait_until(lambda: publish_failures(caplog) >= 3)
        await wait_until(lambda: stuck_reported(broker, f"{topic}[0]@{poisoned_offset}"))
        # Degraded, not failed: the processing goes on, a restart would not fix the topic.
        assert is_kafka_handler_healthy(broker.context)
        await wait_until(lambda: all_committed_but_p0(group, topic, poisoned_offset))

        # More traffic while stuck: the other partition keeps committing, partition 0 does not.
        requests_before = handler.committer.commit_requests
        failures_before = publish_failures(caplog)
        await send(topic, [small(1) for _ in range(5)] + [small(0)])
        await wait_until(lambda: (1, 9) in handled and (0, 5) in handled)
        await wait_until(
            lambda: committed_at(group, topic, {0: poisoned_offset, 1: 10}), timeout=30
        )
        await wait_until(lambda: publish_failures(caplog) >= failures_before + 3)
        assert handler.committer.commit_requests > requests_before
        assert await committed_offsets(group, topic) == {0: poisoned_offset, 1: 10}
        assert stuck_reported(broker, f"{topic}[0]@{poisoned_offset}")
        assert handled.count((0, poisoned_offset)) == 1  # max_retries=0: one attempt

    # Shutdown cancels the stuck message: partition 0 stays behind it.
    assert await committed_offsets(group, topic) == {0: poisoned_offset, 1: 10}
    assert await record_count(dead_letters, 1) == 0

    # Restarted (without a dead-letter topic and with a handler that succeeds): the poisoned
    # message and everything after it on partition 0 are delivered again.
    redelivered: list[tuple[int, int, int]] = []
    broker = concurrent_broker()

    @manual_subscriber(broker, topic, group)
    async def handle_again(msg: KafkaMessage) -> None:
        redelivered.append((*position(msg), len(msg.body)))

    async with running(broker, commit_batch_size=1, commit_batch_timeout_sec=0.1) as again:
        assert is_kafka_handler_healthy(broker.context)
        await wait_until(lambda: all_committed(group, topic, 2))
        assert again.failed == 0

    assert (0, poisoned_offset, len(big)) in redelivered
    # Offsets 3..5 were finished in the first run; they are either run again or skipped as
    # already done (commit metadata), but nothing below the commit point comes back.
    assert {o for p, o, _ in redelivered if p == 0} <= {2, 3, 4, 5}
    assert [o for p, o, _ in redelivered if p == 1] == []


async def all_committed_but_p0(group: str, topic: str, poisoned_offset: int) -> bool:
    return await committed_at(group, topic, {0: poisoned_offset, 1: 5})


async def committed_at(group: str, topic: str, expected: dict[int, int]) -> bool:
    return await committed_offsets(group, topic) == expected


async def test_stuck_dead_letter_publish_recovers_once_the_topic_is_reachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LIBRARY_LOGGER)
    topic, dead_letters, group = unique("fp-recover"), unique("fp-recover-dlt"), unique("g")
    await create_topic(topic, 1)
    await create_topic(dead_letters, 1)
    cut = Unreachable(dead_letters)
    big = b"y" * 4096
    await send(
        topic, [(0, b"a", b"small", []), (0, b"b", big, [("h", b"1")]), (0, None, b"small", [])]
    )

    handled: list[int] = []
    broker = concurrent_broker()
    broker.add_middleware(cut.middleware())

    @manual_subscriber(broker, topic, group)
    async def handle(msg: KafkaMessage) -> None:
        handled.append(position(msg)[1])
        if len(msg.body) > 1000:
            raise PoisonError("too big to handle")

    async with running(
        broker,
        commit_batch_size=1,
        commit_batch_timeout_sec=0.1,
        retry_backoff_sec=0.05,
        retry_backoff_max_sec=0.2,
        dead_letter_topic=dead_letters,
    ) as handler:
        await wait_until(lambda: publish_failures(caplog) >= 2)
        await wait_until(lambda: committed_at(group, topic, {0: 1}))
        assert stuck_reported(broker, f"{topic}[0]@1")

        cut.reachable = True

        await wait_until(lambda: all_committed(group, topic, 1))
        assert health_report(broker.context).status == "ok"
        assert handler.failed == 1

    assert sorted(handled) == [0, 1, 2]  # only the publish was retried, not the handler
    assert await record_count(dead_letters, 1) == 1
    [(key, value, headers)] = await read_all(dead_letters, 1)
    assert (key, value) == (b"b", big)
    assert headers[0] == ("h", b"1")
    assert_dead_letter_headers(
        headers, topic=topic, partition=0, offset=1, exception_type="PoisonError", attempts=1
    )


async def test_a_dead_letter_over_the_size_limit_goes_without_its_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A message just under the broker's size limit always fails: its dead letter (the same
    value plus some 300 bytes of dead-letter headers) is over the limit. It is sent once more
    without its value instead of being retried for good, and the commit point passes it."""
    caplog.set_level(logging.WARNING, logger=LIBRARY_LOGGER)
    topic, dead_letters, group = unique("fp-huge"), unique("fp-huge-dlt"), unique("g")
    await create_topic(topic, 1)
    await create_topic(dead_letters, 1)
    # The broker's default message.max.bytes less 200 bytes: the record fits, with the
    # dead-letter headers it does not.
    huge = b"z" * (BROKER_MAX_MESSAGE_BYTES - 200)
    await send(topic, [small(0), (0, None, huge, [("h", b"1")]), small(0)])
    broker = concurrent_broker()

    @manual_subscriber(broker, topic, group)
    async def handle(msg: KafkaMessage) -> None:
        if len(msg.body) > 1000:
            raise PoisonError("always fails")

    loop = asyncio.get_running_loop()
    async with running(
        broker,
        commit_batch_size=1,
        commit_batch_timeout_sec=0.1,
        retry_backoff_sec=0.05,
        retry_backoff_max_sec=0.2,
        dead_letter_topic=dead_letters,
    ) as handler:
        started = loop.time()
        await wait_until(lambda: all_committed(group, topic, 1), timeout=30)
        print(f"\ncommitted == end {loop.time() - started:.1f} s after the start")
        assert handler.failed == 1
        assert health_report(broker.context).status == "ok"

    [(key, value, headers)] = await read_all(dead_letters, 1)
    assert (key, value) == (None, b"")
    assert header_map(headers)["x-dead-letter-value-dropped"] == str(len(huge)).encode()
    assert headers[0] == ("h", b"1")
    assert_dead_letter_headers(
        headers, topic=topic, partition=0, offset=1, exception_type="PoisonError", attempts=1
    )
    assert publish_failures(caplog) == 0  # never retried
    assert any(f"without its {len(huge)}-byte value" in r.getMessage() for r in caplog.records)


# ---- 3. no dead-letter topic ----------------------------------------------------------------


async def test_without_dead_letter_topic_failures_are_logged_and_committed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LIBRARY_LOGGER)
    topic, group = unique("fp-nodlt"), unique("g")
    await create_topic(topic, 2)
    await send(topic, [(i % 2, None, str(i).encode(), []) for i in range(10)])
    failing = {3, 4, 7}

    calls: Counter[int] = Counter()
    positions: dict[int, tuple[int, int]] = {}
    broker = concurrent_broker()

    @manual_subscriber(broker, topic, group)
    async def handle(body: int, msg: KafkaMessage) -> None:
        calls[body] += 1
        positions[body] = position(msg)
        if body in failing:
            raise PoisonError(f"poison {body}")

    async with running(broker, commit_batch_size=1, commit_batch_timeout_sec=0.1) as handler:
        await wait_until(lambda: handler.processed >= 10)
        await wait_until(lambda: all_committed(group, topic, 2))

    assert calls == Counter(range(10))  # max_retries defaults to 0: one attempt each
    assert handler.failed == len(failing)
    errors = [r.getMessage() for r in library_records(caplog, logging.ERROR)]
    for body in failing:
        partition, offset = positions[body]
        where = f"{topic}[{partition}]@{offset}"
        assert [m for m in errors if where in m and f"poison {body}" in m], (where, errors)
    assert len(errors) == len(failing)
    assert await committed_offsets(group, topic) == await end_offsets(topic, 2)


# ---- 4. control exceptions --------------------------------------------------------------


async def run_control_scenario(
    behaviours: dict[bytes, Any],
) -> tuple[Counter[bytes], ConcurrentProcessing, list[Incoming], str, int]:
    """One partition, one message per behaviour (plus a plain one), max_retries=3 and a
    dead-letter topic. ``behaviour(msg, attempt)`` runs inside the handler.

    Returns the attempts per message, the handler, the dead letters, the topic and the
    partition-0 offset of each message is its index in ``behaviours``."""
    topic, dead_letters, group = unique("fp-ctl"), unique("fp-ctl-dlt"), unique("g")
    await create_topic(topic, 1)
    await create_topic(dead_letters, 1)
    values = [*behaviours, b"plain"]
    await send(topic, [(0, b"k-" + v, v, [("h", v)]) for v in values])

    calls: Counter[bytes] = Counter()
    broker = concurrent_broker()

    @manual_subscriber(broker, topic, group)
    async def handle(msg: KafkaMessage) -> None:
        calls[msg.body] += 1
        behaviour = behaviours.get(msg.body)
        if behaviour is not None:
            await behaviour(msg, calls[msg.body])

    async with running(
        broker,
        commit_batch_size=1,
        commit_batch_timeout_sec=0.1,
        max_retries=3,
        retry_backoff_sec=0.01,
        dead_letter_topic=dead_letters,
    ) as handler:
        await wait_until(lambda: handler.processed >= len(values))
        await wait_until(lambda: all_committed(group, topic, 1))

    count = await record_count(dead_letters, 1)
    letters = await read_all(dead_letters, count) if count else []
    assert len(letters) == count
    return calls, handler, letters, topic, count


async def nack_raised_once(_msg: KafkaMessage, attempt: int) -> None:
    if attempt == 1:
        raise NackMessage


async def nack_called_once(msg: KafkaMessage, attempt: int) -> None:
    if attempt == 1:
        await msg.nack()


async def reject_raised(_msg: KafkaMessage, _attempt: int) -> None:
    raise RejectMessage


async def reject_called(msg: KafkaMessage, _attempt: int) -> None:
    await msg.reject()


async def ack_raised(_msg: KafkaMessage, _attempt: int) -> None:
    raise AckMessage


async def skip_raised(_msg: KafkaMessage, _attempt: int) -> None:
    raise SkipMessage


async def test_nack_once_is_a_failed_attempt_that_is_retried_then_succeeds() -> None:
    calls, handler, letters, _topic, _count = await run_control_scenario(
        {b"nack-raised": nack_raised_once, b"nack-called": nack_called_once}
    )

    assert calls == {b"nack-raised": 2, b"nack-called": 2, b"plain": 1}
    assert letters == []
    assert handler.failed == 0


async def test_reject_raised_dead_letters_after_one_attempt() -> None:
    calls, handler, letters, topic, _count = await run_control_scenario(
        {b"reject-raised": reject_raised}
    )

    assert calls == {b"reject-raised": 1, b"plain": 1}
    assert len(letters) == 1
    key, value, headers = letters[0]
    assert (key, value) == (b"k-reject-raised", b"reject-raised")
    assert headers[0] == ("h", b"reject-raised")
    assert_dead_letter_headers(
        headers, topic=topic, partition=0, offset=0, exception_type="RejectMessage", attempts=1
    )
    assert handler.failed == 1


@pytest.mark.smoke
async def test_msg_reject_dead_letters_after_one_attempt() -> None:
    calls, handler, letters, topic, _count = await run_control_scenario(
        {b"reject-called": reject_called}
    )

    assert calls == {b"reject-called": 1, b"plain": 1}
    assert [(k, v) for k, v, _h in letters] == [(b"k-reject-called", b"reject-called")]
    assert_dead_letter_headers(
        letters[0][2],
        topic=topic,
        partition=0,
        offset=0,
        exception_type="RejectMessage",
        attempts=1,
    )
    assert handler.failed == 1


async def test_ack_and_skip_raised_settle_the_message_without_retry() -> None:
    calls, handler, letters, _topic, _count = await run_control_scenario(
        {b"ack-raised": ack_raised, b"skip-raised": skip_raised}
    )

    assert calls == {b"ack-raised": 1, b"skip-raised": 1, b"plain": 1}
    assert letters == []
    assert handler.failed == 0


# ---- 5. decode errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("no_retry_on", "attempts"),
    [
        # The default: FastStream's decoding errors are not worth retrying (issue 16; this
        # test asserted 2 retries before no_retry_on existed).
        (None, 1),
        # Opting out of the default retries them like any failure.
        ((), 3),
    ],
    ids=["default-no-retry", "retried-when-opted-out"],
)
async def test_undecodable_message_is_dead_lettered_with_original_bytes(
    caplog: pytest.LogCaptureFixture,
    no_retry_on: tuple[type[Exception], ...] | None,
    attempts: int,
) -> None:
    caplog.set_level(logging.INFO, logger=LIBRARY_LOGGER)
    topic, dead_letters, group = unique("fp-decode"), unique("fp-decode-dlt"), unique("g")
    await create_topic(topic, 1)
    await create_topic(dead_letters, 1)
    await send(
        topic,
        [
            (0, b"a", b"1", []),
            (0, b"b", b"not-json", [("origin", b"producer")]),
            (0, b"c", b"3", []),
        ],
    )

    bodies: list[int] = []
    broker = concurrent_broker()

    @manual_subscriber(broker, topic, group)
    async def handle(body: int) -> None:
        bodies.append(body)

    policy = {} if no_retry_on is None else {"no_retry_on": no_retry_on}
    async with running(
        broker,
        commit_batch_size=1,
        commit_batch_timeout_sec=0.1,
        max_retries=2,
        retry_backoff_sec=0.01,
        dead_letter_topic=dead_letters,
        **policy,
    ) as handler:
        await wait_until(lambda: handler.processed >= 3)
        await wait_until(lambda: all_committed(group, topic, 1))

    assert sorted(bodies) == [1, 3]
    assert handler.failed == 1
    # A retried attempt is one short INFO line, not an error.
    retries = [
        r.getMessage()
        for r in library_records(caplog, logging.INFO)
        if r.getMessage().startswith("Attempt") and f"{topic}[0]@1" in r.getMessage()
    ]
    assert len(retries) == attempts - 1
    [final] = [
        r.getMessage()
        for r in library_records(caplog, logging.ERROR)
        if f"{topic}[0]@1" in r.getMessage()
    ]
    assert f"after {attempts} attempt(s)" in final
    assert ("not retried" in final) is (attempts == 1)

    assert await record_count(dead_letters, 1) == 1
    [(key, value, headers)] = await read_all(dead_letters, 1)
    assert (key, value) == (b"b", b"not-json")
    assert headers[0] == ("origin", b"producer")
    found = header_map(headers)
    assert found[DL_TOPIC] == topic.encode()
    assert found[DL_OFFSET] == b"1"
    assert found[DL_ATTEMPTS] == str(attempts).encode()
    # FastStream validates the body with pydantic before the handler is called.
    assert found[DL_TYPE] == b"ValidationError"
    # The rule that failed, by field, without the body pydantic's own text quotes.
    assert b"body: Input should be a valid integer" in found[DL_MESSAGE]
    assert b"not-json" not in found[DL_MESSAGE]


# ---- 6. key ordering with retries ---------------------------------------------------------


async def test_key_ordering_holds_later_messages_until_the_retried_one_is_done() -> None:
    topic, dead_letters, group = unique("fp-order"), unique("fp-order-dlt"), unique("g")
    await create_topic(topic, 1)
    await create_topic(dead_letters, 1)
    # A0 fails on every attempt (3 attempts, then dead-lettered), B0 fails once.
    names = [b"A0", b"B0", b"A1", b"C0", b"B1", b"A2"]
    await send(topic, [(0, name[:1], name, []) for name in names])

    events: list[tuple[str, bytes, int]] = []
    attempts: Counter[bytes] = Counter()
    c0_done = asyncio.Event()
    c0_ran_during_a0_retry: list[bool] = []
    failed_seen_by_a1: list[int] = []
    broker = concurrent_broker()
    handler_ref: list[ConcurrentProcessing] = []

    @manual_subscriber(broker, topic, group)
    async def handle(msg: KafkaMessage) -> None:
        name = msg.body
        attempts[name] += 1
        attempt = attempts[name]
        events.append(("start", name, attempt))
        try:
            await asyncio.sleep(0)
            if name == b"A1":
                failed_seen_by_a1.append(handler_ref[0].failed)
            if name == b"A0":
                if attempt == 2:
                    # Another key runs while A0 is being retried.
                    try:
                        await asyncio.wait_for(c0_done.wait(), timeout=15)
                        c0_ran_during_a0_retry.append(True)
                    except TimeoutError:
                        c0_ran_during_a0_retry.append(False)
                raise PoisonError(f"A0 attempt {attempt}")
            if name == b"B0" and attempt == 1:
                raise PoisonError("B0 first attempt")
            if name == b"C0":
                c0_done.set()
        finally:
            events.append(("end", name, attempt))

    async with running(
        broker,
        concurrency_limit=10,
        commit_batch_size=1,
        commit_batch_timeout_sec=0.1,
        ordering="key",
        max_retries=2,
        retry_backoff_sec=0.2,
        retry_backoff_max_sec=0.4,
        dead_letter_topic=dead_letters,
    ) as handler:
        handler_ref.append(handler)
        await wait_until(lambda: handler.processed >= len(names))
        await wait_until(lambda: all_committed(group, topic, 1))

    assert attempts == {b"A0": 3, b"B0": 2, b"A1": 1, b"C0": 1, b"B1": 1, b"A2": 1}
    assert c0_ran_during_a0_retry == [True]
    # When A1 started, A0 had been settled (dead-lettered) already.
    assert failed_seen_by_a1 == [1]

    def index(kind: str, name: bytes, attempt: int) -> int:
        return events.index((kind, name, attempt))

    assert index("start", b"A1", 1) > index("end", b"A0", 3)
    assert index("start", b"A2", 1) > index("end", b"A1", 1)
    assert index("start", b"B1", 1) > index("end", b"B0", 2)
    assert await record_count(dead_letters, 1) == 1


# ---- 7. per-subscriber override -----------------------------------------------------------


async def test_per_subscriber_retries_and_dead_letter_topic_override_global_defaults(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LIBRARY_LOGGER)
    configured, plain = unique("fp-conf"), unique("fp-plain")
    dead_letters, group = unique("fp-conf-dlt"), unique("g")
    for topic in (configured, plain):
        await create_topic(topic, 1)
        await send(topic, [(0, None, v, []) for v in (b"1", b"-1", b"2")])
    await create_topic(dead_letters, 1)

    calls: Counter[tuple[str, int]] = Counter()
    broker = concurrent_broker()

    configured_sub = configure_subscriber(
        manual_subscriber(broker, configured, group + "-conf"),
        max_retries=2,
        retry_backoff_sec=0.01,
        dead_letter_topic=dead_letters,
    )

    @configured_sub
    async def handle_configured(body: int) -> None:
        calls[("configured", body)] += 1
        if body < 0:
            raise PoisonError("negative")

    @manual_subscriber(broker, plain, group + "-plain")
    async def handle_plain(body: int) -> None:
        calls[("plain", body)] += 1
        if body < 0:
            raise PoisonError("negative")

    async with running(broker, commit_batch_size=1, commit_batch_timeout_sec=0.1) as handler:
        assert handler.settings.max_retries == 0
        assert handler.settings.dead_letter_topic is None
        await wait_until(lambda: handler.processed >= 6)
        await wait_until(lambda: all_committed(group + "-conf", configured, 1))
        await wait_until(lambda: all_committed(group + "-plain", plain, 1))

    assert calls[("configured", -1)] == 3
    assert calls[("plain", -1)] == 1
    assert sum(calls.values()) == 3 + 1 + 4
    assert handler.failed == 2

    [(_key, value, headers)] = await read_all(dead_letters, 1)
    assert await record_count(dead_letters, 1) == 1
    assert value == b"-1"
    assert_dead_letter_headers(
        headers,
        topic=configured,
        partition=0,
        offset=1,
        exception_type="PoisonError",
        exception_message="negative",
        attempts=3,
    )
    # One ERROR per message that failed for good, saying where it went.
    errors = sorted(r.getMessage() for r in library_records(caplog, logging.ERROR))
    assert len(errors) == 2, errors
    [to_dead_letters] = [m for m in errors if f"{configured}[0]@1" in m]
    [given_up] = [m for m in errors if f"{plain}[0]@1" in m]
    assert "after 3 attempt(s)" in to_dead_letters
    assert dead_letters in to_dead_letters
    assert "after 1 attempt(s)" in given_up
    assert "without a dead-letter topic" in given_up


async def test_override_inconsistent_with_global_backoff_does_not_drop_messages_silently() -> None:
    # Valid on its own (so configure_subscriber accepts it), but below the global base of 0.1 s.
    # The combination is only checked when the subscriber is set up, which for a bare broker
    # happens at its first message.
    topic, group = unique("fp-badband"), unique("g")
    await create_topic(topic, 1)
    await send(topic, [(0, None, str(i).encode(), []) for i in range(3)])
    bodies: list[int] = []
    broker = concurrent_broker()
    sub = configure_subscriber(manual_subscriber(broker, topic, group), retry_backoff_max_sec=0.05)

    @sub
    async def handle(body: int) -> None:
        bodies.append(body)

    async with running(broker, commit_batch_size=1, commit_batch_timeout_sec=0.1):
        # Either the messages are processed, or the handler reports that it cannot process
        # them; consuming them into nowhere while healthy loses them until a restart.
        await wait_until(
            lambda: len(bodies) == 3 or not is_kafka_handler_healthy(broker.context), timeout=10
        )


# ---- 8. errors not worth retrying ---------------------------------------------------------


class NotWorthRetryingError(Exception):
    """Fails again on every attempt (a message that breaks a business rule)."""


@pytest.mark.smoke
async def test_errors_not_worth_retrying_are_dead_lettered_without_a_retry() -> None:
    topic, dead_letters, group = unique("fp-noretry"), unique("fp-noretry-dlt"), unique("g")
    await create_topic(topic, 4)
    await create_topic(dead_letters, 2)
    total = 1000
    await send(topic, [(i % 4, None, str(i).encode(), []) for i in range(total)])

    calls: Counter[int] = Counter()
    broker = concurrent_broker()

    @manual_subscriber(broker, topic, group)
    async def handle(body: int) -> None:
        calls[body] += 1
        if body % 10 == 0:
            raise NotWorthRetryingError(f"rule broken by {body}")

    async with running(
        broker,
        concurrency_limit=32,
        commit_batch_size=50,
        commit_batch_timeout_sec=0.5,
        max_retries=3,
        retry_backoff_sec=0.01,
        dead_letter_topic=dead_letters,
        no_retry_on=(NotWorthRetryingError,),
    ) as handler:
        await wait_until(lambda: handler.processed >= total, timeout=60)

    assert sum(calls.values()) == total
    assert set(calls) == set(range(total))
    assert handler.failed == 100
    assert handler.engine.counters.retries == 0
    assert await record_count(dead_letters, 2) == 100
    letters = await read_all(dead_letters, 100)
    assert {int(value) for _key, value, _headers in letters} == set(range(0, total, 10))
    assert {header_map(h)[DL_ATTEMPTS] for _k, _v, h in letters} == {b"1"}
    assert {header_map(h)[DL_TYPE] for _k, _v, h in letters} == {b"NotWorthRetryingError"}
    assert {header_map(h)["x-dead-letter-consumer-group"] for _k, _v, h in letters} == {
        group.encode()
    }
    assert await committed_offsets(group, topic) == await end_offsets(topic, 4)


# ---- 9. dead letters through the broker's publish path ------------------------------------


async def test_dead_letters_pass_publish_middlewares_and_keep_the_original_bytes() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from faststream import BaseMiddleware
    from faststream.kafka.prometheus import KafkaPrometheusMiddleware

    topic, dead_letters, group = unique("fp-mw"), unique("fp-mw-dlt"), unique("g")
    await create_topic(topic, 1)
    await create_topic(dead_letters, 1)
    original = [("trace", b"1"), ("raw", b"\xff\xfe not utf-8"), ("trace", b"2")]
    await send(topic, [(0, b"\x00key", b"\x81\x82 body", original)])
    seen: list[str] = []

    class Tracing(BaseMiddleware):
        """Adds a header to what it publishes, as OpenTelemetry's middleware does."""

        async def publish_scope(self, call_next: Any, cmd: Any) -> Any:
            seen.append(cmd.destination)
            cmd.headers["traceparent"] = "00-abc-01"
            return await call_next(cmd)

    registry = prometheus_client.CollectorRegistry()
    broker = concurrent_broker()
    broker.add_middleware(KafkaPrometheusMiddleware(registry=registry))
    broker.add_middleware(Tracing)

    @manual_subscriber(broker, topic, group)
    async def handle(msg: KafkaMessage) -> None:
        raise AssertionError("never called: FastStream cannot parse a non-UTF-8 header")

    # Set up before the first message: FastStream's own loop cannot parse it.
    handler = await initialize_concurrent_processing(
        broker.context,
        broker=broker,
        commit_batch_size=1,
        commit_batch_timeout_sec=0.1,
        dead_letter_topic=dead_letters,
    )
    try:
        await broker.start()
        await wait_until(lambda: handler.processed >= 1)
    finally:
        await shut_down(broker)

    assert seen == [dead_letters]
    published = sum(
        sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "faststream_published_messages_total"
        and sample.labels.get("destination") == dead_letters
        and sample.labels.get("status") == "success"
    )
    assert published == 1
    [(key, value, headers)] = await read_all(dead_letters, 1)
    assert (key, value) == (b"\x00key", b"\x81\x82 body")
    assert headers[:3] == original  # repeated and non-UTF-8 headers kept byte for byte
    assert [name for name, _ in headers[3:]] == [*DL_HEADERS_NOW, "traceparent"]
    assert headers[-1] == ("traceparent", b"00-abc-01")
    # Parsing the header failed: a decoding error, dead-lettered without retries.
    assert header_map(headers)[DL_TYPE] == b"UnicodeDecodeError"
    assert header_map(headers)[DL_ATTEMPTS] == b"1"


DL_HEADERS_NOW = [
    DL_TOPIC,
    DL_PARTITION,
    DL_OFFSET,
    "x-dead-letter-timestamp",
    "x-dead-letter-consumer-group",
    DL_TYPE,
    DL_MESSAGE,
    DL_ATTEMPTS,
]
