"""Commit failures, one cause at a time: what each decides, and the engine applying it.

The causes the real broker cannot be made to produce on demand (a commit refused by a
rebalance in progress, a partition unassigned between collecting and sending, metadata over
the broker's limit, a coordinator that never answers while the test waits) are played by a
minimal fake consumer; the real broker covers the rest (``tests/kafka/test_broker_outage.py``,
``tests/kafka/test_fenced_member.py``).
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.structs import OffsetAndMetadata

from faststream_concurrent_aiokafka.core import commit_policy
from faststream_concurrent_aiokafka.core.commit_policy import (
    DECISIONS,
    CommitDecision,
    CommitFailure,
    final_commit_timeout,
    point_to_restore,
)
from faststream_concurrent_aiokafka.core.failure_policy import FailurePolicy
from faststream_concurrent_aiokafka.core.offset_codec import decode_finished_offsets
from faststream_concurrent_aiokafka.core.settings import ConcurrencySettings, SubscriberSettings
from faststream_concurrent_aiokafka.engine import at_least_once
from faststream_concurrent_aiokafka.engine.commit_errors import classify_commit_error
from faststream_concurrent_aiokafka.engine.engine import Engine
from faststream_concurrent_aiokafka.engine.state import ConsumerLane
from tests.kafka_helpers import wait_until

TOPIC = "t"
LOGGER = "tests.commit_failures"


def tp(partition: int) -> Any:
    return TopicPartition(TOPIC, partition)


def record(partition: int, offset: int) -> Any:
    return ConsumerRecord(TOPIC, partition, offset, 0, 0, None, b"v", None, 0, 1, [])


# ---- the pure table ----------------------------------------------------------------


def test_every_failure_has_a_decision() -> None:
    assert set(DECISIONS) == set(CommitFailure)


@pytest.mark.parametrize(
    ("failure", "decision"),
    [
        (CommitFailure.TIMED_OUT, CommitDecision.KEEP),
        (CommitFailure.COORDINATOR, CommitDecision.KEEP),
        (CommitFailure.REFUSED, CommitDecision.KEEP),
        (CommitFailure.REBALANCING, CommitDecision.AFTER_REJOIN),
        (CommitFailure.FENCED, CommitDecision.AFTER_REJOIN),
        (CommitFailure.NOT_ASSIGNED, CommitDecision.DROP_UNASSIGNED),
        (CommitFailure.METADATA_TOO_LARGE, CommitDecision.WITHOUT_METADATA),
    ],
)
def test_decision_per_failure(failure: CommitFailure, decision: CommitDecision) -> None:
    assert commit_policy.decide(failure) is decision


def test_commit_deadlines() -> None:
    assert final_commit_timeout(7.5) == 7.5
    assert final_commit_timeout(-3.0) == commit_policy.MIN_FINAL_COMMIT_SEC
    assert commit_policy.SHUTDOWN_MARGIN_SEC == (
        commit_policy.CANCEL_GRACE_SEC + commit_policy.MIN_FINAL_COMMIT_SEC
    )


def test_point_to_restore_never_moves_the_group_back() -> None:
    assert point_to_restore(120, None) == 120  # nothing committed yet
    assert point_to_restore(120, 100) == 120
    assert point_to_restore(120, 120) is None  # already there
    assert point_to_restore(120, 150) is None  # someone else went further
    assert point_to_restore(None, 100) is None


# ---- aiokafka's errors, named ----------------------------------------------------------


def _commit_failed(cause: BaseException) -> BaseException:
    """As aiokafka raises it: ``raise CommitFailedError(...) from <the broker's error>``."""
    error: BaseException = kafka_errors.CommitFailedError("the group has already rebalanced")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        (TimeoutError(), CommitFailure.TIMED_OUT),
        (
            kafka_errors.IllegalStateError("Partition t-0 is not assigned"),
            CommitFailure.NOT_ASSIGNED,
        ),
        (_commit_failed(kafka_errors.RebalanceInProgressError()), CommitFailure.REBALANCING),
        (_commit_failed(kafka_errors.UnknownMemberIdError()), CommitFailure.FENCED),
        (_commit_failed(kafka_errors.IllegalGenerationError()), CommitFailure.FENCED),
        (kafka_errors.CommitFailedError("no cause"), CommitFailure.FENCED),
        (kafka_errors.OffsetMetadataTooLargeError(), CommitFailure.METADATA_TOO_LARGE),
        (kafka_errors.NotCoordinatorForGroupError(), CommitFailure.COORDINATOR),
        (kafka_errors.GroupCoordinatorNotAvailableError(), CommitFailure.COORDINATOR),
        (kafka_errors.RequestTimedOutError(), CommitFailure.COORDINATOR),
        (kafka_errors.KafkaConnectionError(), CommitFailure.COORDINATOR),
        (kafka_errors.GroupAuthorizationFailedError(), CommitFailure.REFUSED),
        (RuntimeError("anything else"), CommitFailure.REFUSED),
    ],
)
def test_classify_commit_error(error: BaseException, failure: CommitFailure) -> None:
    assert classify_commit_error(error) is failure


# ---- a consumer that fails on demand ------------------------------------------------------


CommitStep = Callable[[dict[Any, OffsetAndMetadata]], Awaitable[None]]


class Coordinator:
    def __init__(self, consumer: "FakeConsumer") -> None:
        self._consumer = consumer

    async def fetch_committed_offsets(self, partitions: Iterable[Any]) -> dict[Any, Any]:
        committed = self._consumer.committed
        return {p: committed[p] for p in partitions if p in committed}


class FakeConsumer:
    """Assignment, pause, seek and commit as aiokafka validates them; each commit runs the
    next scripted step (a failure, a hang, a change of assignment) before it is applied."""

    _max_poll_interval_ms = 300_000
    _rebalance_timeout_ms = 10_000
    _max_poll_records = None

    def __init__(self, assignment: Iterable[int]) -> None:
        self._assignment = {tp(p) for p in assignment}
        self._paused: set[Any] = set()
        self.committed: dict[Any, OffsetAndMetadata] = {}
        self.requests: list[dict[Any, OffsetAndMetadata]] = []
        self.steps: list[CommitStep] = []
        self.seeks: dict[Any, int] = {}
        self._coordinator = Coordinator(self)

    def assignment(self) -> frozenset[Any]:
        return frozenset(self._assignment)

    def assign(self, partitions: Iterable[int]) -> None:
        self._assignment = {tp(p) for p in partitions}
        self._paused &= self._assignment

    def paused(self) -> frozenset[Any]:
        return frozenset(self._paused)

    def pause(self, *partitions: Any) -> None:
        self._paused |= set(partitions)

    def resume(self, *partitions: Any) -> None:
        self._paused -= set(partitions)

    def seek(self, partition: Any, offset: int) -> None:
        assert partition in self._assignment
        self.seeks[partition] = offset

    async def commit(self, offsets: dict[Any, OffsetAndMetadata]) -> None:
        for partition in offsets:
            if partition not in self._assignment:
                msg = f"Partition {partition} is not assigned"
                raise kafka_errors.IllegalStateError(msg)
        self.requests.append(dict(offsets))
        if self.steps:
            await self.steps.pop(0)(offsets)
        self.committed.update(offsets)


def fail_with(error: BaseException) -> CommitStep:
    async def step(_offsets: dict[Any, OffsetAndMetadata]) -> None:
        raise error

    return step


async def hang(_offsets: dict[Any, OffsetAndMetadata]) -> None:
    """aiokafka with an unreachable coordinator: it retries inside commit() forever."""
    await asyncio.Event().wait()


class Pipeline:
    """Runs each message until the test lets that offset finish (all, by default)."""

    owner = object()
    name = "group=g topics=t"
    group = "g"
    topics = ("t",)
    policy = FailurePolicy()

    def __init__(self, track: bool = True) -> None:
        self._settings = SubscriberSettings(concurrency_limit=100, track_completed_offsets=track)
        self.gates: dict[tuple[int, int], asyncio.Event] = {}

    def settings(self) -> SubscriberSettings:
        return self._settings

    def logger(self) -> logging.Logger:
        return logging.getLogger(LOGGER)

    async def process(self, rec: Any) -> None:
        gate = self.gates.get((rec.partition, rec.offset))
        if gate is not None:
            await gate.wait()

    async def dead_letter(
        self,
        topic: str,
        rec: Any,
        error: BaseException | None,
        n: int,
        exception_text: Callable[[BaseException], str] | None,
    ) -> None:
        raise AssertionError("no dead letters here")

    async def publish_retry(self, topic: str, rec: Any, headers: list[tuple[str, bytes]]) -> None:
        raise AssertionError("no retry topic here")

    def stop_requested(self, error: BaseException) -> None:
        raise AssertionError("no stop here")

    def transactional_producer(self, transactional_id: str, timeout_ms: int) -> Any:
        raise AssertionError("no exactly-once here")


async def started_engine(
    consumer: FakeConsumer, pipeline: Pipeline | None = None, **settings: Any
) -> tuple[Engine, ConsumerLane, Pipeline]:
    pipeline = pipeline or Pipeline()
    engine = Engine(
        ConcurrencySettings(commit_batch_size=10_000, commit_batch_timeout_sec=60, **settings)
    )
    await engine.start()
    lane = engine.lane_for(consumer, pipeline)
    return engine, lane, pipeline


async def admit_and_finish(
    engine: Engine, lane: ConsumerLane, per_partition: dict[int, range]
) -> None:
    records = [record(p, o) for p, offsets in per_partition.items() for o in offsets]
    engine.admit(lane, records)
    expected = {p: offsets.stop for p, offsets in per_partition.items()}

    await until(
        lambda: all(lane.offsets.trackers[tp(p)].commit_point == end for p, end in expected.items())
    )


async def until(condition: Callable[[], bool]) -> None:
    await wait_until(condition, timeout=5, interval=0.001)


def points(requests: dict[Any, OffsetAndMetadata]) -> dict[int, int]:
    return {partition.partition: meta.offset for partition, meta in requests.items()}


@pytest.fixture
def short_final_commits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Final commits and the cancel grace in tenths of seconds, so hangs end quickly."""
    monkeypatch.setattr(commit_policy, "MIN_FINAL_COMMIT_SEC", 0.2)
    monkeypatch.setattr(at_least_once, "CANCEL_GRACE_SEC", 0.1)


# ---- the committer -------------------------------------------------------------------------


async def test_a_commit_without_answer_times_out_and_keeps_its_points() -> None:
    consumer = FakeConsumer([0, 1])
    engine, lane, _ = await started_engine(consumer)
    await admit_and_finish(engine, lane, {0: range(5), 1: range(3)})
    consumer.steps.append(hang)

    attempt = await asyncio.wait_for(engine.committer.send(lane, None, timeout=0.1), 10)

    assert attempt.failure is CommitFailure.TIMED_OUT
    assert consumer.committed == {}
    assert lane.offsets.trackers[
        tp(0)
    ].needs_commit  # nothing marked committed without Kafka's word
    assert await engine.committer.commit_lane(lane)  # the broker answers again
    assert points(consumer.committed) == {0: 5, 1: 3}
    await engine.close()


async def test_a_hung_background_commit_does_not_hold_the_drain(
    short_final_commits: None,
) -> None:
    """The background committer's commit hangs with the lane's commit lock held; the drain's
    own commit waits for that lock within its deadline, not for ever."""
    consumer = FakeConsumer([0])
    engine, lane, _ = await started_engine(consumer)
    await admit_and_finish(engine, lane, {0: range(4)})
    consumer.steps.append(hang)
    background = asyncio.create_task(engine.committer.commit_lane(lane))
    await until(lambda: bool(consumer.requests))
    loop = asyncio.get_running_loop()

    started = loop.time()
    await asyncio.wait_for(engine.drain([lane], timeout=0.3), 10)  # fails, not hangs, if unbounded

    assert loop.time() - started < 0.3 + commit_policy.SHUTDOWN_MARGIN_SEC
    assert consumer.committed == {}
    background.cancel()
    await engine.close()


async def test_drain_with_a_dead_broker_is_bounded_and_names_what_is_read_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Real constants: a stop returns within shutdown_timeout_sec + SHUTDOWN_MARGIN_SEC, and
    each partition left uncommitted is one WARNING with the offsets delivered again."""
    consumer = FakeConsumer([0, 1])
    engine, lane, pipeline = await started_engine(consumer)
    await admit_and_finish(engine, lane, {0: range(10), 1: range(4)})
    assert await engine.committer.commit_lane(lane)  # 0:10, 1:4 committed
    pipeline.gates[(0, 12)] = asyncio.Event()  # never released: cancelled at the deadline
    engine.admit(lane, [record(0, o) for o in range(10, 15)])
    # 10, 11, 13 and 14 finished; 12 runs
    await until(lambda: engine.in_flight == 1 and not lane.ready)
    consumer.steps.append(hang)
    loop = asyncio.get_running_loop()

    started = loop.time()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        await asyncio.wait_for(engine.drain([lane], timeout=0.5), 10)
    elapsed = loop.time() - started

    assert elapsed < 0.5 + commit_policy.SHUTDOWN_MARGIN_SEC
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("1 message(s)" in line and "cancelled" in line for line in lines)
    redelivered = [line for line in lines if "will be delivered again" in line]
    assert redelivered == [
        "t[0] of group=g topics=t not committed (the final commit failed, no answer before its "
        "deadline): offsets 10 to 11 and 2 above them were finished here and will be delivered "
        "again"
    ]
    assert consumer.committed[tp(0)].offset == 10
    await engine.close()


async def test_rebalancing_refusal_keeps_the_points_for_the_next_commit() -> None:
    consumer = FakeConsumer([0])
    engine, lane, _ = await started_engine(consumer)
    await admit_and_finish(engine, lane, {0: range(6)})
    consumer.steps.append(fail_with(_commit_failed(kafka_errors.RebalanceInProgressError())))

    assert not await engine.committer.commit_lane(lane)
    assert lane.offsets.trackers[tp(0)].committed is None
    assert await engine.committer.commit_lane(lane)
    assert points(consumer.committed) == {0: 6}
    await engine.close()


async def test_a_partition_unassigned_meanwhile_is_dropped_and_the_rest_sent_again() -> None:
    """The assignment changes between collecting the points and sending them (aiokafka then
    raises IllegalStateError for the whole request): the partition that left is never
    committed, the others are sent again at once."""
    consumer = FakeConsumer([0, 1])
    engine, lane, _ = await started_engine(consumer)
    await admit_and_finish(engine, lane, {0: range(3), 1: range(7)})
    real_commit = consumer.commit

    async def revoke_first(offsets: dict[Any, OffsetAndMetadata]) -> None:
        consumer.commit = real_commit  # type: ignore[method-assign]
        consumer.assign([1])
        await real_commit(offsets)

    consumer.commit = revoke_first  # type: ignore[method-assign]

    attempt = await engine.committer.send(lane, None, timeout=1)

    assert attempt.ok
    assert points(consumer.committed) == {1: 7}
    assert tp(0) not in lane.offsets.trackers
    await engine.close()


async def test_metadata_too_large_is_sent_again_without_it() -> None:
    consumer = FakeConsumer([0])
    engine, lane, pipeline = await started_engine(consumer)
    pipeline.gates[(0, 0)] = asyncio.Event()  # the first offset holds: the rest finish above it
    engine.admit(lane, [record(0, o) for o in range(5)])
    await until(lambda: len(lane.offsets.trackers[tp(0)].finished_above()) == 4)
    consumer.steps.append(fail_with(kafka_errors.OffsetMetadataTooLargeError()))

    assert await engine.committer.commit_lane(lane)

    first, second = consumer.requests
    assert first[tp(0)].metadata  # the finished offsets 1..4 above the point 0
    assert second[tp(0)] == OffsetAndMetadata(0, "")
    pipeline.gates[(0, 0)].set()
    await engine.close()


# ---- through a rejoin ------------------------------------------------------------------------


async def fenced_revocation(consumer: FakeConsumer, engine: Engine, lane: ConsumerLane) -> None:
    """The member's generation is gone: the revocation flush's commit is refused."""
    consumer.steps.append(fail_with(_commit_failed(kafka_errors.UnknownMemberIdError())))
    await engine.release_partitions(
        lane, consumer.assignment(), engine.settings.rebalance_flush_timeout_sec
    )


async def test_fenced_flush_is_committed_after_the_rejoin_for_partitions_given_back() -> None:
    consumer = FakeConsumer([0, 1])
    engine, lane, pipeline = await started_engine(consumer)
    pipeline.gates[(0, 8)] = asyncio.Event()
    engine.admit(lane, [record(0, o) for o in range(10)] + [record(1, o) for o in range(5)])
    await until(lambda: lane.offsets.trackers[tp(1)].commit_point == 5 and len(lane.running) == 1)
    pipeline.gates[(0, 8)].set()  # finishes within the flush
    consumer.committed[tp(1)] = OffsetAndMetadata(2, "")  # an older commit of partition 1

    await fenced_revocation(consumer, engine, lane)
    assert not lane.offsets.trackers
    assert set(lane.offsets.awaiting_rejoin) == {tp(0), tp(1)}

    consumer.assign([0])  # the rejoin gives partition 0 back; 1 goes to another member
    await engine.partitions_assigned(lane, {tp(0)})

    assert points(consumer.requests[-1]) == {0: 10}
    assert consumer.seeks == {tp(0): 10}  # read on after the finished work, not again
    assert consumer.committed[tp(1)].offset == 2  # never committed for another member
    assert not lane.offsets.awaiting_rejoin
    assert tp(0) not in consumer.paused()
    await engine.close()


async def test_a_backpressure_pause_during_the_rejoin_commit_resumes_what_it_gave_back() -> None:
    consumer = FakeConsumer([0])
    engine, lane, _ = await started_engine(consumer)
    await admit_and_finish(engine, lane, {0: range(6)})
    await fenced_revocation(consumer, engine, lane)

    async def paused_meanwhile(_offsets: dict[Any, OffsetAndMetadata]) -> None:
        lane.fetching.pause()  # the backlog filled up while the rejoin's commit was on its way

    consumer.steps.append(paused_meanwhile)
    await engine.partitions_assigned(lane, {tp(0)})

    assert consumer.committed[tp(0)].offset == 6
    assert tp(0) in consumer.paused()  # paused with the lane...
    lane.resume()
    assert tp(0) not in consumer.paused()  # ...and resumed with it
    await engine.close()


async def test_rejoin_never_moves_the_group_back() -> None:
    """Between the refusal and the rejoin another member committed further: keep its point."""
    consumer = FakeConsumer([0])
    engine, lane, _ = await started_engine(consumer)
    await admit_and_finish(engine, lane, {0: range(6)})
    await fenced_revocation(consumer, engine, lane)
    consumer.committed[tp(0)] = OffsetAndMetadata(9, "")

    await engine.partitions_assigned(lane, {tp(0)})

    assert consumer.committed[tp(0)].offset == 9
    assert not consumer.seeks
    await engine.close()


async def test_rejoin_commit_carries_the_finished_offsets_above_the_point() -> None:
    consumer = FakeConsumer([0])
    engine, lane, pipeline = await started_engine(consumer, rebalance_flush_timeout_sec=0.2)
    pipeline.gates[(0, 3)] = asyncio.Event()  # still running after the flush: not finished
    engine.admit(lane, [record(0, o) for o in range(8)])
    await until(lambda: len(lane.offsets.trackers[tp(0)].finished_above()) == 4)
    await fenced_revocation(consumer, engine, lane)

    await engine.partitions_assigned(lane, {tp(0)})

    meta = consumer.committed[tp(0)]
    assert meta.offset == 3
    assert decode_finished_offsets(meta.metadata, 3) == frozenset({4, 5, 6, 7})
    pipeline.gates[(0, 3)].set()
    await engine.close()


async def test_kept_work_of_partitions_never_given_back_is_logged_at_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = FakeConsumer([0])
    engine, lane, _ = await started_engine(consumer)
    await admit_and_finish(engine, lane, {0: range(6)})
    await fenced_revocation(consumer, engine, lane)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await engine.drain([lane], timeout=0.1)

    assert not lane.offsets.awaiting_rejoin
    assert any(
        "revoked while its commit was refused" in r.getMessage()
        and "offsets below 6" in r.getMessage()
        for r in caplog.records
    )
    await engine.close()
