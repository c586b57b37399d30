"""The library's log lines as a FastStream user sees them under ``faststream run``.

The app is run by FastStream's own CLI with its default logging; the test reads what the
process printed.
"""

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from tests.apps._common import ENV_BOOTSTRAP, ENV_FAIL, ENV_GROUP, ENV_TOPIC
from tests.kafka_helpers import (
    BOOTSTRAP,
    committed_offsets,
    end_offsets,
    numbered_topic,
    wait_until,
)

pytestmark = pytest.mark.kafka

REPO_ROOT = Path(__file__).resolve().parents[2]
COUNT = 100
# FastStream's own line: "2026-11-27 17:30:49,123 INFO     - ..."
# FastStream colours the level name, even in a file.
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
TIME_AND_LEVEL = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR)\s")


async def run_app(fail: str, log: Path) -> tuple[str, str]:
    """Run the app under ``faststream run --log-level INFO`` until every message is
    committed, stop it with SIGTERM; returns the topic and everything it printed."""
    topic, group = await numbered_topic(f"log-{fail}", COUNT, 2)
    env = {
        **os.environ,
        ENV_TOPIC: topic,
        ENV_GROUP: group,
        ENV_BOOTSTRAP: BOOTSTRAP,
        ENV_FAIL: fail,
        "PYTHONPATH": str(REPO_ROOT),
    }
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "faststream",
            "run",
            "tests.apps.logging_app:app",
            "--log-level",
            "INFO",
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            ends = await end_offsets(topic, 2)

            async def all_committed() -> bool:
                return await committed_offsets(group, topic) == ends

            await wait_until(all_committed, timeout=60, interval=0.2)
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), timeout=30) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    printed = log.read_bytes().decode(errors="replace")  # noqa: ASYNC240 - a small file, once
    return topic, ANSI_COLOUR.sub("", printed)


async def test_retried_attempts_are_short_info_lines_in_faststream_s_format(
    tmp_path: Path,
) -> None:
    topic, output = await run_app("once", tmp_path / "once.log")

    retries = [line for line in output.splitlines() if " - Attempt 1 of " in line]
    assert len(retries) == COUNT, output[-3000:]
    for line in retries:
        # Time and level as FastStream prints its own lines, then its context: the topic
        # and, as the message id, partition@offset.
        assert TIME_AND_LEVEL.match(line), line
        assert " INFO " in line, line
        assert re.search(rf"{re.escape(topic)}\s*\|.*\| \d@\d+\s+- Attempt 1 of ", line), line
    assert " ERROR " not in output
    assert "Traceback" not in output


async def test_a_message_failing_for_good_is_one_error_with_one_traceback(
    tmp_path: Path,
) -> None:
    _, output = await run_app("always", tmp_path / "always.log")

    lines = output.splitlines()
    errors = [line for line in lines if TIME_AND_LEVEL.match(line) and " ERROR " in line]
    assert len(errors) == COUNT, "\n".join(errors[:5])
    assert all("failed after 3 attempt(s)" in line for line in errors), errors[:3]
    assert output.count("Traceback (most recent call last)") == COUNT
    assert len({re.search(r"\[(\d)\]@(\d+)", e).groups() for e in errors}) == COUNT  # type: ignore[union-attr]
    retries = [line for line in lines if " - Attempt " in line and " INFO " in line]
    assert len(retries) == 2 * COUNT
