"""Exactly-once pipelines against the real broker, in real processes: a consume, await,
publish pipeline (``tests/apps/exactly_once_app.py``) whose results topic, read with
``isolation_level="read_committed"``, must hold every input exactly once, whatever happens to
the processes: SIGKILL mid-stream and restarts, or a member stalled past its session timeout
(a zombie) that wakes up while another member owns its partitions.

Each app also appends every message it ran to a file: work done twice is allowed (and
printed), results published twice are not.
"""

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.apps.exactly_once_app import ENV_RESULTS
from tests.kafka_helpers import (
    BOOTSTRAP,
    create_topic,
    end_offsets,
    numbers,
    produce,
    read_committed,
    unique,
    wait_committed,
    wait_until,
)
from tests.processes import AppProcess, SpareBroker, app_env

pytestmark = pytest.mark.kafka

MESSAGES = 4000
PARTITIONS = 4
STOP_SHUTDOWN_SEC = 3.0
# shutdown_timeout_sec and the library's margin (SHUTDOWN_MARGIN_SEC), with room for a loaded
# machine: the same bound as the at-least-once outage test.
STOP_BOUND_SEC = STOP_SHUTDOWN_SEC + 5.0


class Pipeline:
    """Input and results topics, a group, and the app processes run on them."""

    def __init__(
        self, tmp_path: Path, input_topic: str, results: str, bootstrap: str = BOOTSTRAP
    ) -> None:
        self.tmp_path = tmp_path
        self.input = input_topic
        self.results = results
        self.bootstrap = bootstrap
        self.group = unique("eos-group")
        self.members: dict[str, AppProcess] = {}

    @classmethod
    async def create(cls, tmp_path: Path, bootstrap: str = BOOTSTRAP) -> "Pipeline":
        pipeline = cls(tmp_path, unique("eos-in"), unique("eos-results"), bootstrap)
        await create_topic(pipeline.input, PARTITIONS, bootstrap=bootstrap)
        await create_topic(pipeline.results, PARTITIONS, bootstrap=bootstrap)
        await produce(pipeline.input, numbers(MESSAGES), partitions=PARTITIONS, bootstrap=bootstrap)
        return pipeline

    async def start(
        self,
        name: str,
        *,
        handler_sec: float = 0.01,
        concurrency: int = 100,
        shutdown_sec: float = 5,
    ) -> AppProcess:
        env = {
            **app_env(
                self.input,
                self.group,
                self.work_file(name),
                bootstrap=self.bootstrap,
                handler_sec=handler_sec,
                concurrency=concurrency,
                shutdown_sec=shutdown_sec,
            ),
            ENV_RESULTS: self.results,
        }
        member = AppProcess("exactly_once_app", env, self.tmp_path / f"{name}.log")
        self.members[name] = member
        await member.start()
        return member

    def work_file(self, name: str) -> Path:
        return self.tmp_path / f"{name}.work"

    def work_done(self, *names: str) -> Counter[str]:
        """How often each input's handler ran ("partition:offset"), in the processes named
        (all by default)."""
        counts: Counter[str] = Counter()
        for name in names or self.members:
            path = self.work_file(name)
            if path.exists():
                counts.update(path.read_text().split())
        return counts

    async def all_committed(self, timeout: float = 90.0) -> None:
        ends = await end_offsets(self.input, PARTITIONS, bootstrap=self.bootstrap)
        await wait_committed(self.group, self.input, ends, timeout, bootstrap=self.bootstrap)

    async def stop_all(self) -> None:
        for member in self.members.values():
            if member.running:
                code = await member.stop(signal.SIGTERM, within=30)
                assert code in (0, -signal.SIGTERM), member.tail()

    async def kill_all(self) -> None:
        for member in self.members.values():
            await member.kill()

    async def results_read_committed(self) -> Counter[str]:
        values = await read_committed(self.results, PARTITIONS, bootstrap=self.bootstrap)
        return Counter(value.decode().strip('"') for value in values)

    def expected(self) -> set[str]:
        return {f"{i % PARTITIONS}:{i // PARTITIONS}" for i in range(MESSAGES)}


def report(label: str, results: Counter[str], pipeline: Pipeline) -> tuple[int, int]:
    expected = pipeline.expected()
    missing = len(expected - set(results))
    repeated = sum(count - 1 for count in results.values())
    ran_again = sum(count - 1 for count in pipeline.work_done().values())
    print(
        f"\n{label}: results {sum(results.values())}, missing {missing}, repeated {repeated}; "
        f"handlers run more than once: {ran_again} (their results aborted)"
    )
    assert set(results) <= expected, sorted(set(results) - expected)[:10]
    return missing, repeated


async def test_sigkill_twice_mid_stream_each_input_is_published_once(tmp_path: Path) -> None:
    pipeline = await Pipeline.create(tmp_path)
    try:
        first = await pipeline.start("first")
        await wait_until(lambda: sum(pipeline.work_done().values()) >= 1000, timeout=60)
        await first.kill()
        second = await pipeline.start("second")
        await wait_until(lambda: len(pipeline.work_done()) >= 2500, timeout=90)
        await second.kill()
        await pipeline.start("third")
        await pipeline.all_committed()
        await pipeline.stop_all()
    finally:
        await pipeline.kill_all()
    results = await pipeline.results_read_committed()
    missing, repeated = report("SIGKILL twice", results, pipeline)
    assert (missing, repeated) == (0, 0)


async def test_a_zombie_member_cannot_publish_twice(tmp_path: Path) -> None:
    """Member A runs; B joins and takes part of the partitions; A is stopped (SIGSTOP) past
    its session timeout, so the group gives all partitions to B, whose producers fence A's;
    A wakes up (SIGCONT) with messages in flight and tries to publish and commit them:
    refused. Both go on to the end."""
    pipeline = await Pipeline.create(tmp_path)
    # Slower (about 400 messages per second) so that the stream outlasts B's start.
    slow: dict[str, Any] = {"handler_sec": 0.05, "concurrency": 20}
    try:
        a = await pipeline.start("A", **slow)
        await wait_until(lambda: sum(pipeline.work_done("A").values()) >= 600, timeout=60)
        await pipeline.start("B", **slow)
        await wait_until(lambda: sum(pipeline.work_done("B").values()) >= 100, timeout=60)
        os.kill(a.pid, signal.SIGSTOP)
        try:
            # The group evicts A after its session timeout; B then works on every partition.
            seen = set(pipeline.work_done("B"))

            def b_has_all() -> bool:
                fresh = set(pipeline.work_done("B")) - seen
                return {where.split(":")[0] for where in fresh} == {
                    str(p) for p in range(PARTITIONS)
                }

            await wait_until(b_has_all, timeout=60)
        finally:
            os.kill(a.pid, signal.SIGCONT)
        await pipeline.all_committed()
        await pipeline.stop_all()
    finally:
        await pipeline.kill_all()
    log = (tmp_path / "A.log").read_text()
    results = await pipeline.results_read_committed()
    missing, repeated = report("zombie", results, pipeline)
    assert (missing, repeated) == (0, 0)
    assert "its producer was fenced" in log, f"A was never fenced; the scenario is void:\n{log}"


async def test_a_stop_with_the_broker_down_is_bounded_and_publishes_nothing_twice(
    tmp_path: Path,
) -> None:
    """The broker (a spare of the test's own) dies under the pipeline; SIGTERM then: the
    process exits within ``shutdown_timeout_sec`` and the documented margin although no
    transaction can end, and once the broker is back a restart publishes every result once."""
    spare = SpareBroker()
    await spare.start()
    loop = asyncio.get_running_loop()
    try:
        pipeline = await Pipeline.create(tmp_path, spare.bootstrap)
        try:
            first = await pipeline.start("first", handler_sec=0.05, shutdown_sec=STOP_SHUTDOWN_SEC)
            await wait_until(lambda: sum(pipeline.work_done().values()) >= 800, timeout=60)
            await spare.kill()
            started = loop.time()
            code = await first.stop(signal.SIGTERM, within=STOP_BOUND_SEC)
            stopped_after = loop.time() - started
            assert code in (0, -signal.SIGTERM), first.tail()
            await spare.restart()
            await pipeline.start("second")
            await pipeline.all_committed(timeout=120)
            await pipeline.stop_all()
        finally:
            await pipeline.kill_all()
        results = await pipeline.results_read_committed()
    finally:
        await asyncio.to_thread(spare.stop)
    missing, repeated = report(
        f"stop with the broker down (exited after {stopped_after:.2f} s)", results, pipeline
    )
    assert (missing, repeated) == (0, 0)
    assert stopped_after <= STOP_BOUND_SEC
