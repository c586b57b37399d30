"""Type checkers refuse a misspelt or mistyped setting in the set-up calls (mypy --strict on a
small user module), and accept the correct ones."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

MYPY = Path(sys.executable).with_name("mypy")
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not MYPY.exists(), reason="mypy not installed")

HEADER = """\
from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from faststream_concurrent_aiokafka import (
    configure_subscriber,
    initialize_concurrent_processing,
    setup_concurrent_processing,
)

broker = KafkaBroker()
app = FastStream(broker)
subscriber = broker.subscriber("t", group_id="g", ack_policy=AckPolicy.MANUAL)


async def start() -> None:
"""


GOOD = """\
setup_concurrent_processing(app, concurrency_limit=10, ordering="key", max_retries=2)
configure_subscriber(subscriber, concurrency_limit=None, dead_letter_topic="dlq")
await initialize_concurrent_processing(broker.context, 20, 10, task_timeout_sec=1.0)
"""

# (a module name, the call in it, a word the complaint must contain)
WRONG = [
    ("setup_misspelt", "setup_concurrent_processing(app, concurency_limit=10)", "concurency_limit"),
    ("subscriber_misspelt", "configure_subscriber(subscriber, max_retry=3)", "max_retry"),
    (
        "initialize_misspelt",
        "await initialize_concurrent_processing(broker.context, orderin='key')",
        "orderin",
    ),
    ("bad_ordering", 'setup_concurrent_processing(app, ordering="keys")', "ordering"),
    ("str_limit", 'configure_subscriber(subscriber, concurrency_limit="10")', "concurrency_limit"),
]


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One mypy run over a correct module and one module per wrong call."""
    folder = tmp_path_factory.mktemp("typed_setup")
    modules = {"good": GOOD, **{name: call + "\n" for name, call, _ in WRONG}}
    for name, body in modules.items():
        (folder / f"{name}.py").write_text(HEADER + textwrap.indent(body, "    "))
    result = subprocess.run(
        [str(MYPY), "--strict", "--no-incremental", *(f"{name}.py" for name in modules)],
        cwd=folder,
        env={**os.environ, "MYPYPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    return result.stdout


def errors_in(output: str, module: str) -> list[str]:
    return [
        line for line in output.splitlines() if line.startswith(f"{module}.py:") and "error" in line
    ]


def test_correct_settings_pass(mypy_output: str) -> None:
    assert errors_in(mypy_output, "good") == [], mypy_output


@pytest.mark.parametrize(("module", "call", "complaint"), WRONG, ids=[w[0] for w in WRONG])
def test_a_wrong_setting_fails_type_checking(
    mypy_output: str, module: str, call: str, complaint: str
) -> None:
    errors = errors_in(mypy_output, module)
    assert errors, f"mypy accepted {call!r}:\n{mypy_output}"
    assert any(complaint in line for line in errors), errors
