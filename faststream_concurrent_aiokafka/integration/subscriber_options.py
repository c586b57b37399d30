"""Per-subscriber overrides, attached to FastStream subscriber objects.

FastStream 0.7 subscribers take no free-form options, so overrides live beside them in a
weak map: declaring them never changes the subscriber and dies with it.
"""

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeVar, Unpack
from weakref import WeakKeyDictionary

from faststream_concurrent_aiokafka.core.settings import SubscriberOverrides, check_overrides

_OPTIONS: "WeakKeyDictionary[object, Mapping[str, Any]]" = WeakKeyDictionary()

S = TypeVar("S")


def configure_subscriber(subscriber: S, **overrides: Unpack[SubscriberOverrides]) -> S:
    """Override the global settings for one subscriber; returns the subscriber.

    Unset (or None) arguments keep the values given to ``initialize_concurrent_processing``.
    Invalid values raise ``ValueError`` here, at declaration time.
    """
    given = MappingProxyType(check_overrides(overrides))
    try:
        _OPTIONS[subscriber] = given
    except TypeError:
        msg = (
            f"configure_subscriber() takes the object returned by broker.subscriber(...), "
            f"not {type(subscriber).__name__}; keep that object and decorate the handler with it"
        )
        raise TypeError(msg) from None
    return subscriber


def options_of(subscriber: object) -> Mapping[str, Any] | None:
    """The overrides declared for ``subscriber`` (only those set), None if never configured."""
    return _OPTIONS.get(subscriber)
