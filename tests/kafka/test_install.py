"""A new user's first minutes: the README's install line on a clean clone, in a fresh
virtualenv, then the README's quick start copied as it is, against the real broker."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.kafka_helpers import BOOTSTRAP, unique

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
CLONE_NAME = "faststream-concurrent-aiokafka"

DRIVER = """\
import asyncio
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

import quickstart

TOPIC, GROUP, BOOTSTRAP, COUNT = sys.argv[1], sys.argv[2], sys.argv[3], 50


async def committed_to_end() -> bool:
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=GROUP)
    await consumer.start()
    try:
        tp = TopicPartition(TOPIC, 0)
        return await consumer.committed(tp) == (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()


async def main() -> None:
    running = asyncio.create_task(quickstart.app.run())
    subscriber = next(s for s in quickstart.broker.subscribers if TOPIC in s.topic_names)
    while subscriber.consumer is None or not subscriber.consumer.assignment():
        await asyncio.sleep(0.1)
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
    await producer.start()
    for i in range(COUNT):
        await producer.send(TOPIC, b'{"order_id": %d}' % i, partition=0)
    await producer.stop()
    while not await committed_to_end():
        await asyncio.sleep(0.2)
    quickstart.app.exit()
    await running
    print("QUICKSTART OK")


asyncio.run(asyncio.wait_for(main(), timeout=90))
"""


def readme_block(section: str, language: str) -> str:
    """The first ``language`` code block under the README heading ``section``."""
    text = README.read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(rf"```{language}\n(.*?)```", body, re.DOTALL)
    assert match, f"no {language} block under {section!r}"
    return match.group(1)


def run(args: list[str], cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_readme_install_then_quick_start_processes_and_commits(tmp_path: Path) -> None:
    run(["git", "clone", "--quiet", str(REPO), CLONE_NAME], cwd=tmp_path)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    install = readme_block("Install", "bash").splitlines()[0].split("#")[0].split()
    assert install[:2] == ["pip", "install"], install
    run([str(venv / "bin" / "pip"), "--disable-pip-version-check", *install[1:]], cwd=tmp_path)

    topic, group = unique("quickstart"), unique("g-quickstart")
    quickstart = (
        readme_block("Quick start", "python")
        .replace('"localhost:9092"', repr(BOOTSTRAP))
        .replace('"orders"', repr(topic))
        .replace('group_id="billing"', f"group_id={group!r}")
    )
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "quickstart.py").write_text(quickstart, encoding="utf-8")
    (app_dir / "driver.py").write_text(textwrap.dedent(DRIVER), encoding="utf-8")
    # Only the fresh virtualenv: nothing of this checkout or its environment on the path.
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    done = subprocess.run(
        [str(venv / "bin" / "python"), "driver.py", topic, group, BOOTSTRAP],
        cwd=app_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "QUICKSTART OK" in done.stdout
