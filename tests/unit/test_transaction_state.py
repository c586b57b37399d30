"""The states of an exactly-once partition's transaction: the moves ``ALLOWED`` lists, and
nothing else."""

import itertools

import pytest

from faststream_concurrent_aiokafka.core.transaction_state import (
    ALLOWED,
    RUNNING,
    InvalidTransitionError,
    TransactionState,
    after_abort,
    after_loss,
    check_transition,
    is_transition_valid,
    released,
)

S = TransactionState


def test_a_forbidden_transition_raises_naming_both_states() -> None:
    with pytest.raises(InvalidTransitionError, match="cannot move from closed to open"):
        check_transition(S.CLOSED, S.OPEN, "t[0] of g")
    with pytest.raises(InvalidTransitionError, match="from lost to open"):
        check_transition(S.LOST, S.OPEN, "t[0] of g")  # only a new assignment sets it up again


def test_the_life_of_a_partition_is_a_path_of_allowed_moves() -> None:
    path = [S.STARTING, S.OPEN, S.COMMITTING, S.ABORTING, S.OPEN, S.COMMITTING, S.OPEN]
    path += [S.RELEASING, S.WINDING_UP, S.CLOSED]
    for current, target in itertools.pairwise(path):
        check_transition(current, target, "t[0]")


def test_every_state_is_reachable_and_closed_is_the_end() -> None:
    reached = {S.STARTING}
    for targets in ALLOWED.values():
        reached |= targets
    assert reached == set(S)
    assert ALLOWED[S.CLOSED] == {S.CLOSED}
    assert all(
        is_transition_valid(state, S.CLOSED) == (state in {S.WINDING_UP, S.CLOSED}) for state in S
    )


def test_a_release_ends_an_open_transaction_and_an_abort_or_a_loss_after_it_stays_released() -> (
    None
):
    assert {released(state) for state in RUNNING} == {S.RELEASING}
    assert released(S.STARTING) is S.WINDING_UP
    assert after_abort(S.COMMITTING) is S.ABORTING
    assert after_abort(S.RELEASING) is S.WINDING_UP
    assert after_loss(S.OPEN) is S.LOST
    assert after_loss(S.WINDING_UP) is S.WINDING_UP
    # Each is a move the table allows from every state it is made from.
    for state in S:
        assert is_transition_valid(state, after_loss(state))
        assert is_transition_valid(state, released(state))
    for state in (S.COMMITTING, S.RELEASING, S.WINDING_UP, S.CLOSED):
        assert is_transition_valid(state, after_abort(state))
