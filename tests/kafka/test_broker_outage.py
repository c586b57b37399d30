"""The broker dies (SIGKILL) under a running consumer, on a spare broker of the test's own.

Stop with the broker down: the process exits within ``shutdown_timeout_sec`` plus the
documented margin (not when the broker returns), logs each partition it could not commit, and
a restart once the broker is back processes everything that was not committed (0 lost).

Outage under a running consumer: the broker is killed, started again 5 s later (it serves
again once its old registration expired, about 9 s on), and the consumer recovers by itself:
nothing lost, the process never dies, the group's commits reach the end, and while the
broker is away the process idles instead of spinning.
"""

import asyncio
import gc
import logging
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    KafkaConcurrentProcessingMiddleware,
    initialize_concurrent_processing,
)
from faststream_concurrent_aiokafka.core.commit_policy import SHUTDOWN_MARGIN_SEC
from tests.kafka_helpers import (
    create_topic,
    end_offsets,
    numbers,
    produce,
    shut_down,
    unique,
    wait_committed,
    wait_until,
)
from tests.processes import AppProcess, SpareBroker, app_env, read_ids

pytestmark = pytest.mark.kafka

PARTITIONS = 4
SHUTDOWN_SEC = 3.0
# The acceptance bound of a stop with the broker down; the library's own is tighter.
STOP_BOUND_SEC = SHUTDOWN_SEC + 5.0
OUTAGE_SEC = 5.0
# CPU the consumer may use while the broker is away and nothing is left to run: a loop
# spinning on a dead connection would use a whole core.
IDLE_CPU_SHARE_MAX = 0.5


@pytest.fixture(scope="module")
def spare() -> Iterator[SpareBroker]:
    broker = SpareBroker()
    broker.run("start")
    try:
        yield broker
    finally:
        broker.run("stop")


async def topic_with(spare: SpareBroker, count: int) -> tuple[str, str]:
    topic, group = unique("outage"), unique("outage-group")
    await create_topic(topic, PARTITIONS, bootstrap=spare.bootstrap)
    await produce(topic, numbers(count), partitions=PARTITIONS, bootstrap=spare.bootstrap)
    return topic, group


@pytest.mark.parametrize("module", ["faststream_app", "bare_broker_app"])
async def test_stop_with_the_broker_down_is_bounded_and_loses_nothing(
    spare: SpareBroker, tmp_path: Path, module: str
) -> None:
    """``faststream_app`` stops the way FastStream does (the subscriber drains in its stop);
    ``bare_broker_app`` through the library's own signal handler."""
    total = 12_000
    topic, group = await topic_with(spare, total)
    output = tmp_path / "processed.txt"
    env = app_env(
        topic, group, output, bootstrap=spare.bootstrap, handler_sec=0.05, shutdown_sec=SHUTDOWN_SEC
    )
    first = AppProcess(module, env, tmp_path / "first.log")
    second = AppProcess(module, env, tmp_path / "second.log")
    loop = asyncio.get_running_loop()
    try:
        await first.start()
        await wait_until(lambda: len(read_ids(output)) >= 2000, timeout=60, interval=0.02)
        await spare.kill()
        started = loop.time()
        code = await first.stop(signal.SIGTERM, within=STOP_BOUND_SEC)
        stopped_after = loop.time() - started
        assert code in (0, -signal.SIGTERM), first.tail()
        first_run = len(read_ids(output))
        assert first_run < total, "the stream ended before the broker died; the scenario is void"
        assert "will be delivered again" in first.tail(), first.tail()

        await spare.restart()
        await second.start()
        await wait_until(lambda: set(read_ids(output)) >= set(range(total)), timeout=120)
        await second.stop(signal.SIGTERM)
    finally:
        await first.kill()
        await second.kill()

    counts = Counter(read_ids(output))
    print(
        f"\n{module}, stop with the broker down: exited {stopped_after:.2f} s after SIGTERM "
        f"(shutdown_timeout_sec={SHUTDOWN_SEC}, library margin {SHUTDOWN_MARGIN_SEC} s); "
        f"first run finished {first_run}, processed again after the restart "
        f"{sum(n - 1 for n in counts.values())}, lost {total - len(counts)}"
    )
    assert stopped_after <= STOP_BOUND_SEC
    assert set(counts) == set(range(total))
    ends = await end_offsets(topic, PARTITIONS, bootstrap=spare.bootstrap)
    await wait_committed(group, topic, ends, bootstrap=spare.bootstrap)


async def test_consumer_recovers_from_a_broker_outage(spare: SpareBroker, tmp_path: Path) -> None:
    before, after = 30_000, 2_000
    topic, group = await topic_with(spare, before)
    output = tmp_path / "processed.txt"
    env = app_env(topic, group, output, bootstrap=spare.bootstrap, handler_sec=0.01)
    app = AppProcess("faststream_app", env, tmp_path / "app.log")
    loop = asyncio.get_running_loop()
    try:
        await app.start()
        await wait_until(lambda: len(read_ids(output)) >= 3000, timeout=60, interval=0.02)
        await spare.kill()
        killed = loop.time()
        # What aiokafka had fetched still runs; then the consumer has nothing to do.
        await wait_until(stopped_growing(output), timeout=30, interval=0.5)
        cpu, idle_from = app.cpu_seconds(), loop.time()
        await asyncio.sleep(max(OUTAGE_SEC - (idle_from - killed), 2.0))  # the outage itself
        idle_share = (app.cpu_seconds() - cpu) / (loop.time() - idle_from)
        restarted = loop.time()
        await spare.restart()
        back = loop.time()
        assert app.running, app.tail()

        await produce(
            topic, numbers(after, start=before), partitions=PARTITIONS, bootstrap=spare.bootstrap
        )
        total = before + after
        await wait_until(lambda: set(read_ids(output)) >= set(range(total)), timeout=120)
        ends = await end_offsets(topic, PARTITIONS, bootstrap=spare.bootstrap)
        await wait_committed(group, topic, ends, timeout=60, bootstrap=spare.bootstrap)
        assert app.running, app.tail()
        code = await app.stop(signal.SIGTERM)
        assert code in (0, -signal.SIGTERM), app.tail()
    finally:
        await app.kill()

    counts = Counter(read_ids(output))
    print(
        f"\nbroker outage: restarted {restarted - killed:.1f} s after the kill, serving again "
        f"{back - killed:.1f} s after it; CPU while idle and the broker away {idle_share:.1%} "
        "of a core; "
        f"processed twice {sum(n - 1 for n in counts.values())}, lost {total - len(counts)}"
    )
    assert set(counts) == set(range(total))
    assert idle_share < IDLE_CPU_SHARE_MAX


def stopped_growing(output: Path) -> Callable[[], bool]:
    """A condition for ``wait_until``: true once the output did not grow since the last poll."""
    last = -1

    def check() -> bool:
        nonlocal last
        now = len(read_ids(output))
        grew, last = now != last, now
        return not grew

    return check


async def test_a_commit_cut_off_by_its_deadline_leaves_no_unretrieved_task(
    spare: SpareBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """The network is cut (the broker frozen: connections stay open, nothing answers) while a
    commit is in flight; the commit's deadline passes, then the connections close (the broker
    is killed). aiokafka's inner commit request fails only then, in a task nobody awaits any
    more: asyncio must not log "Task exception was never retrieved" for it."""
    caplog.set_level(logging.WARNING)
    topic, group = unique("cut"), unique("cut-group")
    await create_topic(topic, 1, bootstrap=spare.bootstrap)
    await produce(topic, numbers(20), partitions=1, bootstrap=spare.bootstrap)
    broker = KafkaBroker(spare.bootstrap, logger=None)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    release = asyncio.Event()
    finished: list[int] = []

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )
    async def handle(body: int) -> None:
        if body >= 10:
            await release.wait()
        finished.append(body)

    await initialize_concurrent_processing(
        broker.context,
        commit_batch_size=1,
        commit_batch_timeout_sec=0.2,
        commit_timeout_sec=1.0,
        shutdown_timeout_sec=1.0,
    )
    try:
        await broker.start()
        await wait_committed(group, topic, {0: 10}, bootstrap=spare.bootstrap)
        spare.freeze()
        release.set()  # finished work now: its commit is sent to a broker that never answers
        await wait_until(lambda: "got no answer within" in caplog.text, timeout=20)
        await spare.kill()  # the connections close: the abandoned request fails now
        await asyncio.sleep(1.0)  # let the request's failure reach its task
        gc.collect()  # an unretrieved task's exception is logged when the task is collected
        await spare.restart()
    finally:
        await shut_down(broker)
    gc.collect()
    unretrieved = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not unretrieved, unretrieved
