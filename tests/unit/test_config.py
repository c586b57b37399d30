"""Validation of the settings, the per-subscriber overrides and how they are combined."""

import dataclasses
import gc
import json
import math
import weakref
from collections.abc import Mapping
from typing import Any, get_type_hints

import pydantic
import pytest
from fast_depends.exceptions import ValidationError as FastDependsValidationError
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy
from hypothesis import given, settings
from hypothesis import strategies as st

from faststream_concurrent_aiokafka.core.decode_errors import DECODE_ERRORS, describe_exception
from faststream_concurrent_aiokafka.core.settings import (
    ORDERINGS,
    ConcurrencySettings,
    KeywordSettings,
    Settings,
    SubscriberOverrides,
    SubscriberSettings,
    check_exactly_once,
    check_overrides,
)
from faststream_concurrent_aiokafka.integration.subscriber_options import (
    configure_subscriber,
    options_of,
)

# Integer settings and the range each accepts (as the settings reference documents it).
INT_RANGES = {
    "concurrency_limit": (1, 100_000),
    "commit_batch_size": (1, 1_000_000),
    "max_uncommitted_tasks": (1, 10_000_000),
    "max_retries": (0, 1_000),
    "failure_ratio_window": (1, 100_000),
}
INT_MINIMUMS = {name: low for name, (low, _) in INT_RANGES.items()}
INT_PARAMS = tuple(INT_RANGES)
# Integer settings that None turns off.
OPTIONAL_INT_PARAMS = ("max_consecutive_failures",)
REQUIRED_SECONDS_PARAMS = (
    "commit_batch_timeout_sec",
    "shutdown_timeout_sec",
    "rebalance_flush_timeout_sec",
    "retry_backoff_sec",
    "retry_backoff_max_sec",
    "commit_timeout_sec",
    "transaction_timeout_sec",
)
SECONDS_PARAMS = (
    *REQUIRED_SECONDS_PARAMS,
    "task_timeout_sec",
    "stall_warning_sec",
    "max_message_age_sec",
    "brake_cooldown_sec",
)
# The longest duration each accepts (the shortest is 1 ms for all of them).
SECONDS_MAXIMUMS = {
    "commit_batch_timeout_sec": 3600,
    "shutdown_timeout_sec": 3600,
    "rebalance_flush_timeout_sec": 3600,
    "retry_backoff_sec": 3600,
    "retry_backoff_max_sec": 3600,
    "commit_timeout_sec": 3600,
    "transaction_timeout_sec": 2_147_483,
    "task_timeout_sec": 86_400,
    "stall_warning_sec": 86_400,
    "max_message_age_sec": 86_400,
    "brake_cooldown_sec": 3600,
}
BOOL_PARAMS = ("track_completed_offsets", "measure_processing_time", "adaptive_concurrency")
POLICY_PARAMS = (
    "no_retry_on",
    "retry_policy",
    "dead_letter_exception_text",
    "max_consecutive_failures",
    "max_failure_ratio",
    "failure_ratio_window",
)
# Validated in tests/unit/test_retry_topic.py.
RETRY_TOPIC_PARAMS = ("retry_topic", "retry_topic_delays_sec", "retry_topic_max_waiting")
ALL_PARAMS = (
    *INT_PARAMS,
    *SECONDS_PARAMS,
    *BOOL_PARAMS,
    *POLICY_PARAMS,
    "ordering",
    "max_messages_per_sec",
    "dead_letter_topic",
    "processing_guarantee",
    "transactional_id_prefix",
    *RETRY_TOPIC_PARAMS,
)
SUBSCRIBER_PARAMS = (
    "concurrency_limit",
    "ordering",
    "max_messages_per_sec",
    "adaptive_concurrency",
    "task_timeout_sec",
    "max_retries",
    "retry_backoff_sec",
    "retry_backoff_max_sec",
    "dead_letter_topic",
    *POLICY_PARAMS,
    "track_completed_offsets",
    "stall_warning_sec",
    "max_message_age_sec",
    "brake_cooldown_sec",
    *RETRY_TOPIC_PARAMS,
    "processing_guarantee",
    "transactional_id_prefix",
    "transaction_timeout_sec",
    "measure_processing_time",
)
SUBSCRIBER_INT_PARAMS = ("concurrency_limit", "max_retries", "failure_ratio_window")
SUBSCRIBER_SECONDS_PARAMS = (
    "task_timeout_sec",
    "retry_backoff_sec",
    "retry_backoff_max_sec",
    "stall_warning_sec",
    "max_message_age_sec",
    "brake_cooldown_sec",
    "transaction_timeout_sec",
)

# Not an int, whatever the setting (values below the minimum are added per setting).
NOT_INTS: tuple[object, ...] = (True, False, 1.0, 2.5, "3", math.nan, [1])
# Wrong for every duration setting; ``None`` is handled per setting (it means "off" for one).
BAD_SECONDS: tuple[object, ...] = (
    0,
    0.0,
    -0.0,
    -1,
    -0.001,
    math.nan,
    math.inf,
    -math.inf,
    True,
    False,
    "1",
    "1.5",
    [1.0],
)
BAD_ORDERINGS: tuple[object, ...] = ("KEY", "Key", "keys", "", "none", "ordered", 1, b"key")
NOT_BOOLS: tuple[object, ...] = (0, 1, 1.0, "true", "False", [True])
BAD_TOPICS: tuple[object, ...] = ("", "   ", 1, b"dlq", ["dlq"])
# Names Kafka refuses (legal: ASCII letters, digits, ".", "_", "-"; at most 249; not "."/"..").
ILLEGAL_TOPIC_NAMES = ("dead letters", "dlq/orders", "dlq:orders", "orders-é", ".", "..", "x" * 250)


def _bad_ints(name: str) -> list[object]:
    minimum, maximum = INT_RANGES.get(name, (1, 1_000_000))
    return [minimum - 1, minimum - 10**20, maximum + 1, 10**18, *NOT_INTS]


def _with_consistent_backoff(name: str, value: object) -> dict[str, Any]:
    """Keyword arguments setting ``name``; a valid backoff value gets a matching partner so
    that only ``name`` is judged, not the base <= cap rule."""
    kwargs: dict[str, Any] = {name: value}
    if name == "retry_backoff_sec":
        kwargs["retry_backoff_max_sec"] = value
    elif name == "retry_backoff_max_sec":
        kwargs["retry_backoff_sec"] = value
    return kwargs


HYPOTHESIS = settings(max_examples=60, deadline=None)


def _assert_names_only(error: pytest.ExceptionInfo[ValueError], name: str) -> None:
    """The message names the offending parameter and no other one."""
    message = str(error.value)
    assert name in message, message
    others = [other for other in ALL_PARAMS if other != name and other in message]
    assert others == [], message


def _settings(**kwargs: Any) -> ConcurrencySettings:
    return ConcurrencySettings(**kwargs)


def _options(**kwargs: Any) -> Mapping[str, Any]:
    """Validated per-subscriber overrides: only the ones set."""
    return check_overrides(kwargs)


def resolve_options(
    current: ConcurrencySettings, overrides: Mapping[str, Any] | None
) -> SubscriberSettings:
    return current.for_subscriber(overrides)


# ---- ConcurrencySettings -------------------------------------------------------------


def test_settings_defaults_are_the_documented_ones() -> None:
    defaults = ConcurrencySettings()

    assert defaults.concurrency_limit == 10
    assert defaults.commit_batch_size == 10
    assert defaults.commit_batch_timeout_sec == 10.0
    assert defaults.shutdown_timeout_sec == 20.0
    assert defaults.max_uncommitted_tasks == 50_000
    assert defaults.rebalance_flush_timeout_sec == 10.0
    assert defaults.ordering == "unordered"
    assert defaults.task_timeout_sec is None
    assert defaults.max_retries == 0
    assert defaults.dead_letter_topic is None
    assert defaults.track_completed_offsets is True
    assert defaults.stall_warning_sec == 60.0
    assert defaults.commit_timeout_sec == 10.0
    assert 0 < defaults.retry_backoff_sec <= defaults.retry_backoff_max_sec
    assert defaults.no_retry_on == DECODE_ERRORS
    assert defaults.dead_letter_exception_text is describe_exception
    assert defaults.max_consecutive_failures is None
    assert defaults.max_failure_ratio is None
    assert defaults.failure_ratio_window == 100
    assert defaults.processing_guarantee == "at_least_once"
    assert defaults.transactional_id_prefix == ""
    assert defaults.transaction_timeout_sec == 60.0
    assert defaults.measure_processing_time is False


def test_decode_errors_are_what_faststream_raises_for_an_undecodable_body() -> None:
    assert set(DECODE_ERRORS) == {
        pydantic.ValidationError,
        FastDependsValidationError,
        json.JSONDecodeError,
        UnicodeDecodeError,
    }


def test_settings_field_set_is_what_the_validation_covers() -> None:
    # Guards the parametrised tests below: a new setting must be added to them too.
    assert {f.name for f in dataclasses.fields(ConcurrencySettings)} == set(ALL_PARAMS)


def test_keyword_typing_views_equal_the_table() -> None:
    # The TypedDicts let type checkers catch a misspelt setting; they must stay the table.
    table = get_type_hints(ConcurrencySettings)
    assert get_type_hints(Settings) == table
    keyword_only = get_type_hints(KeywordSettings)
    # The subscribers' settings after the positional ones, and the global settings added
    # after the original six positional parameters.
    added_globals = {"commit_timeout_sec"}
    assert set(keyword_only) == set(SUBSCRIBER_PARAMS) - {"concurrency_limit"} | added_globals
    assert all(keyword_only[name] == table[name] for name in keyword_only)


def test_override_typing_view_is_the_subscriber_table_with_none_for_keep() -> None:
    table = get_type_hints(SubscriberSettings)
    overrides = get_type_hints(SubscriberOverrides)
    assert list(overrides) == list(table)
    assert all(overrides[name] == table[name] | None for name in table)


def test_settings_are_immutable() -> None:
    current = ConcurrencySettings()

    with pytest.raises(dataclasses.FrozenInstanceError):
        current.concurrency_limit = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value"),
    [(name, value) for name in INT_PARAMS for value in [*_bad_ints(name), None]],
    ids=repr,
)
def test_settings_reject_bad_int_naming_the_parameter(name: str, value: object) -> None:
    with pytest.raises(ValueError) as error:
        _settings(**{name: value})

    _assert_names_only(error, name)


@pytest.mark.parametrize("name", SECONDS_PARAMS)
@pytest.mark.parametrize("value", BAD_SECONDS, ids=repr)
def test_settings_reject_bad_seconds_naming_the_parameter(name: str, value: object) -> None:
    with pytest.raises(ValueError) as error:
        _settings(**{name: value})

    _assert_names_only(error, name)


@pytest.mark.parametrize("name", REQUIRED_SECONDS_PARAMS)
def test_settings_reject_none_for_a_required_duration(name: str) -> None:
    with pytest.raises(ValueError) as error:
        _settings(**{name: None})

    _assert_names_only(error, name)


@pytest.mark.parametrize("value", [*BAD_ORDERINGS, None], ids=repr)
def test_settings_reject_unknown_ordering_naming_the_parameter(value: object) -> None:
    with pytest.raises(ValueError) as error:
        _settings(ordering=value)

    _assert_names_only(error, "ordering")
    # The message tells the user what is allowed.
    for allowed in ORDERINGS:
        assert repr(allowed) in str(error.value)


@pytest.mark.parametrize("name", BOOL_PARAMS)
@pytest.mark.parametrize("value", [*NOT_BOOLS, None], ids=repr)
def test_settings_reject_non_bool_flag_naming_the_parameter(name: str, value: object) -> None:
    with pytest.raises(ValueError) as error:
        _settings(**{name: value})

    _assert_names_only(error, name)


@pytest.mark.parametrize("name", BOOL_PARAMS)
@pytest.mark.parametrize("value", [True, False])
def test_settings_accept_bool_flags(name: str, value: bool) -> None:
    assert getattr(_settings(**{name: value}), name) is value


@pytest.mark.parametrize("value", BAD_TOPICS, ids=repr)
def test_settings_reject_bad_dead_letter_topic(value: object) -> None:
    with pytest.raises(ValueError) as error:
        _settings(dead_letter_topic=value)

    _assert_names_only(error, "dead_letter_topic")


def test_settings_reject_dead_letter_topic_kafka_would_refuse() -> None:
    # Otherwise the mistake only shows when the first failed message is dead-lettered.
    accepted = []
    for name in ILLEGAL_TOPIC_NAMES:
        try:
            ConcurrencySettings(dead_letter_topic=name)
        except ValueError as error:
            assert "dead_letter_topic" in str(error)
        else:
            accepted.append(name)

    assert accepted == []


def test_settings_reject_backoff_cap_below_base_naming_both() -> None:
    with pytest.raises(ValueError) as error:
        ConcurrencySettings(retry_backoff_sec=2.0, retry_backoff_max_sec=1.0)

    assert "retry_backoff_sec" in str(error.value)
    assert "retry_backoff_max_sec" in str(error.value)


def test_settings_accept_backoff_cap_equal_to_base() -> None:
    current = ConcurrencySettings(retry_backoff_sec=3.0, retry_backoff_max_sec=3.0)

    assert current.retry_backoff_sec == current.retry_backoff_max_sec == 3.0


@pytest.mark.parametrize("name", OPTIONAL_INT_PARAMS)
@pytest.mark.parametrize("value", [0, -1, *NOT_INTS], ids=repr)
def test_settings_reject_bad_optional_int_naming_the_parameter(name: str, value: object) -> None:
    with pytest.raises(ValueError) as error:
        _settings(**{name: value})

    _assert_names_only(error, name)


@pytest.mark.parametrize("name", OPTIONAL_INT_PARAMS)
@pytest.mark.parametrize("value", [None, 1, 20, 10**6])
def test_settings_accept_an_optional_int_or_none(name: str, value: int | None) -> None:
    assert getattr(_settings(**{name: value}), name) == value


BAD_RATIOS: tuple[object, ...] = (0, 0.0, 1, 1.0, 1.5, -0.1, math.nan, math.inf, True, "0.5")


@pytest.mark.parametrize("value", BAD_RATIOS, ids=repr)
def test_settings_reject_a_failure_ratio_outside_zero_to_one(value: object) -> None:
    with pytest.raises(ValueError) as error:
        _settings(max_failure_ratio=value)

    _assert_names_only(error, "max_failure_ratio")


@pytest.mark.parametrize("value", [None, 0.001, 0.5, 0.999])
def test_settings_accept_a_failure_ratio_between_zero_and_one(value: float | None) -> None:
    assert _settings(max_failure_ratio=value).max_failure_ratio == value


class _MyError(Exception):
    pass


BAD_EXCEPTION_TUPLES: tuple[object, ...] = (
    None,
    ValueError,  # a forgotten comma: not a tuple
    [ValueError],
    (ValueError, "KeyError"),
    (ValueError()),
    (KeyboardInterrupt,),  # not an Exception: never reaches the policy
    (BaseException,),
    "ValueError",
)


@pytest.mark.parametrize("value", BAD_EXCEPTION_TUPLES, ids=repr)
def test_settings_reject_no_retry_on_that_is_not_a_tuple_of_exceptions(value: object) -> None:
    with pytest.raises(ValueError) as error:
        _settings(no_retry_on=value)

    _assert_names_only(error, "no_retry_on")
    assert "DECODE_ERRORS" in str(error.value)  # the message shows how to extend the default


@pytest.mark.parametrize("value", [(), (ValueError,), (*DECODE_ERRORS, _MyError)], ids=repr)
def test_settings_accept_a_tuple_of_exception_classes(value: tuple[type[Exception], ...]) -> None:
    assert _settings(no_retry_on=value).no_retry_on == value


@pytest.mark.parametrize("value", ["text", 1, b"x"], ids=repr)
def test_settings_reject_an_exception_text_that_is_no_function(value: object) -> None:
    with pytest.raises(ValueError) as error:
        _settings(dead_letter_exception_text=value)

    _assert_names_only(error, "dead_letter_exception_text")


@pytest.mark.parametrize("value", ["fast", 1.5, (1, 2)], ids=repr)
def test_settings_reject_a_retry_policy_that_is_no_function(value: object) -> None:
    with pytest.raises(ValueError) as error:
        _settings(retry_policy=value)

    _assert_names_only(error, "retry_policy")


def test_settings_accept_an_exception_text_function_or_none() -> None:
    assert _settings(dead_letter_exception_text=None).dead_letter_exception_text is None
    assert _settings(dead_letter_exception_text=repr).dead_letter_exception_text is repr


@pytest.mark.parametrize("ordering", ["unordered", "key", "partition"])
def test_settings_accept_every_ordering(ordering: str) -> None:
    assert _settings(ordering=ordering).ordering == ordering


def test_settings_accept_no_task_timeout_and_no_dead_letter_topic() -> None:
    current = ConcurrencySettings(task_timeout_sec=None, dead_letter_topic=None)

    assert current.task_timeout_sec is None
    assert current.dead_letter_topic is None


def test_settings_accept_a_legal_dead_letter_topic() -> None:
    name = "orders.DLQ_v2-" + "x" * 100

    assert ConcurrencySettings(dead_letter_topic=name).dead_letter_topic == name


def test_settings_accept_integral_seconds() -> None:
    current = ConcurrencySettings(
        commit_batch_timeout_sec=1,
        shutdown_timeout_sec=2,
        rebalance_flush_timeout_sec=3,
        task_timeout_sec=4,
        retry_backoff_sec=5,
        retry_backoff_max_sec=6,
    )

    assert current.commit_batch_timeout_sec == 1
    assert current.shutdown_timeout_sec == 2
    assert current.rebalance_flush_timeout_sec == 3
    assert current.task_timeout_sec == 4
    assert current.retry_backoff_sec == 5
    assert current.retry_backoff_max_sec == 6


@HYPOTHESIS
@given(data=st.data(), name=st.sampled_from(INT_PARAMS))
def test_settings_accept_any_int_in_the_range(data: st.DataObject, name: str) -> None:
    value = data.draw(st.integers(*INT_RANGES[name]))

    assert getattr(_settings(**{name: value}), name) == value


@HYPOTHESIS
@given(name=st.sampled_from(INT_PARAMS), offset=st.integers(min_value=1))
def test_settings_reject_any_int_above_the_maximum(name: str, offset: int) -> None:
    with pytest.raises(ValueError) as error:
        _settings(**{name: INT_RANGES[name][1] + offset})

    _assert_names_only(error, name)
    assert f"{INT_RANGES[name][1]:,}" in str(error.value)


@HYPOTHESIS
@given(name=st.sampled_from(INT_PARAMS), offset=st.integers(min_value=1))
def test_settings_reject_any_int_below_the_minimum(name: str, offset: int) -> None:
    with pytest.raises(ValueError) as error:
        _settings(**{name: INT_MINIMUMS[name] - offset})

    _assert_names_only(error, name)


@HYPOTHESIS
@given(
    data=st.data(),
    name=st.sampled_from([name for name in SECONDS_PARAMS if name != "transaction_timeout_sec"]),
)
def test_settings_accept_any_seconds_in_the_range(data: st.DataObject, name: str) -> None:
    value = data.draw(st.floats(min_value=0.001, max_value=SECONDS_MAXIMUMS[name]))

    assert getattr(_settings(**_with_consistent_backoff(name, value)), name) == value


@HYPOTHESIS
@given(
    data=st.data(),
    name=st.sampled_from(SECONDS_PARAMS),
)
def test_settings_reject_seconds_outside_the_range(data: st.DataObject, name: str) -> None:
    value = data.draw(
        st.floats(min_value=0.0, max_value=0.001, exclude_min=True, exclude_max=True)
        | st.floats(min_value=SECONDS_MAXIMUMS[name], exclude_min=True, allow_infinity=False)
    )
    with pytest.raises(ValueError) as error:
        _settings(**{name: value})

    _assert_names_only(error, name)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("concurrency_limit", 10**18),
        ("commit_batch_timeout_sec", 1e300),
        ("task_timeout_sec", 1e-9),
        ("max_retries", 10**9),
        ("failure_ratio_window", 10**12),
        ("max_consecutive_failures", 10**12),
        ("max_uncommitted_tasks", 10**12),
        ("shutdown_timeout_sec", 1e9),
    ],
    ids=repr,
)
def test_settings_no_service_means_are_refused_naming_the_range(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=r"from [\d,.]+ to [\d,.]+") as error:
        _settings(**{name: value})

    _assert_names_only(error, name)


@HYPOTHESIS
@given(value=st.floats(min_value=0.001, max_value=2_147_483))
def test_a_transaction_timeout_is_accepted_within_kafka_s_int32_of_milliseconds(
    value: float,
) -> None:
    assert _settings(transaction_timeout_sec=value).transaction_timeout_sec == value


@HYPOTHESIS
@given(
    value=st.floats(min_value=0.0, max_value=0.001, exclude_min=True, exclude_max=True)
    | st.floats(min_value=2_147_483, exclude_min=True, allow_infinity=False)
)
def test_a_transaction_timeout_outside_kafka_s_range_is_refused(value: float) -> None:
    with pytest.raises(ValueError) as error:
        _settings(transaction_timeout_sec=value)

    _assert_names_only(error, "transaction_timeout_sec")


@HYPOTHESIS
@given(
    name=st.sampled_from(SECONDS_PARAMS),
    value=st.floats().filter(lambda v: not (math.isfinite(v) and v > 0)),
)
def test_settings_reject_any_non_finite_or_non_positive_seconds(name: str, value: float) -> None:
    with pytest.raises(ValueError) as error:
        _settings(**{name: value})

    _assert_names_only(error, name)


# ---- per-subscriber overrides --------------------------------------------------------


def test_subscriber_options_default_to_no_override() -> None:
    assert _options() == {}
    # None means "keep the global value", for every setting.
    assert _options(**dict.fromkeys(SUBSCRIBER_PARAMS)) == {}


def test_subscriber_options_field_set() -> None:
    assert {f.name for f in dataclasses.fields(SubscriberSettings)} == set(SUBSCRIBER_PARAMS)


def test_unknown_subscriber_option_is_refused_naming_it() -> None:
    with pytest.raises(TypeError, match="concurrency_limt"):
        _options(concurrency_limt=3)


@pytest.mark.parametrize(
    ("name", "value"),
    [(name, value) for name in SUBSCRIBER_INT_PARAMS for value in _bad_ints(name)],
    ids=repr,
)
def test_subscriber_options_reject_bad_int(name: str, value: object) -> None:
    with pytest.raises(ValueError) as error:
        _options(**{name: value})

    _assert_names_only(error, name)


@pytest.mark.parametrize("name", SUBSCRIBER_SECONDS_PARAMS)
@pytest.mark.parametrize("value", BAD_SECONDS, ids=repr)
def test_subscriber_options_reject_bad_seconds(name: str, value: object) -> None:
    with pytest.raises(ValueError) as error:
        _options(**{name: value})

    _assert_names_only(error, name)


@pytest.mark.parametrize("value", BAD_ORDERINGS, ids=repr)
def test_subscriber_options_reject_unknown_ordering(value: object) -> None:
    with pytest.raises(ValueError) as error:
        _options(ordering=value)

    _assert_names_only(error, "ordering")


@pytest.mark.parametrize("name", BOOL_PARAMS)
@pytest.mark.parametrize("value", NOT_BOOLS, ids=repr)
def test_subscriber_options_reject_non_bool_flag(name: str, value: object) -> None:
    with pytest.raises(ValueError) as error:
        _options(**{name: value})

    _assert_names_only(error, name)


@pytest.mark.parametrize("value", BAD_TOPICS, ids=repr)
def test_subscriber_options_reject_bad_dead_letter_topic(value: object) -> None:
    with pytest.raises(ValueError) as error:
        _options(dead_letter_topic=value)

    _assert_names_only(error, "dead_letter_topic")


def test_subscriber_options_reject_backoff_cap_below_base_when_both_are_given() -> None:
    # Inconsistent whatever the global settings are, so it can fail at declaration.
    with pytest.raises(ValueError) as error:
        _options(retry_backoff_sec=5.0, retry_backoff_max_sec=1.0)

    assert "retry_backoff_sec" in str(error.value)
    assert "retry_backoff_max_sec" in str(error.value)


@pytest.mark.parametrize("ordering", ["unordered", "key", "partition"])
def test_subscriber_options_accept_every_ordering(ordering: str) -> None:
    assert _options(ordering=ordering)["ordering"] == ordering


def test_subscriber_options_accept_zero_retries() -> None:
    assert _options(max_retries=0)["max_retries"] == 0


# ---- resolve_options -----------------------------------------------------------------

positive_seconds = st.floats(min_value=0.001, max_value=3600, allow_nan=False)
orderings = st.sampled_from(ORDERINGS)
exception_tuples = st.sampled_from([(), (ValueError,), DECODE_ERRORS, (_MyError, KeyError)])
exception_texts = st.sampled_from([None, repr, str])
ratios = st.floats(min_value=0.01, max_value=0.99)
topics = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-",
    min_size=3,
    max_size=20,
)


@st.composite
def valid_settings(draw: st.DrawFn) -> ConcurrencySettings:
    base, cap = sorted(draw(st.lists(positive_seconds, min_size=2, max_size=2)))
    return ConcurrencySettings(
        concurrency_limit=draw(st.integers(1, 1000)),
        commit_batch_size=draw(st.integers(1, 1000)),
        commit_batch_timeout_sec=draw(positive_seconds),
        shutdown_timeout_sec=draw(positive_seconds),
        max_uncommitted_tasks=draw(st.integers(1, 10**6)),
        rebalance_flush_timeout_sec=draw(positive_seconds),
        ordering=draw(orderings),
        task_timeout_sec=draw(st.none() | positive_seconds),
        max_retries=draw(st.integers(0, 20)),
        retry_backoff_sec=base,
        retry_backoff_max_sec=cap,
        dead_letter_topic=draw(st.none() | topics),
        no_retry_on=draw(exception_tuples),
        dead_letter_exception_text=draw(exception_texts),
        max_consecutive_failures=draw(st.none() | st.integers(1, 1000)),
        max_failure_ratio=draw(st.none() | ratios),
        failure_ratio_window=draw(st.integers(1, 1000)),
        track_completed_offsets=draw(st.booleans()),
    )


def _consistent_overrides(**values: Any) -> Mapping[str, Any]:
    """Overrides refuse a cap below their own base; order such pairs."""
    base, cap = values["retry_backoff_sec"], values["retry_backoff_max_sec"]
    if base is not None and cap is not None and cap < base:
        values["retry_backoff_sec"], values["retry_backoff_max_sec"] = cap, base
    return _options(**values)


valid_overrides = st.none() | st.builds(
    _consistent_overrides,
    concurrency_limit=st.none() | st.integers(1, 1000),
    ordering=st.none() | orderings,
    task_timeout_sec=st.none() | positive_seconds,
    max_retries=st.none() | st.integers(0, 20),
    retry_backoff_sec=st.none() | positive_seconds,
    retry_backoff_max_sec=st.none() | positive_seconds,
    dead_letter_topic=st.none() | topics,
    no_retry_on=st.none() | exception_tuples,
    dead_letter_exception_text=st.none() | exception_texts,
    max_consecutive_failures=st.none() | st.integers(1, 1000),
    max_failure_ratio=st.none() | ratios,
    failure_ratio_window=st.none() | st.integers(1, 1000),
    track_completed_offsets=st.none() | st.booleans(),
)


def test_effective_options_carry_exactly_the_overridable_settings() -> None:
    effective = resolve_options(ConcurrencySettings(), None)
    assert type(effective) is SubscriberSettings
    names = [f.name for f in dataclasses.fields(effective)]
    assert names == list(SubscriberOverrides.__annotations__)


def test_resolve_without_overrides_takes_the_global_settings() -> None:
    current = ConcurrencySettings(
        concurrency_limit=7,
        ordering="key",
        task_timeout_sec=3.0,
        max_retries=2,
        retry_backoff_sec=0.5,
        retry_backoff_max_sec=4.0,
        dead_letter_topic="dlq",
        no_retry_on=(KeyError,),
        dead_letter_exception_text=repr,
        max_consecutive_failures=5,
        max_failure_ratio=0.5,
        failure_ratio_window=10,
        track_completed_offsets=False,
    )

    for overrides in (None, _options()):
        effective = resolve_options(current, overrides)
        for name in SUBSCRIBER_PARAMS:
            assert getattr(effective, name) == getattr(current, name), name


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("concurrency_limit", 2),
        ("ordering", "partition"),
        ("task_timeout_sec", 0.5),
        ("max_retries", 3),
        ("retry_backoff_sec", 1.0),
        ("retry_backoff_max_sec", 60.0),
        ("dead_letter_topic", "orders-dlq"),
        ("no_retry_on", (KeyError,)),
        ("no_retry_on", ()),
        ("dead_letter_exception_text", repr),
        ("max_consecutive_failures", 3),
        ("max_failure_ratio", 0.25),
        ("failure_ratio_window", 7),
        ("track_completed_offsets", False),
        ("processing_guarantee", "exactly_once"),
        ("transactional_id_prefix", "prod."),
        ("transaction_timeout_sec", 90.0),
    ],
)
def test_resolve_overrides_only_the_given_field(name: str, value: object) -> None:
    current = ConcurrencySettings(concurrency_limit=7, ordering="key")
    baseline = resolve_options(current, None)

    changes: dict[str, Any] = {name: value}

    effective = resolve_options(current, _options(**changes))

    assert effective == dataclasses.replace(baseline, **changes)


def test_resolve_rejects_override_that_breaks_the_backoff_order() -> None:
    current = ConcurrencySettings(retry_backoff_sec=0.1, retry_backoff_max_sec=1.0)

    with pytest.raises(ValueError, match="retry_backoff"):
        resolve_options(current, _options(retry_backoff_sec=5.0))
    with pytest.raises(ValueError, match="retry_backoff"):
        resolve_options(current, _options(retry_backoff_max_sec=0.01))


def test_resolve_leaves_settings_and_overrides_untouched() -> None:
    current = ConcurrencySettings(concurrency_limit=7)
    overrides = _options(concurrency_limit=2)

    resolve_options(current, overrides)

    assert current.concurrency_limit == 7
    assert overrides["concurrency_limit"] == 2


@HYPOTHESIS
@given(current=valid_settings(), overrides=valid_overrides)
def test_resolve_lays_set_overrides_over_the_settings(
    current: ConcurrencySettings, overrides: Mapping[str, Any] | None
) -> None:
    expected: dict[str, object] = {}
    for name in SUBSCRIBER_PARAMS:
        override = None if overrides is None else overrides.get(name)
        expected[name] = getattr(current, name) if override is None else override

    if expected["retry_backoff_max_sec"] < expected["retry_backoff_sec"]:  # type: ignore[operator]
        with pytest.raises(ValueError, match="retry_backoff"):
            resolve_options(current, overrides)
        return
    effective = resolve_options(current, overrides)

    for name in SUBSCRIBER_PARAMS:
        assert getattr(effective, name) == expected[name], name


# ---- configure_subscriber ------------------------------------------------------------


class _Subscriber:
    """Stands in for a FastStream subscriber: any hashable, weak-referenceable object."""


def test_configure_subscriber_returns_the_subscriber_and_records_options() -> None:
    subscriber = _Subscriber()

    returned = configure_subscriber(
        subscriber, concurrency_limit=3, ordering="key", task_timeout_sec=1.5
    )

    assert returned is subscriber
    assert options_of(subscriber) == _options(
        concurrency_limit=3, ordering="key", task_timeout_sec=1.5
    )


def test_unconfigured_subscriber_has_no_options() -> None:
    assert options_of(_Subscriber()) is None


def test_configure_subscriber_without_arguments_overrides_nothing() -> None:
    subscriber = configure_subscriber(_Subscriber())

    assert options_of(subscriber) == _options()


def test_configure_subscriber_again_replaces_the_options() -> None:
    subscriber = configure_subscriber(_Subscriber(), concurrency_limit=3, ordering="key")

    configure_subscriber(subscriber, task_timeout_sec=2.0)

    assert options_of(subscriber) == _options(task_timeout_sec=2.0)


def test_configured_subscribers_are_independent() -> None:
    first = configure_subscriber(_Subscriber(), concurrency_limit=1)
    second = configure_subscriber(_Subscriber(), concurrency_limit=2)

    assert options_of(first) == _options(concurrency_limit=1)
    assert options_of(second) == _options(concurrency_limit=2)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("concurrency_limit", 0),
        ("concurrency_limit", True),
        ("concurrency_limit", 2.0),
        ("ordering", "keys"),
        ("task_timeout_sec", 0),
        ("task_timeout_sec", -1.0),
        ("task_timeout_sec", math.nan),
        ("task_timeout_sec", math.inf),
        ("max_retries", -1),
        ("retry_backoff_sec", 0.0),
        ("retry_backoff_max_sec", -2.0),
        ("dead_letter_topic", ""),
        ("track_completed_offsets", 1),
        ("processing_guarantee", "exactly-once"),
        ("transactional_id_prefix", "tab\t"),
        ("transaction_timeout_sec", 0),
        ("transaction_timeout_sec", 0.0001),
        ("transaction_timeout_sec", 1e12),
    ],
    ids=repr,
)
def test_configure_subscriber_rejects_bad_value_at_declaration(name: str, value: object) -> None:
    subscriber = _Subscriber()
    kwargs: dict[str, Any] = {name: value}

    with pytest.raises(ValueError) as error:
        configure_subscriber(subscriber, **kwargs)

    _assert_names_only(error, name)
    assert options_of(subscriber) is None


def test_rejected_reconfiguration_keeps_the_previous_options() -> None:
    subscriber = configure_subscriber(_Subscriber(), concurrency_limit=4)
    kwargs: dict[str, Any] = {"concurrency_limit": -4}

    with pytest.raises(ValueError, match="concurrency_limit"):
        configure_subscriber(subscriber, **kwargs)

    assert options_of(subscriber) == _options(concurrency_limit=4)


def test_configure_subscriber_rejects_inconsistent_backoff_at_declaration() -> None:
    subscriber = _Subscriber()

    with pytest.raises(ValueError, match="retry_backoff"):
        configure_subscriber(subscriber, retry_backoff_sec=5.0, retry_backoff_max_sec=1.0)

    assert options_of(subscriber) is None


def test_configure_subscriber_does_not_keep_the_subscriber_alive() -> None:
    subscriber = configure_subscriber(_Subscriber(), concurrency_limit=2)
    alive = weakref.ref(subscriber)

    del subscriber
    gc.collect()

    assert alive() is None


def test_configure_subscriber_on_real_faststream_subscribers() -> None:
    # Declaring subscribers opens no connection, so no broker is needed here.
    broker = KafkaBroker("127.0.0.1:9", logger=None)
    first = broker.subscriber("orders", group_id="g1", ack_policy=AckPolicy.MANUAL)
    second = broker.subscriber("orders", group_id="g2", ack_policy=AckPolicy.MANUAL)

    assert configure_subscriber(first, ordering="partition", concurrency_limit=5) is first

    assert options_of(first) == _options(ordering="partition", concurrency_limit=5)
    assert options_of(second) is None


# ---- exactly-once settings ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["exactly-once", "EXACTLY_ONCE", "at_most_once", "", None, 1, True], ids=repr
)
def test_settings_reject_an_unknown_processing_guarantee(value: object) -> None:
    with pytest.raises(ValueError) as error:
        _settings(processing_guarantee=value)
    _assert_names_only(error, "processing_guarantee")
    assert "'at_least_once', 'exactly_once'" in str(error.value)


@pytest.mark.parametrize("value", ["caf\u00e9.", "a\nb", "x" * 201, None, 1, b"p."], ids=repr)
def test_settings_reject_a_transactional_id_prefix_that_is_not_printable_ascii(
    value: object,
) -> None:
    with pytest.raises(ValueError) as error:
        _settings(transactional_id_prefix=value)
    _assert_names_only(error, "transactional_id_prefix")


def test_exactly_once_takes_prefixes_kafka_acls_can_match() -> None:
    for prefix in ("", "prod.", "billing-v2:", "x" * 200):
        assert _settings(transactional_id_prefix=prefix).transactional_id_prefix == prefix


def test_exactly_once_refuses_settings_that_would_break_it() -> None:
    with pytest.raises(ValueError, match="needs track_completed_offsets=True"):
        _settings(processing_guarantee="exactly_once", track_completed_offsets=False)
    with pytest.raises(ValueError, match=r"commit_batch_timeout_sec \(40\) must be at most half"):
        _settings(processing_guarantee="exactly_once", commit_batch_timeout_sec=40)
    with pytest.raises(ValueError, match=r"commit_timeout_sec \(20\) must be at most half"):
        _settings(
            processing_guarantee="exactly_once",
            commit_timeout_sec=20,
            transaction_timeout_sec=30,
        )
    # The same values are fine without it, and with a longer transaction timeout.
    _settings(track_completed_offsets=False, commit_batch_timeout_sec=40)
    _settings(
        processing_guarantee="exactly_once",
        commit_batch_timeout_sec=40,
        transaction_timeout_sec=80,
    )


def test_exactly_once_of_one_subscriber_is_checked_against_the_global_settings() -> None:
    current = ConcurrencySettings(commit_batch_timeout_sec=40)
    effective = resolve_options(current, _options(processing_guarantee="exactly_once"))
    with pytest.raises(ValueError, match="commit_batch_timeout_sec"):
        check_exactly_once(current, effective)
    check_exactly_once(
        current,
        resolve_options(
            current, _options(processing_guarantee="exactly_once", transaction_timeout_sec=90)
        ),
    )


# ---- rate limit, adaptive concurrency, ordering by a key function ----------------------

BAD_RATES: tuple[object, ...] = (
    0,
    0.0,
    -1,
    -0.5,
    math.nan,
    math.inf,
    -math.inf,
    1e8,
    True,
    "300",
)


def test_new_flow_control_settings_default_to_off() -> None:
    defaults = ConcurrencySettings()

    assert defaults.max_messages_per_sec is None
    assert defaults.adaptive_concurrency is False


@pytest.mark.parametrize("value", BAD_RATES, ids=repr)
def test_settings_reject_a_rate_not_finite_and_positive(value: object) -> None:
    with pytest.raises(ValueError) as error:
        _settings(max_messages_per_sec=value)

    _assert_names_only(error, "max_messages_per_sec")


@pytest.mark.parametrize("value", BAD_RATES, ids=repr)
def test_subscriber_options_reject_a_rate_not_finite_and_positive(value: object) -> None:
    with pytest.raises(ValueError) as error:
        _options(max_messages_per_sec=value)

    _assert_names_only(error, "max_messages_per_sec")


@pytest.mark.parametrize("rate", [0.5, 1, 300, 1e6])
def test_settings_accept_a_positive_rate(rate: float) -> None:
    assert _settings(max_messages_per_sec=rate).max_messages_per_sec == rate
    assert _options(max_messages_per_sec=rate) == {"max_messages_per_sec": rate}


def test_adaptive_concurrency_with_a_limit_of_one_is_refused_naming_both() -> None:
    with pytest.raises(ValueError, match="adaptive_concurrency") as error:
        _settings(adaptive_concurrency=True, concurrency_limit=1)
    assert "concurrency_limit" in str(error.value)

    with pytest.raises(ValueError, match="adaptive_concurrency"):
        _options(adaptive_concurrency=True, concurrency_limit=1)
    with pytest.raises(ValueError, match="adaptive_concurrency"):
        _settings(concurrency_limit=1).for_subscriber({"adaptive_concurrency": True})
    with pytest.raises(ValueError, match="adaptive_concurrency"):
        _settings(concurrency_limit=10, adaptive_concurrency=True).for_subscriber(
            {"concurrency_limit": 1}
        )


def test_adaptive_concurrency_is_accepted_with_room_to_move() -> None:
    assert _settings(adaptive_concurrency=True, concurrency_limit=2).adaptive_concurrency


def _account(record: Any) -> object:
    return dict(record.headers).get("account")


def test_ordering_accepts_a_key_function_globally_and_per_subscriber() -> None:
    assert _settings(ordering=_account).ordering is _account
    assert _options(ordering=_account) == {"ordering": _account}
    assert _settings().for_subscriber({"ordering": _account}).ordering is _account


@pytest.mark.parametrize("value", [("key",), ["partition"], {"key"}, 0.5], ids=repr)
def test_ordering_that_is_neither_a_mode_nor_callable_is_refused(value: object) -> None:
    with pytest.raises(ValueError) as error:
        _settings(ordering=value)

    _assert_names_only(error, "ordering")
    assert "function" in str(error.value)


# ---- the context ---------------------------------------------------------------------


@pytest.mark.parametrize("context", [None, object(), KafkaBroker()], ids=repr)
async def test_initialisation_without_a_context_repo_says_what_to_pass(context: Any) -> None:
    from faststream_concurrent_aiokafka import initialize_concurrent_processing

    with pytest.raises(TypeError, match=r"needs FastStream's ContextRepo .*app\.context"):
        await initialize_concurrent_processing(context)


def test_a_recovering_brake_is_refused_with_exactly_once() -> None:
    with pytest.raises(ValueError, match="brake_cooldown_sec"):
        _settings(
            processing_guarantee="exactly_once",
            brake_cooldown_sec=2.0,
            commit_batch_timeout_sec=1.0,
            commit_timeout_sec=1.0,
        )
