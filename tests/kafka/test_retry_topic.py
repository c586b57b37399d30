"""Retry topics against a real broker (issue 27): a message whose in-memory attempts are used
up waits in the retry topic, so the input's commit point passes it; the subscriber reads the
retry topic back itself and runs each record when it is due.

Progress is read from the handler's own records and the broker's committed offsets.
"""

import signal
from pathlib import Path
from typing import Any

import pytest
from faststream.kafka import KafkaMessage
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    ConcurrentProcessingSetupError,
    configure_subscriber,
    current_attempt,
    initialize_concurrent_processing,
    processing_snapshot,
    stop_concurrent_processing,
)
from faststream_concurrent_aiokafka.core import dead_letters
from tests.kafka_helpers import (
    committed_offsets,
    concurrent_broker,
    create_topic,
    end_offsets,
    numbered_topic,
    read_all,
    unique,
    wait_committed,
    wait_until,
)
from tests.processes import AppProcess, app_env, read_ids

pytestmark = pytest.mark.kafka

PARTITIONS = 4
MESSAGES = 1000
FAILING_EVERY = 10
FAILED_ATTEMPTS = 2


class DownstreamError(Exception):
    """The failing service behind a handler."""


def written(ends: dict[int, int]) -> dict[int, int]:
    """The end offsets of the partitions that got records: a retry record without a key goes
    to any partition, and nothing is committed for one that got none."""
    return {partition: end for partition, end in ends.items() if end}


@pytest.mark.smoke  # also run with the lowest FastStream: the subscription seam differs there
async def test_the_input_commit_point_passes_messages_waiting_in_the_retry_topic() -> None:
    topic, group = await numbered_topic("retry-in", MESSAGES, PARTITIONS)
    retry_topic = unique("retry-wait")
    await create_topic(retry_topic, PARTITIONS)
    broker = concurrent_broker()
    attempts: dict[int, int] = {}
    succeeded: dict[int, int] = {}  # value -> the attempt number the handler read

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(value: int, msg: KafkaMessage) -> None:
        del msg
        attempts[value] = attempts.get(value, 0) + 1
        if value % FAILING_EVERY == 0 and attempts[value] <= FAILED_ATTEMPTS:
            raise DownstreamError(value)
        succeeded[value] = current_attempt()

    failing = set(range(0, MESSAGES, FAILING_EVERY))
    await initialize_concurrent_processing(
        broker.context,
        broker=broker,  # set up before it starts: the retry topic joins its first subscription
        concurrency_limit=50,
        commit_batch_timeout_sec=0.2,
        max_retries=0,
        retry_topic=retry_topic,
        retry_topic_delays_sec=(1.0, 2.0),
    )
    try:
        await broker.start()
        input_end = await end_offsets(topic, PARTITIONS)

        async def input_committed_while_failing_wait() -> bool:
            if await committed_offsets(group, topic) != input_end:
                return False
            waiting = failing - set(succeeded)
            assert waiting, "every failing message succeeded before the input was committed"
            print(f"input committed to its end while {len(waiting)} of {len(failing)} wait")
            return True

        await wait_until(input_committed_while_failing_wait, timeout=30, interval=0.05)
        # While they wait their due time they show in the snapshot.
        snapshot = processing_snapshot(broker.context)
        (subscriber,) = snapshot.subscribers
        assert subscriber.totals.retry_topic > 0
        await wait_until(lambda: len(succeeded) == MESSAGES, timeout=60)
        # Two trips through the retry topic: each failing message ran its third attempt
        # there, and read it as attempt 3.
        assert {succeeded[v] for v in failing} == {FAILED_ATTEMPTS + 1}
        assert {attempts[v] for v in failing} == {FAILED_ATTEMPTS + 1}
        twice = sorted(v for v in set(range(MESSAGES)) - failing if attempts[v] != 1)
        assert twice == [], f"{len(twice)} ran again: {twice[:20]}"
        retry_end = await end_offsets(retry_topic, PARTITIONS)
        assert sum(retry_end.values()) == len(failing) * FAILED_ATTEMPTS
        await wait_committed(group, retry_topic, written(retry_end), timeout=30)
        await wait_committed(group, topic, input_end, timeout=30)
        totals = processing_snapshot(broker.context).subscribers[0].totals
        assert totals.retry_topic == len(failing) * FAILED_ATTEMPTS
    finally:
        await broker.stop()
        await stop_concurrent_processing(broker.context)


async def test_after_the_last_delay_the_message_is_dead_lettered_naming_its_origin() -> None:
    topic, group = await numbered_topic("retry-dl", 8, 2)
    retry_topic, dead_letter_topic = unique("retry-dl-wait"), unique("retry-dl-dlq")
    await create_topic(retry_topic, 2)
    await create_topic(dead_letter_topic, 1)
    broker = concurrent_broker()
    calls: list[int] = []

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(value: int) -> None:
        if value == 3:
            calls.append(current_attempt())
            raise DownstreamError(value)

    await initialize_concurrent_processing(
        broker.context,
        broker=broker,
        commit_batch_timeout_sec=0.2,
        max_retries=1,
        retry_backoff_sec=0.01,
        retry_topic=retry_topic,
        retry_topic_delays_sec=(0.2, 0.2),
        dead_letter_topic=dead_letter_topic,
    )
    try:
        await broker.start()
        (letter,) = await read_all(dead_letter_topic, 1)
        # Two in-memory attempts, then one per trip through the retry topic.
        assert calls == [1, 2, 3, 4]
        _, value, headers = letter
        assert value == b"3"
        found = dict(headers)
        assert found[dead_letters.TOPIC] == topic.encode()
        assert found[dead_letters.OFFSET] == b"1"  # value 3 is the second record of partition 1
        assert found[dead_letters.ATTEMPTS] == b"4"
        assert found[dead_letters.RETRY_HOPS] == b"2"
        assert not any(name.startswith("x-retry-") for name in found)
        await wait_committed(group, retry_topic, written(await end_offsets(retry_topic, 2)))
    finally:
        await broker.stop()
        await stop_concurrent_processing(broker.context)


async def test_a_subscriber_that_reads_its_retry_topic_is_refused() -> None:
    topic, group = unique("retry-own"), unique("g-retry-own")
    broker = concurrent_broker()

    subscriber = broker.subscriber(topic, group_id=group, ack_policy=AckPolicy.MANUAL)

    @subscriber
    async def handle(value: int) -> None:
        del value

    configure_subscriber(subscriber, retry_topic=topic)
    with pytest.raises(ConcurrentProcessingSetupError, match="retry_topic"):
        await initialize_concurrent_processing(broker.context, broker=broker)


# ---- crash safety -------------------------------------------------------------------------


async def _app_with_retry_topic(tmp_path: Path, topic: str, group: str, retry: str) -> Any:
    env = app_env(topic, group, tmp_path / "succeeded.txt", concurrency=50)
    env["RETRY_TOPIC"] = retry
    return AppProcess("retry_topic_app", env, tmp_path / "app.log")


async def test_a_sigkill_while_messages_wait_in_the_retry_topic_loses_none(
    tmp_path: Path,
) -> None:
    """Every 10th message fails twice; the app is killed while about 100 of them wait in the
    retry topic, then restarted: every message succeeds at least once, and both topics end
    committed to their end."""
    topic, group = await numbered_topic("retry-kill", MESSAGES, PARTITIONS)
    retry = unique("retry-kill-wait")
    await create_topic(retry, PARTITIONS)
    output = tmp_path / "succeeded.txt"
    failing = set(range(0, MESSAGES, FAILING_EVERY))
    app = await _app_with_retry_topic(tmp_path, topic, group, retry)
    await app.start()
    try:

        async def failing_ones_wait() -> bool:
            ends = await end_offsets(retry, PARTITIONS)
            done = set(read_ids(output))
            return sum(ends.values()) >= len(failing) and len(done) >= MESSAGES - len(failing)

        await wait_until(failing_ones_wait, timeout=60, interval=0.05)
        waiting = failing - set(read_ids(output))
        print(f"killed while {len(waiting)} of {len(failing)} failing messages wait")
        assert len(waiting) >= len(failing) // 2, f"only {len(waiting)} still waited"
    finally:
        await app.kill()  # SIGKILL

    app = await _app_with_retry_topic(tmp_path, topic, group, retry)
    await app.start()
    try:
        await wait_until(lambda: set(read_ids(output)) >= set(range(MESSAGES)), timeout=90)
        await wait_committed(group, topic, await end_offsets(topic, PARTITIONS), timeout=30)
        await wait_committed(
            group, retry, written(await end_offsets(retry, PARTITIONS)), timeout=30
        )
    finally:
        await app.stop(signal.SIGTERM)


async def test_a_retry_partition_keeps_at_most_its_bound_of_records_not_due_in_memory() -> None:
    """retry_topic_max_waiting: records read back wait in memory up to the bound (plus one
    fetch); the rest stay in Kafka while the input is committed to its end."""
    count, bound, limit = 200, 20, 10
    topic, group = await numbered_topic("retry-cap-in", count, 1)
    retry_topic = unique("retry-cap-wait")
    await create_topic(retry_topic, 1)
    broker = concurrent_broker()
    attempts: dict[int, int] = {}

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(value: int) -> None:
        attempts[value] = attempts.get(value, 0) + 1
        if attempts[value] == 1:
            raise DownstreamError(value)

    await initialize_concurrent_processing(
        broker.context,
        broker=broker,
        concurrency_limit=limit,
        commit_batch_timeout_sec=0.2,
        retry_topic=retry_topic,
        retry_topic_delays_sec=(2.0,),
        retry_topic_max_waiting=bound,
    )
    most, paused_at_bound = 0, False
    try:
        await broker.start()
        input_end = await end_offsets(topic, 1)

        def watch() -> bool:
            nonlocal most, paused_at_bound
            (subscriber,) = processing_snapshot(broker.context).subscribers
            for part in subscriber.partitions:
                if part.topic == retry_topic:
                    most = max(most, part.waiting_retry)
                    paused_at_bound |= part.paused and part.waiting_retry >= bound
            return len(attempts) == count and all(n == 2 for n in attempts.values())

        await wait_until(watch, timeout=40, interval=0.01)
        print(f"at most {most} records of the retry partition waited in memory (bound {bound})")
        # One fetch brings at most the free slots plus the backlog room: twice the limit.
        assert bound <= most <= bound + 2 * limit
        assert paused_at_bound
        await wait_committed(group, topic, input_end, timeout=30)
        retry_end = await end_offsets(retry_topic, 1)
        assert retry_end == {0: count}
        await wait_committed(group, retry_topic, retry_end, timeout=30)
    finally:
        await broker.stop()
        await stop_concurrent_processing(broker.context)
