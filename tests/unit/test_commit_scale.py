"""Commits with many partitions assigned: a tick looks only at the partitions whose trackers
changed since the last one (``Offsets.take_changed``), not at every assigned one; a commit
larger than the broker writes in one batch goes out in several requests (the broker's side:
``tests/kafka/test_commit_size.py``)."""

import asyncio
from typing import Any

import pytest
from aiokafka import errors as kafka_errors

from faststream_concurrent_aiokafka.core.offset_codec import decode_finished_offsets
from faststream_concurrent_aiokafka.engine import committer
from tests.unit.test_commit_failures import (
    FakeConsumer,
    admit_and_finish,
    fail_with,
    points,
    record,
    started_engine,
    tp,
    until,
)

PARTITIONS = 1000


class NoWalking(dict[Any, Any]):
    """A trackers table that may be looked up by key but not walked over."""

    def __iter__(self) -> Any:
        raise AssertionError("a commit tick walked over every partition")

    def items(self) -> Any:
        raise AssertionError("a commit tick walked over every partition")

    def values(self) -> Any:
        raise AssertionError("a commit tick walked over every partition")


async def test_a_tick_commits_the_changed_partitions_without_walking_all() -> None:
    consumer = FakeConsumer(range(PARTITIONS))
    engine, lane, _ = await started_engine(consumer)
    await admit_and_finish(engine, lane, {p: range(2) for p in range(PARTITIONS)})
    assert await engine.committer.commit_lane(lane)
    assert len(consumer.requests[-1]) == PARTITIONS
    lane.offsets.trackers = NoWalking(lane.offsets.trackers)

    engine.admit(lane, [record(7, 2), record(421, 2)])
    await until(lambda: lane.offsets.trackers[tp(421)].commit_point == 3)
    assert await engine.committer.commit_lane(lane)

    assert points(consumer.requests[-1]) == {7: 3, 421: 3}
    lane.offsets.trackers = dict(lane.offsets.trackers)
    await engine.close()


async def test_a_refused_commit_keeps_its_partitions_for_the_next_tick() -> None:
    consumer = FakeConsumer(range(8))
    engine, lane, _ = await started_engine(consumer)
    await admit_and_finish(engine, lane, {p: range(2) for p in range(8)})
    assert await engine.committer.commit_lane(lane)
    engine.admit(lane, [record(3, 2)])
    await until(lambda: lane.offsets.trackers[tp(3)].commit_point == 3)
    consumer.steps.append(fail_with(kafka_errors.CoordinatorNotAvailableError()))

    assert not await engine.committer.commit_lane(lane)
    assert await engine.committer.commit_lane(lane)

    assert points(consumer.requests[-1]) == {3: 3}
    assert points(consumer.committed)[3] == 3
    await engine.close()


async def test_a_large_commit_goes_out_in_requests_under_the_size_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(committer, "COMMIT_REQUEST_MAX_BYTES", 2_000)
    consumer = FakeConsumer(range(100))
    engine, lane, _ = await started_engine(consumer)
    await admit_and_finish(engine, lane, {p: range(3) for p in range(100)})

    assert await engine.committer.commit_lane(lane)

    assert len(consumer.requests) > 1
    assert points(consumer.committed) == dict.fromkeys(range(100), 3)
    assert not any(tracker.needs_commit for tracker in lane.offsets.trackers.values())
    await engine.close()


async def test_a_change_a_batch_tick_passes_over_is_sent_by_the_next_full_commit() -> None:
    """A batch tick re-sends an unmoved point only once its finished offsets grew enough; what
    it passes over stays listed, so the interval's (or the final) commit still sends it."""
    consumer = FakeConsumer([0])
    engine, lane, pipeline = await started_engine(consumer)
    pipeline.gates[(0, 0)] = asyncio.Event()  # the slow message holding the commit point
    engine.admit(lane, [record(0, o) for o in range(40)])
    tracker = lane.offsets.trackers[tp(0)]
    await until(lambda: tracker.finished_count == 39)
    assert await lane.strategy.flush(5.0)  # every finished offset sent as metadata
    engine.admit(lane, [record(0, 40)])
    await until(lambda: tracker.finished_count == 40)

    tick = await engine.committer.send(lane, None, timeout=5.0, every_change=False)
    assert tick.ok  # a batch tick: 1 new of 40 finished is not grown enough to send
    sent = len(consumer.requests)
    assert await lane.strategy.flush(5.0)

    assert len(consumer.requests) == sent + 1
    assert decode_finished_offsets(consumer.committed[tp(0)].metadata, 0) == set(range(1, 41))
    pipeline.gates[(0, 0)].set()
    await engine.close()
