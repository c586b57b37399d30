"""The settings table: every setting once, with its default, its check and its level.

Pure: no I/O. The dataclasses below are the table. ``SubscriberSettings`` holds what may differ
per subscriber (the global values are their defaults), ``ConcurrencySettings`` adds what only
exists once per handler. Every field carries its own check, run when an instance is built, so a
misconfigured service fails at start-up with a ``ValueError`` naming the setting. The
``TypedDict``s at the end are the same table seen by type checkers for keyword arguments; a
unit test keeps them equal to the dataclasses.
"""

import dataclasses
import math
import re
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypedDict, get_args

from faststream_concurrent_aiokafka.core.decode_errors import DECODE_ERRORS, describe_exception

Ordering = Literal["unordered", "key", "partition"]
ORDERINGS: Final = get_args(Ordering)
# Ordering by any key: a function of the raw record (aiokafka's ConsumerRecord), its key
# hashable; None puts no constraint on that record.
KeyFunction = Callable[[Any], Hashable | None]
OrderingSetting = Ordering | KeyFunction

ProcessingGuarantee = Literal["at_least_once", "exactly_once"]
GUARANTEES: Final = get_args(ProcessingGuarantee)
EXACTLY_ONCE: Final = "exactly_once"

# Longest transactional id prefix: Kafka takes any string, operators' ACL tooling less.
_MAX_PREFIX_LENGTH: Final = 200

Check = Callable[[str, Any], None]
ExceptionTypes = tuple[type[Exception], ...]
ExceptionText = Callable[[BaseException], str]
RetryPolicy = Callable[[BaseException, int], float | None]
"""``(error, attempt) -> seconds before the next attempt``, or None for no more attempts."""

# max_messages_per_sec above this means no limit: say None.
_MAX_RATE: Final = 10_000_000

# adaptive_concurrency moves the limit between 1 and concurrency_limit: 1 leaves no room.
_MIN_ADAPTIVE_CEILING: Final = 2

_CHECK: Final = "check"
_OPTIONAL: Final = "optional"


def _setting(default: Any, check: Check, *, optional: bool = False) -> Any:
    """A row of the table: the default and the check; ``optional`` settings accept None (off)."""
    return dataclasses.field(default=default, metadata={_CHECK: check, _OPTIONAL: optional})


def _int_between(minimum: int, maximum: int) -> Check:
    """An int in [minimum, maximum]: the upper bound refuses values no service means (a
    typo, a unit mixed up) and that would turn a limit off without saying so."""

    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            msg = f"{name} must be an int from {minimum:,} to {maximum:,}, got {value!r}"
            raise ValueError(msg)
        if not minimum <= value <= maximum:
            msg = f"{name} must be from {minimum:,} to {maximum:,}, got {value!r}"
            raise ValueError(msg)

    return check


# The shortest duration any setting takes: asyncio's timers are not finer than a millisecond.
MIN_SECONDS: Final = 0.001
HOUR: Final = 3600.0
DAY: Final = 86_400.0


def _number_of_seconds(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{name} must be a number of seconds, got {value!r}"
        raise ValueError(msg)
    if not math.isfinite(value):
        msg = f"{name} must be a finite number of seconds, got {value!r}"
        raise ValueError(msg)


def _seconds_between(low: float, high: float) -> Check:
    """A finite number of seconds in [low, high]."""

    def check(name: str, value: Any) -> None:
        _number_of_seconds(name, value)
        if not low <= value <= high:
            msg = f"{name} must be a number of seconds from {low:g} to {high:g}, got {value!r}"
            raise ValueError(msg)

    return check


_seconds_up_to_an_hour: Final = _seconds_between(MIN_SECONDS, HOUR)
_seconds_up_to_a_day: Final = _seconds_between(MIN_SECONDS, DAY)


# Kafka carries a transaction timeout as an Int32 of milliseconds.
_MIN_TRANSACTION_TIMEOUT_SEC = 0.001
_MAX_TRANSACTION_TIMEOUT_SEC = (2**31 - 1) // 1000


def _transaction_timeout(name: str, value: Any) -> None:
    _number_of_seconds(name, value)
    if not _MIN_TRANSACTION_TIMEOUT_SEC <= value <= _MAX_TRANSACTION_TIMEOUT_SEC:
        msg = (
            f"{name} must be from {_MIN_TRANSACTION_TIMEOUT_SEC} to "
            f"{_MAX_TRANSACTION_TIMEOUT_SEC} seconds (Kafka's "
            f"limit; the broker's transaction.max.timeout.ms, 15 minutes by default, may be "
            f"lower), got {value!r}"
        )
        raise ValueError(msg)


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        msg = f"{name} must be True or False, got {value!r}"
        raise ValueError(msg)


def _ordering(name: str, value: Any) -> None:
    if callable(value):
        return
    if not isinstance(value, str) or value not in ORDERINGS:
        msg = (
            f"{name} must be one of {', '.join(map(repr, ORDERINGS))} or a function of the "
            f"record returning its ordering key, got {value!r}"
        )
        raise ValueError(msg)


def _rate(name: str, value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and 0 < value <= _MAX_RATE)
    ):
        msg = (
            f"{name} must be a number of messages per second, > 0 and at most {_MAX_RATE:,} "
            f"(None: no limit), got {value!r}"
        )
        raise ValueError(msg)


def _ratio(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{name} must be a number between 0 and 1, got {value!r}"
        raise ValueError(msg)
    if not 0 < value < 1:
        msg = f"{name} must be > 0 and < 1 (a share of messages), got {value!r}"
        raise ValueError(msg)


def _exception_types(name: str, value: Any) -> None:
    """A tuple of exception classes: a single class is refused, so that a forgotten comma
    fails here and not by retrying what should not be."""
    if not isinstance(value, tuple) or not all(
        isinstance(item, type) and issubclass(item, Exception) for item in value
    ):
        msg = (
            f"{name} must be a tuple of exception classes (subclasses of Exception), such as "
            f"(ValueError,) or (*DECODE_ERRORS, MyError); got {value!r}"
        )
        raise ValueError(msg)


def _function(name: str, value: Any) -> None:
    if not callable(value):
        msg = f"{name} must be a function from an exception to a str (or None), got {value!r}"
        raise ValueError(msg)


def _retry_policy(name: str, value: Any) -> None:
    if not callable(value):
        msg = (
            f"{name} must be a function (error, attempt) -> seconds before the next attempt "
            f"or None, got {value!r}"
        )
        raise ValueError(msg)


def _guarantee(name: str, value: Any) -> None:
    if value not in GUARANTEES:
        msg = f"{name} must be one of {', '.join(map(repr, GUARANTEES))}, got {value!r}"
        raise ValueError(msg)


def _id_prefix(name: str, value: Any) -> None:
    """Printable text: it starts every transactional id, which operators match in ACLs."""
    if (
        not isinstance(value, str)
        or len(value) > _MAX_PREFIX_LENGTH
        or not (value.isprintable() and value.isascii())
    ):
        msg = (
            f"{name} must be printable ASCII text of at most {_MAX_PREFIX_LENGTH} characters "
            f"(it starts every transactional id), got {value!r}"
        )
        raise ValueError(msg)


_TOPIC_NAME: Final = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def _topic(name: str, value: Any) -> None:
    """Kafka's own rule for topic names, so a bad one fails now and not at the first failure."""
    if not isinstance(value, str) or not _TOPIC_NAME.fullmatch(value) or value in {".", ".."}:
        msg = (
            f"{name} must be a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -, not '.' or '..'), "
            f"got {value!r}"
        )
        raise ValueError(msg)


# A retry topic's delays: at most this many hops, each at most a day (a longer wait belongs in
# a scheduler, not in a topic whose records the consumer keeps reading).
MAX_RETRY_TOPIC_HOPS: Final = 20


def _delays(name: str, value: Any) -> None:
    """A non-empty tuple of waits, one per trip through the retry topic."""
    if not isinstance(value, tuple) or not 1 <= len(value) <= MAX_RETRY_TOPIC_HOPS:
        msg = (
            f"{name} must be a tuple of 1 to {MAX_RETRY_TOPIC_HOPS} numbers of seconds, one "
            f"wait per trip through the retry topic, such as (10, 60, 600); got {value!r}"
        )
        raise ValueError(msg)
    for delay in value:
        _seconds_up_to_a_day(name, delay)


def check_setting(field: "dataclasses.Field[Any]", value: Any) -> None:
    """Run one row's check on ``value`` (None passes for optional settings)."""
    if value is None and field.metadata[_OPTIONAL]:
        return
    field.metadata[_CHECK](field.name, value)


def _check_backoff(base: float, cap: float) -> None:
    if cap < base:
        msg = f"retry_backoff_max_sec ({cap}) must be >= retry_backoff_sec ({base})"
        raise ValueError(msg)


def _check_retry_topic(settings: "SubscriberSettings") -> None:
    """What ``retry_topic`` cannot go with: a record read back from it runs after records
    that came later (no order to keep), in no transaction of its input partition, and not in
    the topic its failures go to."""
    topic = settings.retry_topic
    if topic is None:
        return
    if settings.ordering != "unordered":
        msg = (
            f"retry_topic={topic!r} cannot keep ordering={settings.ordering!r}: a message sent "
            "to the retry topic runs again after the messages behind it; use ordering="
            "'unordered' for this subscriber, or in-memory retries (max_retries, retry_policy)"
        )
        raise ValueError(msg)
    if settings.exactly_once:
        msg = (
            f"retry_topic={topic!r} is not supported with processing_guarantee='exactly_once': "
            "its retry runs in another partition's transaction than its input, so the input's "
            "offset and the retry's output would not commit together; leave retry_topic None"
        )
        raise ValueError(msg)
    if topic == settings.dead_letter_topic:
        msg = (
            f"retry_topic and dead_letter_topic are both {topic!r}: dead letters would be read "
            "back and run again; give them different topics"
        )
        raise ValueError(msg)


def _check_adaptive(*, adaptive: bool, limit: int) -> None:
    if adaptive and limit < _MIN_ADAPTIVE_CEILING:
        msg = (
            f"adaptive_concurrency=True needs a concurrency_limit of at least 2 (its ceiling), "
            f"got {limit}: raise concurrency_limit or set adaptive_concurrency=False"
        )
        raise ValueError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriberSettings:
    """What one subscriber runs with. Each may be overridden per subscriber."""

    concurrency_limit: int = _setting(10, _int_between(1, 100_000))
    ordering: OrderingSetting = _setting("unordered", _ordering)
    max_messages_per_sec: float | None = _setting(None, _rate, optional=True)
    adaptive_concurrency: bool = _setting(False, _bool)
    task_timeout_sec: float | None = _setting(None, _seconds_up_to_a_day, optional=True)
    max_retries: int = _setting(0, _int_between(0, 1_000))
    retry_backoff_sec: float = _setting(0.1, _seconds_up_to_an_hour)
    retry_backoff_max_sec: float = _setting(10.0, _seconds_up_to_an_hour)
    dead_letter_topic: str | None = _setting(None, _topic, optional=True)
    no_retry_on: ExceptionTypes = _setting(DECODE_ERRORS, _exception_types)
    retry_policy: RetryPolicy | None = _setting(None, _retry_policy, optional=True)
    max_message_age_sec: float | None = _setting(None, _seconds_up_to_a_day, optional=True)
    dead_letter_exception_text: ExceptionText | None = _setting(
        describe_exception, _function, optional=True
    )
    max_consecutive_failures: int | None = _setting(None, _int_between(1, 1_000_000), optional=True)
    max_failure_ratio: float | None = _setting(None, _ratio, optional=True)
    failure_ratio_window: int = _setting(100, _int_between(1, 100_000))
    brake_cooldown_sec: float | None = _setting(None, _seconds_up_to_an_hour, optional=True)
    retry_topic: str | None = _setting(None, _topic, optional=True)
    retry_topic_delays_sec: tuple[float, ...] = _setting((10.0, 60.0, 600.0), _delays)
    retry_topic_max_waiting: int = _setting(1_000, _int_between(1, 1_000_000))
    track_completed_offsets: bool = _setting(True, _bool)
    stall_warning_sec: float | None = _setting(60.0, _seconds_up_to_a_day, optional=True)
    processing_guarantee: ProcessingGuarantee = _setting("at_least_once", _guarantee)
    transactional_id_prefix: str = _setting("", _id_prefix)
    transaction_timeout_sec: float = _setting(60.0, _transaction_timeout)
    measure_processing_time: bool = _setting(False, _bool)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            check_setting(field, getattr(self, field.name))
        _check_backoff(self.retry_backoff_sec, self.retry_backoff_max_sec)
        _check_adaptive(adaptive=self.adaptive_concurrency, limit=self.concurrency_limit)
        _check_retry_topic(self)

    @property
    def exactly_once(self) -> bool:
        return self.processing_guarantee == EXACTLY_ONCE


@dataclass(frozen=True, slots=True, kw_only=True)
class ConcurrencySettings(SubscriberSettings):
    """All settings: the subscribers' defaults and those that exist once per handler."""

    commit_batch_size: int = _setting(10, _int_between(1, 1_000_000))
    commit_batch_timeout_sec: float = _setting(10.0, _seconds_up_to_an_hour)
    shutdown_timeout_sec: float = _setting(20.0, _seconds_up_to_an_hour)
    max_uncommitted_tasks: int = _setting(50_000, _int_between(1, 10_000_000))
    rebalance_flush_timeout_sec: float = _setting(10.0, _seconds_up_to_an_hour)
    commit_timeout_sec: float = _setting(10.0, _seconds_up_to_an_hour)

    def __post_init__(self) -> None:
        SubscriberSettings.__post_init__(self)
        if self.exactly_once:
            check_exactly_once(self, self)

    def for_subscriber(self, overrides: Mapping[str, Any] | None) -> SubscriberSettings:
        """A subscriber's settings: its overrides laid over these; raises if they clash."""
        values = {f.name: getattr(self, f.name) for f in SUBSCRIBER_FIELDS}
        if overrides:
            values.update(overrides)
        return SubscriberSettings(**values)


def check_exactly_once(settings: ConcurrencySettings, subscriber: SubscriberSettings) -> None:
    """What ``processing_guarantee="exactly_once"`` needs of the other settings: every finished
    offset recorded (one left out would run again and publish again), and commits that come
    often enough, and end soon enough, for a transaction to end before Kafka times it out."""
    if not subscriber.track_completed_offsets:
        msg = (
            "processing_guarantee='exactly_once' needs track_completed_offsets=True: a message "
            "finished above the commit point and not recorded would run, and publish, again"
        )
        raise ValueError(msg)
    if subscriber.brake_cooldown_sec is not None:
        msg = (
            "brake_cooldown_sec is not supported with processing_guarantee='exactly_once' (a "
            "held message would keep its partition's transaction open through the cooldown); "
            "leave it None there"
        )
        raise ValueError(msg)
    half = subscriber.transaction_timeout_sec / 2
    for name in ("commit_batch_timeout_sec", "commit_timeout_sec"):
        value = getattr(settings, name)
        if value > half:
            msg = (
                f"{name} ({value:g}) must be at most half of transaction_timeout_sec "
                f"({subscriber.transaction_timeout_sec:g}) with processing_guarantee="
                "'exactly_once': a transaction must end before Kafka aborts it; lower it or "
                "raise transaction_timeout_sec"
            )
            raise ValueError(msg)


SUBSCRIBER_FIELDS: Final = dataclasses.fields(SubscriberSettings)
_SUBSCRIBER_FIELDS_BY_NAME: Final = {f.name: f for f in SUBSCRIBER_FIELDS}


def check_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Validate per-subscriber overrides on their own (``None`` = keep the global value);
    returns those that are set."""
    unknown = sorted(set(overrides) - set(_SUBSCRIBER_FIELDS_BY_NAME))
    if unknown:
        allowed = ", ".join(_SUBSCRIBER_FIELDS_BY_NAME)
        msg = f"unknown per-subscriber setting(s) {', '.join(unknown)}; allowed: {allowed}"
        raise TypeError(msg)
    given = {name: value for name, value in overrides.items() if value is not None}
    for name, value in given.items():
        _SUBSCRIBER_FIELDS_BY_NAME[name].metadata[_CHECK](name, value)
    if "retry_backoff_sec" in given and "retry_backoff_max_sec" in given:
        _check_backoff(given["retry_backoff_sec"], given["retry_backoff_max_sec"])
    if "adaptive_concurrency" in given and "concurrency_limit" in given:
        _check_adaptive(adaptive=given["adaptive_concurrency"], limit=given["concurrency_limit"])
    return given


DEFAULTS: Final = ConcurrencySettings()


class KeywordSettings(TypedDict, total=False):
    """The settings ``initialize_concurrent_processing`` takes only by keyword (typing view)."""

    ordering: OrderingSetting
    max_messages_per_sec: float | None
    adaptive_concurrency: bool
    task_timeout_sec: float | None
    max_retries: int
    retry_backoff_sec: float
    retry_backoff_max_sec: float
    dead_letter_topic: str | None
    no_retry_on: ExceptionTypes
    retry_policy: RetryPolicy | None
    max_message_age_sec: float | None
    dead_letter_exception_text: ExceptionText | None
    max_consecutive_failures: int | None
    max_failure_ratio: float | None
    failure_ratio_window: int
    brake_cooldown_sec: float | None
    retry_topic: str | None
    retry_topic_delays_sec: tuple[float, ...]
    retry_topic_max_waiting: int
    track_completed_offsets: bool
    stall_warning_sec: float | None
    processing_guarantee: ProcessingGuarantee
    transactional_id_prefix: str
    transaction_timeout_sec: float
    measure_processing_time: bool
    commit_timeout_sec: float


class Settings(KeywordSettings, total=False):
    """Every setting by keyword (typing view of ``ConcurrencySettings``)."""

    concurrency_limit: int
    commit_batch_size: int
    commit_batch_timeout_sec: float
    shutdown_timeout_sec: float
    max_uncommitted_tasks: int
    rebalance_flush_timeout_sec: float


class SubscriberOverrides(TypedDict, total=False):
    """What ``configure_subscriber`` accepts: ``SubscriberSettings``' fields, None = global."""

    concurrency_limit: int | None
    ordering: OrderingSetting | None
    max_messages_per_sec: float | None
    adaptive_concurrency: bool | None
    task_timeout_sec: float | None
    max_retries: int | None
    retry_backoff_sec: float | None
    retry_backoff_max_sec: float | None
    dead_letter_topic: str | None
    no_retry_on: ExceptionTypes | None
    retry_policy: RetryPolicy | None
    max_message_age_sec: float | None
    dead_letter_exception_text: ExceptionText | None
    max_consecutive_failures: int | None
    max_failure_ratio: float | None
    failure_ratio_window: int | None
    brake_cooldown_sec: float | None
    retry_topic: str | None
    retry_topic_delays_sec: tuple[float, ...] | None
    retry_topic_max_waiting: int | None
    track_completed_offsets: bool | None
    stall_warning_sec: float | None
    processing_guarantee: ProcessingGuarantee | None
    transactional_id_prefix: str | None
    transaction_timeout_sec: float | None
    measure_processing_time: bool | None
