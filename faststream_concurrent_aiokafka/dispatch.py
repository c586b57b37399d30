"""Plugging the handler into a FastStream Kafka subscriber.

FastStream's consume loop awaits each message before fetching the next, and a middleware
only sees the inside of that await. To run whole messages concurrently the subscriber's
``consume_one`` (called by the loop for what ``get_msg`` fetched) is replaced on the instance
by admission into the handler, ``get_msg`` by a batch fetch (see ``fetching``), and ``stop``
first drains the handler's work while the consumer can still commit. A rebalance listener is
attached at the same time.
"""

import asyncio
import logging
from typing import Any
from weakref import WeakKeyDictionary

from aiokafka import AIOKafkaConsumer
from faststream.kafka.subscriber.usecase import BatchSubscriber, LogicSubscriber
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka.config import ConcurrencySettings, resolve_options
from faststream_concurrent_aiokafka.errors import (
    CommitterIsDeadError,
    ConcurrentProcessingSetupError,
)
from faststream_concurrent_aiokafka.fetching import (
    FetchedRecords,
    fetch_records,
    fetches_one_at_a_time,
)
from faststream_concurrent_aiokafka.handler import KafkaConcurrentHandler
from faststream_concurrent_aiokafka.lane import ConsumerLane
from faststream_concurrent_aiokafka.rebalance import KafkaConcurrentRebalanceListener
from faststream_concurrent_aiokafka.subscriber_options import options_of

logger = logging.getLogger("faststream_concurrent_aiokafka")

_INSTALLED: "WeakKeyDictionary[LogicSubscriber[Any], KafkaConcurrentHandler]" = WeakKeyDictionary()


def uses_concurrent_processing(subscriber: object, middleware: object) -> bool:
    """A MANUAL-ack Kafka subscriber whose middlewares include ours."""
    return (
        isinstance(subscriber, LogicSubscriber)
        and subscriber.ack_policy is AckPolicy.MANUAL
        and any(m is middleware for m in subscriber._broker_middlewares)
    )


def validate(subscriber: object, settings: ConcurrencySettings) -> None:
    """Refuse subscribers this library cannot run safely, before anything starts."""
    options = resolve_options(settings, options_of(subscriber))  # overrides clashing with globals
    if isinstance(subscriber, BatchSubscriber) and options.ordering != "unordered":
        msg = (
            f"ordering={options.ordering!r} cannot apply to a batch=True subscriber (a batch "
            "mixes keys and partitions); use configure_subscriber(subscriber, "
            "ordering='unordered') for it"
        )
        raise ConcurrentProcessingSetupError(msg)


def install(subscriber: LogicSubscriber[Any], handler: KafkaConcurrentHandler) -> None:
    """Route the subscriber's records through ``handler``; idempotent per handler."""
    validate(subscriber, handler.settings)
    if _INSTALLED.get(subscriber) is handler:
        return
    _INSTALLED[subscriber] = handler
    stop = type(subscriber).stop

    async def admit(record: Any) -> None:
        try:
            lane = admit_record(handler, subscriber, record)
        except CommitterIsDeadError:
            logger.exception("Records left uncommitted: the committer is dead")
            return
        if lane is None or not lane.ready:
            return
        if len(lane.ready) >= lane.options.concurrency_limit:
            await handler.wait_for_room(lane)
        else:
            # Let running messages take a step before fetching more: with fast handlers the
            # backlog then drains instead of filling up.
            await asyncio.sleep(0)

    async def drain_then_stop() -> None:
        if _INSTALLED.get(subscriber) is handler and handler.is_running:
            lanes = handler.lanes_of(subscriber)
            await handler.drain(lanes, handler.settings.shutdown_timeout_sec)
            handler.forget(lanes)
        await stop(subscriber)

    subscriber.consume_one = admit  # type: ignore[method-assign,assignment]
    subscriber.stop = drain_then_stop  # type: ignore[method-assign]
    if fetches_one_at_a_time(subscriber):

        async def fetch(consumer: AIOKafkaConsumer) -> FetchedRecords | None:
            lane = handler.lane_for(subscriber, consumer)
            return await fetch_records(consumer, handler.admission_room(lane))

        subscriber.get_msg = fetch  # type: ignore[method-assign]
    _attach_listener(subscriber, handler)


def admit_record(
    handler: KafkaConcurrentHandler, subscriber: Any, record: Any
) -> ConsumerLane | None:
    """Hand fetched records to the handler: a batch from ``fetch_records``, a batch
    subscriber's tuple (one unit of work), or a single record. Returns the consumer's lane,
    whose backlog tells the loop whether to wait."""
    if type(record) is FetchedRecords:
        lane = handler.lane_for(subscriber, record.consumer)
        handler.admit_records(lane, record.records)
        return lane
    if isinstance(record, tuple):
        if not record:
            return None
        consumer = getattr(record[0], "consumer", None) or subscriber.consumer
        lane = handler.lane_for(subscriber, consumer)
        handler.admit_batch(lane, record)
    else:
        consumer = getattr(record, "consumer", None) or subscriber.consumer
        lane = handler.lane_for(subscriber, consumer)
        handler.admit(lane, record)
    return lane


def _attach_listener(subscriber: LogicSubscriber[Any], handler: KafkaConcurrentHandler) -> None:
    own = subscriber._listener
    if isinstance(own, KafkaConcurrentRebalanceListener):
        own.bind(subscriber, handler)
        return
    listener = KafkaConcurrentRebalanceListener(handler=handler, inner=own)
    listener.bind(subscriber, handler)
    # FastStream hands this to consumer.subscribe() at every start.
    subscriber._listener = listener
    subgroup = getattr(subscriber, "consumer_subgroup", None) or [subscriber.consumer]
    consumers = [c for c in subgroup if c is not None]
    if not consumers:
        return
    # Already subscribed (the app was not found in the context at initialisation): wrap the
    # listener aiokafka holds, FastStream's logging one.
    for consumer in consumers:
        state = getattr(consumer, "_subscription", None)
        current = getattr(state, "_listener", None)
        if state is None or not hasattr(state, "_listener"):
            logger.warning(
                "Could not attach the rebalance listener to a running consumer; pass "
                "listener=KafkaConcurrentRebalanceListener(broker.context) to the subscriber"
            )
            continue
        if isinstance(current, KafkaConcurrentRebalanceListener):
            continue
        wrapped = KafkaConcurrentRebalanceListener(handler=handler, inner=current)
        wrapped.bind(subscriber, handler)
        state._listener = wrapped
