"""After a SIGKILL, messages finished above a straggler are not processed again."""

import asyncio
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
