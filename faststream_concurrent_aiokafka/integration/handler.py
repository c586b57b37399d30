"""What ``initialize_concurrent_processing`` stores in FastStream's context: the engine with
its FastStream side (pipelines per subscriber, set-up errors, signals), and the rebalance
listener bound to it. The two refer to each other, so they share this module.
"""

import asyncio
import inspect
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final
from weakref import WeakKeyDictionary

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from faststream_concurrent_aiokafka.core.health import FAILED, Fault, assess
from faststream_concurrent_aiokafka.core.settings import ConcurrencySettings
from faststream_concurrent_aiokafka.engine import monitor
from faststream_concurrent_aiokafka.engine.committer import KafkaBatchCommitter
from faststream_concurrent_aiokafka.engine.engine import Engine
from faststream_concurrent_aiokafka.engine.state import ConsumerLane
from faststream_concurrent_aiokafka.integration.pipeline import SubscriberPipeline
from faststream_concurrent_aiokafka.integration.signals import ShutdownSignals

if TYPE_CHECKING:
    from faststream import ContextRepo

HANDLER_CONTEXT_KEY: Final = "kafka_concurrent_handler"


def find_handler(context: "ContextRepo") -> "ConcurrentProcessing | None":
    """The running handler stored in ``context``, if any."""
    handler: ConcurrentProcessing | None = context.get(HANDLER_CONTEXT_KEY)
    if handler is None or not handler.is_running:
        return None
    return handler


class ConcurrentProcessing:
    """The running concurrent processing of one ``ContextRepo``: the engine and the FastStream
    state around it. ``initialize_concurrent_processing`` returns it and stores it in the
    context; it was called ``KafkaConcurrentHandler``, though it handles no message itself.
    """

    def __init__(self, settings: ConcurrencySettings | None = None) -> None:
        self.settings = settings or ConcurrencySettings()
        self.engine = Engine(self.settings)
        self.signals = ShutdownSignals()
        self.setup_errors: list[Exception] = []
        # The app's Kafka brokers: an exactly-once message may not publish through another
        # broker than its subscriber's (its record could not join the transaction).
        self.brokers: list[Any] = []
        self._pipelines: WeakKeyDictionary[Any, SubscriberPipeline] = WeakKeyDictionary()

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        """Drain and commit everything, stop the committer, give the signals back."""
        await self.engine.close()
        self.signals.remove()

    @property
    def is_running(self) -> bool:
        return self.engine.is_running

    def faults(self) -> list[Fault]:
        """What is wrong now (see ``engine.monitor.current_faults``), and every subscriber
        that could not be set up: its messages stay uncommitted."""
        faults = monitor.current_faults(self.engine)
        faults += (
            Fault(FAILED, f"a subscriber cannot run concurrently: {error}")
            for error in self.setup_errors
        )
        return faults

    @property
    def is_healthy(self) -> bool:
        """Nothing failed; a degraded handler counts as healthy (see ``health_report``)."""
        return not assess(self.faults()).is_failed

    @property
    def committer(self) -> KafkaBatchCommitter:
        return self.engine.committer

    @property
    def in_flight(self) -> int:
        return self.engine.in_flight

    @property
    def processed(self) -> int:
        return self.engine.counters.processed

    @property
    def failed(self) -> int:
        return self.engine.counters.failed

    @property
    def lanes(self) -> list[ConsumerLane]:
        return self.engine.lanes

    @property
    def brake_reasons(self) -> list[str]:
        """Why subscribers stopped: one line per tripped dead-letter brake (none: empty)."""
        return self.engine.brake_reasons

    def create_rebalance_listener(self) -> "KafkaConcurrentRebalanceListener":
        """A listener bound to this handler, for ``subscriber(..., listener=...)``."""
        return KafkaConcurrentRebalanceListener(handler=self)

    # ---- subscribers -----------------------------------------------------------------

    def pipeline_for(self, subscriber: Any) -> SubscriberPipeline:
        pipeline = self._pipelines.get(subscriber)
        if pipeline is None:
            pipeline = self._pipelines[subscriber] = SubscriberPipeline(
                subscriber, self.settings, lambda: self.brokers
            )
        return pipeline

    def lane_for(self, subscriber: Any, consumer: AIOKafkaConsumer) -> ConsumerLane:
        return self.engine.lane_for(consumer, self.pipeline_for(subscriber))

    def lanes_of(self, subscriber: object) -> list[ConsumerLane]:
        return self.engine.lanes_of(subscriber)

    async def release_partitions(self, subscriber: object, revoked: set[TopicPartition]) -> None:
        """Settle and commit the revoked partitions of every consumer of ``subscriber``."""
        timeout = self.settings.rebalance_flush_timeout_sec
        await asyncio.gather(
            *(
                self.engine.release_partitions(lane, revoked, timeout)
                for lane in self.lanes_of(subscriber)
            )
        )

    async def partitions_assigned(self, subscriber: Any, assigned: set[TopicPartition]) -> None:
        """The consumer of ``subscriber`` that was given ``assigned`` (one of several with
        ``max_workers``) re-applies its pauses and loads what was finished before."""
        consumers = getattr(subscriber, "consumer_subgroup", None) or [subscriber.consumer]
        for consumer in consumers:
            if consumer is not None and assigned <= consumer.assignment():
                lane = self.lane_for(subscriber, consumer)
                await self.engine.partitions_assigned(lane, assigned)
                return


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
        handler: ConcurrentProcessing | None = None,
        inner: ConsumerRebalanceListener | None = None,
    ) -> None:
        self._context = context
        self._handler = handler
        self.inner = inner
        self.subscriber: object | None = None

    def bind(self, subscriber: object, handler: ConcurrentProcessing) -> None:
        self.subscriber = subscriber
        self._handler = handler

    def _resolve(self) -> ConcurrentProcessing | None:
        if self._handler is not None and self._handler.is_running:
            return self._handler
        if self._context is not None:
            return find_handler(self._context)
        return None

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = set(revoked)
        handler = self._resolve()
        if handler is not None and self.subscriber is not None:
            await handler.release_partitions(self.subscriber, revoked)
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
