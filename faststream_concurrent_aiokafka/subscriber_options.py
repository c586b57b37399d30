"""Per-subscriber overrides, attached to FastStream subscriber objects.

FastStream 0.7 subscribers take no free-form options, so overrides live beside them in a
weak map: declaring them never changes the subscriber and dies with it.
"""

from typing import TypeVar
from weakref import WeakKeyDictionary

from faststream_concurrent_aiokafka.config import Ordering, SubscriberOptions

_OPTIONS: "WeakKeyDictionary[object, SubscriberOptions]" = WeakKeyDictionary()

S = TypeVar("S")


def configure_subscriber(
    subscriber: S,
    *,
    concurrency_limit: int | None = None,
    ordering: Ordering | None = None,
    task_timeout_sec: float | None = None,
    max_retries: int | None = None,
    retry_backoff_sec: float | None = None,
    retry_backoff_max_sec: float | None = None,
    dead_letter_topic: str | None = None,
    track_completed_offsets: bool | None = None,
) -> S:
    """Override the global settings for one subscriber; returns the subscriber.

    Unset arguments keep the values given to ``initialize_concurrent_processing``. Invalid
    values raise ``ValueError`` here, at declaration time.
    """
    options = SubscriberOptions(
        concurrency_limit=concurrency_limit,
        ordering=ordering,
        task_timeout_sec=task_timeout_sec,
        max_retries=max_retries,
        retry_backoff_sec=retry_backoff_sec,
        retry_backoff_max_sec=retry_backoff_max_sec,
        dead_letter_topic=dead_letter_topic,
        track_completed_offsets=track_completed_offsets,
    )
    try:
        _OPTIONS[subscriber] = options
    except TypeError:
        msg = (
            f"configure_subscriber() takes the object returned by broker.subscriber(...), "
            f"not {type(subscriber).__name__}; keep that object and decorate the handler with it"
        )
        raise TypeError(msg) from None
    return subscriber


def options_of(subscriber: object) -> SubscriberOptions | None:
    return _OPTIONS.get(subscriber)
