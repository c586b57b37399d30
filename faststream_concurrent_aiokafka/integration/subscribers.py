"""Wiring FastStream Kafka subscribers to the engine.

FastStream's consume loop awaits each message before fetching the next, and a middleware
only sees the inside of that await. To run whole messages concurrently the subscriber's
``consume_one`` (called by the loop for what ``get_msg`` fetched) is taken over by admission
into the engine, ``get_msg`` by a batch fetch, and ``stop`` first drains the subscriber's work
while the consumer can still commit. A rebalance listener is attached at the same time. Every
such take-over goes through ``compat.faststream``.
"""

import asyncio
from collections.abc import Iterable
from typing import Any
from weakref import WeakKeyDictionary

from aiokafka import AIOKafkaConsumer
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka.compat import aiokafka as aiokafka_compat
from faststream_concurrent_aiokafka.compat import faststream as faststream_compat
from faststream_concurrent_aiokafka.core.errors import (
    CommitterIsDeadError,
    ConcurrentProcessingSetupError,
)
from faststream_concurrent_aiokafka.core.health import STARTING, Fault
from faststream_concurrent_aiokafka.core.settings import ConcurrencySettings, check_exactly_once
from faststream_concurrent_aiokafka.engine.fetching import FetchedRecords, fetch_for
from faststream_concurrent_aiokafka.engine.state import ConsumerLane
from faststream_concurrent_aiokafka.integration.handler import (
    ConcurrentProcessing,
    KafkaConcurrentRebalanceListener,
)
from faststream_concurrent_aiokafka.integration.logs import LIBRARY_LOGGER, subscriber_logger
from faststream_concurrent_aiokafka.integration.subscriber_options import options_of

_INSTALLED: "WeakKeyDictionary[Any, ConcurrentProcessing]" = WeakKeyDictionary()


def uses_concurrent_processing(subscriber: object, middleware: object) -> bool:
    """A MANUAL-ack Kafka subscriber whose middlewares include ours."""
    return (
        faststream_compat.is_kafka_subscriber(subscriber)
        and getattr(subscriber, "ack_policy", None) is AckPolicy.MANUAL
        and any(m is middleware for m in faststream_compat.broker_middlewares(subscriber))
    )


def _topics(subscriber: object) -> str:
    """The subscriber's topics for an error message."""
    return ",".join(getattr(subscriber, "topic_names", None) or []) or "?"


def validate(subscriber: object, settings: ConcurrencySettings) -> None:
    """Refuse subscribers this library cannot run safely, before anything starts."""
    if getattr(subscriber, "group_id", None) is None:
        topics = _topics(subscriber)
        msg = (
            f"the subscriber of {topics} has ack_policy=AckPolicy.MANUAL but no group_id: Kafka "
            "takes commits only from a consumer group, so its offsets could never be committed "
            "and a restart would read from auto_offset_reset again. Give it a group_id, or use "
            "another ack policy to consume without commits"
        )
        raise ConcurrentProcessingSetupError(msg)
    options = settings.for_subscriber(options_of(subscriber))  # overrides clashing with globals
    if faststream_compat.is_batch_subscriber(subscriber) and options.ordering != "unordered":
        msg = (
            f"ordering={options.ordering!r} cannot apply to a batch=True subscriber (a batch "
            "mixes keys and partitions); use configure_subscriber(subscriber, "
            "ordering='unordered') for it"
        )
        raise ConcurrentProcessingSetupError(msg)
    if faststream_compat.is_batch_subscriber(subscriber) and options.max_message_age_sec:
        msg = (
            f"max_message_age_sec cannot apply to the batch=True subscriber of "
            f"{_topics(subscriber)} (its records run, and finish, only together: none can be "
            "left out of its batch); set max_message_age_sec per subscriber with "
            "configure_subscriber on the single-message subscribers instead of globally"
        )
        raise ConcurrentProcessingSetupError(msg)
    if options.retry_topic is not None:
        problem = retry_topic_problem(subscriber, options.retry_topic)
        if problem is not None:
            msg = (
                f"the subscriber of {_topics(subscriber)} cannot use "
                f"retry_topic={options.retry_topic!r}: {problem}"
            )
            raise ConcurrentProcessingSetupError(msg)
    if options.exactly_once:
        check_exactly_once(settings, options)
        _read_committed(subscriber)
        problem = exactly_once_problem(subscriber)
        if problem is not None:
            topics = _topics(subscriber)
            msg = (
                f"the subscriber of {topics} cannot run with "
                f"processing_guarantee='exactly_once': {problem}"
            )
            raise ConcurrentProcessingSetupError(msg)


def retry_topic_problem(subscriber: Any, topic: str) -> str | None:
    """Why the subscriber cannot read its retry topic back itself, with the fix; None when
    it can."""
    if topic in (getattr(subscriber, "topic_names", None) or ()):
        return "it is the subscriber's own topic; give the retries a topic of their own"
    if faststream_compat.is_batch_subscriber(subscriber):
        return "a batch=True subscriber's records fail together; subscribe without batch=True"
    if getattr(subscriber, "pattern", None):
        return (
            "a pattern subscription cannot take one more topic; subscribe to topics, or leave "
            "retry_topic None"
        )
    if faststream_compat.assigns_partitions(subscriber):
        return (
            "a subscriber given partitions=[...] reads no group subscription the retry topic "
            "could join; subscribe to topics instead"
        )
    if faststream_compat.is_consumer_only(subscriber):
        return "its broker was made with consumer_only=True and cannot publish retries"
    return None


def check_retry_topics(subscribers: Iterable[Any], settings: ConcurrencySettings) -> None:
    """No two subscribers share a retry topic: each would run the other's retries."""
    seen: dict[str, Any] = {}
    for subscriber in subscribers:
        topic = settings.for_subscriber(options_of(subscriber)).retry_topic
        if topic is None:
            continue
        other = seen.setdefault(topic, subscriber)
        if other is not subscriber:
            msg = (
                f"the subscribers of {_topics(other)} and of {_topics(subscriber)} both use "
                f"retry_topic={topic!r}: each would read the other's retries; give each its "
                "own with configure_subscriber(subscriber, retry_topic=...)"
            )
            raise ConcurrentProcessingSetupError(msg)


def _read_committed(subscriber: Any) -> None:
    """Exactly-once reads only committed records, as Kafka Streams sets by itself: set on a
    subscriber whose consumer is not built yet (set up before the broker starts)."""
    option = "isolation_level"
    if faststream_compat.consumer_option(subscriber, option) == "read_committed":
        return
    if faststream_compat.set_consumer_option(subscriber, option, "read_committed"):
        LIBRARY_LOGGER.info(
            "processing_guarantee='exactly_once': the subscriber of %s reads with "
            "isolation_level='read_committed' (records of aborted transactions are skipped)",
            _topics(subscriber),
        )


def exactly_once_problem(subscriber: Any) -> str | None:
    """Why an exactly-once subscriber's set-up cannot keep the guarantee, with the fix; None
    when it can."""
    if faststream_compat.is_batch_subscriber(subscriber):
        return (
            "a batch=True subscriber's messages are batches, and its records finish only "
            "together; subscribe without batch=True, or use processing_guarantee='at_least_once'"
        )
    if faststream_compat.assigns_partitions(subscriber):
        return (
            "a subscriber given partitions=[...] assigns them itself, outside the group's "
            "rebalancing, so no member takes a partition over from another (which is what "
            "fences the old owner); subscribe to topics (or a pattern) instead"
        )
    if faststream_compat.consumer_option(subscriber, "isolation_level") != "read_committed":
        return (
            "its consumer reads records of aborted transactions (isolation_level="
            "'read_uncommitted', the default), so an exactly-once stage upstream would be "
            "repeated here, and it was built (the broker started) before the processing was "
            "set up, too late to set read_committed for it; call "
            "initialize_concurrent_processing before the broker starts (or pass it broker=), "
            "or add isolation_level='read_committed' to broker.subscriber(...)"
        )
    if faststream_compat.is_consumer_only(subscriber):
        return (
            "its broker was made with consumer_only=True and cannot publish; drop "
            "consumer_only, or use processing_guarantee='at_least_once'"
        )
    broker = faststream_compat.subscriber_broker(subscriber)
    if faststream_compat.broker_transactional_id(broker) is not None:
        return (
            "KafkaBroker(transactional_id=...) makes the broker's own producer transactional, "
            "and FastStream never begins its transactions; remove transactional_id (the "
            "library opens one transaction per input partition itself, see "
            "transactional_id_prefix)"
        )
    own = faststream_compat.configured_producer(subscriber)
    for publisher in faststream_compat.result_publishers(subscriber):
        if faststream_compat.publisher_producer(publisher) is not own:
            return (
                "a @publisher of its handler belongs to another broker, whose records cannot "
                "join the subscriber's transactions; publish through the subscriber's broker"
            )
    return None


def install(subscriber: Any, handler: ConcurrentProcessing) -> None:
    """Route the subscriber's records through ``handler``; idempotent per handler."""
    validate(subscriber, handler.settings)
    if _INSTALLED.get(subscriber) is handler:
        return
    _INSTALLED[subscriber] = handler
    engine = handler.engine

    async def admit(record: Any) -> None:
        try:
            lane = admit_record(handler, subscriber, record)
        except CommitterIsDeadError:
            subscriber_logger(subscriber).exception(
                "Records left uncommitted: the committer is dead"
            )
            return
        if lane is None:
            return
        if not fetching_taken_over:
            await engine.scheduler.wait_for_rate(lane)  # FastStream fetches the next itself
        if not lane.ready:
            return
        if len(lane.ready) >= lane.settings.concurrency_limit:
            await engine.scheduler.wait_for_room(lane)
        else:
            # Let running messages take a step before fetching more: with fast handlers the
            # backlog then drains instead of filling up.
            await asyncio.sleep(0)

    async def drain_then_stop() -> None:
        lanes = []
        if _INSTALLED.get(subscriber) is handler and handler.is_running:
            lanes = handler.lanes_of(subscriber)
            await engine.drain(lanes, handler.settings.shutdown_timeout_sec)
        try:
            # The drained lanes stay registered until the consumer stopped: a fetch still in
            # flight finds its lane closed and is not admitted into a new one.
            await stop()
        finally:
            engine.retire(lanes)

    retry_topic = handler.settings.for_subscriber(options_of(subscriber)).retry_topic
    if retry_topic is not None and faststream_compat.subscribe_also(subscriber, retry_topic):
        subscriber_logger(subscriber).warning(
            "The subscriber of %s was set up after its consumer started: it subscribes to its "
            "retry topic %r now, and its group rebalances once. Call "
            "initialize_concurrent_processing before the broker starts (in the app's lifespan, "
            "or pass it broker=) to read the retry topic from the first assignment",
            _topics(subscriber),
            retry_topic,
        )
    fetching_taken_over = faststream_compat.fetches_one_at_a_time(subscriber)
    faststream_compat.take_over_consume_one(subscriber, admit)
    stop = faststream_compat.take_over_stop(subscriber, drain_then_stop)
    if fetching_taken_over:

        async def fetch(consumer: AIOKafkaConsumer) -> FetchedRecords | None:
            lane = handler.lane_for(subscriber, consumer)
            await engine.scheduler.wait_for_rate(lane)
            return await fetch_for(lane, engine.scheduler.fetch_size(lane))

        faststream_compat.take_over_get_msg(subscriber, fetch)
    _attach_listener(subscriber, handler)


def admit_record(
    handler: ConcurrentProcessing, subscriber: Any, record: Any
) -> ConsumerLane | None:
    """Hand fetched records to the engine: a batch from ``fetch_for``, a batch
    subscriber's tuple (one unit of work), or a single record. Returns the consumer's lane,
    whose backlog tells the loop whether to wait."""
    engine = handler.engine
    if type(record) is FetchedRecords:
        lane = handler.lane_for(subscriber, record.consumer)
        engine.admit(lane, record.records)
        return lane
    if isinstance(record, tuple):
        if not record:
            return None
        consumer = getattr(record[0], "consumer", None) or subscriber.consumer
        lane = handler.lane_for(subscriber, consumer)
        engine.admit_batch(lane, record)
    else:
        consumer = getattr(record, "consumer", None) or subscriber.consumer
        lane = handler.lane_for(subscriber, consumer)
        engine.admit(lane, (record,))
    return lane


def _attach_listener(subscriber: Any, handler: ConcurrentProcessing) -> None:
    own = faststream_compat.rebalance_listener(subscriber)
    if isinstance(own, KafkaConcurrentRebalanceListener):
        own.bind(subscriber, handler)
        return
    listener = KafkaConcurrentRebalanceListener(handler=handler, inner=own)
    listener.bind(subscriber, handler)
    # FastStream hands this to consumer.subscribe() at every start.
    faststream_compat.set_rebalance_listener(subscriber, listener)
    subgroup = getattr(subscriber, "consumer_subgroup", None) or [subscriber.consumer]
    # Already subscribed (the app was not found in the context at initialisation): wrap the
    # listener aiokafka holds, FastStream's logging one.
    for consumer in (c for c in subgroup if c is not None):
        try:
            current = aiokafka_compat.subscription_listener(consumer)
        except AttributeError:
            LIBRARY_LOGGER.warning(
                "Could not attach the rebalance listener to a running consumer; pass "
                "listener=KafkaConcurrentRebalanceListener(broker.context) to the subscriber"
            )
            continue
        if isinstance(current, KafkaConcurrentRebalanceListener):
            continue
        wrapped = KafkaConcurrentRebalanceListener(handler=handler, inner=current)
        wrapped.bind(subscriber, handler)
        aiokafka_compat.replace_subscription_listener(consumer, wrapped)


def starting_faults(handler: ConcurrentProcessing) -> list[Fault]:
    """Subscribers of ``handler`` with a started consumer its group has not given a first
    assignment yet: not ready to process, but alive (a readiness probe waits for them)."""
    faults = []
    for subscriber, owner in list(_INSTALLED.items()):
        if owner is not handler:
            continue
        consumers = [
            consumer
            for consumer in getattr(subscriber, "consumer_subgroup", None) or [subscriber.consumer]
            if consumer is not None
        ]
        waiting = sum(not aiokafka_compat.has_been_assigned(consumer) for consumer in consumers)
        if waiting:
            pipeline = handler.pipeline_for(subscriber)
            faults.append(
                Fault(
                    STARTING,
                    f"{pipeline.name}: {waiting} of {len(consumers)} consumer(s) still joining "
                    f"group {pipeline.group!r}, waiting for their first partition assignment",
                )
            )
    return faults
