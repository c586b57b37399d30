"""The runs of one report, looked up by label and paired by repeat (no plotting here)."""

import statistics
from collections.abc import Iterable

from bench.model import RunResult


class Results:
    def __init__(self, results: Iterable[RunResult]) -> None:
        self.all = list(results)

    def of(self, label: str) -> list[RunResult]:
        return [r for r in self.all if r.label == label and r.ok]

    def one(self, label: str) -> RunResult | None:
        runs = self.of(label)
        return runs[0] if runs else None

    def errors(self) -> list[RunResult]:
        return [r for r in self.all if not r.ok]

    def median_rate(self, label: str) -> float | None:
        rates = [rate_of(r) for r in self.of(label) if r.handled > 1]
        return statistics.median(rates) if rates else None

    def paired(self, label: str, against: str) -> list[float]:
        """Ratios of the runs of ``label`` to the runs of ``against`` of the same repeat (made
        back to back), in repeat order."""
        others = {r.repeat: r for r in self.of(against) if rate_of(r) > 0}
        return [
            rate_of(r) / rate_of(others[r.repeat])
            for r in sorted(self.of(label), key=lambda r: r.repeat)
            if r.repeat in others and rate_of(r) > 0
        ]


def rate_of(run: RunResult) -> float:
    """msg/s of a run; for a fleet run, its rate once every process consumed (bench.fleet)."""
    if run.fleet is not None:
        return run.fleet.steady_rate
    return run.throughput
