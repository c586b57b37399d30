"""Settings of the concurrent processing and their validation.

Pure: no I/O. Invalid values raise ``ValueError`` naming the parameter, at the moment the
settings are built, so a misconfigured service fails at start-up and not on a message.
"""

import math
import re
from dataclasses import dataclass, fields
from typing import Final, Literal, get_args

Ordering = Literal["unordered", "key", "partition"]
ORDERINGS: Final = get_args(Ordering)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"{name} must be an int, got {value!r}"
        raise ValueError(msg)
    if value < minimum:
        msg = f"{name} must be >= {minimum}, got {value!r}"
        raise ValueError(msg)


def _check_seconds(name: str, value: object, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{name} must be a number of seconds, got {value!r}"
        raise ValueError(msg)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        msg = f"{name} must be a finite number of seconds {bound}, got {value!r}"
        raise ValueError(msg)


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        msg = f"{name} must be True or False, got {value!r}"
        raise ValueError(msg)


_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def _check_topic(name: str, value: object) -> None:
    """Kafka's own rule for topic names, so a bad one fails now and not at the first failure."""
    if not isinstance(value, str) or not _TOPIC_NAME.fullmatch(value) or value in {".", ".."}:
        msg = (
            f"{name} must be a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -, not '.' or '..'), "
            f"got {value!r}"
        )
        raise ValueError(msg)


def _check_backoff(base: float, cap: float) -> None:
    _check_seconds("retry_backoff_sec", base)
    _check_seconds("retry_backoff_max_sec", cap)
    if cap < base:
        msg = f"retry_backoff_max_sec ({cap}) must be >= retry_backoff_sec ({base})"
        raise ValueError(msg)


def _check_ordering(name: str, value: object) -> None:
    if value not in ORDERINGS:
        msg = f"{name} must be one of {', '.join(map(repr, ORDERINGS))}, got {value!r}"
        raise ValueError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriberOptions:
    """Per-subscriber overrides; ``None`` means "use the global setting"."""

    concurrency_limit: int | None = None
    ordering: Ordering | None = None
    task_timeout_sec: float | None = None
    max_retries: int | None = None
    retry_backoff_sec: float | None = None
    retry_backoff_max_sec: float | None = None
    dead_letter_topic: str | None = None
    track_completed_offsets: bool | None = None

    def __post_init__(self) -> None:
        if self.track_completed_offsets is not None:
            _check_bool("track_completed_offsets", self.track_completed_offsets)
        if self.concurrency_limit is not None:
            _check_int("concurrency_limit", self.concurrency_limit, 1)
        if self.ordering is not None:
            _check_ordering("ordering", self.ordering)
        if self.task_timeout_sec is not None:
            _check_seconds("task_timeout_sec", self.task_timeout_sec)
        if self.max_retries is not None:
            _check_int("max_retries", self.max_retries, 0)
        if self.retry_backoff_sec is not None:
            _check_seconds("retry_backoff_sec", self.retry_backoff_sec)
        if self.retry_backoff_max_sec is not None:
            _check_seconds("retry_backoff_max_sec", self.retry_backoff_max_sec)
        if self.retry_backoff_sec is not None and self.retry_backoff_max_sec is not None:
            _check_backoff(self.retry_backoff_sec, self.retry_backoff_max_sec)
        if self.dead_letter_topic is not None:
            _check_topic("dead_letter_topic", self.dead_letter_topic)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConcurrencySettings:
    """Handler-wide settings, the defaults of every subscriber."""

    concurrency_limit: int = 10
    commit_batch_size: int = 10
    commit_batch_timeout_sec: float = 10.0
    shutdown_timeout_sec: float = 20.0
    max_uncommitted_tasks: int = 10_000
    rebalance_flush_timeout_sec: float = 10.0
    ordering: Ordering = "unordered"
    task_timeout_sec: float | None = None
    max_retries: int = 0
    retry_backoff_sec: float = 0.1
    retry_backoff_max_sec: float = 10.0
    dead_letter_topic: str | None = None
    track_completed_offsets: bool = True

    def __post_init__(self) -> None:
        _check_bool("track_completed_offsets", self.track_completed_offsets)
        _check_int("concurrency_limit", self.concurrency_limit, 1)
        _check_int("max_retries", self.max_retries, 0)
        _check_backoff(self.retry_backoff_sec, self.retry_backoff_max_sec)
        if self.dead_letter_topic is not None:
            _check_topic("dead_letter_topic", self.dead_letter_topic)
        _check_int("commit_batch_size", self.commit_batch_size, 1)
        _check_int("max_uncommitted_tasks", self.max_uncommitted_tasks, 1)
        _check_seconds("commit_batch_timeout_sec", self.commit_batch_timeout_sec)
        _check_seconds("shutdown_timeout_sec", self.shutdown_timeout_sec)
        _check_seconds("rebalance_flush_timeout_sec", self.rebalance_flush_timeout_sec)
        _check_ordering("ordering", self.ordering)
        if self.task_timeout_sec is not None:
            _check_seconds("task_timeout_sec", self.task_timeout_sec)


@dataclass(frozen=True, slots=True)
class EffectiveOptions:
    """What one subscriber runs with: its overrides laid over the global settings."""

    concurrency_limit: int
    ordering: Ordering
    task_timeout_sec: float | None
    max_retries: int
    retry_backoff_sec: float
    retry_backoff_max_sec: float
    dead_letter_topic: str | None
    track_completed_offsets: bool


def resolve_options(
    settings: ConcurrencySettings, overrides: SubscriberOptions | None
) -> EffectiveOptions:
    """Lay a subscriber's overrides over the global settings."""
    values = {f.name: getattr(settings, f.name) for f in fields(EffectiveOptions)}
    if overrides is not None:
        for f in fields(SubscriberOptions):
            value = getattr(overrides, f.name)
            if value is not None:
                values[f.name] = value
    _check_backoff(values["retry_backoff_sec"], values["retry_backoff_max_sec"])
    return EffectiveOptions(**values)
