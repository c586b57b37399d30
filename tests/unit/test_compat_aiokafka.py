"""Each aiokafka seam in ``compat.aiokafka`` against the installed aiokafka.

The seams that need a started consumer (the coordinator's offset fetch, the fetcher's
buffer) are pinned against the real broker in ``tests/kafka/test_compat_seams.py``.
"""

import inspect
import logging
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.consumer.group_coordinator import GroupCoordinator

from faststream_concurrent_aiokafka.compat import aiokafka as compat


class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    async def on_partitions_revoked(self, revoked: Any) -> None:
        del revoked

    async def on_partitions_assigned(self, assigned: Any) -> None:
        del assigned


@pytest.fixture(autouse=True)
def fresh_warnings() -> None:
    compat._warned.clear()


async def test_private_settings_read_back_what_the_consumer_was_given(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers="127.0.0.1:9",
        max_poll_interval_ms=123_456,
        rebalance_timeout_ms=6_789,
        max_poll_records=7,
    )

    with caplog.at_level(logging.WARNING):
        assert compat.max_poll_interval_ms(consumer) == 123_456
        assert compat.rebalance_timeout_ms(consumer) == 6_789
        assert compat.max_poll_records(consumer) == 7
        assert compat.max_poll_records(AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")) is None

    assert [r for r in caplog.records if r.name.startswith("faststream_concurrent")] == []


async def test_the_subscription_listener_is_read_and_replaced() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9", group_id="g")
    own = Listener()
    consumer.subscribe(["t"], listener=own)

    assert compat.subscription_listener(consumer) is own
    replacement = Listener()
    compat.replace_subscription_listener(consumer, replacement)
    assert compat.subscription_listener(consumer) is replacement


def test_the_coordinator_offers_the_committed_offset_fetch() -> None:
    fetch = GroupCoordinator.fetch_committed_offsets
    assert inspect.iscoroutinefunction(fetch)
    assert list(inspect.signature(fetch).parameters) == ["self", "partitions"]


class Bare:
    """A consumer-like object without aiokafka's private attributes."""

    def assignment(self) -> set[TopicPartition]:
        return set()


def test_a_missing_seam_falls_back_and_warns_once_naming_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bare: Any = Bare()
    with caplog.at_level(logging.WARNING):
        assert compat.max_poll_interval_ms(bare) is None
        assert compat.max_poll_interval_ms(bare) is None
        compat.rotate_buffered_partitions(bare, [TopicPartition("t", 0)])
        compat.rotate_buffered_partitions(bare, [TopicPartition("t", 0)])

    messages = [r.getMessage() for r in caplog.records if r.name.startswith("faststream_conc")]
    assert len(messages) == 2, messages
    assert "_max_poll_interval_ms" in messages[0]
    assert "Fetcher._records" in messages[1]


# ---- exactly-once seams ----------------------------------------------------------------


async def test_a_rejoin_is_requested_through_the_coordinator() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9", group_id="g")
    requested: list[bool] = []
    consumer._coordinator = type(  # a started consumer has its GroupCoordinator there
        "Coordinator", (), {"request_rejoin": lambda self: requested.append(True)}
    )()

    compat.request_rejoin(consumer)

    assert requested == [True]
    assert callable(GroupCoordinator.request_rejoin)


async def test_a_producer_s_failure_is_read_from_its_sender_and_transaction_state() -> None:
    import asyncio

    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import ProducerFenced

    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", transactional_id="t")
    assert compat.producer_failure(producer) is None  # not started: no sender task yet

    died: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    fenced = ProducerFenced()
    died.set_exception(fenced)
    producer._sender._sender_task = died
    assert compat.producer_failure(producer) is fenced

    producer._sender._sender_task = None
    manager = producer._txn_manager
    manager.set_pid_and_epoch(1, 0)  # started...
    manager.begin_transaction()  # ...in a transaction...
    manager.fatal_error(fenced)  # ...when its sender died, as aiokafka's does
    assert compat.producer_failure(producer) is not None
    compat.forget_transaction_error(producer)  # marks the waiter's error as seen
    assert producer._txn_manager._transaction_waiter.done()
    await compat.abandon_producer(producer)
    assert producer._closed


async def test_a_producer_whose_state_is_not_where_expected_counts_as_broken() -> None:
    """Another aiokafka without the sender task: the partition stops, never an AttributeError
    in the commit path."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", transactional_id="t")
    del producer._sender
    assert isinstance(compat.producer_failure(producer), AttributeError)


async def test_a_consumer_reads_as_assigned_only_once_its_group_gave_it_an_assignment(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9", group_id="g")
    assert not compat.has_been_assigned(consumer)  # not subscribed
    consumer.subscribe(["t"])
    assert not compat.has_been_assigned(consumer)  # joining
    consumer._subscription.assign_from_subscribed(set())
    assert compat.has_been_assigned(consumer)  # given no partition is still an assignment
    with caplog.at_level(logging.WARNING):
        assert compat.has_been_assigned(object())
    assert "no consumer reads as starting" in caplog.text


async def test_highwater_is_none_until_fetched_and_for_partitions_not_assigned() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9", group_id="g")
    tp = TopicPartition("t", 0)
    consumer.subscribe(["t"])
    assert compat.highwater(consumer, tp) is None  # not assigned
    consumer._subscription.assign_from_subscribed({tp})
    assert compat.highwater(consumer, tp) is None  # assigned, nothing fetched yet
    consumer._subscription.subscription.assignment.state_value(tp).highwater = 42
    assert compat.highwater(consumer, tp) == 42


def test_the_abandoned_commit_request_is_found_by_the_name_aiokafka_gives_it() -> None:
    """``collect_abandoned_commits`` looks for the shielded request task by its coroutine's
    name (its failure under the real broker: ``tests/kafka/test_broker_outage.py``)."""
    assert GroupCoordinator._do_commit_offsets.__qualname__ == compat._COMMIT_REQUEST
    source = inspect.getsource(GroupCoordinator.commit_offsets)
    assert "asyncio.shield(self._do_commit_offsets(" in source


async def test_only_aiokafka_s_own_random_choice_of_partition_may_be_replaced() -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    def last(key: bytes | None, every: list[int], available: list[int]) -> int:
        return every[-1]

    servers = "127.0.0.1:9"
    assert compat.partitions_unkeyed_anywhere(AIOKafkaProducer(bootstrap_servers=servers))
    given = AIOKafkaProducer(bootstrap_servers=servers, partitioner=DefaultPartitioner())
    assert compat.partitions_unkeyed_anywhere(given)  # as FastStream passes it
    assert not compat.partitions_unkeyed_anywhere(
        AIOKafkaProducer(bootstrap_servers=servers, partitioner=last)
    )
    assert not compat.partitions_unkeyed_anywhere(  # may give a None key bytes to hash
        AIOKafkaProducer(bootstrap_servers=servers, key_serializer=lambda key: b"k")
    )
    unknown = AIOKafkaProducer(bootstrap_servers=servers)
    del unknown._partitioner
    assert not compat.partitions_unkeyed_anywhere(unknown)  # another aiokafka: its choice
    assert compat.available_partitions(unknown, "never-sent-to") is None
