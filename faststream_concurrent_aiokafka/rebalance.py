"""Rebalance listener: settle revoked partitions before another member takes them."""

import asyncio
import inspect
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aiokafka import ConsumerRebalanceListener, TopicPartition

from faststream_concurrent_aiokafka.registry import find_handler

if TYPE_CHECKING:
    from faststream import ContextRepo

    from faststream_concurrent_aiokafka.handler import KafkaConcurrentHandler


class KafkaConcurrentRebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """On revocation: finish (within ``rebalance_flush_timeout_sec``) and commit the revoked
    partitions' work, then forget them. On assignment: re-apply backpressure pauses.

    Attached automatically to every concurrent subscriber, wrapping the subscriber's own
    listener (called after ours in both callbacks). Pass one as ``listener=`` yourself only
    to wrap a listener of yours explicitly, as ``inner``.
    """

    def __init__(
        self,
        context: "ContextRepo | None" = None,
        *,
        handler: "KafkaConcurrentHandler | None" = None,
        inner: ConsumerRebalanceListener | None = None,
    ) -> None:
        self._context = context
        self._handler = handler
        self.inner = inner
        self.subscriber: object | None = None

    def bind(self, subscriber: object, handler: "KafkaConcurrentHandler") -> None:
        self.subscriber = subscriber
        self._handler = handler

    def _resolve(self) -> "KafkaConcurrentHandler | None":
        if self._handler is not None and self._handler.is_running:
            return self._handler
        if self._context is not None:
            return find_handler(self._context)
        return None

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = set(revoked)
        handler = self._resolve()
        if handler is not None and self.subscriber is not None:
            timeout = handler.settings.rebalance_flush_timeout_sec
            await asyncio.gather(
                *(
                    handler.release_partitions(lane, revoked, timeout)
                    for lane in handler.lanes_of(self.subscriber)
                )
            )
        if self.inner is not None:
            await _maybe_await(self.inner.on_partitions_revoked(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assigned = set(assigned)
        handler = self._resolve()
        if handler is not None and self.subscriber is not None:
            await handler.partitions_assigned(self.subscriber, assigned)
        if self.inner is not None:
            await _maybe_await(self.inner.on_partitions_assigned(assigned))


async def _maybe_await(result: Any) -> None:
    if inspect.isawaitable(result):
        await result
