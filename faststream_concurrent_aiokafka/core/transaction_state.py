"""The states of an exactly-once partition's transaction and the moves allowed between them.

Pure: one state at a time, every move checked against ``ALLOWED``, so a partition never holds
a combination of flags that means nothing (aiokafka's transaction manager works the same way).
"""

import enum
from typing import Final


class TransactionState(enum.Enum):
    """Where one input partition of an exactly-once lane stands."""

    STARTING = "starting"  # its producer starts: nothing is admitted, no transaction yet
    OPEN = "open"  # a transaction and its gate are open: messages run and publish into it
    COMMITTING = "committing"  # the gate is closed: its messages finish, then commit or abort
    ABORTING = "aborting"  # its messages may no longer publish; the abort runs, then it reopens
    LOST = "lost"  # its producer is gone (fenced, broken, no answer): a new assignment is due
    RELEASING = "releasing"  # released with a transaction open: it ends, none begins after it
    WINDING_UP = "winding up"  # released with no transaction open: only the producer is left
    CLOSED = "closed"  # released and its producer closed


_S = TransactionState

ALLOWED: Final[dict[TransactionState, frozenset[TransactionState]]] = {
    _S.STARTING: frozenset({_S.OPEN, _S.LOST, _S.WINDING_UP}),
    _S.OPEN: frozenset({_S.COMMITTING, _S.LOST, _S.RELEASING}),
    _S.COMMITTING: frozenset({_S.OPEN, _S.ABORTING, _S.LOST, _S.RELEASING}),
    _S.ABORTING: frozenset({_S.OPEN, _S.LOST, _S.WINDING_UP}),
    _S.LOST: frozenset({_S.LOST, _S.WINDING_UP}),
    _S.RELEASING: frozenset({_S.RELEASING, _S.WINDING_UP}),
    _S.WINDING_UP: frozenset({_S.WINDING_UP, _S.CLOSED}),
    _S.CLOSED: frozenset({_S.CLOSED}),
}
"""From each state, the states it may move to. A state listed for itself may be entered
again: a second release; a loss, or an abort, that a release outran (it stays released)."""

RUNNING: Final = frozenset({_S.OPEN, _S.COMMITTING, _S.RELEASING})
"""States with a transaction its messages run in (and, past the gate, publish into)."""


def has_transaction(state: TransactionState) -> bool:
    """``state in RUNNING``, by identity: an enum's hash is a Python call, and this is read
    for every message and every publish."""
    return state is _S.OPEN or state is _S.COMMITTING or state is _S.RELEASING


class InvalidTransitionError(RuntimeError):
    """A move ``ALLOWED`` does not list: a bug in the caller, never a broker's doing."""


def is_transition_valid(current: TransactionState, target: TransactionState) -> bool:
    return target in ALLOWED[current]


def check_transition(current: TransactionState, target: TransactionState, where: str) -> None:
    """Raise ``InvalidTransitionError`` unless ``current`` may move to ``target``."""
    if target not in ALLOWED[current]:
        msg = f"transaction of {where} cannot move from {current.value} to {target.value}"
        raise InvalidTransitionError(msg)


_LEFT: Final = frozenset({_S.RELEASING, _S.WINDING_UP, _S.CLOSED})


def after_abort(current: TransactionState) -> TransactionState:
    """Where an abort moves a partition: it reopens after it, unless it was released."""
    if current in _LEFT:
        return _S.CLOSED if current is _S.CLOSED else _S.WINDING_UP
    return _S.ABORTING


def after_loss(current: TransactionState) -> TransactionState:
    """Where losing its producer moves a partition: lost, unless it was released."""
    if current in _LEFT:
        return _S.CLOSED if current is _S.CLOSED else _S.WINDING_UP
    return _S.LOST


def released(current: TransactionState) -> TransactionState:
    """Where a release moves a partition: an open transaction still has to end."""
    if current is _S.CLOSED:
        return _S.CLOSED
    return _S.RELEASING if current in RUNNING else _S.WINDING_UP
