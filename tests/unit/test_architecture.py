"""The layer rule holds, and the contract that checks it would catch a breach.

``lint-imports`` runs on the package as it is, then on copies with one forbidden import
added, each of which must be refused; otherwise the contracts would pass by checking nothing.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "faststream_concurrent_aiokafka"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter not installed")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def copy_with(tmp_path: Path, module: str, line: str) -> Path:
    shutil.copytree(ROOT / PACKAGE, tmp_path / PACKAGE)
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    with (tmp_path / PACKAGE / module).open("a", encoding="utf-8") as fh:
        fh.write(f"\n{line}\n")
    return tmp_path


def test_the_package_keeps_every_contract() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Contracts: \d+ kept, 0 broken", result.stdout)


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("core/offsets.py", "import asyncio", "the core does no I/O"),
        ("core/settings.py", "import aiokafka", "the core does no I/O"),
        ("core/ordering.py", "from faststream import ContextRepo", "the core does no I/O"),
        ("engine/state.py", "import faststream.exceptions", "the engine never imports"),
        (
            "engine/committer.py",
            "from faststream_concurrent_aiokafka.compat import faststream",
            "the engine never imports",
        ),
        (
            "engine/state.py",
            "from faststream_concurrent_aiokafka.integration import handler",
            "integration over engine",
        ),
        (
            "replay/copier.py",
            "from faststream_concurrent_aiokafka.integration import dead_letter",
            "integration over engine",
        ),
        (
            # Only for annotations, and still a circle: state <- scheduler <- runner.
            "engine/state.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from faststream_concurrent_aiokafka.engine import runner",
            "no circle of modules",
        ),
        (
            "engine/scheduler.py",
            "from faststream_concurrent_aiokafka.engine import transactions",
            "never import the exactly-once strategy",
        ),
        (
            "engine/monitor.py",
            "from faststream_concurrent_aiokafka.engine.partition_transaction import "
            "PartitionTransaction",
            "never import the exactly-once strategy",
        ),
    ],
    ids=[
        "core-asyncio",
        "core-aiokafka",
        "core-faststream",
        "engine-faststream",
        "engine-compat-faststream",
        "engine-integration",
        "replay-integration",
        "annotation-cycle",
        "shared-engine-exactly-once",
        "monitor-partition-transaction",
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    result = lint(copy_with(tmp_path, module, line))
    assert result.returncode != 0, result.stdout
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout
