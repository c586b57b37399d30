"""The pure parts of the failure policy: what an outcome means, backoff delays, dead-letter
headers, and validation of the failure-policy settings."""

import random
from collections.abc import Callable
from typing import Any

import pydantic
import pytest
from aiokafka.structs import ConsumerRecord
from fast_depends.exceptions import ValidationError as FastDependsValidationError
from faststream import FastStream
from faststream.exceptions import (
    AckMessage,
    NackMessage,
    RejectMessage,
    SkipMessage,
    StopConsume,
)
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy
from hypothesis import given, settings
from hypothesis import strategies as st

from faststream_concurrent_aiokafka import (
    KafkaConcurrentProcessingMiddleware,
    configure_subscriber,
    initialize_concurrent_processing,
    stop_concurrent_processing,
)
from faststream_concurrent_aiokafka.core.dead_letters import MAX_EXCEPTION_TEXT_BYTES
from faststream_concurrent_aiokafka.core.decode_errors import describe_exception
from faststream_concurrent_aiokafka.core.errors import TaskTimeoutError
from faststream_concurrent_aiokafka.core.failure_policy import Outcome, backoff_delay
from faststream_concurrent_aiokafka.core.settings import ConcurrencySettings
from faststream_concurrent_aiokafka.integration.dead_letter import record_headers
from faststream_concurrent_aiokafka.integration.handler import find_handler
from faststream_concurrent_aiokafka.integration.pipeline import FASTSTREAM_POLICY

classify = FASTSTREAM_POLICY.classify

DL_NAMES = [
    "x-dead-letter-topic",
    "x-dead-letter-partition",
    "x-dead-letter-offset",
    "x-dead-letter-timestamp",
    "x-dead-letter-consumer-group",
    "x-dead-letter-exception-type",
    "x-dead-letter-exception-message",
    "x-dead-letter-attempts",
]


class PoisonError(Exception):
    pass


# ---- classify ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, Outcome.DONE),
        (AckMessage(), Outcome.DONE),
        (SkipMessage(), Outcome.DONE),
        (RejectMessage(), Outcome.DEAD_LETTER),
        (NackMessage(), Outcome.RETRY),
        (PoisonError("boom"), Outcome.RETRY),
        (ValueError("bad"), Outcome.RETRY),
        (TaskTimeoutError("slow"), Outcome.RETRY),
        (RuntimeError(), Outcome.RETRY),
    ],
    ids=lambda v: type(v).__name__,
)
def test_classify_gives_each_kind_of_end_its_outcome(
    error: BaseException | None, outcome: Outcome
) -> None:
    assert classify(error) is outcome


def test_classify_uses_isinstance_for_control_exceptions() -> None:
    class MyReject(RejectMessage):
        pass

    class MyAck(AckMessage):
        pass

    assert classify(MyReject()) is Outcome.DEAD_LETTER
    assert classify(MyAck()) is Outcome.DONE


def test_classify_reads_stop_consume_and_exit_as_a_stop() -> None:
    # The runner then stops the subscriber (and, for SystemExit, the app); the message is done.
    assert classify(StopConsume()) is Outcome.STOP
    assert classify(SystemExit()) is Outcome.STOP


# ---- backoff_delay ---------------------------------------------------------------------------


def _exponential(attempt: int, base: float, cap: float) -> float:
    return min(cap, base * 2.0 ** (attempt - 1))


@settings(max_examples=200, deadline=None)
@given(
    attempt=st.integers(min_value=1, max_value=200),
    base=st.floats(min_value=1e-4, max_value=5.0),
    extra=st.floats(min_value=0.0, max_value=100.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_delay_is_jittered_between_half_and_all_of_the_capped_exponential(
    attempt: int, base: float, extra: float, seed: int
) -> None:
    cap = base + extra
    delay = backoff_delay(attempt, base, cap, random.Random(seed))

    full = _exponential(attempt, base, cap)
    assert full * 0.5 - 1e-12 <= delay <= full + 1e-12
    assert delay <= cap + 1e-12


@pytest.mark.parametrize("attempt", [1, 2, 3, 4])
def test_backoff_delay_doubles_per_attempt_until_the_cap(attempt: int) -> None:
    rng = random.Random(7)
    delays = [backoff_delay(attempt, 0.1, 10.0, rng) for _ in range(500)]

    full = 0.1 * 2 ** (attempt - 1)
    assert min(delays) >= full * 0.5
    assert max(delays) <= full
    # The jitter really spreads the delays over the whole band.
    assert min(delays) < full * 0.55
    assert max(delays) > full * 0.95


def test_backoff_delay_is_reproducible_with_the_same_seed() -> None:
    first = [backoff_delay(a, 0.05, 3.0, random.Random(42)) for a in range(1, 10)]
    second = [backoff_delay(a, 0.05, 3.0, random.Random(42)) for a in range(1, 10)]
    other = [backoff_delay(a, 0.05, 3.0, random.Random(43)) for a in range(1, 10)]

    assert first == second
    assert first != other


@pytest.mark.parametrize("attempt", [64, 1_000, 10**6, 10**9])
def test_backoff_delay_for_huge_attempt_numbers_stays_at_the_cap(attempt: int) -> None:
    rng = random.Random(1)
    for _ in range(50):
        delay = backoff_delay(attempt, 0.1, 10.0, rng)
        assert 5.0 <= delay <= 10.0


def test_backoff_delay_with_base_equal_to_cap_stays_in_the_band() -> None:
    rng = random.Random(3)
    for attempt in range(1, 20):
        assert 1.0 <= backoff_delay(attempt, 2.0, 2.0, rng) <= 2.0


def test_backoff_delay_without_rng_uses_the_module_random_and_is_bounded() -> None:
    for attempt in range(1, 30):
        delay = backoff_delay(attempt, 0.01, 1.0)
        full = _exponential(attempt, 0.01, 1.0)
        assert full * 0.5 <= delay <= full


# ---- dead-letter headers ---------------------------------------------------------------


def _record(
    headers: list[tuple[str, bytes]],
    *,
    topic: str = "orders",
    partition: int = 3,
    offset: int = 1234,
    timestamp: int = 1_700_000_000_123,
    key: bytes | None = b"k",
    value: bytes | None = b"v",
) -> "ConsumerRecord[Any, Any]":
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=timestamp,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=headers,
    )


def dead_letter_headers(
    record: "ConsumerRecord[Any, Any]",
    error: BaseException | None,
    attempts: int,
    *,
    group: str | None = "billing",
    text: Callable[[BaseException], str] | None = describe_exception,
) -> list[tuple[str, bytes]]:
    return record_headers(record, group, error, attempts, text)


def test_dead_letter_headers_keep_the_original_headers_first_then_add_ours() -> None:
    original = [("trace-id", b"abc"), ("content-type", b"application/json"), ("trace-id", b"2")]
    headers = dead_letter_headers(_record(original), PoisonError("it broke"), 3)

    assert headers[: len(original)] == original
    assert headers[len(original) :] == [
        ("x-dead-letter-topic", b"orders"),
        ("x-dead-letter-partition", b"3"),
        ("x-dead-letter-offset", b"1234"),
        ("x-dead-letter-timestamp", b"1700000000123"),
        ("x-dead-letter-consumer-group", b"billing"),
        ("x-dead-letter-exception-type", b"PoisonError"),
        ("x-dead-letter-exception-message", b"it broke"),
        ("x-dead-letter-attempts", b"3"),
    ]
    assert all(isinstance(value, bytes) for _name, value in headers)


def test_dead_letter_headers_of_a_subscriber_without_group_have_an_empty_group() -> None:
    found = dict(dead_letter_headers(_record([]), PoisonError("x"), 1, group=None))

    assert found["x-dead-letter-consumer-group"] == b""


def test_dead_letter_headers_replace_those_of_an_earlier_dead_lettering() -> None:
    earlier = dead_letter_headers(
        _record([("app", b"1")], topic="first", partition=0, offset=5), ValueError("old"), 1
    )
    # The dead letter is consumed from the dead-letter topic and fails again.
    again = dead_letter_headers(
        _record(earlier, topic="first-dlt", partition=1, offset=9), PoisonError("new"), 2
    )

    names = [name for name, _value in again]
    assert names == ["app", *DL_NAMES]
    found = dict(again)
    assert found["x-dead-letter-topic"] == b"first-dlt"
    assert found["x-dead-letter-partition"] == b"1"
    assert found["x-dead-letter-offset"] == b"9"
    assert found["x-dead-letter-exception-type"] == b"PoisonError"
    assert found["x-dead-letter-exception-message"] == b"new"
    assert found["x-dead-letter-attempts"] == b"2"


def test_dead_letter_headers_without_an_error_have_empty_exception_fields() -> None:
    found = dict(dead_letter_headers(_record([]), None, 1))

    assert found["x-dead-letter-exception-type"] == b""
    assert found["x-dead-letter-exception-message"] == b""
    assert found["x-dead-letter-attempts"] == b"1"


def test_dead_letter_headers_use_the_exception_class_name_and_str() -> None:
    found = dict(dead_letter_headers(_record([]), RejectMessage(), 1))

    assert found["x-dead-letter-exception-type"] == b"RejectMessage"
    assert found["x-dead-letter-exception-message"] == str(RejectMessage()).encode()


def test_dead_letter_headers_cut_a_long_exception_message_to_512_bytes() -> None:
    found = dict(dead_letter_headers(_record([]), PoisonError("m" * 100_000), 1))

    assert found["x-dead-letter-exception-message"] == b"m" * MAX_EXCEPTION_TEXT_BYTES
    assert MAX_EXCEPTION_TEXT_BYTES == 512


def test_dead_letter_headers_cut_utf8_text_on_a_character_boundary() -> None:
    found = dict(dead_letter_headers(_record([]), PoisonError("é" * 1000), 1))

    text = found["x-dead-letter-exception-message"]
    assert text.decode("utf-8") == "é" * (MAX_EXCEPTION_TEXT_BYTES // 2)


def test_dead_letter_headers_encode_non_ascii_messages_as_utf8() -> None:
    found = dict(dead_letter_headers(_record([]), PoisonError("échec ✗"), 1))

    assert found["x-dead-letter-exception-message"].decode("utf-8") == "échec ✗"


def test_dead_letter_headers_do_not_modify_the_record() -> None:
    original = [("a", b"1")]
    record = _record(list(original))
    dead_letter_headers(record, PoisonError("x"), 1)

    assert list(record.headers) == original


class Payment(pydantic.BaseModel):
    card_number: int


def _validation_error() -> pydantic.ValidationError:
    try:
        Payment(card_number="4111-1111-SECRET")  # type: ignore[arg-type]
    except pydantic.ValidationError as error:
        return error
    raise AssertionError


def test_dead_letter_text_of_a_validation_error_does_not_quote_the_message() -> None:
    # Issue 20: str() of pydantic's error (what FastStream raises for a body that does not fit
    # the handler) quotes the input, i.e. the message: a dead-letter topic with wider read
    # access would carry it in a header.
    error = _validation_error()
    assert "SECRET" in str(error)

    found = dict(dead_letter_headers(_record([]), error, 1))

    text = found["x-dead-letter-exception-message"].decode()
    assert "SECRET" not in text
    assert text == (
        "1 validation error(s) for Payment: card_number: Input should be a valid integer, "
        "unable to parse string as an integer [int_parsing]"
    )


def test_dead_letter_text_of_a_wrapped_validation_error_does_not_quote_the_message() -> None:
    wrapped = FastDependsValidationError(
        incoming_options={"body": "4111-1111-SECRET"},
        locations=("card_number",),
        expected={},
        original_error=_validation_error(),
    )
    assert "SECRET" in str(wrapped)

    found = dict(dead_letter_headers(_record([]), wrapped, 1))

    assert b"SECRET" not in found["x-dead-letter-exception-message"]
    assert b"card_number" in found["x-dead-letter-exception-message"]


def test_dead_letter_text_is_what_the_users_function_makes_of_the_error() -> None:
    found = dict(dead_letter_headers(_record([]), PoisonError("id 42"), 1, text=lambda e: f"<{e}>"))

    assert found["x-dead-letter-exception-message"] == b"<id 42>"


def test_dead_letter_text_of_the_users_function_is_cut_too() -> None:
    found = dict(dead_letter_headers(_record([]), PoisonError(), 1, text=lambda e: "x" * 5000))

    assert len(found["x-dead-letter-exception-message"]) == MAX_EXCEPTION_TEXT_BYTES


def test_a_failing_text_function_still_gives_a_dead_letter() -> None:
    def broken(error: BaseException) -> str:
        raise KeyError(error)

    found = dict(dead_letter_headers(_record([]), PoisonError("x"), 1, text=broken))

    assert (
        found["x-dead-letter-exception-message"] == b"(dead_letter_exception_text raised KeyError)"
    )
    assert found["x-dead-letter-exception-type"] == b"PoisonError"


def test_dead_letter_text_is_empty_when_turned_off() -> None:
    found = dict(dead_letter_headers(_record([]), PoisonError("private"), 1, text=None))

    assert found["x-dead-letter-exception-message"] == b""
    assert found["x-dead-letter-exception-type"] == b"PoisonError"


# ---- validation of the failure-policy settings -----------------------------------------------

INVALID: list[tuple[dict[str, Any], str]] = [
    ({"max_retries": -1}, "max_retries"),
    ({"retry_backoff_sec": 0}, "retry_backoff_sec"),
    ({"retry_backoff_sec": 0.0}, "retry_backoff_sec"),
    ({"retry_backoff_sec": -0.5}, "retry_backoff_sec"),
    ({"retry_backoff_sec": 2.0, "retry_backoff_max_sec": 1.0}, "retry_backoff_max_sec"),
    ({"retry_backoff_max_sec": 0.05}, "retry_backoff_max_sec"),  # below the 0.1 default base
    ({"dead_letter_topic": ""}, "dead_letter_topic"),
    ({"dead_letter_topic": "bad topic name!"}, "dead_letter_topic"),
]


@pytest.mark.parametrize(("kwargs", "name"), INVALID, ids=repr)
def test_settings_reject_invalid_failure_policy_values(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ConcurrencySettings(**kwargs)


@pytest.mark.parametrize(("kwargs", "name"), INVALID, ids=repr)
async def test_initialize_rejects_invalid_failure_policy_values_and_stores_nothing(
    kwargs: dict[str, Any], name: str
) -> None:
    broker = KafkaBroker("127.0.0.1:1", logger=None)

    with pytest.raises(ValueError, match=name):
        await initialize_concurrent_processing(broker.context, **kwargs)

    assert find_handler(broker.context) is None


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"retry_backoff_sec": 0}, "retry_backoff_sec"),
        ({"retry_backoff_max_sec": 0}, "retry_backoff_max_sec"),
        ({"dead_letter_topic": ""}, "dead_letter_topic"),
        ({"dead_letter_topic": "  "}, "dead_letter_topic"),
    ],
    ids=repr,
)
def test_configure_subscriber_rejects_invalid_values_at_declaration(
    kwargs: dict[str, Any], name: str
) -> None:
    broker = KafkaBroker("127.0.0.1:1", logger=None)
    subscriber = broker.subscriber("t", group_id="g", ack_policy=AckPolicy.MANUAL)

    with pytest.raises(ValueError, match=name):
        configure_subscriber(subscriber, **kwargs)


def test_configure_subscriber_rejects_a_cap_below_its_own_base_at_declaration() -> None:
    # Both ends of the band are given, so the mistake is visible without the global settings.
    broker = KafkaBroker("127.0.0.1:1", logger=None)
    subscriber = broker.subscriber("t", group_id="g", ack_policy=AckPolicy.MANUAL)

    with pytest.raises(ValueError, match="retry_backoff_max_sec"):
        configure_subscriber(subscriber, retry_backoff_sec=5.0, retry_backoff_max_sec=1.0)


async def test_initialize_rejects_an_override_inconsistent_with_the_globals_leaving_nothing() -> (
    None
):
    # With the app in the context the subscribers are set up eagerly, so the combination of a
    # subscriber's cap (0.05 s) with the global base (0.1 s) is judged by initialize itself.
    broker = KafkaBroker("127.0.0.1:1", logger=None)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    FastStream(broker)
    subscriber = broker.subscriber("t", group_id="g", ack_policy=AckPolicy.MANUAL)
    configure_subscriber(subscriber, retry_backoff_max_sec=0.05)

    @subscriber
    async def handle(body: int) -> None:
        del body

    try:
        with pytest.raises(ValueError, match="retry_backoff_max_sec"):
            await initialize_concurrent_processing(broker.context)

        # A failed initialisation leaves no running handler behind, so the corrected call works.
        assert find_handler(broker.context) is None
    finally:
        await stop_concurrent_processing(broker.context)


def test_resolved_backoff_band_is_checked_against_the_global_settings() -> None:
    # Valid on its own, but below the global base once combined.
    overrides = {"retry_backoff_max_sec": 0.5}

    with pytest.raises(ValueError, match="retry_backoff_max_sec"):
        ConcurrencySettings(retry_backoff_sec=1.0).for_subscriber(overrides)


def test_subscriber_overrides_win_over_the_global_failure_policy() -> None:
    options = ConcurrencySettings().for_subscriber(
        {"max_retries": 4, "retry_backoff_sec": 0.2, "dead_letter_topic": "dlt"}
    )

    assert options.max_retries == 4
    assert options.retry_backoff_sec == 0.2
    assert options.retry_backoff_max_sec == 10.0
    assert options.dead_letter_topic == "dlt"


def test_subscriber_max_retries_zero_overrides_a_global_value() -> None:
    options = ConcurrencySettings(max_retries=5).for_subscriber({"max_retries": 0})

    assert options.max_retries == 0


def test_failure_policy_defaults() -> None:
    defaults = ConcurrencySettings()

    assert defaults.max_retries == 0
    assert defaults.retry_backoff_sec == 0.1
    assert defaults.retry_backoff_max_sec == 10.0
    assert defaults.dead_letter_topic is None
