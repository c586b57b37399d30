"""The token bucket of max_messages_per_sec: its starting burst, what it banks after, its
wait, and the rate it never exceeds whatever the callers take."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faststream_concurrent_aiokafka.core.rate_limit import TokenBucket

HYPOTHESIS = settings(max_examples=150, deadline=None)


def test_a_new_bucket_holds_one_seconds_worth() -> None:
    bucket = TokenBucket(300, now=0.0)

    assert bucket.available(0.0) == 300
    assert bucket.available(0.9) == 300  # nothing added on top of the starting burst
    assert bucket.wait_sec(0.0) == 0


def test_the_starting_burst_not_used_in_the_first_second_is_dropped() -> None:
    bucket = TokenBucket(300, now=0.0)
    bucket.take(100, 0.5)

    assert bucket.available(0.99) == 200
    assert bucket.available(1.0) == 30  # a tenth of a second's worth banked from now on


def test_after_the_first_second_a_tenth_of_a_seconds_worth_is_banked() -> None:
    bucket = TokenBucket(300, now=0.0)
    bucket.take(300, 0.0)

    assert bucket.available(0.05) == 15
    assert bucket.available(60.0) == 30


def test_a_rate_below_one_still_lets_one_message_through() -> None:
    bucket = TokenBucket(0.5, now=0.0)

    assert bucket.available(0.0) == 1
    bucket.take(1, 0.0)
    assert bucket.wait_sec(0.0) == pytest.approx(2.0)
    assert bucket.available(1.9) == 0
    assert bucket.available(2.0) == 1


def test_an_empty_bucket_says_how_long_until_the_next_token() -> None:
    bucket = TokenBucket(100, now=10.0)
    bucket.take(100, 10.0)

    assert bucket.available(10.0) == 0
    assert bucket.wait_sec(10.0) == pytest.approx(0.01)
    assert bucket.available(10.0105) == 1


def test_a_slow_rate_banks_one_token() -> None:
    bucket = TokenBucket(5, now=0.0)
    bucket.take(5, 0.0)

    assert bucket.available(3600.0) == 1


def test_taking_more_than_there_is_leaves_a_debt_paid_first() -> None:
    bucket = TokenBucket(10, now=0.0)
    bucket.take(30, 0.0)  # 20 more than the starting burst

    assert bucket.wait_sec(0.0) == pytest.approx(2.1)
    assert bucket.available(1.9) == 0
    assert bucket.available(2.1) == 1


def test_time_going_backwards_changes_nothing() -> None:
    bucket = TokenBucket(10, now=5.0)
    bucket.take(10, 5.0)

    assert bucket.available(4.0) == 0
    assert bucket.available(5.1) == 1


@pytest.mark.parametrize("rate", [0, -1, math.nan, math.inf])
def test_a_rate_that_is_not_finite_and_positive_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="finite rate > 0"):
        TokenBucket(rate, now=0.0)


rates = st.floats(min_value=0.1, max_value=10_000, allow_nan=False)
steps = st.lists(
    st.tuples(st.floats(min_value=0, max_value=0.5), st.integers(min_value=0, max_value=50)),
    min_size=1,
    max_size=200,
)


@HYPOTHESIS
@given(rate=rates, steps=steps)
def test_no_window_admits_more_than_the_rate_and_its_burst(
    rate: float, steps: list[tuple[float, int]]
) -> None:
    """Callers taking at most what ``available`` offers: any interval [a, b] of the run
    admits at most a second's worth + rate * (b - a) messages, and one starting a second
    or more after the bucket was made at most a tenth of a second's worth + rate * (b - a)
    (the bucket's promise: no one-second window after the first passes 1.1 x rate)."""
    bucket = TokenBucket(rate, now=0.0)
    now, taken = 0.0, []
    for advance, wanted in steps:
        now += advance
        count = min(wanted, bucket.available(now))
        bucket.take(count, now)
        taken.append((now, count))
    for i, (start, _) in enumerate(taken):
        burst = max(1.0, rate * (0.1 if start >= 1.0 else 1.0))
        total = 0
        for end, count in taken[i:]:
            total += count
            assert total <= burst + rate * (end - start) + 1e-6


@HYPOTHESIS
@given(rate=rates, steps=steps)
def test_waiting_as_told_always_finds_a_token(rate: float, steps: list[tuple[float, int]]) -> None:
    """The engine sleeps ``wait_sec`` and expects a token then: the promise holds even after
    debts (taking more than there was)."""
    bucket = TokenBucket(rate, now=0.0)
    now = 0.0
    for advance, wanted in steps:
        now += advance
        bucket.take(wanted, now)
        wait = bucket.wait_sec(now)
        assert wait >= 0
        now += wait * (1 + 1e-9) + 1e-12
        assert bucket.available(now) >= 1


@HYPOTHESIS
@given(rate=st.floats(min_value=1, max_value=5_000, allow_nan=False))
def test_a_greedy_caller_gets_the_rate_over_time(rate: float) -> None:
    """Taking everything offered, every millisecond for 10 s: the starting burst and 10 s
    of the rate, within two tokens (whole ones are taken) and what the bank's cap drops
    between two looks (at most rate x 1 ms for each banked-full wait)."""
    bucket = TokenBucket(rate, now=0.0)
    total = 0
    for step in range(10_001):
        now = step * 0.001
        count = bucket.available(now)
        bucket.take(count, now)
        total += count
    expected = max(1.0, rate) + rate * 10
    capped = rate * 0.001 * (rate * 10) / bucket.banked
    assert expected - 2 - capped <= total <= expected + 1e-6 * rate
