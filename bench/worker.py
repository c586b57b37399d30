"""One measured run in a process of its own: ``python -m bench.worker SPEC.json RESULT.json``.

A failure is reported in the result's ``error`` field (the orchestrator goes on with the
next run), so the result file is written whatever happens.
"""

import asyncio
import importlib
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from bench.measure import run
from bench.model import RunSpec, read_spec, result_for, write_json


def loop_factory(spec: RunSpec) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop for ``loop="uvloop"`` runs (the ``[uvloop]`` extra), else asyncio's."""
    if spec.loop == "asyncio":
        return None
    # Imported by name: uvloop is an optional extra, absent from the dev environment.
    factory: Callable[[], asyncio.AbstractEventLoop] = importlib.import_module(
        "uvloop"
    ).new_event_loop
    return factory


def main(argv: list[str]) -> int:
    spec = read_spec(Path(argv[0]))
    try:
        with asyncio.Runner(loop_factory=loop_factory(spec)) as runner:
            result = runner.run(run(spec))
            if spec.loop != "asyncio":
                result.notes.append(f"loop {type(runner.get_loop()).__module__}")
    except Exception as exc:
        traceback.print_exc()
        result = result_for(spec, error=f"{type(exc).__name__}: {exc}")
    write_json(Path(argv[1]), result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
