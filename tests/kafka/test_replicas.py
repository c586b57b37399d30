"""Replicas of a service in one consumer group, run as real processes, joining and leaving
while messages arrive at a steady rate.

Members over time: A starts; B joins; C joins; B leaves gracefully (SIGTERM); C is killed
(SIGKILL); D joins. Every process writes each message it finished to its own file. A join or
a graceful leave must make no message run twice; only the kill may, and only for messages C
finished after its last commit (their offsets are at or above the offsets committed for
their partitions right after the kill). Nothing is lost, and once the last members stop the
group's commits reach the end of every partition.

``faststream run app --workers 2``: FastStream's own supervisor runs two worker processes;
SIGTERM to the supervisor drains both, and a restart then loses and repeats nothing.

The CI runs shortened versions; ``pytest --long -m long`` runs the acceptance scenario
(12 partitions, 12,000 messages).
"""

import asyncio
import signal
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.kafka_helpers import (
    BOOTSTRAP,
    committed_offsets,
    create_topic,
    end_offsets,
    numbers,
    produce,
    unique,
    wait_committed,
    wait_until,
)
from tests.processes import AppProcess, app_env, read_ids, repeated

pytestmark = pytest.mark.kafka

PARTITIONS = 12


def partition_and_offset(ident: int) -> tuple[int, int]:
    """Where the steady producer put a message: ids go round-robin over an empty topic."""
    return ident % PARTITIONS, ident // PARTITIONS


async def produce_steadily(topic: str, total: int, per_second: float, produced: list[int]) -> None:
    """``total`` ids at a steady rate, in order; ``produced[0]`` counts them as they go."""
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=5, enable_idempotence=True)
    await producer.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        for ident in range(total):
            due = started + ident / per_second
            if due > loop.time():
                await asyncio.sleep(due - loop.time())  # pacing the stream, not waiting on it
            await producer.send(topic, str(ident).encode(), partition=ident % PARTITIONS)
            produced[0] = ident + 1
        await producer.flush()
    finally:
        await producer.stop()


@dataclass
class Fleet:
    topic: str
    group: str
    tmp_path: Path
    members: dict[str, AppProcess] = field(default_factory=dict)

    def output(self, name: str) -> Path:
        return self.tmp_path / f"{name}.txt"

    async def join(self, name: str) -> AppProcess:
        """Start member ``name``; returns once it finished its first message."""
        env = app_env(self.topic, self.group, self.output(name), shutdown_sec=10)
        member = AppProcess("faststream_app", env, self.tmp_path / f"{name}.log")
        self.members[name] = member
        await member.start()
        await wait_until(lambda: bool(read_ids(self.output(name))), timeout=60, interval=0.05)
        return member

    def processed(self) -> dict[str, list[int]]:
        return {name: read_ids(self.output(name)) for name in self.members}

    async def kill_all(self) -> None:
        for member in self.members.values():
            await member.kill()


async def run_fleet(tmp_path: Path, total: int, per_second: float) -> None:
    topic, group = unique("fleet"), unique("fleet-group")
    await create_topic(topic, PARTITIONS)
    fleet = Fleet(topic, group, tmp_path)
    produced = [0]
    producing = asyncio.create_task(produce_steadily(topic, total, per_second, produced))

    def reached(share: float) -> Callable[[], bool]:
        return lambda: produced[0] >= total * share

    try:
        a = await fleet.join("A")
        await wait_until(reached(1 / 7), timeout=120)
        await fleet.join("B")
        await wait_until(reached(2 / 7), timeout=120)
        c = await fleet.join("C")
        await wait_until(reached(3 / 7), timeout=120)
        code = await fleet.members["B"].stop(signal.SIGTERM)
        assert code in (0, -signal.SIGTERM), fleet.members["B"].tail()
        await wait_until(reached(4 / 7), timeout=120)
        await c.kill()
        committed_at_kill = await committed_offsets(group, topic)
        await wait_until(reached(5 / 7), timeout=120)
        d = await fleet.join("D")
        await producing
        await wait_until(
            lambda: {i for ids in fleet.processed().values() for i in ids} >= set(range(total)),
            timeout=120,
        )
        for member in (a, d):
            code = await member.stop(signal.SIGTERM)
            assert code in (0, -signal.SIGTERM), member.tail()
    finally:
        producing.cancel()
        await fleet.kill_all()

    processed = fleet.processed()
    counts = Counter(i for ids in processed.values() for i in ids)
    killed = set(processed["C"])

    def after_last_commit(ident: int) -> bool:
        partition, offset = partition_and_offset(ident)
        return offset >= committed_at_kill.get(partition, 0)

    twice = repeated(counts)
    allowed = [i for i in twice if i in killed and after_last_commit(i) and counts[i] == 2]
    print(
        f"\nfleet of {len(processed)}: "
        + ", ".join(f"{name} {len(ids)}" for name, ids in processed.items())
        + f"; lost {total - len(counts)}, processed twice {len(twice)} "
        f"(all after C's last commit: {len(allowed) == len(twice)})"
    )
    assert set(counts) == set(range(total))
    not_allowed = sorted(set(twice) - set(allowed))
    assert not not_allowed, f"ran twice without a kill to explain it: {not_allowed[:20]}"
    await wait_committed(group, topic, await end_offsets(topic, PARTITIONS))


async def test_replicas_join_and_leave_mid_stream(tmp_path: Path) -> None:
    await run_fleet(tmp_path, total=3600, per_second=150)


@pytest.mark.long
async def test_replicas_join_and_leave_mid_stream_acceptance(tmp_path: Path) -> None:
    """The acceptance scenario: 12 partitions, 12,000 messages at a steady 200 per second."""
    await run_fleet(tmp_path, total=12_000, per_second=200)


async def test_faststream_run_workers_drain_on_sigterm(tmp_path: Path) -> None:
    total = 8000
    topic, group = unique("workers"), unique("workers-group")
    await create_topic(topic, 4)
    await produce(topic, numbers(total), partitions=4)
    output = tmp_path / "processed.txt"
    env = app_env(topic, group, output, handler_sec=0.02, shutdown_sec=10)
    command = [
        *(sys.executable, "-m", "faststream", "run", "tests.apps.cli_app:app"),
        *("--workers", "2", "--log-level", "warning"),
    ]
    first = AppProcess("cli_app", env, tmp_path / "first.log", argv=command)
    second = AppProcess("cli_app", env, tmp_path / "second.log", argv=command)
    try:
        await first.start()
        await wait_until(lambda: len(read_ids(output)) >= total // 4, timeout=60, interval=0.02)
        code = await first.stop(signal.SIGTERM, within=40)
        assert code in (0, -signal.SIGTERM), first.tail()
        first_run = len(read_ids(output))
        assert first_run < total, "the signal came too late to interrupt the stream"
        await second.start()
        await wait_until(lambda: set(read_ids(output)) >= set(range(total)), timeout=60)
        code = await second.stop(signal.SIGTERM, within=40)
        assert code in (0, -signal.SIGTERM), second.tail()
    finally:
        await first.kill()
        await second.kill()

    counts = Counter(read_ids(output))
    print(f"\nfaststream run --workers 2: first run {first_run}, repeated {len(repeated(counts))}")
    assert set(counts) == set(range(total))
    assert not repeated(counts), f"ran twice: {repeated(counts)[:20]}"
    await wait_committed(group, topic, await end_offsets(topic, 4))
