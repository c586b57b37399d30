"""What a commit may take and what its failure means.

Pure: no I/O. aiokafka's ``commit()`` retries a lost or moved coordinator by itself, for as long
as it takes, so every commit the engine sends is bounded by the deadline it serves (the batch
interval, a rebalance flush, a shutdown). A commit that fails is sorted into a ``CommitFailure``
(``engine.commit_errors`` reads aiokafka's error types) and each failure has one decision.
"""

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

# The least time a final commit (shutdown, rebalance flush) gets after the wait for running
# messages used up its own budget: a healthy broker answers within milliseconds.
MIN_FINAL_COMMIT_SEC: Final = 2.0

# How long cancelled handlers get to unwind at the shutdown deadline before the final commit.
CANCEL_GRACE_SEC: Final = 1.0

# A stop returns at most this long after shutdown_timeout_sec: the cancelled handlers' grace and
# the final commit's least time. Stated in docs/operations.md ("When the broker goes away").
SHUTDOWN_MARGIN_SEC: Final = CANCEL_GRACE_SEC + MIN_FINAL_COMMIT_SEC


class CommitFailure(enum.Enum):
    """Why a commit did not go through."""

    TIMED_OUT = "no answer before its deadline"  # broker or coordinator unreachable
    COORDINATOR = "the group coordinator moved or is not available"
    REBALANCING = "the group is rebalancing"
    FENCED = "this member is no longer in the group's generation"  # evicted, or rejoined
    NOT_ASSIGNED = "a partition is no longer assigned to this consumer"
    METADATA_TOO_LARGE = "the broker refused the commit metadata as too large"
    REFUSED = "the broker refused it"  # authorization, an unknown topic, anything else


class CommitDecision(enum.Enum):
    """What to do with the commit points a failed commit carried."""

    # The partitions are still ours: the points stay and the next commit sends them again.
    KEEP = "keep"
    # The generation is gone and aiokafka rejoins, revoking every partition first: the finished
    # work is kept through the rejoin and committed in the new generation for each partition
    # the rejoin gives back to this consumer; the others' new owners read them again.
    AFTER_REJOIN = "after_rejoin"
    # Partitions no longer assigned are forgotten (never committed), the rest are sent again.
    DROP_UNASSIGNED = "drop_unassigned"
    # Sent again at once without the finished-offset metadata (the commit point alone).
    WITHOUT_METADATA = "without_metadata"


DECISIONS: Final[Mapping[CommitFailure, CommitDecision]] = MappingProxyType(
    {
        CommitFailure.TIMED_OUT: CommitDecision.KEEP,
        CommitFailure.COORDINATOR: CommitDecision.KEEP,
        CommitFailure.REBALANCING: CommitDecision.AFTER_REJOIN,
        CommitFailure.FENCED: CommitDecision.AFTER_REJOIN,
        CommitFailure.NOT_ASSIGNED: CommitDecision.DROP_UNASSIGNED,
        CommitFailure.METADATA_TOO_LARGE: CommitDecision.WITHOUT_METADATA,
        CommitFailure.REFUSED: CommitDecision.KEEP,
    }
)


def decide(failure: CommitFailure) -> CommitDecision:
    return DECISIONS[failure]


def final_commit_timeout(budget_left_sec: float) -> float:
    """A final commit gets what is left of its budget, at least ``MIN_FINAL_COMMIT_SEC``."""
    return max(budget_left_sec, MIN_FINAL_COMMIT_SEC)


def point_to_restore(kept_point: int | None, committed_now: int | None) -> int | None:
    """After a rejoin gave a partition back: the commit point kept from before it, if it is
    ahead of what the group has committed now (someone else may have moved it further)."""
    if kept_point is None:
        return None
    if committed_now is None or committed_now < kept_point:
        return kept_point
    return None
