"""The benchmark's own arithmetic: pairing runs by repeat, the ABBA order, and a fleet run's
checks and steady window. Pure logic, no broker (the benchmark itself runs by hand)."""

from typing import Any

from bench.fleet import summarise
from bench.model import FleetResult, RunResult, RunSpec
from bench.plan import QUICK, Topics, abba, build
from bench.results import Results


def _run(label: str, repeat: int, seconds: float, handled: int = 1001) -> RunResult:
    return RunResult(
        label=label,
        kind="throughput",
        system="middleware",
        expected=handled,
        handled=handled,
        elapsed_sec=seconds,
        repeat=repeat,
    )


def test_paired_divides_runs_of_the_same_repeat_only() -> None:
    res = Results(
        [
            _run("a", 0, 1.0),  # 1000 msg/s
            _run("b", 0, 2.0),  # 500
            _run("b", 1, 1.0),
            _run("a", 1, 4.0),  # 250 against 1000
            _run("a", 2, 1.0),  # no partner in repeat 2
        ]
    )
    assert res.paired("a", "b") == [2.0, 0.25]
    assert res.paired("b", "a") == [0.5, 4.0]


def test_failed_runs_are_not_paired() -> None:
    failed = _run("b", 0, 1.0)
    failed.error = "boom"
    assert Results([_run("a", 0, 1.0), failed]).paired("a", "b") == []


def test_abba_reverses_every_other_repeat() -> None:
    assert abba([1, 2, 3], 0) == [1, 2, 3]
    assert abba([1, 2, 3], 1) == [3, 2, 1]


def test_the_other_package_runs_only_when_asked_and_each_repeat_has_one_of_each() -> None:
    topics = Topics.fresh()
    without = build(QUICK, "b:1", topics, lambda: "m", other=False)
    assert not [s for s in without if s.system == "other"]
    with_other = build(QUICK, "b:1", topics, lambda: "m", other=True)
    shapes = [s for s in with_other if s.label.startswith("shapes/dict/")]
    assert sorted(s.label for s in shapes) == [
        "shapes/dict/fs-ack-first",
        "shapes/dict/fs-workers-100",
        "shapes/dict/mw",
        "shapes/dict/other",
    ]
    assert {s.payload for s in shapes} == {"order"}
    fleet = [s for s in with_other if s.kind == "fleet"]
    assert {(s.workers, s.partitions) for s in fleet} == {(1, 8), (2, 8)}


SPEC = RunSpec(
    label="fleet/noop/w2",
    kind="fleet",
    system="middleware",
    bootstrap="b:1",
    topic="t",
    group="g",
    partitions=8,
    messages=6,
    workers=2,
)


def _report(ids: list[int], stamps: list[float], assignments: list[Any]) -> dict[str, Any]:
    return {"pid": 1, "ids": ids, "stamps": stamps, "assignments": assignments}


def test_fleet_counts_lost_and_twice_handled_messages() -> None:
    reports = [
        _report([0, 1, 2], [1.0, 2.0, 3.0], [(0.5, [0])]),
        _report([2, 3, 4], [1.5, 2.5, 3.5], [(0.5, [1])]),
    ]
    fleet = summarise(SPEC, reports, committed=6, end=6)
    assert (fleet.distinct, fleet.lost, fleet.duplicates) == (5, 1, 1)  # 5 never handled
    assert fleet.per_process == [3, 3]
    assert fleet.whole_sec == 2.5


def test_steady_window_starts_when_the_last_process_works_on_its_final_assignment() -> None:
    reports = [
        # Consumed alone first, was rebalanced at 2.0, got the partitions back at shutdown.
        _report(
            [0, 1, 2, 3],
            [1.0, 1.5, 2.5, 4.0],
            [(0.5, [0, 1]), (2.0, [0]), (9.0, [0, 1])],
        ),
        _report([4, 5], [2.2, 3.0], [(2.0, [1])]),
    ]
    fleet = summarise(SPEC, reports, committed=6, end=6)
    # From 2.5 (the first process's first message after 2.0) to 3.0 (the second runs out).
    assert fleet.steady_sec == 0.5
    assert fleet.steady_handled == 2  # 2.5 and 3.0
    assert fleet.assignments == 3  # the shutdown's is not counted
    assert fleet.steady_rate == 4.0


def test_a_process_that_handled_nothing_leaves_no_steady_window() -> None:
    reports = [_report([0, 1], [1.0, 2.0], [(0.5, [0, 1])]), _report([], [], [(3.0, [0])])]
    fleet = summarise(SPEC, reports, committed=6, end=6)
    assert isinstance(fleet, FleetResult)
    assert (fleet.steady_sec, fleet.steady_handled, fleet.steady_rate) == (0.0, 0, 0.0)
