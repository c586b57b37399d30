"""Health as operators read it: a status and the reasons for it.

Pure: no I/O. The engine lists what is wrong now as ``Fault``s; ``assess`` turns them into a
report. ``failed`` means the processing cannot go on by itself (restart-worthy), ``degraded``
that it goes on but something it depends on or one of its messages needs a look, ``starting``
that a consumer has not been given its first partition assignment yet (not ready, but alive).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

Severity = Literal["starting", "degraded", "failed"]
Status = Literal["ok", "starting", "degraded", "failed"]

STARTING: Final = "starting"
DEGRADED: Final = "degraded"
FAILED: Final = "failed"
_RANK: Final = {STARTING: 0, DEGRADED: 1, FAILED: 2}

COMMIT_FAILURES_DEGRADED: Final = 3
"""Commit requests of one consumer failing in a row from which health is degraded."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One thing wrong now, with a reason that names what and where."""

    severity: Severity
    reason: str


@dataclass(frozen=True, slots=True)
class HealthReport:
    """``status`` is the worst severity among the faults (``"ok"`` without any; failed over
    degraded over starting); ``reasons`` lists every fault, the worst first."""

    status: Status
    reasons: tuple[str, ...] = ()

    @property
    def is_failed(self) -> bool:
        """For liveness: only ``failed`` is worth a restart."""
        return self.status == FAILED

    @property
    def is_ready(self) -> bool:
        """For readiness: processing messages (``ok`` or ``degraded``), not starting or failed."""
        return self.status in ("ok", DEGRADED)

    def as_dict(self) -> dict[str, object]:
        """For a JSON health endpoint."""
        return {"status": self.status, "reasons": list(self.reasons)}


def assess(faults: Iterable[Fault]) -> HealthReport:
    ordered = sorted(faults, key=lambda fault: -_RANK[fault.severity])
    if not ordered:
        return HealthReport("ok")
    return HealthReport(ordered[0].severity, tuple(fault.reason for fault in ordered))
