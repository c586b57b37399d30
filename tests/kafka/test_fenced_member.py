"""A member evicted from its group keeps its finished work through the rejoin.

Member A's handler blocks the event loop longer than the session timeout (a CPU-bound handler
does that), so the coordinator evicts A while member B (a plain consumer in a thread, on
another topic of the same group) keeps the group alive. When A's loop runs again its
revocation flush is refused (A's generation is gone) and aiokafka rejoins; the rejoin gives
A its partitions back, and the library commits the finished work then. Nothing A finished
runs again: without that, A would read its partitions again from the start.
"""

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import initialize_concurrent_processing
from tests.kafka_helpers import (
    BOOTSTRAP,
    concurrent_broker,
    create_topic,
    end_offsets,
    numbers,
    produce,
    shut_down,
    unique,
    wait_committed,
    wait_until,
)

pytestmark = pytest.mark.kafka

PARTITIONS = 4
FINISHED = 400
BLOCKER = FINISHED  # the message whose handler blocks the loop
SESSION_TIMEOUT_MS = 6000  # the broker's minimum (group.min.session.timeout.ms)
BLOCK_SEC = SESSION_TIMEOUT_MS / 1000 + 2


class OtherMember:
    """Member B: a consumer of the same group on another topic, in a thread of its own so that
    it heartbeats while A's event loop is blocked."""

    def __init__(self, topic: str, group: str) -> None:
        self._args = (topic, group)
        self.joined = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        topic, group = self._args
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=BOOTSTRAP,
            group_id=group,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=200,
        )
        await consumer.start()
        try:
            while not self._stop.is_set():
                await consumer.getmany(timeout_ms=100)
                if consumer.assignment():
                    self.joined.set()
        finally:
            await consumer.stop()

    def __enter__(self) -> "OtherMember":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture
def topics() -> Iterator[tuple[str, str, str]]:
    yield unique("fenced"), unique("fenced-other"), unique("fenced-group")


async def test_evicted_member_commits_its_finished_work_after_the_rejoin(
    topics: tuple[str, str, str],
) -> None:
    topic, other_topic, group = topics
    await create_topic(topic, PARTITIONS)
    await create_topic(other_topic, 1)
    await produce(topic, numbers(FINISHED), partitions=PARTITIONS)
    processed: list[int] = []
    broker = concurrent_broker()

    @broker.subscriber(
        topic,
        group_id=group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=500,
    )
    async def handle(body: int) -> None:
        if body == BLOCKER:
            time.sleep(BLOCK_SEC)  # noqa: ASYNC251 - the fault under test: a blocked event loop
        processed.append(body)

    with OtherMember(other_topic, group) as other:
        await asyncio.to_thread(other.joined.wait, 30)
        # Only the revocation flush commits: the batch never fills, its interval never ends.
        await initialize_concurrent_processing(
            broker.context, commit_batch_size=100_000, commit_batch_timeout_sec=600, broker=broker
        )
        await broker.start()
        try:
            await wait_until(lambda: len(processed) >= FINISHED, timeout=60)
            await produce(topic, numbers(1, start=BLOCKER), partitions=1)
            await wait_until(lambda: BLOCKER in processed, timeout=60)
            ends = await end_offsets(topic, PARTITIONS)
            await wait_committed(group, topic, ends, timeout=60)
            counts = Counter(processed)
        finally:
            await shut_down(broker)

    twice = sorted(i for i, n in counts.items() if n > 1)
    assert set(counts) == set(range(FINISHED + 1))
    assert not twice, f"{len(twice)} message(s) ran again after the rejoin: {twice[:20]}"
