"""The dead-letter brake against a real broker: a deploy that makes every message fail
dead-letters a bounded number, commits nothing past the first message it held, says why in
health and logs, and a restart with a fixed handler processes every remaining message once."""

import logging
from collections import Counter

import pytest
from faststream.kafka import KafkaMessage

from faststream_concurrent_aiokafka import is_kafka_handler_healthy
from tests.kafka.test_failure_policy import (
    DL_OFFSET,
    DL_PARTITION,
    LIBRARY_LOGGER,
    PoisonError,
    header_map,
    library_records,
    manual_subscriber,
    record_count,
    running,
)
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

pytestmark = pytest.mark.kafka

TOTAL = 400
PARTITIONS = 4
LIMIT = 20
CONCURRENCY = 8


def first_not_dead_lettered(dead: set[tuple[int, int]], ends: dict[int, int]) -> dict[int, int]:
    """Per partition, the first offset whose message was not dead-lettered."""
    return {p: next((o for o in range(end) if (p, o) not in dead), end) for p, end in ends.items()}


async def test_the_brake_stops_a_stream_that_fails_and_a_restart_resumes_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LIBRARY_LOGGER)
    topic, group = await numbered_topic("brake", TOTAL, PARTITIONS)
    dead_letters = unique("brake-dlt")
    await create_topic(dead_letters, 1)
    settings = {
        "concurrency_limit": CONCURRENCY,
        "commit_batch_size": 1,
        "commit_batch_timeout_sec": 0.1,
        "dead_letter_topic": dead_letters,
        "max_consecutive_failures": LIMIT,
    }

    # A bad deploy: every message fails.
    broken = concurrent_broker()

    @manual_subscriber(broken, topic, group)
    async def fail(body: int) -> None:
        raise PoisonError(f"broken deploy, {body}")

    async with running(broken, **settings) as handler:
        await wait_until(lambda: not is_kafka_handler_healthy(broken.context))
        await wait_until(lambda: handler.in_flight == 0)
        [reason] = handler.brake_reasons
    assert f"group={group}" in reason
    assert f"max_consecutive_failures={LIMIT}" in reason
    assert "dead-letter brake tripped at" in reason
    trips = [
        r
        for r in library_records(caplog, logging.ERROR)
        if r.getMessage().startswith("Dead-letter brake")
    ]
    assert len(trips) == 1  # logged once, at ERROR

    dead_count = await record_count(dead_letters, 1)
    assert dead_count <= LIMIT + CONCURRENCY
    assert dead_count == LIMIT  # the failure that trips it and every later one are held
    letters = await read_all(dead_letters, dead_count)
    dead = {
        (int(header_map(h)[DL_PARTITION]), int(header_map(h)[DL_OFFSET])) for _k, _v, h in letters
    }
    dead_values = {int(value) for _k, value, _h in letters}
    ends = await end_offsets(topic, PARTITIONS)
    committed = await committed_offsets(group, topic)
    limits = first_not_dead_lettered(dead, ends)
    for partition in range(PARTITIONS):
        assert committed.get(partition, 0) <= limits[partition], (partition, committed, limits)
    assert committed != ends

    # The fix is deployed and the service restarts in the same group.
    fixed = concurrent_broker()
    processed: Counter[int] = Counter()

    @manual_subscriber(fixed, topic, group)
    async def handle(body: int, msg: KafkaMessage) -> None:
        processed[body] += 1

    async with running(fixed, **settings) as handler:
        await wait_until(lambda: sum(processed.values()) >= TOTAL - dead_count, timeout=60)
        await wait_committed(group, topic, ends)
        assert is_kafka_handler_healthy(fixed.context)
        assert handler.brake_reasons == []

    assert set(processed) == set(range(TOTAL)) - dead_values
    assert set(processed.values()) == {1}
