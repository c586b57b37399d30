"""Static membership (KIP-345, ``group_instance_id``) as a rolling restart does it: three
members, 12 partitions, a steady stream; member 2 is stopped (SIGTERM) and started again with
the same instance id within the session timeout. The other two members' rebalance listeners
are not called (their assignments do not change), member 2 gets its own partitions back,
and no message is lost or processed twice.

Why it holds: aiokafka sends no LeaveGroup for a member with a ``group_instance_id`` (see
``GroupCoordinator.maybe_leave_group``), so the broker keeps the member's partitions for it
until its session times out; the library's stop drains and commits what the member finished
(its final commit), and the restarted member reads on from there.

CI runs a shorter stream; ``pytest --long -m long`` runs the acceptance scenario (200 msg/s
for a minute).
"""

import asyncio
import signal
from collections import Counter
from pathlib import Path

import pytest

from tests.kafka.test_replicas import PARTITIONS, produce_steadily
from tests.kafka_helpers import create_topic, end_offsets, unique, wait_committed, wait_until
from tests.processes import AppProcess, app_env, read_ids, repeated

pytestmark = pytest.mark.kafka

SESSION_MS = 30_000
NAMES = ("member-1", "member-2", "member-3")


def events(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def last_assignment(path: Path) -> set[int] | None:
    assigned = [line for line in events(path) if line.startswith("assigned")]
    if not assigned:
        return None
    numbers = assigned[-1].removeprefix("assigned").strip()
    return {int(n) for n in numbers.split(",") if n}


class StaticGroup:
    def __init__(self, tmp_path: Path, topic: str, group: str) -> None:
        self.tmp_path, self.topic, self.group = tmp_path, topic, group
        self.members: dict[str, AppProcess] = {}

    def output(self, name: str) -> Path:
        return self.tmp_path / f"{name}.txt"

    def events_of(self, name: str) -> Path:
        return self.tmp_path / f"{name}.events"

    async def start(self, name: str) -> AppProcess:
        env = app_env(self.topic, self.group, self.output(name), shutdown_sec=10)
        env |= {
            "FCA_APP_INSTANCE_ID": name,
            "FCA_APP_SESSION_MS": str(SESSION_MS),
            "FCA_APP_EVENTS": str(self.events_of(name)),
        }
        member = AppProcess("static_member_app", env, self.tmp_path / f"{name}.log")
        self.members[name] = member
        await member.start()
        return member

    def stable(self) -> bool:
        """Every member's last assignment is a third of the partitions, together all."""
        assignments = [last_assignment(self.events_of(name)) for name in NAMES]
        if any(a is None or len(a) != PARTITIONS // 3 for a in assignments):
            return False
        return set().union(*(a for a in assignments if a)) == set(range(PARTITIONS))

    async def stop_all(self) -> None:
        for member in self.members.values():
            if member.running:
                code = await member.stop(signal.SIGTERM)
                assert code in (0, -signal.SIGTERM), member.tail()

    async def kill_all(self) -> None:
        for member in self.members.values():
            await member.kill()


async def restart_one_of_three(
    tmp_path: Path, total: int, per_second: float, restarted: str = "member-2"
) -> None:
    """``restarted`` is stopped and started again; member-1 joins first, alone, so it is
    the group's leader (it stays leader while it does not leave)."""
    topic, group = unique("static"), unique("static-group")
    await create_topic(topic, PARTITIONS)
    fleet = StaticGroup(tmp_path, topic, group)
    produced = [0]
    producing: asyncio.Task[None] | None = None
    loop = asyncio.get_running_loop()
    try:
        await fleet.start("member-1")
        await wait_until(lambda: last_assignment(fleet.events_of("member-1")) is not None)
        for name in NAMES[1:]:
            await fleet.start(name)
        await wait_until(fleet.stable, timeout=90, interval=0.1)
        before = {name: events(fleet.events_of(name)) for name in NAMES}
        own = last_assignment(fleet.events_of(restarted))
        others = [name for name in NAMES if name != restarted]
        producing = asyncio.create_task(produce_steadily(topic, total, per_second, produced))
        await wait_until(lambda: produced[0] >= total // 3, timeout=120)

        stopped_at = loop.time()
        code = await fleet.members[restarted].stop(signal.SIGTERM)
        assert code in (0, -signal.SIGTERM), fleet.members[restarted].tail()
        await fleet.start(restarted)
        await wait_until(
            lambda: any(
                line.startswith("assigned")
                for line in events(fleet.events_of(restarted))[len(before[restarted]) :]
            ),
            timeout=SESSION_MS / 1000,
            interval=0.05,
        )
        back_after = loop.time() - stopped_at
        await producing
        await wait_until(
            lambda: {i for n in NAMES for i in read_ids(fleet.output(n))} >= set(range(total)),
            timeout=120,
        )
        # Read before anyone stops: listeners are not called on stop anyway.
        after = {name: events(fleet.events_of(name)) for name in NAMES}
        await fleet.stop_all()
    finally:
        if producing is not None:
            producing.cancel()
        await fleet.kill_all()

    counts = Counter(i for name in NAMES for i in read_ids(fleet.output(name)))
    print(
        f"\nstatic membership, {total} messages at {per_second:g}/s over {PARTITIONS} "
        f"partitions: {restarted} back with its partitions {back_after:.1f} s after SIGTERM; "
        + ", ".join(f"{name} {len(read_ids(fleet.output(name)))}" for name in NAMES)
        + f"; lost {total - len(counts)}, processed twice {len(repeated(counts))}; "
        "listener calls of the others during the restart: "
        + ", ".join(f"{name} {len(after[name]) - len(before[name])}" for name in others)
    )
    for name in others:
        assert after[name] == before[name], (name, after[name])
    # The new process: aiokafka's empty revocation before a first join, then its own
    # partitions back.
    assert after[restarted][len(before[restarted]) :] == [
        "revoked ",
        f"assigned {','.join(str(p) for p in sorted(own or ()))}",
    ]
    assert set(counts) == set(range(total))
    assert not repeated(counts), f"ran twice: {repeated(counts)[:20]}"
    await wait_committed(group, topic, await end_offsets(topic, PARTITIONS))


async def test_a_static_member_restarted_within_its_session_moves_no_partition(
    tmp_path: Path,
) -> None:
    await restart_one_of_three(tmp_path, total=4000, per_second=200)


async def test_the_group_leader_restarted_within_its_session_moves_no_partition(
    tmp_path: Path,
) -> None:
    await restart_one_of_three(tmp_path, total=4000, per_second=200, restarted="member-1")


@pytest.mark.long
async def test_a_static_member_restarted_within_its_session_acceptance(tmp_path: Path) -> None:
    """The acceptance scenario: a steady 200 messages per second for a minute."""
    await restart_one_of_three(tmp_path, total=12_000, per_second=200)
