"""The dead-letter brake's pure state: when it lets a failure through and when it trips."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faststream_concurrent_aiokafka.core.dead_letter_brake import DeadLetterBrake
from faststream_concurrent_aiokafka.core.failure_policy import FailurePolicy, Outcome


def run(brake: DeadLetterBrake, outcomes: str) -> list[str | None]:
    """Feed ``outcomes`` ('s' success, 'f' failure); the verdict of each failure."""
    verdicts = []
    for outcome in outcomes:
        if outcome == "s":
            brake.succeeded += 1
        else:
            verdicts.append(brake.record_failure())
    return verdicts


def test_a_brake_without_limits_never_trips() -> None:
    brake = DeadLetterBrake()

    assert not brake.enabled
    assert run(brake, "f" * 10_000) == [None] * 10_000
    assert not brake.tripped


def test_max_consecutive_failures_lets_that_many_through_and_trips_on_the_next() -> None:
    brake = DeadLetterBrake(max_consecutive_failures=3)

    verdicts = run(brake, "ffff")

    assert verdicts[:3] == [None, None, None]
    assert verdicts[3] == "4 messages in a row failed (max_consecutive_failures=3)"
    assert brake.tripped
    assert brake.cause == verdicts[3]


def test_a_success_resets_the_run_of_failures() -> None:
    brake = DeadLetterBrake(max_consecutive_failures=3)

    assert run(brake, "fffsfffsfff") == [None] * 9
    assert not brake.tripped


def test_once_tripped_every_failure_is_held_even_after_successes() -> None:
    brake = DeadLetterBrake(max_consecutive_failures=1)
    run(brake, "ff")

    later = run(brake, "sssf")

    assert later == [brake.cause]


def test_failure_ratio_trips_when_more_than_that_share_of_the_window_failed() -> None:
    brake = DeadLetterBrake(max_failure_ratio=0.5, failure_ratio_window=10)

    # 5 of the last 10 failed: not more than half.
    assert run(brake, "sfsfsfsfsf") == [None] * 5
    # The window slides: the last 10 are now "fsfsfsfsf" + "f": 6 failures.
    assert run(brake, "f") == ["6 of the last 10 messages failed (max_failure_ratio=0.5)"]


def test_failure_ratio_waits_until_the_window_is_full() -> None:
    brake = DeadLetterBrake(max_failure_ratio=0.1, failure_ratio_window=100)

    assert run(brake, "f" * 99) == [None] * 99
    assert run(brake, "f") == ["100 of the last 100 messages failed (max_failure_ratio=0.1)"]


def _expected_trip(
    outcomes: str, consecutive: int | None, ratio: float | None, window: int
) -> int | None:
    """Index (among failures) of the failure that trips the brake, by a plain reading."""
    seen: list[str] = []
    failures = 0
    run_length = 0
    for outcome in outcomes:
        seen.append(outcome)
        if outcome == "s":
            run_length = 0
            continue
        run_length += 1
        if consecutive is not None and run_length > consecutive:
            return failures
        last = seen[-window:]
        if ratio is not None and len(seen) >= window and last.count("f") > ratio * window:
            return failures
        failures += 1
    return None


@settings(max_examples=300, deadline=None)
@given(
    outcomes=st.text(alphabet="sf", max_size=300),
    consecutive=st.none() | st.integers(1, 20),
    ratio=st.none() | st.floats(0.05, 0.95),
    window=st.integers(1, 50),
)
def test_the_brake_trips_exactly_where_a_plain_reading_of_its_limits_says(
    outcomes: str, consecutive: int | None, ratio: float | None, window: int
) -> None:
    brake = DeadLetterBrake(
        max_consecutive_failures=consecutive, max_failure_ratio=ratio, failure_ratio_window=window
    )

    verdicts = run(brake, outcomes)

    trip = _expected_trip(outcomes, consecutive, ratio, window)
    if trip is None:
        assert all(verdict is None for verdict in verdicts)
    else:
        assert all(verdict is None for verdict in verdicts[:trip])
        assert all(verdict is not None for verdict in verdicts[trip:])


# ---- no_retry in the failure policy -------------------------------------------------------


class ControlError(Exception):
    pass


class DoneError(Exception):
    pass


def test_no_retry_errors_are_dead_lettered_at_once_and_others_retried() -> None:
    policy = FailurePolicy(done=(DoneError,)).with_no_retry((KeyError,))

    assert policy.classify(KeyError()) is Outcome.DEAD_LETTER
    assert policy.classify(ValueError()) is Outcome.RETRY
    assert policy.classify(None) is Outcome.DONE


@pytest.mark.parametrize("listed", [(Exception,), (DoneError,)])
def test_no_retry_never_overrides_the_control_exceptions(
    listed: tuple[type[Exception], ...],
) -> None:
    policy = FailurePolicy(done=(DoneError,), stop=(ControlError,)).with_no_retry(listed)

    assert policy.classify(DoneError()) is Outcome.DONE
    assert policy.classify(ControlError()) is Outcome.STOP
