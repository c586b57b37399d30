"""One measured run in a process of its own: ``python -m bench.worker SPEC.json RESULT.json``.

A failure is reported in the result's ``error`` field (the orchestrator goes on with the
next run), so the result file is written whatever happens.
"""

import asyncio
import sys
import traceback
from pathlib import Path

from bench.measure import run
from bench.model import RunResult, read_spec, write_json


def main(argv: list[str]) -> int:
    spec = read_spec(Path(argv[0]))
    try:
        result = asyncio.run(run(spec))
    except Exception as exc:
        traceback.print_exc()
        result = RunResult(
            label=spec.label,
            kind=spec.kind,
            system=spec.system,
            expected=spec.messages,
            error=f"{type(exc).__name__}: {exc}",
        )
    write_json(Path(argv[1]), result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
