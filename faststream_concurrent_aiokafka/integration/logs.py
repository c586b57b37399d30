"""Where the library's log lines go: under the broker's own logger, with FastStream's context.

FastStream users configure logging through the broker (``KafkaBroker(logger=...,
log_level=...)``, ``faststream run --log-level`` / ``--log-config``). A subscriber's lines
therefore go to the child ``<broker logger>.concurrent`` (``faststream.access.kafka.concurrent``
by default): same handlers, format and level as FastStream's own lines, and the message's
topic and ``partition@offset`` where FastStream puts its ``topic | group | message id``
context. A broker with ``logger=None`` logs nothing itself; the library then uses its own
``faststream_concurrent_aiokafka`` logger, as any library would.
"""

import logging
from collections.abc import MutableMapping
from typing import Any, Final

from faststream_concurrent_aiokafka.compat import faststream as faststream_compat

LIBRARY_LOGGER: Final = logging.getLogger("faststream_concurrent_aiokafka")
CHILD: Final = "concurrent"


class FastStreamContext(logging.LoggerAdapter[logging.Logger]):
    """Fills the ``topic``, ``group_id`` and ``message_id`` fields FastStream's formats use,
    from a line's own ``topic``/``partition``/``offset`` extras or the subscriber's defaults;
    a formatter naming them never fails on a library line."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        given = kwargs.get("extra") or {}
        extra = {**(self.extra or {}), **given}
        if "offset" in given:
            extra["message_id"] = f"{given.get('partition')}@{given['offset']}"
        kwargs["extra"] = extra
        return msg, kwargs


def subscriber_logger(subscriber: Any) -> logging.LoggerAdapter[logging.Logger]:
    """The logger for one subscriber's lines (see the module docstring). Call it once the
    broker has started: before that FastStream has not set its logger up."""
    base = faststream_compat.broker_logger(subscriber)
    logger = base.getChild(CHILD) if base is not None else LIBRARY_LOGGER
    defaults = {
        "topic": ",".join(getattr(subscriber, "topic_names", None) or []),
        "group_id": getattr(subscriber, "group_id", None) or "",
        "message_id": "",
    }
    return FastStreamContext(logger, defaults)


_LOGGED_BY_THE_LIBRARY: Final = "_faststream_concurrent_logged"


class _LeftToTheLibrary(logging.Filter):
    """Drops FastStream's own ERROR line (its ``CriticalLogMiddleware``) for a message's final
    failure that the library logs itself: one line per failure, and a validation error's
    traceback, which quotes the body, is never written."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not getattr(error, _LOGGED_BY_THE_LIBRARY, False)


_FILTER: Final = _LeftToTheLibrary()


def leave_to_the_library(subscriber: Any, error: BaseException) -> None:
    """Mark ``error``, about to be raised through FastStream's middlewares, as logged by the
    library, and make sure the subscriber's broker logger leaves it out."""
    setattr(error, _LOGGED_BY_THE_LIBRARY, True)
    logger = faststream_compat.broker_logger(subscriber)
    if logger is not None and _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
