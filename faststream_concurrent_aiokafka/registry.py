"""Where the handler lives: FastStream's context, under one key."""

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from faststream import ContextRepo

    from faststream_concurrent_aiokafka.handler import KafkaConcurrentHandler

HANDLER_CONTEXT_KEY: Final = "kafka_concurrent_handler"


def find_handler(context: "ContextRepo") -> "KafkaConcurrentHandler | None":
    """The running handler stored in ``context``, if any."""
    handler: KafkaConcurrentHandler | None = context.get(HANDLER_CONTEXT_KEY)
    if handler is None or not handler.is_running:
        return None
    return handler
