"""After a SIGKILL, messages finished above a straggler are not processed again."""

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest

from faststream_concurrent_aiokafka.core.offset_codec import decode_finished_offsets
from tests.kafka_helpers import (
    BOOTSTRAP,
    committed_metadata,
    committed_offsets,
    create_topic,
    produce,
    unique,
    wait_until,
)

pytestmark = pytest.mark.kafka

MESSAGES = 4000
PARTITIONS = 4
REPO = Path(__file__).resolve().parents[2]


async def start_app(
    topic: str, group: str, output: Path, *, straggler_sec: float, track: bool
) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "BOOTSTRAP": BOOTSTRAP,
        "TOPIC": topic,
        "GROUP": group,
        "OUTPUT": str(output),
        "STRAGGLER_SEC": str(straggler_sec),
        "TRACK_COMPLETED_OFFSETS": "1" if track else "0",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.apps.straggler_app", env=env, cwd=REPO
    )


def processed(output: Path) -> Counter[str]:
    """How often each "partition:offset" was processed."""
    if not output.exists():
        return Counter()
    return Counter(output.read_text().split())


async def committed_metadata_ready(group: str, topic: str) -> bool:
    """Every partition committed, the straggler's with all 999 finished offsets above it."""
    offsets = await committed_offsets(group, topic)
    if len(offsets) < PARTITIONS:
        return False
    metadata = await committed_metadata(group, topic)
    done = decode_finished_offsets(metadata[0], offsets[0]) if metadata.get(0) else frozenset()
    others_at_end = all(offsets[p] == MESSAGES // PARTITIONS for p in range(1, PARTITIONS))
    return others_at_end and len(done) == MESSAGES // PARTITIONS - 1


async def all_committed(group: str, topic: str) -> bool:
    offsets = await committed_offsets(group, topic)
    return all(offsets.get(p) == MESSAGES // PARTITIONS for p in range(PARTITIONS))


async def others_committed(group: str, topic: str) -> bool:
    offsets = await committed_offsets(group, topic)
    return all(offsets.get(p) == MESSAGES // PARTITIONS for p in range(1, PARTITIONS))


async def crash_and_recover(tmp_path: Path, *, track: bool) -> tuple[int, int]:
    """Returns (lost, processed twice) after SIGKILL with a straggler and a restart."""
    topic, group = unique("crash"), unique("crash-group")
    output = tmp_path / f"processed-{track}.txt"
    await create_topic(topic, PARTITIONS)
    await produce(topic, (str(i).encode() for i in range(MESSAGES)), partitions=PARTITIONS)

    app = await start_app(topic, group, output, straggler_sec=60, track=track)
    try:
        await wait_until(lambda: sum(processed(output).values()) >= MESSAGES - 1, timeout=60)
        if track:
            await wait_until(lambda: committed_metadata_ready(group, topic), timeout=30)
        else:
            await wait_until(lambda: others_committed(group, topic), timeout=30)
        assert "0:0" not in processed(output), "the straggler finished; the scenario is void"
    finally:
        app.send_signal(signal.SIGKILL)
        await app.wait()

    app = await start_app(topic, group, output, straggler_sec=0.005, track=track)
    try:
        await wait_until(lambda: all_committed(group, topic), timeout=60)
    finally:
        app.send_signal(signal.SIGTERM)
        await asyncio.wait_for(app.wait(), 30)

    seen = processed(output)
    lost = MESSAGES - len(seen)
    twice = sum(count - 1 for count in seen.values())
    print(f"track_completed_offsets={track}: lost={lost} processed twice={twice}")
    return lost, twice


@pytest.mark.smoke
async def test_finished_work_survives_sigkill(tmp_path: Path) -> None:
    lost, twice = await crash_and_recover(tmp_path, track=True)
    assert lost == 0
    assert twice <= 5


async def test_without_tracking_the_finished_work_is_redone(tmp_path: Path) -> None:
    lost, twice = await crash_and_recover(tmp_path, track=False)
    assert lost == 0
    # Everything behind the straggler on its partition is read again.
    assert twice >= MESSAGES // PARTITIONS - 1 - 5


def lines(output: Path, kind: str) -> set[int]:
    """Message ids of the ``kind`` lines ("s": started, "d": done) of an app's output."""
    if not output.exists():
        return set()
    return {int(line[2:]) for line in output.read_text().splitlines() if line.startswith(kind)}


async def start_freeze_app(
    topic: str, group: str, output: Path, figures: Path, *, freeze_after: int
) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "BOOTSTRAP": BOOTSTRAP,
        "TOPIC": topic,
        "GROUP": group,
        "OUTPUT": str(output),
        "FIGURES": str(figures),
        "FREEZE_AFTER": str(freeze_after),
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.apps.freeze_app", env=env, cwd=REPO
    )


async def test_not_committed_is_what_a_sigkill_runs_again(tmp_path: Path) -> None:
    """The processing stops moving after 1,700 messages started (commits every 500 finished,
    20 hang running); ``not_committed`` is read, the process is killed, and a restart in the
    same group counts the messages the first run had started that it runs again."""
    topic, group = unique("not-committed"), unique("not-committed-group")
    await create_topic(topic, PARTITIONS)
    await produce(topic, (str(i).encode() for i in range(MESSAGES)), partitions=PARTITIONS)
    first_output, second_output = tmp_path / "first.txt", tmp_path / "second.txt"
    figures = tmp_path / "figures.json"
    app = await start_freeze_app(topic, group, first_output, figures, freeze_after=1700)
    try:
        await wait_until(figures.exists, timeout=60)
    finally:
        app.send_signal(signal.SIGKILL)
        await app.wait()
    reported = json.loads(figures.read_text())
    started_first = lines(first_output, "s")

    app = await start_freeze_app(topic, group, second_output, figures, freeze_after=-1)
    try:
        await wait_until(lambda: all_committed(group, topic), timeout=60)
    finally:
        app.send_signal(signal.SIGTERM)
        await asyncio.wait_for(app.wait(), 30)
    again = len(started_first & lines(second_output, "d"))
    print(
        f"\nrun again after SIGKILL: {again}; not_committed said {reported['not_committed']}, "
        f"uncommitted {reported['uncommitted']}, in_flight {reported['in_flight']}"
    )
    assert again >= 50, "too little ran again for the comparison to mean anything"
    assert abs(reported["not_committed"] - again) <= 0.1 * again
