"""Acceptance: a real process killed by a signal mid-stream loses nothing and repeats nothing.

An app (``tests.apps.<name>``) consumes 4000 messages over 4 partitions with ~10 ms handlers
and 100 concurrent slots, writing each finished id as a line. Once 1000 or more lines exist
the test signals it, waits for it to exit, restarts it in the same group until every id was
written, and counts: 0 lost, 0 written twice, and the group's commits reach the end offsets.
"""

import signal
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kafka_helpers import (
    committed_offsets,
    create_topic,
    end_offsets,
    produce,
    unique,
    wait_until,
)
from tests.processes import AppProcess, app_env, read_ids

pytestmark = pytest.mark.kafka

TOTAL = 4000
PARTITIONS = 4
SIGNAL_AFTER = 1000
START_WITHIN_SEC = 60.0


@dataclass
class Figures:
    before_signal: int
    first_run: int
    after_restart: int
    lost: int
    duplicates: int

    def show(self, label: str) -> None:
        print(
            f"\n[{label}] processed before signal={self.before_signal} "
            f"by first run={self.first_run} after restart={self.after_restart} "
            f"lost={self.lost} duplicates={self.duplicates}"
        )


async def signal_midway_then_restart(module: str, sig: signal.Signals, tmp_path: Path) -> Figures:
    topic, group = unique("sigterm"), unique("sigterm-group")
    await create_topic(topic, PARTITIONS)
    await produce(topic, [str(i).encode() for i in range(TOTAL)], partitions=PARTITIONS)
    output = tmp_path / "processed.txt"
    output.touch()
    env = app_env(topic, group, output, handler_sec=0.01, concurrency=100, shutdown_sec=3)
    first = AppProcess(module, env, tmp_path / "first.log")
    second = AppProcess(module, env, tmp_path / "second.log")
    try:
        await first.start()
        await wait_until(
            lambda: len(read_ids(output)) >= SIGNAL_AFTER, timeout=START_WITHIN_SEC, interval=0.02
        )
        before_signal = len(read_ids(output))
        code = await first.stop(sig)
        assert code in (0, -sig), f"exit code {code} after {sig.name}:\n{first.tail()}"
        first_run = len(read_ids(output))
        assert first_run < TOTAL, "the signal came too late to interrupt the stream"

        await second.start()
        await wait_until(
            lambda: set(read_ids(output)) >= set(range(TOTAL)), timeout=START_WITHIN_SEC
        )
        # Stopped the way the first run was not, so the check below covers its drain too.
        code = await second.stop(signal.SIGTERM)
        assert code in (0, -signal.SIGTERM), f"exit code {code}:\n{second.tail()}"
    finally:
        await first.kill()
        await second.kill()

    ids = read_ids(output)
    counts = Counter(ids)
    figures = Figures(
        before_signal=before_signal,
        first_run=first_run,
        after_restart=len(ids) - first_run,
        lost=len(set(range(TOTAL)) - set(counts)),
        duplicates=sum(n - 1 for n in counts.values()),
    )
    figures.show(f"{module} {sig.name}")
    assert set(counts) <= set(range(TOTAL))
    assert figures.lost == 0
    twice = sorted(i for i, n in counts.items() if n > 1)
    assert figures.duplicates == 0, (
        f"{len(twice)} id(s) processed twice, e.g. {twice[:20]}\nfirst run log:\n{first.tail()}"
    )
    assert await committed_offsets(group, topic) == await end_offsets(topic, PARTITIONS)
    return figures


@pytest.mark.smoke
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_faststream_app_survives_signal(sig: signal.Signals, tmp_path: Path) -> None:
    """``asyncio.run(app.run())``: FastStream handles the signal and stops the broker."""
    await signal_midway_then_restart("faststream_app", sig, tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_bare_broker_app_survives_signal(sig: signal.Signals, tmp_path: Path) -> None:
    """No app object, ``asyncio.run(main())``: only the library reacts to the signal."""
    await signal_midway_then_restart("bare_broker_app", sig, tmp_path)
