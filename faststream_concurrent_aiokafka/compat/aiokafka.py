"""aiokafka internals the library reads, each behind one named function.

Written against aiokafka 0.14 and pinned by tests (``tests/unit/test_compat_aiokafka.py``,
``tests/kafka/test_compat_seams.py``) so an upgrade that moves one fails loudly. Where a
fallback is kept it is logged once at WARNING, naming what is lost.
"""

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import OffsetAndMetadata

logger = logging.getLogger("faststream_concurrent_aiokafka")

_warned: set[str] = set()
_MISSING: Any = object()


def _fallback(seam: str, consequence: str) -> None:
    if seam not in _warned:
        _warned.add(seam)
        logger.warning(
            "aiokafka %s: %s is not where this library expects it (written for aiokafka 0.14); %s",
            _version(),
            seam,
            consequence,
        )


def _version() -> str:
    import aiokafka

    return str(getattr(aiokafka, "__version__", "?"))


async def fetch_committed_offsets(
    consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, OffsetAndMetadata]:
    """Committed offsets with their metadata, through the consumer's own group coordinator.

    Why private: the public ``consumer.committed()`` returns the offset without the metadata
    (where finished offsets are stored), and the admin client would need a second connection.
    No fallback: the caller logs the failure and processes the messages again.
    """
    coordinator = consumer._coordinator
    result: dict[TopicPartition, OffsetAndMetadata] = await coordinator.fetch_committed_offsets(
        set(partitions)
    )
    return result


def max_poll_interval_ms(consumer: AIOKafkaConsumer) -> int | None:
    """The consumer's ``max_poll_interval_ms``: a poll loop waiting longer gets it evicted.

    Why private: aiokafka keeps its settings only as private attributes. Fallback: None (a
    hold then lasts at most ``MAX_WAIT_SEC``).
    """
    return _private_int(consumer, "_max_poll_interval_ms", "wait budget capped at 10 s")


def rebalance_timeout_ms(consumer: AIOKafkaConsumer) -> int | None:
    """The consumer's ``rebalance_timeout_ms``, which bounds the revocation flush.

    Why private: as above. Fallback: None (the flush then waits the whole
    ``rebalance_flush_timeout_sec``).
    """
    return _private_int(
        consumer, "_rebalance_timeout_ms", "the revocation flush is not capped by it"
    )


def max_poll_records(consumer: AIOKafkaConsumer) -> int | None:
    """The user's ``max_poll_records``, which a batch fetch must not exceed.

    Why private: as above. Fallback: None (fetches are capped by free slots only).
    """
    return _private_int(consumer, "_max_poll_records", "fetches ignore max_poll_records")


def _private_int(consumer: AIOKafkaConsumer, attribute: str, consequence: str) -> int | None:
    value = getattr(consumer, attribute, _MISSING)
    if value is None or isinstance(value, int):
        return value
    _fallback(f"AIOKafkaConsumer.{attribute}", consequence)
    return None


def rotate_buffered_partitions(
    consumer: AIOKafkaConsumer, served: Iterable[TopicPartition]
) -> None:
    """Move the partitions just served behind the others in the fetcher's buffer.

    aiokafka hands out buffered records partition by partition in arrival order and stays on
    one until its buffer is empty; with fetches capped by free slots, one partition would then
    take every slot while the others wait. Why private: the buffer order is not exposed.
    Fallback: no rotation (partitions are served in aiokafka's order).
    """
    buffered = getattr(getattr(consumer, "_fetcher", None), "_records", None)
    if not isinstance(buffered, OrderedDict):
        _fallback("Fetcher._records", "partitions are served in aiokafka's order, not in turn")
        return
    for tp in served:
        if tp in buffered:
            buffered.move_to_end(tp)


def subscription_listener(consumer: AIOKafkaConsumer) -> ConsumerRebalanceListener | None:
    """The rebalance listener a consumer that already subscribed calls.

    Why private: aiokafka takes the listener only in ``subscribe()``; a consumer that already
    subscribed keeps it in its subscription state. No fallback: the caller warns and asks for
    an explicit ``listener=``.
    """
    listener: ConsumerRebalanceListener | None = consumer._subscription.listener
    return listener


def replace_subscription_listener(
    consumer: AIOKafkaConsumer, listener: ConsumerRebalanceListener
) -> None:
    """Make a consumer that already subscribed call ``listener`` from its next rebalance."""
    consumer._subscription._listener = listener


def request_rejoin(consumer: AIOKafkaConsumer) -> None:
    """Ask the consumer's group coordinator to rejoin the group (a rebalance) at once.

    Why private: aiokafka rejoins by itself only when the broker says the member is gone;
    an exactly-once partition whose producer was fenced (or broke) is set up again only by
    an assignment, so the member asks for one. No fallback: the caller logs that the
    partition waits for the next rebalance.
    """
    consumer._coordinator.request_rejoin()


def producer_failure(producer: AIOKafkaProducer) -> BaseException | None:
    """Why a transactional producer can do nothing more (fenced, or its background sender
    died of an error aiokafka does not handle), None while it works.

    Why private: aiokafka keeps the transaction state and its sender task to itself; once
    the sender died every transactional call fails with an unrelated error (or an assertion),
    so the state is read before each one. No fallback: a missing attribute (another aiokafka)
    is returned as the failure, so the partition stops loudly instead of guessing.
    """
    try:
        task = producer._sender.sender_task
        if task is not None and task.done() and not task.cancelled():
            error: BaseException | None = task.exception()
            if error is not None:
                return error
        if producer._txn_manager is not None and producer._txn_manager.is_fatal_error():
            return RuntimeError("the producer's transaction state is fatal")
    except AttributeError as exc:
        return exc
    return None


async def abandon_producer(producer: AIOKafkaProducer, timeout: float = 0.5) -> None:
    """Close a producer without flushing, within about twice ``timeout``: its open
    transaction is left to be aborted (by the next producer with its transactional id, or by
    Kafka's transaction timeout).

    Why private: ``stop()`` flushes every pending record first, which never ends while the
    broker is unreachable (transactional batches do not expire), and so does the sender task
    once cancelled (it waits for its requests). This cancels the sender, waits for it at most
    ``timeout``, and closes the connections.
    """
    forget_transaction_error(producer)
    producer._closed = True
    task = producer._sender.sender_task
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=timeout)
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            await producer.client.close()


def partitions_unkeyed_anywhere(producer: AIOKafkaProducer) -> bool:
    """Whether the producer sends a record without key or partition to a partition of its
    own random choice (aiokafka's default partitioner, no key serializer), so that the
    library may choose one instead. False when the application set a partitioner or a key
    serializer: those decide, as on the broker's own producer.

    Why private: the partitioner and the key serializer are kept only as ``_partitioner`` and
    ``_key_serializer``. Fallback: without them the producer's own choice is kept.
    """
    partitioner = getattr(producer, "_partitioner", _MISSING)
    serializer = getattr(producer, "_key_serializer", _MISSING)
    if partitioner is _MISSING or serializer is _MISSING:
        _fallback(
            "AIOKafkaProducer._partitioner/_key_serializer",
            "exactly-once records without a key go to partitions aiokafka picks one by one",
        )
        return False
    return type(partitioner) is DefaultPartitioner and serializer is None


def available_partitions(producer: AIOKafkaProducer, topic: str) -> set[int] | None:
    """The partitions of ``topic`` with a leader, as the producer's metadata knows them (None
    before the producer first sent to it). Public: ``client.cluster``."""
    available: set[int] | None = producer.client.cluster.available_partitions_for_topic(topic)
    return available


def forget_transaction_error(producer: AIOKafkaProducer) -> None:
    """Mark the error a broken producer's transaction ended with as seen (it was handled).

    Why private: aiokafka sets it on an internal future nobody awaits once the producer is
    fenced, and asyncio logs "Future exception was never retrieved" for each such producer.
    No fallback needed: without the attribute there is nothing to mark.
    """
    manager = producer._txn_manager
    waiter = None if manager is None else getattr(manager, "_transaction_waiter", None)
    if isinstance(waiter, asyncio.Future) and waiter.done() and not waiter.cancelled():
        waiter.exception()


def has_been_assigned(consumer: AIOKafkaConsumer) -> bool:
    """Whether the consumer's group gave it an assignment (possibly empty) since it
    subscribed: False while it still joins its group for the first time.

    Why private: ``assignment()`` is empty both while joining and when the group gave this
    member no partition; aiokafka keeps the difference in its subscription state. Fallback:
    True (a consumer is then never reported as starting).
    """
    state = getattr(consumer, "_subscription", None)
    subscription = getattr(state, "subscription", _MISSING)
    if subscription is None:
        return False
    assignment = getattr(subscription, "assignment", _MISSING)
    if subscription is _MISSING or assignment is _MISSING:
        _fallback("SubscriptionState.subscription.assignment", "no consumer reads as starting")
        return True
    return assignment is not None


def highwater(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The partition's end offset as of the consumer's last fetch response for it (None
    before one, or when the partition is no longer assigned).

    Public in aiokafka, but it asserts that the partition is assigned, which a rebalance
    may change between reading the assignment and this call; test doubles (FastStream's
    ``TestKafkaBroker``) have no such method: None too.
    """
    try:
        value = consumer.highwater(tp)
    except (AssertionError, AttributeError):
        return None
    return value if isinstance(value, int) else None


_COMMIT_REQUEST = "GroupCoordinator._do_commit_offsets"


def collect_abandoned_commits(consumer: AIOKafkaConsumer) -> int:
    """Retrieve, once they end, the results of commit requests a cancelled ``commit()`` of
    ``consumer`` left running; returns how many there were.

    Why private: aiokafka sends a commit in a task under ``asyncio.shield``; when ``commit()``
    is cancelled (its deadline passed), that task goes on and ``shield`` drops its own
    callback, so a failure it meets later (the connection closes) is logged by asyncio as
    "Task exception was never retrieved", with a traceback. Found by the coroutine's name and
    coordinator; no fallback needed: with another aiokafka none is found and such a line may
    show again, nothing else changes.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    found = 0
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        frame = getattr(coro, "cr_frame", None)
        if (
            getattr(coro, "__qualname__", "") == _COMMIT_REQUEST
            and frame is not None
            and frame.f_locals.get("self") is coordinator
        ):
            task.add_done_callback(_retrieve)
            found += 1
    return found


def _retrieve(task: "asyncio.Task[Any]") -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.debug("An abandoned commit request ended with %r", error)
