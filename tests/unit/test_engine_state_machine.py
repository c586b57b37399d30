"""The engine under random steps (hypothesis' stateful testing) against a model of what it
promises about offsets.

Per run: 1-3 partitions, the ordering mode, limits, budget, retries, dead-letter topic,
eager (aiokafka's) or incremental rebalances, and whether the run ends drained or shut down
at a deadline. Steps: records produced and fetched as the integration's poll loop does
(random keys), running messages finished or one failed (retried, dead-lettered, the publish
failing once), a partition revoked (messages finishing while the release waits) or
assigned, a partition lost without a release, the next commits made to fail, a commit
flushed, the loop run until idle. The loop is a ``VirtualClockLoop``: runs replay exactly.

The model learns from the fake pipeline when each admission ends and checks every commit
request as it is made:

(a) a partition's committed offset never passes an offset whose message of the current
    assignment generation has not ended (finished, dead-lettered or given up), unless commit
    metadata said an earlier owner finished it; the finished offsets written as metadata,
    and those read back at an assignment, obey the same rule;
(b) an admission ends at most once; drained at the end, every admission of an assigned
    partition ended exactly once and its committed offset is one past the last admitted;
    shut down at a deadline, its committed offset is its first admitted offset that did
    not end;
(c) nothing is committed for a partition that is not assigned at the time of the commit.

And when nothing runs after ``run_until_idle``, no message waits for a slot or behind its
key and the consumer is not left paused: nothing would ever move them again.

The machine found three engine bugs, now fixed; the examples it found are kept at the end of
this module: a message dropped while waiting for a slot, or discarded when its partition went
away, left its ordering key taken for good, and a release that gave the uncommitted budget back
left a lane paused for it.
"""

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from aiokafka.errors import CommitFailedError, KafkaConnectionError
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from faststream_concurrent_aiokafka.core.failure_policy import FailurePolicy, Outcome
from faststream_concurrent_aiokafka.core.offset_codec import decode_finished_offsets
from faststream_concurrent_aiokafka.core.settings import (
    ORDERINGS,
    ConcurrencySettings,
    Ordering,
    SubscriberSettings,
)
from faststream_concurrent_aiokafka.engine.engine import Engine
from faststream_concurrent_aiokafka.engine.fetching import fetch_records
from faststream_concurrent_aiokafka.engine.state import ConsumerLane
from tests.fakes import (
    Call,
    CommitRequest,
    DeadLetterCall,
    FakeCluster,
    FakeConsumer,
    FakePipeline,
    VirtualClockLoop,
    delivery_id,
    let_run,
    tp,
    wait_until,
)

T = TypeVar("T")

VIRTUAL_CLOCK = True  # the examples at the end run on it too (see tests/unit/conftest.py)

RELEASE_TIMEOUT = 0.01
DEAD_LETTER_TOPIC = "dlq"


class Boom(Exception):
    """A failure the policy retries."""


class Rejected(Exception):
    """A failure the policy dead-letters at once."""


class Settled(Exception):
    """An exception that still means the message is done."""


POLICY = FailurePolicy(done=(Settled,), dead_letter=(Rejected,))
FAILURES: dict[str, type[Exception]] = {"boom": Boom, "rejected": Rejected, "settled": Settled}


@dataclass(eq=False)
class Admission:
    """One delivery of a record, in the assignment generation it was delivered in."""

    partition: Any
    offset: int
    generation: int
    ends: int = 0
    awaiting_dead_letter: bool = False


@dataclass
class PartitionModel:
    """What the model knows of one partition."""

    assigned: bool = False
    generation: int = 0
    start: int = 0  # where this generation started reading: the committed offset then
    ended: set[int] = field(default_factory=set)  # offsets ended in this generation
    # Offsets ended in the generation before this one: a commit refused while the partition was
    # released keeps them, and the engine commits them once the partition comes straight back.
    ended_before: set[int] = field(default_factory=set)
    known_done: frozenset[int] = frozenset()  # metadata said an earlier owner finished them
    ever_ended: set[int] = field(default_factory=set)
    lost: bool = False  # taken away without a release; never assigned here again

    def first_unended_before(self) -> int:
        """How far the previous generation's ended work reaches from this one's start."""
        offset = self.start
        while offset in self.ended_before:
            offset += 1
        return offset

    def first_not_done(self) -> int:
        """How far work ended in any generation (or known done) reaches from this one's start:
        a commit up to there passes nothing unended, even beyond this generation's position."""
        done = self.ended | self.known_done | self.ended_before
        offset = self.start
        while offset in done:
            offset += 1
        return offset

    def first_unended_with_before(self, end: int) -> int:
        """The commit point when the previous generation's ended work counts too (the
        engine commits it after a rejoin when its release commit was refused)."""
        done = self.ended | self.known_done | self.ended_before
        end = max(end, self.first_unended_before())
        return next((offset for offset in range(self.start, end) if offset not in done), end)

    def first_unended(self, end: int) -> int:
        """Where the commit point of this generation belongs: its first admitted offset that
        did not end (``end`` is one past the last admitted)."""
        done = self.ended | self.known_done
        return next((offset for offset in range(self.start, end) if offset not in done), end)


def _finish_if_waiting(call: Call) -> None:
    """A finish scheduled for later: the attempt may have been ended by a rule meanwhile."""
    if call.waiting:
        assert call.future is not None
        call.future.set_result(None)


class EngineMachine(RuleBasedStateMachine):
    """One engine, one lane, one fake consumer over 1-3 partitions, on a private loop."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = VirtualClockLoop()
        self.violations: list[str] = []
        self.admissions: dict[int, Admission] = {}
        self.partitions: dict[Any, PartitionModel] = {}
        self.started = False

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    # ---- set-up ----------------------------------------------------------------------

    @initialize(
        partition_count=st.integers(1, 3),
        ordering=st.sampled_from(ORDERINGS),
        global_limit=st.integers(1, 4),
        lane_limit=st.integers(1, 4),
        max_uncommitted=st.integers(2, 12),
        commit_batch_size=st.integers(1, 5),
        max_retries=st.integers(0, 1),
        dead_letter=st.booleans(),
        track_completed_offsets=st.booleans(),
        eager=st.booleans(),
        drain_at_end=st.booleans(),
        finish_at_shutdown=st.integers(0, 3),
    )
    def set_up(
        self,
        *,
        partition_count: int,
        ordering: Ordering,
        global_limit: int,
        lane_limit: int,
        max_uncommitted: int,
        commit_batch_size: int,
        max_retries: int,
        dead_letter: bool,
        track_completed_offsets: bool,
        eager: bool,
        drain_at_end: bool,
        finish_at_shutdown: int,
    ) -> None:
        self.eager = eager
        self.drain_at_end = drain_at_end
        self.finish_at_shutdown = finish_at_shutdown
        self.all_partitions = [tp(p) for p in range(partition_count)]
        lane_settings = SubscriberSettings(
            concurrency_limit=lane_limit,
            ordering=ordering,
            max_retries=max_retries,
            retry_backoff_sec=0.001,
            retry_backoff_max_sec=0.001,
            dead_letter_topic=DEAD_LETTER_TOPIC if dead_letter else None,
            track_completed_offsets=track_completed_offsets,
        )
        self.pipeline = FakePipeline(
            lane_settings,
            POLICY,
            on_attempt_end=self._attempt_ended,
            on_dead_letter=self._dead_lettered,
        )
        self.run(
            self._start(
                ConcurrencySettings(
                    concurrency_limit=global_limit,
                    max_uncommitted_tasks=max_uncommitted,
                    commit_batch_size=commit_batch_size,
                    commit_batch_timeout_sec=3600,
                    shutdown_timeout_sec=RELEASE_TIMEOUT,
                )
            )
        )

    async def _start(self, engine_settings: ConcurrencySettings) -> None:
        self.engine = Engine(engine_settings)
        await self.engine.start()
        # A hold of the poll loop lasts half of max_poll_interval_ms: 2 ms.
        self.consumer = FakeConsumer(FakeCluster(), max_poll_interval_ms=4)
        self.consumer.on_commit = self._check_commit
        self.lane: ConsumerLane = self.engine.lane_for(self.consumer, self.pipeline)
        for partition in self.all_partitions:
            self.partitions[partition] = PartitionModel()
        await self._rebalance(set(self.all_partitions))
        self.started = True

    # ---- the model ---------------------------------------------------------------------

    def _new_generation(self, partition: Any) -> None:
        model = self.partitions[partition]
        model.assigned = True
        model.generation += 1
        meta = self.consumer.cluster.committed.get(partition)
        model.start = 0 if meta is None else meta.offset
        model.ended_before, model.ended = model.ended, set()
        model.known_done = frozenset()
        if meta is not None and meta.metadata and self.lane.settings.track_completed_offsets:
            model.known_done = decode_finished_offsets(meta.metadata, meta.offset)
        unfinished = model.known_done - model.ever_ended
        if unfinished:
            self.violations.append(
                f"(a) metadata of {partition} claims {sorted(unfinished)} finished"
            )

    def _admission(self, record: Any) -> Admission:
        return self.admissions[delivery_id(record)]

    def _end(self, admission: Admission) -> None:
        admission.ends += 1
        if admission.ends > 1:
            self.violations.append(
                f"(b) {admission.partition}@{admission.offset} (generation "
                f"{admission.generation}) ended {admission.ends} times"
            )
        model = self.partitions[admission.partition]
        model.ever_ended.add(admission.offset)
        if model.assigned and admission.generation == model.generation:
            model.ended.add(admission.offset)

    def _attempt_ended(self, call: Call) -> None:
        admission = self._admission(call.record)
        if call.outcome == "finished":
            self._end(admission)
        elif call.outcome == "failed":
            outcome = POLICY.classify(call.error)
            options = self.lane.settings
            if outcome is Outcome.RETRY and call.attempt <= options.max_retries:
                return
            if outcome in (Outcome.RETRY, Outcome.DEAD_LETTER) and options.dead_letter_topic:
                admission.awaiting_dead_letter = True
                return
            self._end(admission)

    def _dead_lettered(self, entry: DeadLetterCall) -> None:
        admission = self._admission(entry.record)
        if not admission.awaiting_dead_letter:
            self.violations.append(f"{entry.key} dead-lettered though not given up")
        if entry.failed is None:
            admission.awaiting_dead_letter = False
            self._end(admission)

    def _check_commit(self, request: CommitRequest) -> None:
        assignment = self.consumer.assignment()
        for partition, meta in request.offsets.items():
            if partition not in assignment:
                self.violations.append(f"(c) commit {meta.offset} for unassigned {partition}")
                continue
            model = self.partitions[partition]
            done = model.ended | model.known_done | model.ended_before
            passed = [o for o in range(model.start, meta.offset) if o not in done]
            if passed:
                self.violations.append(
                    f"(a) commit {meta.offset} of {partition} passes unended {passed}"
                )
            restorable = model.first_not_done()
            highest = max(self.consumer.position_now(partition), restorable)
            if meta.offset < model.start or meta.offset > highest:
                self.violations.append(
                    f"commit {meta.offset} of {partition} outside [{model.start}, {highest}]"
                )
            if meta.metadata:
                claimed = decode_finished_offsets(meta.metadata, meta.offset) - done
                if claimed:
                    self.violations.append(
                        f"(a) metadata of {partition} claims unended {sorted(claimed)}"
                    )

    # ---- driving the engine ------------------------------------------------------------

    async def _rebalance(self, assignment: set[Any]) -> None:
        """What aiokafka's rebalance listener does around a new assignment. Eager: every
        partition is released, then the new assignment is read from the committed offsets.
        Incremental: only what moves is released or assigned."""
        current = self.consumer.assignment()
        revoked = current if self.eager else current - assignment
        added = assignment if self.eager else assignment - current
        if revoked:
            await self._release(revoked)
        for partition in revoked:
            self.partitions[partition].assigned = False
        if self.eager:
            self.consumer.assign(set())
        self.consumer.assign(assignment)
        for partition in added:
            self._new_generation(partition)
        await self.engine.partitions_assigned(self.lane, added)

    async def _release(self, partitions: set[Any]) -> None:
        await self.engine.release_partitions(self.lane, partitions, RELEASE_TIMEOUT)

    async def _fetch_and_admit(self) -> None:
        """The integration's poll loop, once: fetch what fits, admit it, hold while full."""
        if not self.consumer.fetchable():
            return
        fetched = await fetch_records(self.consumer, self.engine.scheduler.fetch_size(self.lane))
        assert fetched is not None
        for record in fetched.records:
            partition = tp(record.partition)
            self.admissions[delivery_id(record)] = Admission(
                partition, record.offset, self.partitions[partition].generation
            )
        self.engine.admit(self.lane, fetched.records)
        if len(self.lane.ready) >= self.lane.settings.concurrency_limit:
            await self.engine.scheduler.wait_for_room(self.lane)
        else:
            await asyncio.sleep(0)

    def _quiet(self) -> bool:
        """Every running message waits for the test: none sleeps before a retry or a
        dead-letter attempt, in its slot or without one."""
        return self.engine.in_flight == len(self.pipeline.waiting()) and not (
            self.lane.waiting_retry
        )

    async def _idle(self) -> None:
        for _ in range(500):
            await let_run()
            if self._quiet():
                return
            await asyncio.sleep(0.001)
        msg = "the engine never went idle"
        raise AssertionError(msg)

    def _waiting(self) -> list[Call]:
        return sorted(self.pipeline.waiting(), key=lambda call: delivery_id(call.record))

    # ---- rules -------------------------------------------------------------------------

    def _open(self) -> bool:
        return self.started

    def _something_waits(self) -> bool:
        return self._open() and bool(self.pipeline.waiting())

    def _something_assigned(self) -> bool:
        return self._open() and bool(self.consumer.assignment())

    def _assignable(self) -> list[Any]:
        return [
            partition
            for partition, model in sorted(self.partitions.items())
            if not model.assigned and not model.lost
        ]

    def _something_assignable(self) -> bool:
        return self._open() and bool(self._assignable())

    @precondition(_open)
    @rule(
        partition=st.integers(0, 2),
        keys=st.lists(st.sampled_from([None, b"a", b"b"]), min_size=1, max_size=4),
    )
    def produce_and_fetch(self, partition: int, keys: list[bytes | None]) -> None:
        for key in keys:
            self.consumer.produce(partition % len(self.all_partitions), key=key)
        self.run(self._fetch_and_admit())

    @precondition(_something_waits)
    @rule()
    def finish_oldest(self) -> None:
        """Finish the running message delivered first: work mostly ends in order."""
        call = self._waiting()[0]
        assert call.future is not None
        call.future.set_result(None)

    @precondition(_something_waits)
    @rule(data=st.data())
    def finish_some(self, data: st.DataObject) -> None:
        """Finish one or more running messages (as many end at once under load)."""
        waiting = self._waiting()
        calls = data.draw(
            st.lists(st.sampled_from(waiting), min_size=1, max_size=len(waiting), unique=True),
            label="finish",
        )
        for call in calls:
            assert call.future is not None
            call.future.set_result(None)

    @precondition(_something_waits)
    @rule(
        data=st.data(),
        failure=st.sampled_from(sorted(FAILURES)),
        dead_letter_fails=st.booleans(),
    )
    def fail_one(self, data: st.DataObject, failure: str, dead_letter_fails: bool) -> None:
        call = data.draw(st.sampled_from(self._waiting()), label="fail")
        if dead_letter_fails:
            self.pipeline.dead_letter_failures.append(KafkaConnectionError())
        assert call.future is not None
        call.future.set_result(FAILURES[failure]())

    @precondition(_something_assigned)
    @rule(partition=st.integers(0, 2), finish_during=st.integers(0, 3), back=st.booleans())
    def revoke(self, partition: int, finish_during: int, back: bool) -> None:
        """Revoke a partition, some running messages finishing while the release waits, and
        maybe assign it back at once (the same consumer often gets it again)."""
        assigned = sorted(self.consumer.assignment())
        target = assigned[partition % len(assigned)]
        self._finish_soon(finish_during)
        self.run(self._rebalance(self.consumer.assignment() - {target}))
        # Never left with nothing assigned: the run would have nothing to do.
        if (back or len(assigned) == 1) and target not in self.consumer.assignment():
            self.run(self._rebalance(self.consumer.assignment() | {target}))

    @precondition(_something_assignable)
    @rule(partition=st.integers(0, 2))
    def assign(self, partition: int) -> None:
        assignable = self._assignable()
        target = assignable[partition % len(assignable)]
        self.run(self._rebalance(self.consumer.assignment() | {target}))

    def _may_lose(self) -> bool:
        """Once per run, and not the last assigned partition (the run would have nothing
        left to do)."""
        return (
            self._open()
            and len(self.consumer.assignment()) > 1
            and not any(model.lost for model in self.partitions.values())
        )

    @precondition(_may_lose)
    @rule(partition=st.integers(0, 2))
    def lose(self, partition: int) -> None:
        """A partition taken away without a release (the engine learns it only from the
        assignment): nothing may be committed for it any more. Never assigned here again."""
        assigned = sorted(self.consumer.assignment())
        target = assigned[partition % len(assigned)]
        self.consumer.revoke(target)
        model = self.partitions[target]
        model.assigned, model.lost = False, True
        self.run(self.engine.partitions_assigned(self.lane, set()))

    @precondition(_open)
    @rule(failing=st.integers(0, 2), flush=st.booleans())
    def commit(self, failing: int, flush: bool) -> None:
        """Make the next ``failing`` commit requests fail (whoever sends them: a flush, the
        committer's batch, a release), then flush a commit now or leave it to them."""
        self.consumer.commit_failures.extend(CommitFailedError() for _ in range(failing))
        if flush:
            self.run(self.engine.committer.commit_lane(self.lane))

    @precondition(_open)
    @rule()
    def run_until_idle(self) -> None:
        self.run(self._idle())
        self._check_not_stalled()

    def _finish_soon(self, count: int) -> None:
        """Finish the first ``count`` waiting attempts a moment from now, while a release or
        a shutdown waits for them."""
        for call in self._waiting()[:count]:
            self.loop.call_later(RELEASE_TIMEOUT / 4, _finish_if_waiting, call)

    def _check_not_stalled(self) -> None:
        """With nothing in flight no message will settle, and settling is what starts waiting
        messages and resumes a paused consumer: whatever waits or is paused then, stays so."""
        if self.engine.in_flight:
            return
        lane = self.lane
        if lane.ready or lane.gate.held_count:
            self.violations.append(
                f"stalled: nothing runs, yet {len(lane.ready)} message(s) wait for a slot "
                f"and {lane.gate.held_count} behind their key"
            )
        if lane.fetching.paused:
            self.violations.append(
                f"stalled: nothing runs, yet the consumer stays paused ({self.consumer.paused()})"
            )

    # ---- invariants --------------------------------------------------------------------

    @invariant()
    def nothing_broken(self) -> None:
        assert not self.violations, self.violations

    # ---- the end -----------------------------------------------------------------------

    async def _drain(self) -> None:
        """Let everything admitted end, then close the engine (which commits)."""
        self.consumer.commit_failures.clear()
        self.pipeline.dead_letter_failures.clear()
        self.pipeline.hold = False
        for _ in range(200):
            self.pipeline.release_all()
            await self._idle()
            if not self.engine.in_flight and not self.lane.ready and not self.lane.waiting_retry:
                break
        assert not self.engine.in_flight, "messages still running at the end"
        assert not self.lane.ready, "messages still waiting for a slot at the end"
        await self.engine.close()

    def _check_ended(self, *, drained: bool) -> None:
        """(b) at the end. Drained, every admission of an assigned partition ended once;
        after a shutdown that cancelled some, each ended at most once and the commit point
        stopped at the first that did not."""
        for partition, model in self.partitions.items():
            if not model.assigned:
                continue
            position = self.consumer.position_now(partition)
            for admission in self.admissions.values():
                if admission.partition != partition or admission.generation != model.generation:
                    continue
                skipped = admission.offset in model.known_done and admission.ends == 0
                assert admission.ends == 1 or skipped or not drained, (
                    f"(b) {partition}@{admission.offset} ended {admission.ends} times"
                )
            expected = position if drained else model.first_unended(position)
            # Work this consumer finished in the partition's previous generation and kept
            # through a refused commit is committed after the rejoin (as _check_commit allows).
            restored = model.first_unended_with_before(max(position, expected))
            committed = self.consumer.cluster.committed_offset(partition)
            assert expected <= (committed or 0) <= max(expected, restored), (
                f"(b) {partition} committed {committed}, expected {expected} "
                f"(admitted up to {position - 1})"
            )

    async def _shut_down(self) -> None:
        """Close the engine while messages run: a few finish within its deadline, the rest
        are cancelled."""
        self.consumer.commit_failures.clear()
        self._finish_soon(self.finish_at_shutdown)
        await self.engine.close()

    def teardown(self) -> None:
        try:
            if self.started:
                self.run(self._drain() if self.drain_at_end else self._shut_down())
                assert not self.violations, self.violations
                self._check_ended(drained=self.drain_at_end)
        finally:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.wait(pending))
            self.loop.close()


# ---- what the machine found --------------------------------------------------------------


async def _ordered_lane(
    ordering: Ordering, partitions: int
) -> tuple[Engine, FakeConsumer, FakePipeline, ConsumerLane]:
    """An engine with one global slot, so a second message waits for it."""
    engine = Engine(ConcurrencySettings(concurrency_limit=1, commit_batch_timeout_sec=3600))
    await engine.start()
    consumer = FakeConsumer(assignment=[tp(p) for p in range(partitions)])
    pipeline = FakePipeline(SubscriberSettings(concurrency_limit=2, ordering=ordering))
    return engine, consumer, pipeline, engine.lane_for(consumer, pipeline)


async def _close(engine: Engine, pipeline: FakePipeline) -> None:
    pipeline.hold = False
    pipeline.release_all()
    await engine.close()


@pytest.mark.parametrize("ordering", ["partition", "key"])
async def test_a_dropped_message_waiting_for_a_slot_frees_its_key(ordering: Ordering) -> None:
    engine, consumer, pipeline, lane = await _ordered_lane(ordering, partitions=2)
    consumer.produce(0, key=b"k")
    consumer.produce(1, key=b"k")
    # P0@0 takes the only slot; P1@0 passes the gate (its key is free) and waits for a slot.
    engine.admit(lane, consumer.deliver(tp(0), 0) + consumer.deliver(tp(1), 0))
    await let_run()
    assert [(m.topic_partition.partition, m.offset) for m in lane.ready] == [(1, 0)]

    await engine.release_partitions(lane, {tp(1)}, 0.01)
    consumer.revoke(tp(1))
    consumer.add(tp(1))
    await engine.partitions_assigned(lane, {tp(1)})
    engine.admit(lane, consumer.deliver(tp(1), 0))  # the same record, read again
    await pipeline.release(0, 0)  # the slot is free again
    try:
        await wait_until(lambda: (1, 0) in pipeline.started(), timeout=0.2)
    finally:
        await _close(engine, pipeline)


async def test_a_discarded_successor_frees_its_key() -> None:
    engine, consumer, pipeline, lane = await _ordered_lane("partition", partitions=1)
    consumer.produce(0, 2)
    engine.admit(lane, consumer.deliver(tp(0), 0, 1))  # 1 is held behind 0
    await let_run()
    assert lane.gate.held_count == 1

    consumer.revoke(tp(0))  # lost: no release
    await engine.committer.commit_lane(lane)  # sees it unassigned and retires it
    await pipeline.release(0, 0)  # 1 is handed the key, then discarded
    await let_run()
    consumer.add(tp(0))
    await engine.partitions_assigned(lane, {tp(0)})
    engine.admit(lane, consumer.deliver(tp(0), 0, 1))  # nothing was committed: read again
    try:
        await wait_until(lambda: pipeline.started() == [(0, 0), (0, 0)], timeout=0.2)
        await pipeline.release(0, 0)  # then 1, in partition order
        await wait_until(lambda: pipeline.started() == [(0, 0), (0, 0), (0, 1)], timeout=0.2)
    finally:
        await _close(engine, pipeline)


async def test_a_lane_paused_for_the_budget_resumes_when_a_release_frees_it() -> None:
    engine = Engine(
        ConcurrencySettings(
            concurrency_limit=1, max_uncommitted_tasks=2, commit_batch_timeout_sec=3600
        )
    )
    await engine.start()
    consumer = FakeConsumer(assignment=[tp(0)])
    pipeline = FakePipeline(SubscriberSettings(concurrency_limit=2))
    lane = engine.lane_for(consumer, pipeline)

    async def rebalance(timeout: float) -> None:
        await engine.release_partitions(lane, {tp(0)}, timeout)
        consumer.revoke(tp(0))
        consumer.add(tp(0))  # the same partition back, as eager rebalances often do
        await engine.partitions_assigned(lane, {tp(0)})

    consumer.produce(0, 2)
    engine.admit(lane, consumer.deliver(tp(0), 0))
    await let_run()
    await rebalance(0.01)  # 0 outlives the release and keeps running (the only slot)
    engine.admit(lane, consumer.deliver(tp(0), 0, 1))  # read again: the budget is spent
    assert consumer.paused() == {tp(0)}

    asyncio.get_running_loop().call_later(0.01, pipeline.release_now, 0, 0)
    await rebalance(1.0)  # the old 0 ends while the release waits; 0 and 1 are dropped
    try:
        assert engine.in_flight == 0
        assert lane.offsets.tally.count == 0
        assert consumer.paused() == set()
    finally:
        await _close(engine, pipeline)


EngineMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEngineStateMachine = EngineMachine.TestCase
