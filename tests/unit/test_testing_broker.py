"""The failure policy under FastStream's ``TestKafkaBroker``: retries, task timeouts, errors
not worth retrying and dead letters, without Kafka (docs/testing.md)."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from faststream.kafka import KafkaBroker, KafkaMessage, TestKafkaBroker
from faststream.kafka.subscriber.usecase import DefaultSubscriber
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    ConcurrentProcessingSetupError,
    KafkaConcurrentProcessingMiddleware,
    configure_subscriber,
    current_attempt,
    initialize_concurrent_processing,
    stop_concurrent_processing,
)
from faststream_concurrent_aiokafka.core.errors import TaskTimeoutError

FAST: dict[str, Any] = {"retry_backoff_sec": 0.001, "retry_backoff_max_sec": 0.002}


class PoisonError(Exception):
    pass


def broker() -> KafkaBroker:
    broker = KafkaBroker(logger=None)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    return broker


def manual(broker: KafkaBroker, topic: str = "orders", **overrides: Any) -> DefaultSubscriber:
    subscriber = broker.subscriber(topic, group_id="billing", ack_policy=AckPolicy.MANUAL)
    return configure_subscriber(subscriber, **overrides) if overrides else subscriber


async def test_a_failing_message_is_tried_max_retries_plus_one_times() -> None:
    br = broker()
    calls: list[int] = []

    @manual(br, max_retries=3, **FAST)
    async def handle(body: int) -> None:
        calls.append(body)
        raise PoisonError(body)

    async with TestKafkaBroker(br) as test:
        # Without a dead-letter topic the final failure is raised, as FastStream's test
        # client does with any handler error.
        with pytest.raises(PoisonError):
            await test.publish(7, "orders")

    assert calls == [7, 7, 7, 7]


async def test_a_retry_policy_decides_alone_and_the_handler_reads_its_attempt() -> None:
    br = broker()
    attempts: list[int] = []

    def policy(error: BaseException, attempt: int) -> float | None:
        return 0.001 if isinstance(error, PoisonError) and attempt < 3 else None

    # max_retries=0 does not cap a retry_policy: it alone decides.
    @manual(br, max_retries=0, retry_policy=policy)
    async def handle(body: int) -> None:
        attempts.append(current_attempt())
        raise PoisonError(body)

    async with TestKafkaBroker(br) as test:
        with pytest.raises(PoisonError):
            await test.publish(7, "orders")

    assert attempts == [1, 2, 3]


async def test_a_retried_message_that_then_succeeds_publishes_its_result_once() -> None:
    br = broker()
    calls: list[int] = []
    results: list[str] = []

    @manual(br, max_retries=2, **FAST)
    @br.publisher("results")
    async def handle(body: int) -> str:
        calls.append(body)
        if len(calls) == 1:
            raise PoisonError
        return f"done {body}"

    @br.subscriber("results")
    async def collect(body: str) -> None:
        results.append(body)

    async with TestKafkaBroker(br) as test:
        await test.publish(1, "orders")

    assert calls == [1, 1]
    assert results == ["done 1"]


async def test_a_task_timeout_cancels_the_attempt_and_counts_as_a_failure() -> None:
    br = broker()
    attempts: list[str] = []

    @manual(br, task_timeout_sec=0.05, max_retries=1, **FAST)
    async def handle(body: str) -> None:
        attempts.append("started")
        if len(attempts) == 1:
            await asyncio.sleep(10)  # cancelled by the timeout
        attempts.append("finished")

    async with TestKafkaBroker(br) as test:
        await test.publish("slow once", "orders")

    assert attempts == ["started", "started", "finished"]


async def test_a_task_timeout_on_every_attempt_raises_task_timeout_error() -> None:
    br = broker()

    @manual(br, task_timeout_sec=0.02)
    async def handle(body: str) -> None:
        await asyncio.sleep(10)

    async with TestKafkaBroker(br) as test:
        with pytest.raises(TaskTimeoutError, match=r"task_timeout_sec=0\.02"):
            await test.publish("slow", "orders")


async def test_the_dead_letter_reaches_a_test_subscriber_of_the_dead_letter_topic() -> None:
    br = broker()
    calls: list[int] = []
    letters: list[KafkaMessage] = []
    results: list[Any] = []

    @manual(br, max_retries=2, dead_letter_topic="orders.dlq", **FAST)
    @br.publisher("results")
    async def handle(body: int) -> int:
        calls.append(body)
        raise PoisonError(f"poison {body}")

    @br.subscriber("orders.dlq")
    async def dead(msg: KafkaMessage) -> None:
        letters.append(msg)

    @br.subscriber("results")
    async def collect(body: Any) -> None:
        results.append(body)

    async with TestKafkaBroker(br) as test:
        # The message is settled by its dead letter: publish returns normally.
        await test.publish(42, "orders", key=b"k-42", headers={"origin": "test"})

    assert calls == [42, 42, 42]
    assert results == []  # a failed message publishes no result
    [letter] = letters
    assert letter.body == b"42"
    assert letter.raw_message.key == b"k-42"  # type: ignore[union-attr]
    headers = letter.headers
    assert headers["origin"] == "test"
    assert headers["x-dead-letter-topic"] == "orders"
    assert headers["x-dead-letter-consumer-group"] == "billing"
    assert headers["x-dead-letter-exception-type"] == "PoisonError"
    assert headers["x-dead-letter-exception-message"] == "poison 42"
    assert headers["x-dead-letter-attempts"] == "3"
    assert int(headers["x-dead-letter-timestamp"]) > 0


async def test_an_undecodable_body_is_dead_lettered_at_once_by_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    br = broker()
    letters: list[KafkaMessage] = []

    @manual(br, max_retries=5, dead_letter_topic="orders.dlq", **FAST)
    async def handle(body: int) -> None:
        raise AssertionError("never called: the body is no int")

    @br.subscriber("orders.dlq")
    async def dead(msg: KafkaMessage) -> None:
        letters.append(msg)

    with caplog.at_level(logging.INFO):
        async with TestKafkaBroker(br) as test:
            await test.publish(b"card 4111-SECRET", "orders")

    [letter] = letters
    assert letter.headers["x-dead-letter-exception-type"] == "ValidationError"
    assert letter.headers["x-dead-letter-attempts"] == "1"
    assert "SECRET" not in letter.headers["x-dead-letter-exception-message"]
    logged = [logging.Formatter().format(r) for r in caplog.records]
    assert any("failed after 1 attempt(s) (ValidationError" in line for line in logged), logged
    assert not any("SECRET" in line for line in logged), logged


async def test_no_retry_on_sends_the_listed_errors_to_the_dead_letter_topic_at_once() -> None:
    br = broker()
    calls: list[str] = []
    letters: list[str] = []

    class NotFoundError(Exception):
        pass

    @manual(br, max_retries=3, dead_letter_topic="dlq", no_retry_on=(NotFoundError,), **FAST)
    async def handle(body: str) -> None:
        calls.append(body)
        raise NotFoundError if body == "missing" else PoisonError

    @br.subscriber("dlq")
    async def dead(msg: KafkaMessage) -> None:
        letters.append(msg.headers["x-dead-letter-attempts"])

    async with TestKafkaBroker(br) as test:
        await test.publish("missing", "orders")
        await test.publish("flaky", "orders")

    assert calls.count("missing") == 1
    assert calls.count("flaky") == 4
    assert letters == ["1", "4"]


async def test_nack_is_retried_and_reject_is_dead_lettered() -> None:
    br = broker()
    calls: list[str] = []
    letters: list[str] = []

    @manual(br, max_retries=2, dead_letter_topic="dlq", **FAST)
    async def handle(body: str, msg: KafkaMessage) -> None:
        calls.append(body)
        if body == "nack" and calls.count(body) == 1:
            await msg.nack()
        elif body == "reject":
            await msg.reject()

    @br.subscriber("dlq")
    async def dead(body: str, msg: KafkaMessage) -> None:
        letters.append(f"{body}:{msg.headers['x-dead-letter-exception-type']}")

    async with TestKafkaBroker(br) as test:
        await test.publish("nack", "orders")
        await test.publish("reject", "orders")

    assert calls == ["nack", "nack", "reject"]
    assert letters == ["reject:RejectMessage"]


@pytest.fixture
async def initialised() -> AsyncIterator[KafkaBroker]:
    br = broker()
    await initialize_concurrent_processing(br.context, max_retries=2, **FAST)
    try:
        yield br
    finally:
        await stop_concurrent_processing(br.context)


async def test_the_global_settings_apply_when_processing_is_initialised(
    initialised: KafkaBroker,
) -> None:
    calls: list[int] = []

    @manual(initialised)
    async def handle(body: int) -> None:
        calls.append(body)
        raise PoisonError

    async with TestKafkaBroker(initialised) as test:
        with pytest.raises(PoisonError):
            await test.publish(1, "orders")

    assert calls == [1, 1, 1]


async def test_without_a_policy_a_handler_error_is_raised_once_as_before() -> None:
    br = broker()
    calls: list[int] = []

    @manual(br)
    async def handle(body: int) -> None:
        calls.append(body)
        raise PoisonError

    async with TestKafkaBroker(br) as test:
        with pytest.raises(PoisonError):
            await test.publish(1, "orders")

    assert calls == [1]


async def test_an_ordering_key_function_that_raises_dead_letters_without_running() -> None:
    """As in production: the record fails before its handler, once, with OrderingKeyError;
    a record the function reads fine runs."""
    br = broker()
    calls: list[int] = []
    letters: list[KafkaMessage] = []

    def account(record: Any) -> Any:
        return dict(record.headers)["account"]  # KeyError without the header

    @manual(br, max_retries=3, dead_letter_topic="dlq", ordering=account, **FAST)
    async def handle(body: int) -> None:
        calls.append(body)

    @br.subscriber("dlq")
    async def dead(msg: KafkaMessage) -> None:
        letters.append(msg)

    async with TestKafkaBroker(br) as test:
        await test.publish(1, "orders", headers={"account": "a-1"})
        await test.publish(2, "orders")

    assert calls == [1]
    [letter] = letters
    assert letter.body == b"2"
    assert letter.headers["x-dead-letter-exception-type"] == "OrderingKeyError"
    assert "KeyError" in letter.headers["x-dead-letter-exception-message"]
    assert letter.headers["x-dead-letter-attempts"] == "1"


async def test_a_record_too_old_is_not_run_and_dead_lettered_with_the_expiry_header() -> None:
    br = broker()
    calls: list[int] = []
    letters: list[KafkaMessage] = []

    @manual(br, max_message_age_sec=60, dead_letter_topic="orders.dlq")
    async def handle(body: int) -> None:
        calls.append(body)

    @br.subscriber("orders.dlq")
    async def dead(msg: KafkaMessage) -> None:
        letters.append(msg)

    hour_ago_ms = int((time.time() - 3600) * 1000)
    async with TestKafkaBroker(br) as test:
        await test.publish(1, "orders", timestamp_ms=hour_ago_ms)
        await test.publish(2, "orders")

    assert calls == [2]
    [letter] = letters
    assert letter.body == b"1"
    assert letter.headers["x-dead-letter-exception-type"] == "MessageExpiredError"
    assert letter.headers["x-dead-letter-attempts"] == "0"


async def test_a_record_too_old_without_a_dead_letter_topic_is_not_run_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    br = broker()
    calls: list[int] = []

    @manual(br, max_message_age_sec=60)
    async def handle(body: int) -> None:
        calls.append(body)

    async with TestKafkaBroker(br) as test:
        with caplog.at_level(logging.WARNING):
            await test.publish(1, "orders", timestamp_ms=int((time.time() - 3600) * 1000))

    assert calls == []
    assert any("counted expired" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("per_subscriber", [True, False], ids=["per-subscriber", "global"])
async def test_max_message_age_sec_is_refused_for_a_batch_subscriber_at_start_up(
    per_subscriber: bool,
) -> None:
    """A batch's records run and finish together: none can be expired out of it."""
    br = broker()
    subscriber = br.subscriber(
        "orders", group_id="billing", ack_policy=AckPolicy.MANUAL, batch=True
    )
    if per_subscriber:
        configure_subscriber(subscriber, max_message_age_sec=60)

    with pytest.raises(ConcurrentProcessingSetupError) as error:
        await initialize_concurrent_processing(
            br.context, broker=br, max_message_age_sec=None if per_subscriber else 60
        )
    await stop_concurrent_processing(br.context)

    assert "max_message_age_sec cannot apply to the batch=True subscriber of orders" in str(
        error.value
    )


async def test_a_message_out_of_attempts_reaches_a_test_subscriber_of_the_retry_topic() -> None:
    """Under the test broker the record is published to the retry topic as in production
    (nothing reads it back: the test's publish returns once it is sent)."""
    br = broker()
    calls: list[int] = []
    retries: list[KafkaMessage] = []

    @manual(br, max_retries=1, retry_topic="orders.retry", retry_topic_delays_sec=(60.0,), **FAST)
    async def handle(body: int) -> None:
        calls.append(current_attempt())
        raise PoisonError(body)

    @br.subscriber("orders.retry")
    async def later(msg: KafkaMessage) -> None:
        retries.append(msg)

    async with TestKafkaBroker(br) as test:
        await test.publish(42, "orders", key=b"k-42", headers={"origin": "test"})

    assert calls == [1, 2]
    [retry] = retries
    assert retry.body == b"42"
    assert retry.raw_message.key == b"k-42"  # type: ignore[union-attr]
    headers = retry.headers
    assert headers["origin"] == "test"
    assert (headers["x-retry-hop"], headers["x-retry-attempts"]) == ("1", "2")
    assert headers["x-retry-origin-topic"] == "orders"
    assert headers["x-retry-consumer-group"] == "billing"
    assert int(headers["x-retry-due"]) > 0
