"""The engine driven without Kafka: a fake consumer and a fake pipeline whose messages end
when the test says so, on an event loop whose clock jumps from timer to timer (timeouts cost
no wall time and never race the test).

Each test pins one behaviour the library promises: limits, ordering, backpressure, what a
rebalance or a shutdown commits, commit batching and metadata, failures and dead letters.
"""

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pydantic
import pytest
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)
from aiokafka.structs import OffsetAndMetadata

from faststream_concurrent_aiokafka.core.failure_policy import FailurePolicy
from faststream_concurrent_aiokafka.core.health import assess
from faststream_concurrent_aiokafka.core.offset_codec import (
    decode_finished_offsets,
    encode_finished_offsets,
)
from faststream_concurrent_aiokafka.core.offsets import METADATA_GROWTH
from faststream_concurrent_aiokafka.core.settings import ConcurrencySettings, SubscriberSettings
from faststream_concurrent_aiokafka.engine.engine import Engine
from faststream_concurrent_aiokafka.engine.fetching import fetch_records
from faststream_concurrent_aiokafka.engine.monitor import current_faults, snapshot
from faststream_concurrent_aiokafka.engine.state import ConsumerLane
from tests.fakes import (
    FakeCluster,
    FakeConsumer,
    FakePipeline,
    let_run,
    tp,
    wait_until,
)

VIRTUAL_CLOCK = True  # see tests/unit/conftest.py


def loop_time() -> float:
    return asyncio.get_running_loop().time()


P0 = tp(0)
P1 = tp(1)


class Boom(Exception):
    """A handler failure the policy retries."""


class Rejected(Exception):
    """A handler failure the policy dead-letters at once."""


class Settled(Exception):
    """A handler exception that still means the message is done."""


class Stop(Exception):
    """A handler asking to stop consuming."""


POLICY = FailurePolicy(done=(Settled,), dead_letter=(Rejected,), stop=(Stop,))


@dataclass
class Rig:
    """One engine with one lane over a fake consumer and pipeline."""

    engine: Engine
    consumer: FakeConsumer
    pipeline: FakePipeline
    lane: ConsumerLane

    def admit(self, partition: int, *offsets: int, key: bytes | None = None) -> None:
        """Produce what is missing, then admit one delivery of each given offset."""
        topic_partition = tp(partition)
        missing = max(offsets) + 1 - self.consumer.cluster.end(topic_partition)
        if missing > 0:
            self.consumer.produce(partition, missing, key=key)
        self.engine.admit(self.lane, self.consumer.deliver(topic_partition, *offsets))

    async def flush(self) -> bool:
        return await self.engine.committer.commit_lane(self.lane)

    def committed(self, partition: int = 0) -> int | None:
        return self.consumer.cluster.committed_offset(tp(partition))


def finished_count(rig: Rig, count: int) -> Callable[[], bool]:
    """A condition: exactly ``count`` messages finished."""
    return lambda: len(rig.pipeline.finished()) == count


def holding(lane: ConsumerLane) -> bool:
    """A poll loop waits for room in this lane's backlog (a function: read anew each time)."""
    return lane.fetching.room is not None


def healthy(engine: Engine) -> bool:
    """Nothing in the engine's health report: no fault, failed or degraded."""
    return assess(current_faults(engine)).status == "ok"


MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig() -> AsyncIterator[MakeRig]:
    """Engines made for a test, closed after it with whatever still waits released."""
    rigs: list[Rig] = []

    async def make(
        *,
        engine: Engine | None = None,
        consumer: FakeConsumer | None = None,
        partitions: tuple[int, ...] = (0,),
        concurrency_limit: int = 10,
        lane_limit: int | None = None,
        commit_batch_size: int = 1000,
        commit_batch_timeout_sec: float = 60.0,
        max_uncommitted_tasks: int = 10_000,
        **lane_settings: Any,
    ) -> Rig:
        if engine is None:
            engine = Engine(
                ConcurrencySettings(
                    concurrency_limit=concurrency_limit,
                    commit_batch_size=commit_batch_size,
                    commit_batch_timeout_sec=commit_batch_timeout_sec,
                    max_uncommitted_tasks=max_uncommitted_tasks,
                    shutdown_timeout_sec=0.5,
                )
            )
            await engine.start()
        if consumer is None:
            consumer = FakeConsumer(assignment=[tp(p) for p in partitions])
        lane_settings.setdefault("concurrency_limit", lane_limit or concurrency_limit)
        lane_settings.setdefault("retry_backoff_sec", 0.001)
        lane_settings.setdefault("retry_backoff_max_sec", 0.002)
        pipeline = FakePipeline(SubscriberSettings(**lane_settings), POLICY)
        rig = Rig(engine, consumer, pipeline, engine.lane_for(consumer, pipeline))
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.pipeline.hold = False
        rig.pipeline.release_all()
    for engine in {id(rig.engine): rig.engine for rig in rigs}.values():
        await engine.close()


# ---- the fake itself ----------------------------------------------------------------


async def test_the_fake_consumer_commits_and_refuses_like_aiokafka() -> None:
    """The engine's commit handling is only as good as the fake's refusals are faithful."""
    consumer = FakeConsumer(assignment=[P0, P1])
    await consumer.commit({P0: 3, P1: (5, "meta")})
    await consumer.commit({P0: OffsetAndMetadata(4, "")})
    assert consumer.cluster.committed == {P0: (4, ""), P1: (5, "meta")}
    with pytest.raises(IllegalStateError):
        await consumer.commit({tp(2): 1})
    consumer.commit_failures.append(CommitFailedError())
    with pytest.raises(CommitFailedError):
        await consumer.commit({P0: 9})
    assert consumer.cluster.committed_offset(P0) == 4
    assert [request.ok for request in consumer.commits] == [True, True, False, False]
    with pytest.raises(IllegalStateError):
        consumer.pause(tp(2))


# ---- limits --------------------------------------------------------------------------


async def test_the_global_limit_caps_running_messages(make_rig: MakeRig) -> None:
    rig = await make_rig(concurrency_limit=2)
    rig.admit(0, 0, 1, 2, 3, 4)
    await let_run()
    assert rig.pipeline.running_keys() == {(0, 0), (0, 1)}
    assert rig.engine.in_flight == 2

    await rig.pipeline.release(0, 1)
    await wait_until(lambda: (0, 2) in rig.pipeline.running_keys())
    assert rig.pipeline.running_keys() == {(0, 0), (0, 2)}
    while len(rig.pipeline.finished()) < 5:
        rig.pipeline.release_all()
        await wait_until(lambda: bool(rig.pipeline.waiting()) or len(rig.pipeline.finished()) == 5)
    assert rig.pipeline.max_running == 2


async def test_a_lane_s_own_limit_caps_its_running_messages(make_rig: MakeRig) -> None:
    rig = await make_rig(concurrency_limit=10)
    lane_limited = await make_rig(engine=rig.engine, lane_limit=3)
    lane_limited.admit(0, *range(6))
    await let_run()
    assert len(lane_limited.pipeline.running()) == 3
    assert rig.engine.in_flight == 3
    # The global limit has room left: another consumer's lane is not held by this one's.
    rig.admit(0, 0, 1, 2, 3)
    await let_run()
    assert len(rig.pipeline.running()) == 4
    assert rig.engine.in_flight == 7


async def test_lanes_waiting_for_a_global_slot_are_served_in_turn(make_rig: MakeRig) -> None:
    first = await make_rig(concurrency_limit=1, lane_limit=10)
    second = await make_rig(engine=first.engine)
    order: list[str] = []
    first.pipeline.on_start = lambda call: order.append(f"a{call.key[1]}")
    second.pipeline.on_start = lambda call: order.append(f"b{call.key[1]}")
    first.admit(0, 0, 1, 2)
    second.admit(0, 0, 1)
    for _ in range(5):
        await wait_until(lambda: len(first.pipeline.waiting() + second.pipeline.waiting()) == 1)
        assert first.engine.in_flight == 1
        (call,) = first.pipeline.waiting() + second.pipeline.waiting()
        owner = first if call in first.pipeline.calls else second
        owner.pipeline.release_now(*call.key)
    # a0 took the only slot; from then on the lanes alternate instead of a draining first.
    assert order == ["a0", "a1", "b0", "a2", "b1"]


async def test_a_slot_s_task_runs_the_lane_s_next_ready_message(make_rig: MakeRig) -> None:
    rig = await make_rig(concurrency_limit=1)
    rig.admit(0, 0, 1, 2)
    for offset in range(3):
        await wait_until(lambda: bool(rig.pipeline.waiting()))
        await rig.pipeline.release(0, offset)
    await wait_until(lambda: len(rig.pipeline.finished()) == 3)
    assert rig.pipeline.started() == [(0, 0), (0, 1), (0, 2)]
    assert len({call.task for call in rig.pipeline.calls}) == 1


async def test_messages_that_never_wait_run_in_one_task_not_one_each(make_rig: MakeRig) -> None:
    """A fetch's records get one slot task; while it never waits it works through all of
    them, so no task is made per message (the no-op's bookkeeping, issue 30)."""
    rig = await make_rig(concurrency_limit=100)
    rig.pipeline.hold = False
    rig.admit(0, *range(200))
    await wait_until(lambda: len(rig.pipeline.finished()) == 200)
    assert len({call.task for call in rig.pipeline.calls}) == 1


async def test_tasks_are_added_while_the_started_ones_wait_until_the_limit(
    make_rig: MakeRig,
) -> None:
    """Handlers that wait: slot tasks are added, doubling each loop step, until every slot
    of the limit runs a message of its own."""
    rig = await make_rig(concurrency_limit=100)
    rig.admit(0, *range(150))
    await wait_until(lambda: rig.engine.in_flight == 100)
    await let_run()
    assert len(rig.pipeline.running_keys()) == 100
    assert len({call.task for call in rig.pipeline.calls}) == 100
    assert len(rig.lane.ready) == 50


async def test_a_message_that_changed_context_variables_does_not_pass_them_on(
    make_rig: MakeRig,
) -> None:
    """A slot task only carries on with the next message when its context is still the
    lane's, so one message's context variables never leak into the next."""
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="clean")
    rig = await make_rig(concurrency_limit=1)
    seen: list[str] = []

    def start(call: Any) -> None:
        seen.append(marker.get())
        marker.set(f"set by {call.key[1]}")

    rig.pipeline.on_start = start
    rig.pipeline.hold = False
    rig.admit(0, 0, 1, 2)
    await wait_until(lambda: len(rig.pipeline.finished()) == 3)
    assert seen == ["clean", "clean", "clean"]
    assert len({call.task for call in rig.pipeline.calls}) == 3


async def test_a_batch_runs_as_one_message_and_commits_every_partition_it_spans(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(partitions=(0, 1))
    rig.consumer.produce(0, 2)
    rig.consumer.produce(1, 1)
    records = rig.consumer.deliver(P0, 0, 1) + rig.consumer.deliver(P1, 0)
    rig.engine.admit_batch(rig.lane, tuple(records))
    await wait_until(lambda: bool(rig.pipeline.waiting()))
    (call,) = rig.pipeline.calls
    assert isinstance(call.record, tuple) and len(call.record) == 3
    await rig.flush()
    assert rig.consumer.committed_offsets() == [{0: 0, 1: 0}]  # nothing finished yet
    await rig.pipeline.release(0, 0)
    await wait_until(lambda: rig.engine.counters.processed == 1)
    await rig.flush()
    assert rig.consumer.committed_offsets()[-1] == {0: 2, 1: 1}


# ---- ordering ------------------------------------------------------------------------


async def test_key_ordering_runs_one_message_per_key_at_a_time(make_rig: MakeRig) -> None:
    rig = await make_rig(ordering="key")
    for key in (b"a", b"b", b"a", b"a", b"b"):
        rig.consumer.produce(0, key=key)
    rig.engine.admit(rig.lane, rig.consumer.deliver(P0, 0, 1, 2, 3, 4))
    await let_run()
    assert rig.pipeline.running_keys() == {(0, 0), (0, 1)}

    await rig.pipeline.release(0, 1)
    await wait_until(lambda: (0, 4) in rig.pipeline.running_keys())
    assert rig.pipeline.running_keys() == {(0, 0), (0, 4)}
    await rig.pipeline.release(0, 0)
    await wait_until(lambda: (0, 2) in rig.pipeline.running_keys())
    await rig.pipeline.release(0, 2)
    await wait_until(lambda: (0, 3) in rig.pipeline.running_keys())
    assert rig.pipeline.started() == [(0, 0), (0, 1), (0, 4), (0, 2), (0, 3)]


async def test_messages_without_a_key_are_never_held_in_key_ordering(make_rig: MakeRig) -> None:
    rig = await make_rig(ordering="key")
    rig.admit(0, 0, 1, 2)
    await let_run()
    assert len(rig.pipeline.running()) == 3


async def test_partition_ordering_runs_one_message_per_partition(make_rig: MakeRig) -> None:
    rig = await make_rig(ordering="partition", partitions=(0, 1))
    rig.consumer.produce(0, 3, key=b"x")
    rig.consumer.produce(1, 2, key=b"y")
    rig.engine.admit(rig.lane, rig.consumer.deliver(P0, 0, 1, 2) + rig.consumer.deliver(P1, 0, 1))
    await let_run()
    assert rig.pipeline.running_keys() == {(0, 0), (1, 0)}
    await rig.pipeline.release(1, 0)
    await wait_until(lambda: (1, 1) in rig.pipeline.running_keys())
    assert rig.pipeline.running_keys() == {(0, 0), (1, 1)}
    await rig.pipeline.release(0, 0)
    await wait_until(lambda: (0, 1) in rig.pipeline.running_keys())
    assert rig.pipeline.max_running == 2


# ---- backpressure --------------------------------------------------------------------


async def test_fetch_size_is_the_free_slots_plus_the_backlog_room(make_rig: MakeRig) -> None:
    rig = await make_rig(concurrency_limit=4)
    scheduler = rig.engine.scheduler
    assert scheduler.fetch_size(rig.lane) == 8  # 4 free slots and an empty backlog of 4
    rig.admit(0, *range(6))
    assert scheduler.fetch_size(rig.lane) == 2  # no free slot, 2 of 4 backlog places taken
    rig.admit(0, 6, 7)
    assert scheduler.fetch_size(rig.lane) == 1  # full: still at least one
    await rig.pipeline.release(0, 0)
    await wait_until(lambda: len(rig.lane.ready) == 3)
    assert scheduler.fetch_size(rig.lane) == 1


async def test_fetch_size_stays_within_the_uncommitted_budget(make_rig: MakeRig) -> None:
    rig = await make_rig(concurrency_limit=10, max_uncommitted_tasks=5)
    rig.admit(0, 0, 1)
    assert rig.engine.scheduler.fetch_size(rig.lane) == 3


async def test_the_poll_loop_is_held_until_a_slot_frees(make_rig: MakeRig) -> None:
    rig = await make_rig(concurrency_limit=2)
    rig.admit(0, *range(4))
    held = asyncio.create_task(rig.engine.scheduler.wait_for_room(rig.lane))
    await let_run()
    assert not held.done()
    assert holding(rig.lane)

    await rig.pipeline.release(0, 0)
    await asyncio.wait_for(held, 1)
    assert len(rig.lane.ready) == 1
    assert not holding(rig.lane)
    assert rig.consumer.paused() == set()


async def test_the_poll_loop_is_not_held_while_the_backlog_has_room(make_rig: MakeRig) -> None:
    rig = await make_rig(concurrency_limit=2)
    rig.admit(0, *range(3))
    await asyncio.wait_for(rig.engine.scheduler.wait_for_room(rig.lane), 0.5)
    assert rig.consumer.paused() == set()


async def test_a_held_poll_loop_pauses_the_consumer_after_the_hold_budget(
    make_rig: MakeRig,
) -> None:
    # The wait budget is half of max_poll_interval_ms: 30 ms here.
    consumer = FakeConsumer(assignment=[P0, P1], max_poll_interval_ms=60)
    rig = await make_rig(consumer=consumer, concurrency_limit=2)
    rig.admit(0, *range(4))
    started = loop_time()
    await asyncio.wait_for(rig.engine.scheduler.wait_for_room(rig.lane), 1)
    assert loop_time() - started >= 0.025
    assert consumer.paused() == {P0, P1}
    assert rig.lane.fetching.paused


async def test_a_paused_lane_resumes_once_its_backlog_halved(make_rig: MakeRig) -> None:
    consumer = FakeConsumer(assignment=[P0], max_poll_interval_ms=20)
    rig = await make_rig(consumer=consumer, concurrency_limit=4)
    rig.admit(0, *range(8))
    await rig.engine.scheduler.wait_for_room(rig.lane)
    assert consumer.paused() == {P0}

    await rig.pipeline.release(0, 0)
    await wait_until(lambda: len(rig.lane.ready) == 3)
    assert consumer.paused() == {P0}  # 3 of 4 waiting: not halved yet
    await rig.pipeline.release(0, 1)
    await wait_until(lambda: len(rig.lane.ready) == 2)
    assert consumer.paused() == set()
    assert not rig.lane.fetching.paused


async def test_the_uncommitted_budget_pauses_and_its_room_resumes(make_rig: MakeRig) -> None:
    rig = await make_rig(concurrency_limit=10, max_uncommitted_tasks=3)
    rig.admit(0, 0, 1)
    assert rig.consumer.paused() == set()
    rig.admit(0, 2)
    assert rig.consumer.paused() == {P0}
    assert rig.engine.scheduler.fetch_size(rig.lane) == 1

    await rig.pipeline.release(0, 1)  # finished, but the commit point stays at 0: still 3
    await wait_until(lambda: (0, 1) in rig.pipeline.finished())
    assert rig.consumer.paused() == {P0}
    await rig.pipeline.release(0, 0)  # the commit point passes 0 and 1
    await wait_until(lambda: rig.consumer.paused() == set())
    assert rig.engine.scheduler.fetch_size(rig.lane) == 2


async def test_by_default_one_slow_message_does_not_pause_a_busy_partition(
    make_rig: MakeRig,
) -> None:
    """The default budget holds what finishes behind a slow message for seconds at a few
    thousand messages per second (bench.latency's straggler): 10,000 paused fetching there."""
    rig = await make_rig(
        concurrency_limit=1000,
        max_uncommitted_tasks=ConcurrencySettings().max_uncommitted_tasks,
    )
    rig.admit(0, 0)  # the slow one, held
    await let_run()
    rig.pipeline.hold = False  # the others end at once
    behind = 12_000
    for start in range(1, behind + 1, 2000):
        rig.admit(0, *range(start, start + 2000))
        await wait_until(finished_count(rig, start + 1999))
    assert rig.engine.uncommitted == behind + 1
    assert not rig.lane.fetching.paused
    assert rig.consumer.paused() == set()


async def test_fetching_serves_partitions_in_turn(make_rig: MakeRig) -> None:
    """Fetches capped by free slots take from each buffered partition in turn, so one busy
    partition cannot take every slot."""
    rig = await make_rig(partitions=(0, 1), concurrency_limit=2)
    rig.consumer.produce(0, 6)
    rig.consumer.produce(1, 6)
    served: list[int] = []
    for _ in range(4):
        fetched = await fetch_records(rig.consumer, 2)
        assert fetched is not None and fetched.consumer is rig.consumer
        served += [record.partition for record in fetched.records]
    assert served == [0, 0, 1, 1, 0, 0, 1, 1]


# ---- rebalance -----------------------------------------------------------------------


async def test_release_drops_queued_waits_for_running_and_commits_them(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(concurrency_limit=2)
    rig.admit(0, *range(5))
    release = asyncio.create_task(rig.engine.release_partitions(rig.lane, {P0}, 5.0))
    await let_run()
    assert not release.done()
    assert not rig.lane.ready  # 2, 3 and 4 are left for the next owner

    started = loop_time()
    await rig.pipeline.release(0, 1)
    await rig.pipeline.release(0, 0)
    await asyncio.wait_for(release, 1)
    assert loop_time() - started < 1  # did not wait out the 5 s
    assert rig.pipeline.started() == [(0, 0), (0, 1)]
    assert rig.consumer.committed_offsets() == [{0: 2}]
    assert P0 not in rig.lane.offsets.trackers


async def test_release_commits_the_finished_prefix_at_its_timeout_and_never_later(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(concurrency_limit=3)
    rig.admit(0, *range(5))
    await rig.pipeline.release(0, 1)
    await wait_until(lambda: (0, 3) in rig.pipeline.running_keys())  # the slot took 3
    release = asyncio.create_task(rig.engine.release_partitions(rig.lane, {P0}, 0.05))
    await let_run()
    await rig.pipeline.release(0, 0)
    await rig.pipeline.release(0, 2)
    started = loop_time()
    await asyncio.wait_for(release, 1)
    assert loop_time() - started >= 0.03  # waited for 3 until the timeout
    assert rig.pipeline.running_keys() == {(0, 3)}
    assert rig.consumer.committed_offsets() == [{0: 3}]

    rig.consumer.revoke(P0)
    await rig.pipeline.release(0, 3)  # too late: another consumer owns the partition now
    await wait_until(lambda: (0, 3) in rig.pipeline.finished())
    rig.consumer.add(P0)
    await rig.flush()
    assert rig.consumer.committed_offsets() == [{0: 3}]
    assert (0, 4) not in rig.pipeline.started()


async def test_release_is_capped_by_the_rebalance_timeout(make_rig: MakeRig) -> None:
    # The flush may use 60% of rebalance_timeout_ms: 30 ms of the 10 s asked for.
    consumer = FakeConsumer(assignment=[P0], rebalance_timeout_ms=50)
    rig = await make_rig(consumer=consumer)
    rig.admit(0, 0, 1)
    await rig.pipeline.release(0, 0)
    await asyncio.wait_for(rig.engine.release_partitions(rig.lane, {P0}, 10.0), 1)
    assert rig.consumer.committed_offsets() == [{0: 1}]


async def test_a_partition_gone_without_a_release_is_never_committed(make_rig: MakeRig) -> None:
    rig = await make_rig(partitions=(0, 1))
    rig.admit(0, 0)
    rig.admit(1, 0)
    await rig.pipeline.release(0, 0)
    await rig.pipeline.release(1, 0)
    await wait_until(lambda: len(rig.pipeline.finished()) == 2)
    rig.consumer.revoke(P1)
    assert await rig.flush()
    assert rig.consumer.committed_offsets() == [{0: 1}]
    assert all(request.ok for request in rig.consumer.commits)


# ---- drain ---------------------------------------------------------------------------


async def test_drain_cancels_what_runs_at_its_deadline_and_commits_what_finished(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(concurrency_limit=3)
    rig.admit(0, *range(5))
    await rig.pipeline.release(0, 0)
    await wait_until(lambda: (0, 3) in rig.pipeline.running_keys())
    await rig.pipeline.release(0, 2)
    await wait_until(lambda: (0, 4) in rig.pipeline.running_keys())
    # Running: 1, 3, 4. 3 finishes within the deadline, 1 and 4 do not.
    asyncio.get_running_loop().call_later(0.01, rig.pipeline.release_now, 0, 3)
    await rig.engine.drain([rig.lane], 0.05)

    outcomes = {call.key: call.outcome for call in rig.pipeline.calls}
    assert outcomes == {
        (0, 0): "finished",
        (0, 1): "cancelled",
        (0, 2): "finished",
        (0, 3): "finished",
        (0, 4): "cancelled",
    }
    assert rig.committed() == 1
    meta = rig.consumer.cluster.committed[P0]
    assert decode_finished_offsets(meta.metadata, 1) == {2, 3}

    await rig.engine.close()
    assert all(offsets[0] <= 1 for offsets in rig.consumer.committed_offsets())


async def test_a_draining_lane_admits_nothing(make_rig: MakeRig) -> None:
    rig = await make_rig()
    rig.admit(0, 0)
    await rig.pipeline.release(0, 0)
    await rig.engine.drain([rig.lane], 0.05)
    rig.admit(0, 1)
    await let_run()
    assert rig.pipeline.started() == [(0, 0)]
    assert rig.committed() == 1


# ---- commits -------------------------------------------------------------------------


async def test_a_commit_follows_commit_batch_size_finished_messages(make_rig: MakeRig) -> None:
    rig = await make_rig(commit_batch_size=3)
    rig.admit(0, *range(5))
    await rig.pipeline.release(0, 0)
    await rig.pipeline.release(0, 1)
    await let_run()
    assert rig.consumer.commits == []
    await rig.pipeline.release(0, 2)
    await wait_until(lambda: bool(rig.consumer.commits))
    assert rig.consumer.committed_offsets() == [{0: 3}]


async def test_a_commit_follows_the_batch_timeout(make_rig: MakeRig) -> None:
    rig = await make_rig(commit_batch_size=100, commit_batch_timeout_sec=0.05)
    started = loop_time()
    rig.admit(0, 0, 1)
    await rig.pipeline.release(0, 0)
    await let_run()
    assert rig.consumer.commits == []
    await wait_until(lambda: bool(rig.consumer.commits), timeout=0.5)
    assert loop_time() - started >= 0.05
    assert rig.consumer.committed_offsets() == [{0: 1}]


async def test_nothing_unchanged_is_committed_again(make_rig: MakeRig) -> None:
    rig = await make_rig(track_completed_offsets=False)
    rig.admit(0, 0, 1)
    await rig.pipeline.release(0, 0)
    await wait_until(lambda: bool(rig.pipeline.finished()))
    await rig.flush()
    await rig.flush()
    assert rig.consumer.committed_offsets() == [{0: 1}]


async def test_a_held_commit_point_is_sent_again_on_a_batch_only_once_its_metadata_grew(
    make_rig: MakeRig,
) -> None:
    """A slow message holds the point while the others finish: re-encoding the whole finished
    set on every batch made each commit cost O(set); a batch now re-sends the unmoved point
    once the set grew by 1 / METADATA_GROWTH, and the interval (or a flush) any change."""
    grown = 10 * METADATA_GROWTH  # up to here every batch of 10 is growth enough
    rig = await make_rig(concurrency_limit=1000, commit_batch_size=10, commit_batch_timeout_sec=60)
    rig.admit(0, *range(grown + 21))  # offset 0 is the slow one

    async def finish(offsets: range) -> None:
        """Ten at a time, each batch's commit (if any) sent before the next batch ends."""
        for offset in offsets:
            await rig.pipeline.release(0, offset)
            if offset % 10 == 0:
                await wait_until(finished_count(rig, offset))
                await let_run()

    def carried() -> list[int]:
        return [
            len(decode_finished_offsets(request.offsets[P0].metadata, 0))
            for request in rig.consumer.commits
        ]

    await finish(range(1, grown + 1))
    assert carried() == list(range(10, grown + 1, 10))
    await finish(range(grown + 1, grown + 11))
    assert carried()[-1] == grown  # 10 more on `grown`: too little, not re-sent
    await finish(range(grown + 11, grown + 21))
    assert carried()[-1] == grown + 20
    await rig.pipeline.release(0, 0)  # the point moves
    await wait_until(lambda: len(rig.pipeline.finished()) == grown + 21)
    await rig.flush()
    assert rig.committed() == grown + 21


async def test_the_interval_sends_a_held_point_s_metadata_whatever_it_grew(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(concurrency_limit=100, commit_batch_size=10, commit_batch_timeout_sec=5)
    rig.admit(0, *range(51))
    for offset in range(1, 51):
        await rig.pipeline.release(0, offset)
    await wait_until(lambda: len(rig.pipeline.finished()) == 50)
    await wait_until(
        lambda: (
            decode_finished_offsets(rig.consumer.cluster.committed[P0].metadata, 0)
            == set(range(1, 51))
        ),
        timeout=10,
    )
    assert rig.committed() == 0


async def test_finished_offsets_in_commit_metadata_are_skipped_by_the_next_owner(
    make_rig: MakeRig,
) -> None:
    before = await make_rig()
    before.admit(0, *range(5))
    for offset in (0, 2, 3):
        await before.pipeline.release(0, offset)
    await wait_until(lambda: len(before.pipeline.finished()) == 3)
    await before.flush()
    meta = before.consumer.cluster.committed[P0]
    assert meta.offset == 1
    assert decode_finished_offsets(meta.metadata, 1) == {2, 3}

    # A new process in the same group: a fresh engine and consumer over the same cluster.
    after = await make_rig(consumer=FakeConsumer(before.consumer.cluster, [P0]))
    await after.engine.partitions_assigned(after.lane, {P0})
    fetched = await fetch_records(after.consumer, 10)
    assert fetched is not None
    assert [record.offset for record in fetched.records] == [1, 2, 3, 4]
    after.engine.admit(after.lane, fetched.records)
    await let_run()
    assert after.pipeline.started() == [(0, 1), (0, 4)]
    assert after.engine.counters.skipped == 2
    after.pipeline.release_all()
    await wait_until(lambda: len(after.pipeline.finished()) == 2)
    await after.flush()
    assert after.committed() == 5
    assert after.consumer.cluster.committed[P0].metadata == ""


async def test_not_committed_is_what_a_crash_would_run_again(make_rig: MakeRig) -> None:
    """Running messages, and those finished since the last acknowledged commit: not only
    what the commit point has not passed (``uncommitted``)."""
    rig = await make_rig()
    rig.admit(0, *range(6))
    for offset in (0, 1, 3):
        await rig.pipeline.release(0, offset)
    await wait_until(lambda: len(rig.pipeline.finished()) == 3)

    def figures() -> tuple[int, int]:
        (part,) = snapshot(rig.engine).partitions()
        return part.not_committed, part.uncommitted

    assert figures() == (6, 4)  # 3 running + 3 finished; 2..5 not passed
    await rig.flush()  # commits 2, with 3 in the metadata
    assert figures() == (3, 4)
    await rig.pipeline.release(0, 2)
    await rig.pipeline.release(0, 4)
    await wait_until(lambda: len(rig.pipeline.finished()) == 5)
    assert figures() == (3, 1)  # 5 running, 2 and 4 finished since; only 5 not passed
    assert snapshot(rig.engine).not_committed == 3


async def test_not_committed_counts_finished_work_the_metadata_left_out(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(track_completed_offsets=False)
    rig.admit(0, *range(4))
    for offset in (0, 2):
        await rig.pipeline.release(0, offset)
    await wait_until(lambda: len(rig.pipeline.finished()) == 2)
    await rig.flush()  # commits 1, without 2: it runs again after a crash
    (part,) = snapshot(rig.engine).partitions()
    assert (part.in_flight, part.not_committed) == (2, 3)


async def test_claims_at_or_beyond_the_end_are_ignored_and_those_records_run(
    make_rig: MakeRig, caplog: pytest.LogCaptureFixture
) -> None:
    """Metadata claims 2..9 finished above committed offset 1 while the partition ends at 4:
    2 and 3 are skipped, 4..9 did not exist yet and run once they are produced."""
    cluster = FakeCluster()
    cluster.produce(0, 4)
    cluster.committed[P0] = OffsetAndMetadata(1, encode_finished_offsets(1, range(2, 10)))
    rig = await make_rig(consumer=FakeConsumer(cluster, [P0]))
    await rig.engine.partitions_assigned(rig.lane, {P0})
    rig.admit(0, *range(1, 10))
    await let_run()
    assert rig.pipeline.started() == [(0, offset) for offset in (1, *range(4, 10))]
    totals = rig.engine.counters
    assert (totals.claims_accepted, totals.claims_ignored, totals.skipped) == (2, 6, 2)
    [ignored] = [
        r.getMessage() for r in caplog.records if "beyond the partition's end" in r.getMessage()
    ]
    assert "claims 6 offset(s) from 4 to 9" in ignored
    assert "end (4)" in ignored
    assert any(
        r.levelno == logging.WARNING and "skipping 2 message(s)" in r.getMessage()
        for r in caplog.records
    )


async def test_metadata_that_is_not_ours_is_ignored(make_rig: MakeRig) -> None:
    cluster = FakeCluster()
    cluster.produce(0, 3)
    cluster.committed[P0] = OffsetAndMetadata(1, "someone else's")
    rig = await make_rig(consumer=FakeConsumer(cluster, [P0]))
    await rig.engine.partitions_assigned(rig.lane, {P0})
    rig.admit(0, 1, 2)
    await let_run()
    assert rig.pipeline.started() == [(0, 1), (0, 2)]
    assert rig.engine.counters.skipped == 0


async def test_an_unreadable_commit_metadata_fetch_skips_nothing(make_rig: MakeRig) -> None:
    rig = await make_rig()
    rig.consumer._coordinator.failures.append(KafkaConnectionError())
    await rig.engine.partitions_assigned(rig.lane, {P0})
    rig.admit(0, 0)
    await let_run()
    assert rig.pipeline.started() == [(0, 0)]


async def test_a_failed_commit_is_kept_and_sent_again(make_rig: MakeRig) -> None:
    rig = await make_rig()
    rig.admit(0, 0, 1, 2)
    await rig.pipeline.release(0, 0)
    await wait_until(lambda: bool(rig.pipeline.finished()))
    rig.consumer.commit_failures.append(CommitFailedError())
    assert not await rig.flush()
    assert rig.committed() is None
    assert rig.engine.counters.failed_commits == 1

    assert await rig.flush()  # nothing new finished: the same commit point is sent again
    assert rig.committed() == 1
    assert [(r.offsets[P0].offset, r.ok) for r in rig.consumer.commits] == [(1, False), (1, True)]


async def test_a_failed_commit_does_not_lose_the_commit_point_as_work_goes_on(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig()
    rig.admit(0, 0, 1, 2)
    await rig.pipeline.release(0, 0)
    await wait_until(lambda: bool(rig.pipeline.finished()))
    rig.consumer.commit_failures.append(CommitFailedError())
    await rig.flush()
    await rig.pipeline.release(0, 2)
    await wait_until(lambda: len(rig.pipeline.finished()) == 2)
    await rig.flush()
    assert rig.committed() == 1
    assert decode_finished_offsets(rig.consumer.cluster.committed[P0].metadata, 1) == {2}


# ---- failures ------------------------------------------------------------------------


async def test_a_failure_is_retried_until_an_attempt_succeeds(make_rig: MakeRig) -> None:
    rig = await make_rig(max_retries=3, dead_letter_topic="dlq")
    rig.pipeline.hold = False
    rig.pipeline.fail(0, 0, Boom(), Boom())
    rig.admit(0, 0)
    await wait_until(lambda: bool(rig.pipeline.finished()))
    assert rig.pipeline.attempts(0, 0) == 3
    assert rig.pipeline.dead_letters == []
    assert rig.engine.counters.failed == 0


async def test_the_last_failed_attempt_dead_letters_the_message(make_rig: MakeRig) -> None:
    rig = await make_rig(max_retries=2, dead_letter_topic="dlq")
    rig.pipeline.fail(0, 0, Boom(), Boom(), Boom("last"))
    rig.admit(0, 0, 1)
    await wait_until(lambda: bool(rig.pipeline.dead_letters))
    assert rig.pipeline.attempts(0, 0) == 3
    (dead,) = rig.pipeline.dead_letters
    assert (dead.topic, dead.key, dead.attempts, str(dead.error)) == ("dlq", (0, 0), 3, "last")
    await wait_until(lambda: rig.engine.counters.failed == 1)
    await rig.pipeline.release(0, 1)
    await wait_until(lambda: rig.engine.counters.processed == 2)
    await rig.flush()
    assert rig.committed() == 2


class Card(pydantic.BaseModel):
    number: int


def card_error() -> pydantic.ValidationError:
    """What FastStream raises for a body that does not fit: its text quotes the body."""
    try:
        Card(number="4111-SECRET")  # type: ignore[arg-type]
    except pydantic.ValidationError as error:
        assert "SECRET" in str(error)
        return error
    raise AssertionError


async def test_log_lines_of_a_validation_error_do_not_quote_the_message(
    make_rig: MakeRig, caplog: pytest.LogCaptureFixture
) -> None:
    rig = await make_rig(max_retries=1, dead_letter_topic="dlq", no_retry_on=())
    rig.pipeline.fail(0, 0, card_error(), card_error())
    with caplog.at_level(logging.INFO):
        rig.admit(0, 0)
        await wait_until(lambda: rig.engine.counters.processed == 1)
    lines = [
        logging.Formatter().format(r) for r in caplog.records if r.name == "tests.fakes.pipeline"
    ]
    assert len(lines) == 2  # the retry (INFO) and the final failure (ERROR)
    assert all("number: Input should be a valid integer" in line for line in lines), lines
    assert not any("SECRET" in line for line in lines), lines


async def test_a_rejected_message_is_dead_lettered_without_retries(make_rig: MakeRig) -> None:
    rig = await make_rig(max_retries=5, dead_letter_topic="dlq")
    rig.pipeline.fail(0, 0, Rejected())
    rig.admit(0, 0)
    await wait_until(lambda: rig.engine.counters.processed == 1)
    assert rig.pipeline.attempts(0, 0) == 1
    assert [dead.attempts for dead in rig.pipeline.dead_letters] == [1]


async def test_a_settling_exception_and_a_stop_end_the_message(make_rig: MakeRig) -> None:
    rig = await make_rig(max_retries=5, dead_letter_topic="dlq")
    stop = Stop()
    rig.pipeline.fail(0, 0, Settled())
    rig.pipeline.fail(0, 1, stop)
    rig.admit(0, 0, 1)
    await wait_until(lambda: rig.engine.counters.processed == 2)
    assert rig.pipeline.attempts(0, 0) == rig.pipeline.attempts(0, 1) == 1
    assert rig.pipeline.dead_letters == []
    assert rig.pipeline.stops == [stop]
    assert rig.engine.counters.failed == 0
    await rig.flush()
    assert rig.committed() == 2


async def test_without_a_dead_letter_topic_the_failure_is_committed(make_rig: MakeRig) -> None:
    rig = await make_rig(max_retries=1)
    rig.pipeline.fail(0, 0, Boom(), Boom())
    rig.admit(0, 0)
    await wait_until(lambda: rig.engine.counters.failed == 1)
    assert rig.pipeline.attempts(0, 0) == 2
    await rig.flush()
    assert rig.committed() == 1


async def test_a_failing_dead_letter_publish_holds_the_commit_point(make_rig: MakeRig) -> None:
    rig = await make_rig(
        dead_letter_topic="dlq", retry_backoff_sec=0.01, retry_backoff_max_sec=0.01
    )
    rig.pipeline.dead_letter_failures.extend([KafkaConnectionError(), KafkaConnectionError()])
    rig.pipeline.fail(0, 0, Rejected())
    rig.admit(0, 0, 1)
    await rig.pipeline.release(0, 1)
    await wait_until(lambda: len(rig.pipeline.dead_letters) == 1)
    await wait_until(lambda: rig.engine.counters.processed == 1)
    assert rig.lane.dead_letter_stuck
    assert not healthy(rig.engine)
    await rig.flush()
    assert rig.committed() == 0  # 1 finished, but 0 is not dead-lettered yet
    assert decode_finished_offsets(rig.consumer.cluster.committed[P0].metadata, 0) == {1}

    await wait_until(lambda: len(rig.pipeline.dead_letters) == 3)
    await wait_until(lambda: rig.engine.counters.processed == 2)
    assert not rig.lane.dead_letter_stuck
    assert healthy(rig.engine)
    await rig.flush()
    assert rig.committed() == 2
    assert [dead.failed is None for dead in rig.pipeline.dead_letters] == [False, False, True]


async def test_a_dead_letter_refused_for_good_is_given_up_at_once(make_rig: MakeRig) -> None:
    """An error no retry fixes (here: not allowed to write the topic) is not retried: the
    message is committed without its dead letter, and health says why."""
    rig = await make_rig(dead_letter_topic="dlq")
    rig.pipeline.dead_letter_failures.append(TopicAuthorizationFailedError())
    rig.pipeline.fail(0, 0, Rejected())
    rig.admit(0, 0)
    await wait_until(lambda: rig.engine.counters.processed == 1)
    assert len(rig.pipeline.dead_letters) == 1
    assert not rig.lane.dead_letter_stuck
    await rig.flush()
    assert rig.committed() == 1
    report = assess(current_faults(rig.engine))
    assert report.status == "degraded"
    assert any("'dlq'" in r and "TopicAuthorizationFailedError" in r for r in report.reasons)


async def test_a_record_delivered_again_while_on_its_way_runs_once_and_counts_once(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig()
    rig.admit(0, 0, 1)
    await wait_until(lambda: len(rig.pipeline.running()) == 2)
    tracked = rig.lane.offsets.tracked

    rig.admit(0, 0, 1)  # e.g. a seek back, or the partition back before it was retired

    await let_run()
    assert len(rig.pipeline.running()) == 2
    assert rig.lane.offsets.tracked == tracked == 2
    await rig.pipeline.release(0, 0)
    await rig.pipeline.release(0, 1)
    await wait_until(lambda: rig.engine.counters.processed == 2)
    assert rig.lane.offsets.tracked == 0
    await rig.flush()
    assert rig.committed() == 2


# ---- flow control: rate, adaptive limit, key functions --------------------------------


async def test_the_rate_caps_each_fetch_and_makes_the_poll_loop_wait(make_rig: MakeRig) -> None:
    """max_messages_per_sec=5: the first fetch may bring the starting burst (5), then the
    poll loop waits a token's time (0.2 s) and the next fetch brings what the tokens allow;
    nothing is paused."""
    rig = await make_rig(concurrency_limit=100, max_messages_per_sec=5)
    rig.pipeline.hold = False
    scheduler = rig.engine.scheduler
    assert scheduler.fetch_size(rig.lane) == 5
    rig.admit(0, *range(5))
    assert scheduler.fetch_size(rig.lane) == 1  # at least one: aiokafka takes no zero

    started = loop_time()
    await scheduler.wait_for_rate(rig.lane)

    assert loop_time() - started == pytest.approx(0.2, abs=0.01)
    assert rig.lane.flow.rate_waits == 1
    assert not rig.lane.fetching.paused
    rig.admit(0, 5)
    assert rig.lane.flow.rate_limited == 1


async def test_the_adaptive_limit_caps_a_lane_below_its_ceiling(make_rig: MakeRig) -> None:
    rig = await make_rig(concurrency_limit=100, adaptive_concurrency=True)
    rig.admit(0, *range(40))
    await let_run()

    assert rig.lane.flow.adaptive is not None
    assert len(rig.pipeline.running()) == rig.lane.flow.adaptive.limit == 10


async def test_a_key_function_that_raises_dead_letters_that_message_only(
    make_rig: MakeRig,
) -> None:
    def even_only(record: Any) -> Any:
        if record.offset % 2:
            raise KeyError("account")
        return record.offset

    rig = await make_rig(ordering=even_only, dead_letter_topic="dlq", max_retries=3)
    rig.admit(0, 0, 1, 2)
    await let_run()
    rig.pipeline.release_all()
    await wait_until(lambda: rig.lane.counters.processed == 3)

    assert sorted(call.key for call in rig.pipeline.calls) == [(0, 0), (0, 2)]
    [letter] = rig.pipeline.dead_letters
    assert letter.record.offset == 1
    assert type(letter.error).__name__ == "OrderingKeyError"
    assert letter.attempts == 1
    assert not rig.lane.flow.key_errors


async def test_a_waiting_retry_frees_its_slot_and_keeps_its_key(make_rig: MakeRig) -> None:
    """Lane limit 1: while 0 (key a) waits for its retry, 2 (key b) runs in its slot; 1 (key
    a) waits behind 0 until its retry succeeded; the commit point stays below 0 meanwhile."""
    rig = await make_rig(
        ordering="key",
        concurrency_limit=1,
        max_retries=1,
        retry_backoff_sec=0.2,
        retry_backoff_max_sec=0.2,
    )
    rig.pipeline.hold = False
    rig.pipeline.fail(0, 0, Boom())
    for key in (b"a", b"a", b"b"):
        rig.consumer.produce(0, key=key)
    rig.engine.admit(rig.lane, rig.consumer.deliver(P0, 0, 1, 2))
    await wait_until(lambda: (0, 2) in rig.pipeline.finished())
    assert [m.offset for m in rig.lane.waiting_retry] == [0]
    assert (0, 1) not in rig.pipeline.started()
    await rig.flush()
    assert rig.committed() in (None, 0)
    await wait_until(lambda: len(rig.pipeline.finished()) == 3)
    assert rig.pipeline.started() == [(0, 0), (0, 2), (0, 1)]
    assert rig.pipeline.attempts(0, 0) == 2
    assert not rig.lane.waiting_retry
    await rig.flush()
    assert rig.committed() == 3


async def test_a_waiting_retry_of_a_lost_partition_is_dropped_with_its_key_error(
    make_rig: MakeRig,
) -> None:
    """Offset 1's key function fails and its retry waits without a slot; its partition is lost
    (retired by the commit, no revocation ran): when the wait ends it is not run, and the key
    error kept for it is forgotten with it."""

    def even_only(record: Any) -> Any:
        if record.offset % 2:
            raise KeyError("account")
        return record.offset

    rig = await make_rig(ordering=even_only, retry_policy=lambda error, attempt: 5.0)
    rig.pipeline.hold = False
    rig.admit(0, 0, 1)
    await wait_until(lambda: len(rig.lane.waiting_retry) == 1)
    assert list(rig.lane.flow.key_errors) == list(rig.lane.waiting_retry)
    rig.consumer.revoke(P0)
    await rig.flush()  # the partition is no longer assigned: retired
    await wait_until(lambda: not rig.lane.waiting_retry, timeout=10.0)

    assert rig.pipeline.started() == [(0, 0)]
    assert not rig.lane.flow.key_errors


async def test_each_lane_logs_its_expired_records_once_per_partition_per_interval(
    make_rig: MakeRig, caplog: pytest.LogCaptureFixture
) -> None:
    """Two subscribers expire records of the same partition at once: each says so in its own
    line (the throttle is the lane's), and a lane's second record within the interval is
    counted in its next line, not logged."""
    first = await make_rig(max_message_age_sec=60)  # the fake's records are from 1970
    second = await make_rig(engine=first.engine, max_message_age_sec=60)
    with caplog.at_level(logging.WARNING):
        for rig in (first, second):
            rig.admit(0, 0, 1)
            await wait_until(lambda rig=rig: rig.lane.counters.expired == 2)  # type: ignore[misc]
    lines = [
        r.getMessage() for r in caplog.records if "not run since the last line" in r.getMessage()
    ]

    assert len(lines) == 2
    assert all(line.startswith("1 message(s) of ") for line in lines)
    assert first.pipeline.calls == second.pipeline.calls == []
    assert first.lane.expiry_lines.keys() == second.lane.expiry_lines.keys() == {P0}


@pytest.mark.parametrize("how", ["stop", "revocation"])
async def test_a_stop_or_a_revocation_hands_a_waiting_retry_back_and_says_so(
    make_rig: MakeRig, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """Offset 0 waits for its retry: a stop or a revocation drops it uncommitted (read again),
    it never runs again here, and the log line counts it."""
    rig = await make_rig(retry_policy=lambda error, attempt: 5.0)
    rig.pipeline.hold = False
    rig.pipeline.fail(0, 0, Boom())
    rig.admit(0, 0, 1)
    await wait_until(lambda: len(rig.lane.waiting_retry) == 1 and rig.lane.counters.processed == 1)
    with caplog.at_level(logging.INFO):
        if how == "stop":
            await rig.engine.drain([rig.lane], 1.0)
        else:
            await rig.engine.release_partitions(rig.lane, {P0}, 1.0)
    await asyncio.sleep(10.0)  # virtual time: past the retry's due time

    assert rig.pipeline.attempts(0, 0) == 1
    assert rig.committed() in (None, 0)
    assert not rig.lane.waiting_retry
    expected = (
        "were not started and 1 waiting retry(ies) were handed back"
        if how == "stop"
        else "(0 queued message(s) and 1 waiting retry(ies) left uncommitted for the next owner)"
    )
    assert any(expected in r.getMessage() for r in caplog.records), caplog.text
