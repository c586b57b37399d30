"""The engine's exactly-once lanes driven without Kafka: a fake consumer, a fake pipeline
whose attempts publish one record each into their message's transaction, and fake
transactional producers over one fake cluster that keeps what each transaction committed
and aborted and which producer of a transactional id is current. On the virtual clock.

What every test checks in the end: the committed output holds each input's record at most
once, and exactly once for every input the group's committed offsets (and metadata) say is
done.
"""

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import errors as kafka_errors

from faststream_concurrent_aiokafka.core import transactions as core_transactions
from faststream_concurrent_aiokafka.core.errors import TransactionalPublishError
from faststream_concurrent_aiokafka.core.failure_policy import FailurePolicy
from faststream_concurrent_aiokafka.core.health import assess
from faststream_concurrent_aiokafka.core.offset_codec import decode_finished_offsets
from faststream_concurrent_aiokafka.core.settings import ConcurrencySettings, SubscriberSettings
from faststream_concurrent_aiokafka.core.transaction_state import (
    InvalidTransitionError,
    TransactionState,
)
from faststream_concurrent_aiokafka.engine import monitor
from faststream_concurrent_aiokafka.engine.engine import Engine
from faststream_concurrent_aiokafka.engine.fetching import fetch_records
from faststream_concurrent_aiokafka.engine.partition_transaction import PartitionTransaction
from faststream_concurrent_aiokafka.engine.state import ConsumerLane
from faststream_concurrent_aiokafka.engine.transactional_send import (
    TransactionalSender,
    current_ticket,
)
from faststream_concurrent_aiokafka.engine.transactions import LaneTransactions
from tests.fakes import (
    Call,
    FakeCluster,
    FakeConsumer,
    FakePipeline,
    FakeProducer,
    let_run,
    tp,
    wait_until,
)

VIRTUAL_CLOCK = True  # see tests/unit/conftest.py

OUT = "out"
DLQ = "dlq"
P0 = tp(0)
P1 = tp(1)


class Boom(Exception):
    """A handler failure the policy retries."""


def published(call: Call) -> list[tuple[str, bytes]]:
    """Each attempt publishes one record naming its input."""
    return [(OUT, b"%d:%d" % call.key)]


@dataclass
class Rig:
    """One engine with one exactly-once lane, a poll loop feeding it from the fake consumer,
    and the cluster its transactions write to."""

    engine: Engine
    cluster: FakeCluster
    consumer: FakeConsumer
    pipeline: FakePipeline
    lane: ConsumerLane
    polling: list["asyncio.Task[None]"] = field(default_factory=list)

    @property
    def transactions(self) -> LaneTransactions:
        assert isinstance(self.lane.strategy, LaneTransactions)
        return self.lane.strategy

    def partition(self, number: int = 0) -> PartitionTransaction:
        return self.transactions.partitions[tp(number)]

    async def assign(self, *partitions: int) -> None:
        """A rebalance gave these partitions: set up until their transactions are ready."""
        assigned = {tp(p) for p in partitions}
        self.consumer.assign(())  # eager: a new assignment starts from the committed offsets
        self.consumer.assign(assigned)
        await self.engine.partitions_assigned(self.lane, assigned)
        await wait_until(lambda: all(self.partition(p).running for p in partitions))

    def start_polling(self) -> None:
        """FastStream's consume loop: fetch what the lane may take, admit it."""

        async def poll() -> None:
            while True:
                size = self.engine.scheduler.fetch_size(self.lane)
                fetched = await fetch_records(self.consumer, size)
                if fetched is not None:
                    self.engine.admit(self.lane, fetched.records)
                await asyncio.sleep(0)

        self.polling.append(asyncio.create_task(poll()))

    async def flush(self) -> bool:
        return await self.engine.committer.commit_lane(self.lane)

    def output(self, topic: str = OUT) -> Counter[bytes]:
        """What a read_committed reader of ``topic`` sees, with how often."""
        return Counter(o.value for o in self.cluster.read_committed(topic) if o.value is not None)

    def committed(self, partition: int = 0) -> int | None:
        return self.cluster.committed_offset(tp(partition))

    def done(self, partition: int = 0) -> set[int]:
        """Offsets the group's commit says are done: below the offset, or in its metadata."""
        meta = self.cluster.committed.get(tp(partition))
        if meta is None:
            return set()
        above = decode_finished_offsets(meta.metadata, meta.offset) if meta.metadata else set()
        return set(range(meta.offset)) | set(above)


MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig() -> AsyncIterator[MakeRig]:
    rigs: list[Rig] = []

    async def make(
        *,
        cluster: FakeCluster | None = None,
        partitions: tuple[int, ...] = (0,),
        produce: int = 0,
        hold: bool = False,
        publish_first: bool = False,
        concurrency_limit: int = 10,
        commit_batch_size: int = 1000,
        transaction_timeout_sec: float = 60.0,
        **lane_settings: Any,
    ) -> Rig:
        cluster = cluster or FakeCluster()
        engine = Engine(
            ConcurrencySettings(
                concurrency_limit=concurrency_limit,
                commit_batch_size=commit_batch_size,
                commit_batch_timeout_sec=20.0,
                shutdown_timeout_sec=0.5,
                processing_guarantee="exactly_once",
                transaction_timeout_sec=transaction_timeout_sec,
            )
        )
        await engine.start()
        consumer = FakeConsumer(cluster)
        lane_settings.setdefault("retry_backoff_sec", 0.001)
        lane_settings.setdefault("retry_backoff_max_sec", 0.002)
        pipeline = FakePipeline(
            SubscriberSettings(
                concurrency_limit=concurrency_limit,
                processing_guarantee="exactly_once",
                transactional_id_prefix="t.",
                transaction_timeout_sec=transaction_timeout_sec,
                **lane_settings,
            ),
            FailurePolicy(),
            hold=hold,
            cluster=cluster,
            publish=published,
            publish_first=publish_first,
        )
        for p in partitions:
            if produce:
                consumer.produce(p, produce)
        rig = Rig(engine, cluster, consumer, pipeline, engine.lane_for(consumer, pipeline))
        rigs.append(rig)
        await rig.assign(*partitions)
        rig.start_polling()
        return rig

    yield make
    for rig in rigs:
        rig.pipeline.hold = False
        rig.pipeline.release_all()
        for task in rig.polling:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    for rig in rigs:
        await rig.engine.close()


def inputs(partition: int, count: int) -> set[bytes]:
    return {b"%d:%d" % (partition, offset) for offset in range(count)}


# ---- set-up -----------------------------------------------------------------------------


async def test_each_assigned_partition_gets_its_own_transactional_producer(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(partitions=(0, 1))
    ids = sorted(p.transactional_id for p in rig.pipeline.producers)
    assert ids == ["t.fake-group:t:0", "t.fake-group:t:1"]
    assert all(p.timeout_ms == 60_000 for p in rig.pipeline.producers)


async def test_starting_a_partition_s_producer_aborts_the_previous_owner_s_transaction(
    make_rig: MakeRig,
) -> None:
    cluster = FakeCluster()
    zombie = FakeProducer(cluster, "t.fake-group:t:0", 60_000)
    await zombie.start()
    await zombie.begin_transaction()
    await zombie.send(OUT, b"half-done")
    await make_rig(cluster=cluster)
    assert [o.value for o in cluster.aborted_output] == [b"half-done"]
    assert zombie.fenced


async def test_reading_resumes_at_the_committed_offset_and_skips_what_was_finished(
    make_rig: MakeRig,
) -> None:
    cluster = FakeCluster()
    first = await make_rig(cluster=cluster, produce=10, hold=True)
    await wait_until(lambda: len(first.pipeline.waiting()) == 10)
    for offset in range(3, 10):
        await first.pipeline.release(0, offset)
    await wait_until(lambda: len(first.pipeline.finished()) == 7)
    assert await first.flush()
    assert first.committed() == 0
    assert first.done() == set(range(3, 10))
    await first.engine.close()  # the first member is gone; offsets 0-2 never finished

    second = await make_rig(cluster=cluster)
    await wait_until(lambda: len(second.pipeline.finished()) == 3)
    assert await second.flush()
    assert sorted(second.pipeline.finished()) == [(0, 0), (0, 1), (0, 2)]
    assert second.output() == Counter(inputs(0, 10))
    assert second.engine.counters.skipped == 7


# ---- commits ----------------------------------------------------------------------------


async def test_output_and_offsets_are_committed_together_and_invisible_before(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(produce=20)
    await wait_until(lambda: len(rig.pipeline.finished()) == 20)
    assert rig.output() == Counter()  # finished, but nothing committed yet
    assert rig.committed() is None
    assert await rig.flush()
    assert rig.output() == Counter(inputs(0, 20))
    assert rig.committed() == 20
    assert rig.cluster.transactions == [("t.fake-group:t:0", "commit")]
    assert rig.engine.counters.transactions_committed == 1


async def test_a_commit_waits_for_the_messages_that_published_into_its_transaction(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(produce=3, hold=True, publish_first=True)
    await wait_until(lambda: len(rig.pipeline.waiting()) == 3)  # all three published
    await rig.pipeline.release(0, 0)
    flushing = asyncio.create_task(rig.flush())
    await let_run()
    assert not flushing.done()  # 1 and 2 published into the transaction and still run
    assert rig.partition().state is TransactionState.COMMITTING
    await rig.pipeline.release(0, 1)
    await rig.pipeline.release(0, 2)
    assert await flushing
    assert rig.output() == Counter(inputs(0, 3))
    assert rig.committed() == 3


async def test_while_a_commit_waits_new_messages_publish_into_the_next_transaction(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(produce=1, hold=True, publish_first=True)
    await wait_until(lambda: len(rig.pipeline.waiting()) == 1)
    flushing = asyncio.create_task(rig.flush())
    await let_run()
    rig.consumer.produce(0, 1)  # offset 1 arrives while the commit waits for offset 0
    await let_run()
    (late,) = [c for c in rig.pipeline.calls if c.key == (0, 1)]
    assert late.outcome == "running" and not late.waiting  # held at the gate: not published
    await rig.pipeline.release(0, 0)
    assert await flushing
    assert rig.output() == Counter({b"0:0": 1})  # offset 1's record is not in that commit
    await rig.pipeline.release(0, 1)
    assert await rig.flush()
    assert rig.output() == Counter(inputs(0, 2))
    assert len(rig.cluster.transactions) == 2


async def test_commits_come_on_the_commit_interval_per_partition(make_rig: MakeRig) -> None:
    rig = await make_rig(partitions=(0, 1), commit_batch_size=5)
    rig.consumer.produce(0, 5)
    rig.consumer.produce(1, 2)
    await wait_until(lambda: rig.committed(0) == 5)
    assert rig.committed(1) is None  # 2 finished there: below the batch size
    await wait_until(lambda: rig.committed(1) == 2, timeout=25.0)  # commit_batch_timeout_sec
    assert rig.output() == Counter(inputs(0, 5) | inputs(1, 2))


async def test_a_transaction_commits_on_its_count_once_its_last_commit_paid_off(
    make_rig: MakeRig,
) -> None:
    """A commit that kept the gate closed 1 s: the next transaction commits on its count only
    after 9 s of open gate (``OPEN_PER_CLOSED``), still before the 20 s interval."""
    rig = await make_rig(commit_batch_size=5)
    loop = asyncio.get_running_loop()
    (producer,) = rig.pipeline.producers
    producer.commit_gate = asyncio.Event()
    rig.consumer.produce(0, 5)
    await wait_until(lambda: producer.state == "committing")
    await asyncio.sleep(1.0)
    producer.commit_gate.set()
    producer.commit_gate = None
    await wait_until(lambda: rig.committed() == 5)
    reopened = loop.time()
    rig.consumer.produce(0, 5)
    await wait_until(lambda: len(rig.pipeline.finished()) == 10)
    await let_run()
    assert rig.committed() == 5  # five more finished, but the 1 s commit has not paid off
    await wait_until(lambda: rig.committed() == 10, timeout=15.0)
    assert 9.0 <= loop.time() - reopened < 10.0  # the count's commit, not the interval's
    assert rig.output() == Counter(inputs(0, 10))
    assert rig.cluster.transactions == [("t.fake-group:t:0", "commit")] * 2


# ---- aborts -----------------------------------------------------------------------------


async def test_a_message_that_published_and_runs_past_the_hold_deadline_aborts_it(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(produce=4, hold=True, publish_first=True, transaction_timeout_sec=40.0)
    await wait_until(lambda: len(rig.pipeline.waiting()) == 4)
    for offset in (1, 2, 3):
        await rig.pipeline.release(0, offset)
    started = asyncio.get_running_loop().time()
    assert not await rig.flush()  # waits 20 s (half the transaction timeout), then aborts
    assert asyncio.get_running_loop().time() - started == pytest.approx(20.0, abs=0.1)
    assert rig.output() == Counter()
    assert Counter(o.value for o in rig.cluster.aborted_output) == Counter(inputs(0, 4))
    assert rig.engine.counters.transactions_aborted == 1
    # Every message of the partition runs again from the last commit, in a new transaction;
    # the slow one goes on (it is not cancelled), and can no longer publish or be committed.
    await wait_until(lambda: len(rig.pipeline.waiting()) == 5)
    rig.pipeline.release_all()
    await wait_until(lambda: len(rig.pipeline.finished()) == 8)
    assert await rig.flush()
    assert rig.output() == Counter(inputs(0, 4))


async def test_a_commit_after_an_abort_keeps_the_offsets_finished_before_it(
    make_rig: MakeRig,
) -> None:
    """Offsets 1 and 2 were committed as finished above 0; an abort reads the partition again
    from 0, and a commit made when only 0 came back (and finished) must not forget them: the
    group's offset moves to 3, not to 1."""
    rig = await make_rig(produce=3, hold=True)
    await wait_until(lambda: len(rig.pipeline.waiting()) == 3)
    await rig.pipeline.release(0, 1)
    await rig.pipeline.release(0, 2)
    await wait_until(lambda: len(rig.pipeline.finished()) == 2)
    assert await rig.flush()
    assert (rig.committed(), rig.done()) == (0, {1, 2})
    for task in rig.polling:  # the records come back by hand from here on
        task.cancel()
    (old,) = rig.pipeline.waiting()
    rig.partition().request_abort("a test")
    await wait_until(lambda: rig.engine.counters.transactions_aborted == 1)
    assert old.future is not None
    old.future.set_result(None)  # the old delivery of 0 ends: nothing of it counts
    rig.engine.admit(rig.lane, rig.consumer.deliver(P0, 0))
    await rig.pipeline.release(0, 0)
    await wait_until(lambda: rig.engine.in_flight == 0)
    assert await rig.flush()
    assert (rig.committed(), rig.done()) == (3, {0, 1, 2})
    assert rig.output() == Counter(inputs(0, 3))


async def test_many_finished_offsets_are_encoded_in_a_worker_thread(
    make_rig: MakeRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 offsets finished above a running one: the commit's metadata is encoded off the
    event loop (``ENCODE_INLINE_MAX``), and committed whole."""
    encoded: list[int] = []

    async def in_thread(func: Callable[..., Any], *args: Any) -> Any:
        encoded.append(len(args[1]))
        return func(*args)

    monkeypatch.setattr(asyncio, "to_thread", in_thread)
    rig = await make_rig(produce=301, hold=True, concurrency_limit=400)
    await wait_until(lambda: len(rig.pipeline.waiting()) == 301)
    for offset in range(1, 301):
        rig.pipeline.release_now(0, offset)
    await wait_until(lambda: len(rig.pipeline.finished()) == 300)
    assert await rig.flush()
    assert encoded == [300]
    assert (rig.committed(), rig.done()) == (0, set(range(1, 301)))


async def test_a_failure_after_publishing_aborts_and_the_retry_publishes_once(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(produce=6, hold=True, max_retries=2)
    await wait_until(lambda: len(rig.pipeline.waiting()) == 6)
    for offset in (0, 1, 2, 4, 5):
        await rig.pipeline.release(0, offset)
    await rig.pipeline.release(0, 3, Boom("after its publish"))
    await wait_until(lambda: rig.engine.counters.transactions_aborted == 1)
    # Offset 3 runs again (its second attempt), and every other one too: their records
    # were in the aborted transaction.
    await wait_until(lambda: len(rig.pipeline.waiting()) == 6)
    assert rig.pipeline.attempts(0, 3) == 2
    assert rig.engine.counters.retries == 1  # its second attempt, counted across the abort
    rig.pipeline.release_all()
    await wait_until(lambda: rig.engine.in_flight == 0)
    assert await rig.flush()
    assert rig.output() == Counter(inputs(0, 6))
    assert rig.committed() == 6


async def test_a_failure_before_publishing_is_retried_in_place_without_an_abort(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(produce=3, max_retries=1)
    rig.pipeline.publish = lambda call: [] if call.attempt == 1 else published(call)
    rig.pipeline.fail(0, 1, Boom("before publishing"))
    rig.consumer.produce(0, 1)  # nudge: already running ones continue
    await wait_until(lambda: len(rig.pipeline.finished()) == 4)
    assert await rig.flush()
    assert rig.engine.counters.transactions_aborted == 0
    assert rig.pipeline.attempts(0, 1) == 2


async def test_a_record_not_written_loses_its_partition_even_when_the_handler_went_on(
    make_rig: MakeRig,
) -> None:
    # aiokafka commits a transaction without a record that failed, and its producer's next
    # batch to that partition fails out of sequence: the transaction must not commit, and the
    # producer must go (a new one starts with the next assignment).
    rig = await make_rig(produce=3, hold=True)
    rig.pipeline.ignore_publish_errors = True
    await wait_until(lambda: len(rig.pipeline.waiting()) == 3)
    rig.pipeline.producers[0].record_failures.append(kafka_errors.KafkaTimeoutError())
    rig.pipeline.release_all()
    rig.pipeline.hold = False
    await wait_until(lambda: rig.partition().state is TransactionState.LOST)
    assert rig.cluster.transactions == []  # nothing committed
    assert rig.consumer._coordinator.rejoins == 1
    await rig.engine.release_partitions(rig.lane, {P0}, 1.0)  # the rebalance it asked for
    await rig.assign(0)  # a new producer, the messages again
    await wait_until(lambda: len(rig.pipeline.finished()) == 6)
    assert await rig.flush()
    assert rig.output() == Counter(inputs(0, 3))  # each once: none lost with the failed one


async def test_records_without_a_key_go_to_one_partition_per_transaction_in_turn(
    make_rig: MakeRig,
) -> None:
    cluster = FakeCluster()
    cluster.output_partitions[OUT] = {0, 1, 2, 3}
    rig = await make_rig(cluster=cluster, produce=10)
    await wait_until(lambda: len(rig.pipeline.finished()) == 10)
    assert await rig.flush()
    rig.consumer.produce(0, 10)
    await wait_until(lambda: len(rig.pipeline.finished()) == 20)
    assert await rig.flush()
    partitions = [o.partition for o in cluster.read_committed(OUT)]
    # The first transaction of input partition 0 is its second one begun (set-up begins one).
    assert partitions == [1] * 10 + [2] * 10


async def test_a_final_failure_after_publishing_is_dead_lettered_in_the_next_transaction(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(produce=3, dead_letter_topic=DLQ)
    rig.pipeline.fail(0, 1, Boom("no retries"))
    rig.consumer.produce(0, 0)
    await wait_until(lambda: rig.engine.counters.dead_lettered == 1)
    await wait_until(lambda: rig.engine.in_flight == 0)
    assert await rig.flush()
    # Its failed attempt's record was aborted; it did not run again, its dead letter and the
    # others' records were committed once.
    assert rig.pipeline.attempts(0, 1) == 1
    assert rig.output() == Counter({b"0:0": 1, b"0:2": 1})
    assert rig.output(DLQ) == Counter({b"v1": 1})
    assert b"0:1" in {o.value for o in rig.cluster.aborted_output}
    assert rig.done() == {0, 1, 2}


async def test_a_failure_after_publishing_counts_as_a_failure_never_as_a_success(
    make_rig: MakeRig,
) -> None:
    """An attempt that fails after it published ends with its transaction's abort and runs
    again: that run is neither a processed message nor a success for the brake's count of
    failures in a row (which trips after two here)."""
    rig = await make_rig(produce=4, hold=False, dead_letter_topic=DLQ, max_consecutive_failures=2)
    for offset in range(4):
        rig.pipeline.fail(0, offset, Boom("always"))
    rig.consumer.produce(0, 0)
    await wait_until(lambda: rig.lane.brake.tripped)
    assert rig.engine.counters.dead_lettered == 2
    assert rig.engine.counters.processed == rig.engine.counters.failed


async def test_a_failing_dead_letter_aborts_and_is_tried_again_until_it_goes_through(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(produce=2, dead_letter_topic=DLQ)
    rig.pipeline.publish = lambda _call: []
    rig.pipeline.fail(0, 0, Boom("bad"))
    rig.pipeline.dead_letter_failures.extend([Boom("dlq down"), Boom("dlq down")])
    rig.consumer.produce(0, 0)
    await wait_until(lambda: rig.engine.counters.dead_lettered == 1)
    await wait_until(lambda: rig.engine.in_flight == 0)
    assert await rig.flush()
    assert rig.engine.counters.transactions_aborted == 2
    assert rig.pipeline.attempts(0, 0) == 1  # the handler ran once; the dead letter three times
    assert len(rig.pipeline.dead_letters) == 3
    assert rig.output(DLQ) == Counter({b"v0": 1})
    assert rig.committed() == 2


async def test_a_publish_after_its_message_ended_is_refused(make_rig: MakeRig) -> None:
    rig = await make_rig()
    errors: list[BaseException] = []
    spawned: list[asyncio.Task[None]] = []

    async def late(sender: TransactionalSender) -> None:
        await wait_until(lambda: rig.engine.in_flight == 0)  # its message ended
        try:
            await sender.send(OUT, b"late")
        except TransactionalPublishError as exc:
            errors.append(exc)

    def start(_call: Call) -> None:
        ticket = current_ticket()
        assert ticket is not None
        spawned.append(asyncio.ensure_future(late(TransactionalSender(ticket))))

    rig.pipeline.on_start = start
    rig.consumer.produce(0, 1)
    await wait_until(lambda: bool(errors))
    assert "ended before this publish" in str(errors[0])
    assert await rig.flush()
    assert rig.output() == Counter({b"0:0": 1})


# ---- the admission span -------------------------------------------------------------------


async def test_admission_holds_a_partition_at_the_span_end_and_resumes_it(
    make_rig: MakeRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core_transactions, "MAX_SPAN", 8)
    rig = await make_rig(hold=True, concurrency_limit=20)
    rig.consumer.produce(0, 12)
    await wait_until(lambda: len(rig.pipeline.waiting()) == 8)
    await let_run(50)
    assert sorted(c.key[1] for c in rig.pipeline.waiting()) == list(range(8))
    assert P0 in rig.consumer.paused()
    assert rig.consumer.position_now(P0) == 8  # moved back to the first one not admitted
    for offset in range(1, 8):
        await rig.pipeline.release(0, offset)
    assert P0 in rig.consumer.paused()  # offset 0 still holds the commit point
    await rig.pipeline.release(0, 0)
    await wait_until(lambda: len(rig.pipeline.waiting()) == 4)
    rig.pipeline.release_all()
    await wait_until(lambda: rig.engine.in_flight == 0)
    assert await rig.flush()
    assert rig.output() == Counter(inputs(0, 12))


# ---- fencing, release, stop -----------------------------------------------------------------


async def test_a_fenced_partition_drops_its_work_and_asks_for_a_new_assignment(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(produce=3)
    await wait_until(lambda: len(rig.pipeline.finished()) == 3)
    # Another member took the partition over: its producer with the same id started.
    newer = FakeProducer(rig.cluster, "t.fake-group:t:0", 60_000)
    await newer.start()
    assert not await rig.flush()
    assert rig.output() == Counter()
    assert rig.engine.counters.producers_fenced == 1
    assert rig.consumer._coordinator.rejoins == 1
    assert P0 in rig.consumer.paused()
    report = assess(monitor.current_faults(rig.engine))
    assert report.status == "degraded"
    assert "fenced" in report.reasons[0]
    # The rebalance that follows gives it back: set up again, from the committed offset.
    await rig.engine.release_partitions(rig.lane, {P0}, 1.0)
    await rig.assign(0)
    await wait_until(lambda: len(rig.pipeline.finished()) == 6)
    assert await rig.flush()
    assert rig.output() == Counter(inputs(0, 3))
    assert assess(monitor.current_faults(rig.engine)).status == "ok"


async def test_a_fenced_partition_that_cannot_ask_for_a_rebalance_says_so(
    make_rig: MakeRig, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = await make_rig(produce=1)
    await wait_until(lambda: len(rig.pipeline.finished()) == 1)

    def unavailable() -> None:
        raise AttributeError("no coordinator here")

    monkeypatch.setattr(rig.consumer._coordinator, "request_rejoin", unavailable)
    newer = FakeProducer(rig.cluster, "t.fake-group:t:0", 60_000)
    await newer.start()
    assert not await rig.flush()
    assert rig.engine.counters.producers_fenced == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("t[0] of fake-pipeline waits for the next rebalance" in line for line in warnings)


async def test_a_release_commits_finished_work_and_closes_the_producer(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(produce=5)
    await wait_until(lambda: len(rig.pipeline.finished()) == 5)
    producer = rig.pipeline.producers[0]
    await rig.engine.release_partitions(rig.lane, {P0}, 1.0)
    assert rig.output() == Counter(inputs(0, 5))
    assert rig.committed() == 5
    assert producer.state == "closed"
    assert P0 not in rig.transactions.partitions


async def test_a_release_during_a_background_commit_ends_cleanly(
    make_rig: MakeRig, caplog: pytest.LogCaptureFixture
) -> None:
    """The release finds the transaction just committed (no new one began while releasing):
    nothing more to commit, no abort of a transaction that is not there, no lost partition."""
    rig = await make_rig(produce=5, commit_batch_size=5)
    (producer,) = rig.pipeline.producers
    producer.commit_gate = asyncio.Event()
    await wait_until(lambda: producer.state == "committing")
    releasing = asyncio.create_task(rig.engine.release_partitions(rig.lane, {P0}, 1.0))
    await let_run()
    producer.commit_gate.set()
    await releasing
    assert rig.output() == Counter(inputs(0, 5))
    assert rig.committed() == 5
    assert rig.cluster.transactions == [("t.fake-group:t:0", "commit")]
    assert rig.engine.counters.transactions_aborted == 0
    assert not [r for r in caplog.records if r.levelname in {"WARNING", "ERROR"}]
    assert producer.state == "closed"


async def test_a_release_aborts_when_a_message_that_published_still_runs(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(produce=3, hold=True, publish_first=True)
    await wait_until(lambda: len(rig.pipeline.waiting()) == 3)
    await rig.pipeline.release(0, 0)
    await rig.pipeline.release(0, 2)
    await rig.engine.release_partitions(rig.lane, {P0}, 0.5)
    assert rig.output() == Counter()
    assert rig.committed() is None
    assert rig.engine.counters.transactions_aborted == 1
    # Still running, as in an at-least-once lane; when it ends nothing of it is committed.
    (late,) = [c for c in rig.pipeline.calls if c.key == (0, 1)]
    assert late.outcome == "running"
    await rig.pipeline.release(0, 1)
    await wait_until(lambda: rig.engine.in_flight == 0)
    assert rig.output() == Counter()
    assert rig.committed() is None


async def test_a_stop_commits_what_finished(make_rig: MakeRig) -> None:
    rig = await make_rig(produce=4)
    await wait_until(lambda: len(rig.pipeline.finished()) == 4)
    await rig.engine.close()
    assert rig.output() == Counter(inputs(0, 4))
    assert rig.committed() == 4


async def test_the_snapshot_counts_transactions(make_rig: MakeRig) -> None:
    rig = await make_rig(produce=2)
    await wait_until(lambda: len(rig.pipeline.finished()) == 2)
    assert await rig.flush()
    totals = monitor.snapshot(rig.engine).totals
    assert (totals.transactions_committed, totals.transactions_aborted) == (1, 0)
    assert totals.producers_fenced == 0


async def test_a_producer_that_does_not_start_leaves_its_partition_held_and_degraded(
    make_rig: MakeRig,
) -> None:
    cluster = FakeCluster()
    failing = kafka_errors.KafkaConnectionError("broker away")
    rig_holder: list[FakeProducer] = []

    def fail_first(producer: FakeProducer) -> None:
        if not rig_holder:
            producer.start_failures.append(failing)
        rig_holder.append(producer)

    engine = Engine(
        ConcurrencySettings(processing_guarantee="exactly_once", commit_batch_timeout_sec=20.0)
    )
    await engine.start()
    try:
        consumer = FakeConsumer(cluster, [P0])
        pipeline = FakePipeline(
            SubscriberSettings(processing_guarantee="exactly_once"),
            cluster=cluster,
            on_producer=fail_first,
        )
        lane = engine.lane_for(consumer, pipeline)
        await engine.partitions_assigned(lane, {P0})
        await wait_until(lambda: consumer._coordinator.rejoins == 1)
        assert P0 in consumer.paused()
        assert assess(monitor.current_faults(engine)).status == "degraded"
    finally:
        await engine.close()


async def test_an_assignment_that_arrives_while_the_lane_stops_sets_nothing_up(
    make_rig: MakeRig,
) -> None:
    """A rejoin can complete after the stop drained the lane: no producer may start then
    (none would be closed)."""
    rig = await make_rig()
    await rig.engine.drain([rig.lane], 0.5)
    made = len(rig.pipeline.producers)
    await rig.engine.partitions_assigned(rig.lane, {P0, P1})
    await let_run()
    assert len(rig.pipeline.producers) == made
    assert rig.transactions.partitions == {}


async def test_publishers_waiting_at_the_gate_are_let_go_when_the_transaction_ends(
    make_rig: MakeRig,
) -> None:
    """A message held at the gate while a commit waits, when the partition is lost instead:
    its publish is refused at once, it does not wait for ever."""
    rig = await make_rig(produce=1, hold=True, publish_first=True)
    await wait_until(lambda: len(rig.pipeline.waiting()) == 1)
    flushing = asyncio.create_task(rig.flush())
    await let_run()
    rig.consumer.produce(0, 1)  # offset 1 arrives and waits at the closed gate
    await let_run()
    (late,) = [c for c in rig.pipeline.calls if c.key == (0, 1)]
    assert late.outcome == "running" and not late.waiting
    newer = FakeProducer(rig.cluster, "t.fake-group:t:0", 60_000)
    await newer.start()  # fenced: the commit that waits for offset 0 will fail
    await rig.pipeline.release(0, 0)
    assert not await flushing
    await wait_until(lambda: late.outcome != "running")
    assert isinstance(late.error, TransactionalPublishError)
    assert rig.output() == Counter()


async def test_a_released_partition_refuses_to_open_again(make_rig: MakeRig) -> None:
    rig = await make_rig(produce=1)
    partition = rig.partition()
    assert partition.running
    await rig.engine.release_partitions(rig.lane, {P0}, timeout=1)
    assert partition.state is TransactionState.CLOSED
    with pytest.raises(InvalidTransitionError, match="cannot move from closed to open"):
        partition._move(TransactionState.OPEN)


async def test_aborts_in_a_row_back_off_and_degrade_health_until_a_commit(
    make_rig: MakeRig,
) -> None:
    """Issue 26: a partition whose transactions keep aborting reads its messages again after
    a growing backoff (from the second abort in a row), and health reports it degraded from
    ``ABORTS_DEGRADED`` on; a commit ends both."""
    rig = await make_rig(produce=2, retry_backoff_sec=1.0, retry_backoff_max_sec=2.0)
    await wait_until(lambda: len(rig.pipeline.finished()) == 2)
    partition = rig.partition()

    def aborted(times: int) -> Callable[[], bool]:
        return lambda: rig.engine.counters.transactions_aborted == times

    for count in range(1, core_transactions.ABORTS_DEGRADED + 1):
        partition.request_abort(f"abort {count}")
        await wait_until(aborted(count))
        assert (P0 in rig.lane.fetching.pinned) == (count >= 2)  # backing off
        await wait_until(lambda: P0 not in rig.lane.fetching.pinned)
    report = assess(monitor.current_faults(rig.engine))
    assert report.status == "degraded"
    assert any(
        "5 transactions in a row aborted without a commit (last: abort 5)" in reason
        for reason in report.reasons
    )
    await wait_until(lambda: rig.lane.offsets.trackers[P0].commit_point == 2)
    assert await rig.flush()
    assert assess(monitor.current_faults(rig.engine)).status == "ok"


async def test_a_key_function_that_raises_dead_letters_in_the_transaction(
    make_rig: MakeRig,
) -> None:
    """ordering=function under exactly-once: the record whose function raised publishes
    nothing of its own, its dead letter is committed with the others' output, and the
    records keyed by the function run and commit as in "key" mode."""

    def odd_fails(record: Any) -> Any:
        if record.offset == 1:
            raise KeyError("account")
        return record.offset % 2

    rig = await make_rig(produce=4, dead_letter_topic=DLQ, ordering=odd_fails)
    rig.consumer.produce(0, 0)
    await wait_until(lambda: rig.engine.counters.dead_lettered == 1)
    await wait_until(lambda: rig.engine.in_flight == 0)
    assert await rig.flush()

    assert rig.pipeline.attempts(0, 1) == 0
    assert rig.output() == Counter({b"0:0": 1, b"0:2": 1, b"0:3": 1})
    assert rig.output(DLQ) == Counter({b"v1": 1})
    assert rig.done() == {0, 1, 2, 3}


@pytest.mark.parametrize("dead_letter_topic", [DLQ, None])
@pytest.mark.parametrize("fetches", ["one fetch", "separate fetches"])
async def test_messages_that_always_fail_after_publishing_cannot_undo_each_other_for_ever(
    make_rig: MakeRig, dead_letter_topic: str | None, fetches: str
) -> None:
    """Two messages of a partition fail after publishing on every attempt, and each runs
    while the other's dead letter (or giving up) sits in the open transaction: an abort one of
    them causes is not the other's attempt, so the other resumes from its own record (its dead
    letter, never a fresh first attempt), and the partition gets past both."""
    separate = fetches == "separate fetches"
    rig = await make_rig(
        produce=1 if separate else 2, hold=True, dead_letter_topic=dead_letter_topic
    )
    if separate:
        await rig.pipeline.release(0, 0, Boom("always, after its publish"))
        rig.consumer.produce(0, 1)
    else:
        await wait_until(lambda: len(rig.pipeline.waiting()) == 2)

    def passed_both() -> bool:
        tracker = rig.lane.offsets.trackers.get(P0)
        return tracker is not None and tracker.commit_point == 2

    # Each round fails whatever attempt waits: the scheduler decides which message runs
    # fresh while the other resumes; the old engine alternated between them for ever.
    rounds = 0
    while not passed_both():
        rounds += 1
        assert rounds <= 8, f"no progress: {rig.engine.counters.transactions_aborted} aborts"
        await wait_until(lambda: bool(rig.pipeline.waiting()) or passed_both())
        for call in rig.pipeline.waiting():
            assert call.future is not None
            call.future.set_result(Boom("always, after its publish"))
        await let_run()
    assert await rig.flush()
    assert rig.committed() == 2
    assert rig.engine.counters.transactions_aborted == (2 if separate else 1)
    assert rig.output() == Counter()  # every attempt's record was aborted
    if dead_letter_topic is not None:
        assert rig.output(DLQ) == Counter({b"v0": 1, b"v1": 1})
    # No retries: the handler never ran again for a message that had a final record; offset
    # 1 read in its own fetch also ran once in the transaction 0's failure aborted (not its
    # attempt: it ran again as a first one).
    assert rig.pipeline.attempts(0, 0) == 1
    assert rig.pipeline.attempts(0, 1) == (2 if separate else 1)
