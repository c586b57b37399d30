"""Health as operators read it: a status and the reasons for it.

Pure: no I/O. The engine lists what is wrong now as ``Fault``s; ``assess`` turns them into a
report. ``failed`` means the processing cannot go on by itself (restart-worthy), ``degraded``
that it goes on but something it depends on or one of its messages needs a look.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

Severity = Literal["degraded", "failed"]
Status = Literal["ok", "degraded", "failed"]

DEGRADED: Final = "degraded"
FAILED: Final = "failed"

COMMIT_FAILURES_DEGRADED: Final = 3
"""Commit requests of one consumer failing in a row from which health is degraded."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One thing wrong now, with a reason that names what and where."""

    severity: Severity
    reason: str


@dataclass(frozen=True, slots=True)
class HealthReport:
    """``status`` is the worst severity among the faults (``"ok"`` without any); ``reasons``
    lists every fault, the failed ones first."""

    status: Status
    reasons: tuple[str, ...] = ()

    @property
    def is_failed(self) -> bool:
        return self.status == FAILED

    def as_dict(self) -> dict[str, object]:
        """For a JSON health endpoint."""
        return {"status": self.status, "reasons": list(self.reasons)}


def assess(faults: Iterable[Fault]) -> HealthReport:
    ordered = sorted(faults, key=lambda fault: fault.severity != FAILED)
    if not ordered:
        return HealthReport("ok")
    status: Status = FAILED if ordered[0].severity == FAILED else DEGRADED
    return HealthReport(status, tuple(fault.reason for fault in ordered))
