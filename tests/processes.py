"""Helpers for tests that run the library in real processes: app processes signalled and
killed mid-stream, a spare broker killed and restarted under them, and counting what each
process finished from the output files the apps write (one message id per line, flushed per
line, so it survives SIGKILL)."""

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from tests.apps._common import (
    ENV_BOOTSTRAP,
    ENV_CONCURRENCY,
    ENV_GROUP,
    ENV_HANDLER_SEC,
    ENV_OUTPUT,
    ENV_SHUTDOWN_SEC,
    ENV_TOPIC,
)
from tests.kafka_helpers import BOOTSTRAP

REPO_ROOT = Path(__file__).resolve().parents[1]
EXIT_WITHIN_SEC = 20.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def app_env(
    topic: str,
    group: str,
    output: Path,
    *,
    bootstrap: str = BOOTSTRAP,
    handler_sec: float = 0.01,
    concurrency: int = 100,
    shutdown_sec: float = 3.0,
) -> dict[str, str]:
    """The environment of a ``tests.apps`` process (see ``tests.apps._common``)."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        ENV_TOPIC: topic,
        ENV_GROUP: group,
        ENV_BOOTSTRAP: bootstrap,
        ENV_OUTPUT: str(output),
        ENV_HANDLER_SEC: str(handler_sec),
        ENV_CONCURRENCY: str(concurrency),
        ENV_SHUTDOWN_SEC: str(shutdown_sec),
    }


class AppProcess:
    """One run of an app module (or any command); its output goes to a log file shown when a
    check fails."""

    def __init__(
        self, module: str, env: Mapping[str, str], log: Path, *, argv: Iterable[str] = ()
    ) -> None:
        self.module = module
        self.env = dict(env)
        self.log = log
        self.argv = list(argv) or [sys.executable, "-m", f"tests.apps.{module}"]
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                cwd=REPO_ROOT,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self, sig: signal.Signals, within: float = EXIT_WITHIN_SEC) -> int:
        """Send ``sig`` and wait for the exit; returns the exit code."""
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            pytest.fail(
                f"{self.module} did not exit within {within} s of {sig.name}:\n{self.tail()}"
            )

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    def cpu_seconds(self) -> float:
        """User + system CPU time the process used so far (Linux ``/proc``)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def read_ids(output: Path) -> list[int]:
    if not output.exists():
        return []
    return [int(line) for line in output.read_text().splitlines() if line]


def repeated(counts: Counter[int]) -> list[int]:
    return sorted(i for i, n in counts.items() if n > 1)


class SpareBroker:
    """A second local broker (``scripts/kafka.sh`` on another port) that a test may kill with
    SIGKILL and restart on the same data, leaving the suite's broker alone. Its port is
    ``KAFKA_SPARE_PORT``, or the suite broker's port + 100."""

    def __init__(self) -> None:
        main_port = int(BOOTSTRAP.rsplit(":", 1)[1])
        self.port = int(os.environ.get("KAFKA_SPARE_PORT", str(main_port + 100)))
        self.bootstrap = f"127.0.0.1:{self.port}"

    def run(self, command: str, *, keep_data: bool = False) -> None:
        """``scripts/kafka.sh <command>`` for this broker (blocking)."""
        env = {
            key: value
            for key, value in os.environ.items()
            if key
            not in {
                "KAFKA_BOOTSTRAP_SERVERS",
                "KAFKA_STATE_DIR",
                "KAFKA_KEEP_DATA",
                "KAFKA_SASL_PORT",
            }
        }
        env["KAFKA_PORT"] = str(self.port)
        if keep_data:
            env["KAFKA_KEEP_DATA"] = "1"
        result = subprocess.run(
            ["bash", "scripts/kafka.sh", command],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=180,
        )
        if result.returncode != 0:
            msg = f"kafka.sh {command} on port {self.port} failed:\n{result.stderr[-3000:]}"
            raise RuntimeError(msg)

    async def start(self) -> None:
        """A fresh broker."""
        await asyncio.to_thread(self.run, "start")

    async def kill(self) -> None:
        """SIGKILL: the broker dies at once, its data stays."""
        await asyncio.to_thread(self.run, "kill")

    async def restart(self) -> None:
        """Back on the data the kill left: topics, committed offsets, the group."""
        await asyncio.to_thread(self.run, "start", keep_data=True)

    def stop(self) -> None:
        """Stop it and delete its data (also after a kill)."""
        self.run("stop")

    def freeze(self) -> None:
        """SIGSTOP: a network cut, as its clients see it: connections stay open, requests get
        no answer (until ``kill``, which closes them)."""
        os.kill(self._pid(), signal.SIGSTOP)

    def _pid(self) -> int:
        state = Path(os.environ.get("TMPDIR", "/tmp")) / f"fca-kafka-{self.port}"
        return int((state / "kafka.pid").read_text())
