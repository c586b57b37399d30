"""The adaptive concurrency limit: bounds, growth without queueing, shrinking on latency and
failures, the baseline probe; and where it settles in the benchmark's downstream models (a
discrete-event simulation, no clock: the logic, not a speed)."""

import heapq
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faststream_concurrent_aiokafka.core.adaptive_limit import (
    INITIAL,
    PROBE_EVERY_SEC,
    AdaptiveLimit,
)

HYPOTHESIS = settings(max_examples=100, deadline=None)


def feed(
    limit: AdaptiveLimit,
    latency: float,
    *,
    windows: int,
    now: float = 0.0,
    failed: bool = False,
    in_flight: int | None = None,
) -> float:
    """``windows`` windows of calls all ``latency`` long, run side by side: each window's
    calls start when the last one closed and end spread over one latency (as many calls a
    second as the limit allows); returns the time reached."""
    for _ in range(windows):
        closed = limit.windows
        start, size, i = now, max(10, limit.limit), 0
        while limit.windows == closed:
            # A little after ``latency``: no rounding may put a start before a change.
            now = start + latency * (1.001 + i / size)
            i += 1
            limit.sample(
                latency,
                failed=failed,
                in_flight=limit.limit if in_flight is None else in_flight,
                now=now,
            )
    return now


def test_starts_at_the_default_limit_or_the_ceiling() -> None:
    assert AdaptiveLimit(1000, 0.0).limit == INITIAL
    assert AdaptiveLimit(4, 0.0).limit == 4


@pytest.mark.parametrize(("floor", "ceiling"), [(1, 1), (0, 5), (5, 5), (6, 5)])
def test_a_floor_not_below_the_ceiling_is_refused(floor: int, ceiling: int) -> None:
    with pytest.raises(ValueError, match="floor < ceiling"):
        AdaptiveLimit(ceiling, 0.0, floor=floor)


def test_steady_latency_grows_the_limit_to_the_ceiling() -> None:
    limit = AdaptiveLimit(1000, 0.0)

    feed(limit, 0.01, windows=100)

    assert limit.limit == 1000


def test_a_limit_not_used_does_not_grow() -> None:
    limit = AdaptiveLimit(1000, 0.0)

    feed(limit, 0.01, windows=50, in_flight=2)

    assert limit.limit == INITIAL


def test_latency_growing_with_load_shrinks_the_limit() -> None:
    limit = AdaptiveLimit(1000, 0.0)
    now = feed(limit, 0.02, windows=20)  # the baseline, and room to grow
    before = limit.limit

    feed(limit, 0.2, windows=5, now=now)

    assert limit.limit < before / 2
    assert limit.baseline_sec == pytest.approx(0.02)


def test_failures_cut_the_limit_down_to_the_floor_and_no_further() -> None:
    limit = AdaptiveLimit(100, 0.0, floor=3)
    now = feed(limit, 0.01, windows=40)
    assert limit.limit == 100

    feed(limit, 0.01, windows=60, failed=True, now=now)

    assert limit.limit == 3


def test_a_few_failures_do_not_cut_the_limit() -> None:
    limit = AdaptiveLimit(100, 0.0)
    now = 0.0
    for i in range(2000):
        now += 0.01
        limit.sample(0.01, failed=i % 20 == 0, in_flight=limit.limit, now=now)

    assert limit.limit == 100


def test_fast_failures_do_not_lower_the_baseline() -> None:
    limit = AdaptiveLimit(100, 0.0)
    now = feed(limit, 0.05, windows=3)
    for _ in range(5):
        now += 0.001
        limit.sample(0.001, failed=True, in_flight=limit.limit, now=now)

    assert limit.baseline_sec == pytest.approx(0.05)


def test_calls_started_under_an_older_limit_are_not_counted() -> None:
    limit = AdaptiveLimit(100, 0.0)
    now = feed(limit, 0.01, windows=1)  # the limit grew at `now`
    closed = limit.windows

    for _ in range(200):
        limit.sample(0.5, failed=False, in_flight=limit.limit, now=now + 0.1)

    assert limit.windows == closed


def test_the_baseline_is_measured_again_at_half_the_limit() -> None:
    """A downstream that became slower for good: the old baseline would call every call
    queued; the probe relearns it and the limit recovers."""
    limit = AdaptiveLimit(1000, 0.0)
    now = feed(limit, 0.01, windows=60)
    assert limit.limit == 1000

    now = feed(limit, 0.05, windows=40, now=now)  # slower: the old baseline says "queue"
    assert limit.limit < 1000
    now = feed(limit, 0.05, windows=1, now=max(now, PROBE_EVERY_SEC) + PROBE_EVERY_SEC)
    probing = limit.limit
    feed(limit, 0.05, windows=1, now=now)

    assert limit.baseline_sec == pytest.approx(0.05)
    assert limit.limit >= probing


@HYPOTHESIS
@given(
    ceiling=st.integers(min_value=2, max_value=5000),
    samples=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=10.0, allow_nan=False),
            st.booleans(),
            st.integers(min_value=0, max_value=6000),
            st.floats(min_value=0.0, max_value=2.0, allow_nan=False),
        ),
        max_size=400,
    ),
)
def test_the_limit_stays_between_the_floor_and_the_ceiling(
    ceiling: int, samples: list[tuple[float, bool, int, float]]
) -> None:
    limit = AdaptiveLimit(ceiling, 0.0)
    now = 0.0
    for latency, failed, in_flight, advance in samples:
        now += advance
        limit.sample(latency, failed=failed, in_flight=in_flight, now=now)
        assert 1 <= limit.limit <= ceiling


# ---- the benchmark's downstream models, simulated -----------------------------------


def quadratic(in_flight: int) -> float:
    """20 ms up to 20 calls in flight, 20 ms x (in_flight / 20)^2 beyond, at most 5 s."""
    return min(5.0, 0.02 * max(1.0, (in_flight / 20) ** 2))


def flat(_in_flight: int) -> float:
    return 0.01


def simulate(model: Callable[[int], float], limit: AdaptiveLimit | int, seconds: float) -> float:
    """Calls per second with a backlog that never runs dry: each call's latency is fixed by
    the calls in flight when it starts."""
    now, done = 0.0, 0
    running: list[tuple[float, float]] = []
    while now < seconds:
        allowed = limit if isinstance(limit, int) else limit.limit
        while len(running) < allowed:
            latency = model(len(running) + 1)
            heapq.heappush(running, (now + latency, latency))
        now, latency = heapq.heappop(running)
        done += 1
        if isinstance(limit, AdaptiveLimit):
            limit.sample(latency, failed=False, in_flight=len(running) + 1, now=now)
    return done / seconds


def test_in_the_quadratic_model_it_reaches_most_of_the_best_fixed_limit() -> None:
    best = simulate(quadratic, 20, 30)
    assert simulate(quadratic, 1000, 30) < 0.2 * best

    assert simulate(quadratic, AdaptiveLimit(1000, 0.0), 30) >= 0.8 * best


def test_in_the_flat_model_it_reaches_most_of_the_ceiling() -> None:
    assert simulate(flat, AdaptiveLimit(1000, 0.0), 10) >= 0.9 * simulate(flat, 1000, 10)


def test_latency_that_buys_throughput_does_not_shrink_the_limit() -> None:
    """A handler bound by the event loop: past 50 calls in flight each call waits longer but
    as many end per second (latency grows with the limit, the rate holds), so there is no
    reason to give the concurrency up; the limit climbs to the ceiling."""
    limit = AdaptiveLimit(1000, 0.0)
    now = 0.0
    for _ in range(600):
        now = feed(limit, 0.01 * max(1.0, limit.limit / 50), windows=1, now=now)

    assert limit.limit == 1000


def test_latency_that_costs_throughput_shrinks_the_limit() -> None:
    """The same, but the downstream slows with the square of the calls past 20: the rate
    falls as the limit grows, and the limit stays near 20 (above it by the time the
    smoothed rate takes to show the fall)."""
    limit = AdaptiveLimit(1000, 0.0)
    now = 0.0
    seen = []
    for _ in range(300):
        now = feed(limit, 0.02 * max(1.0, (limit.limit / 20) ** 2), windows=1, now=now)
        seen.append(limit.limit)

    settled = sorted(seen[100:])
    assert 18 <= settled[len(settled) // 2] <= 32
    assert settled[-1] <= 45
