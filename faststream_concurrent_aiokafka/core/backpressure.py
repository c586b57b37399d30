"""Backpressure decisions: how much to fetch, when the poll loop waits, pause or resume.

Pure: no I/O. The engine applies them (``engine.scheduler``); the numbers behind them come
from aiokafka's timeouts, passed in as plain values.
"""

from typing import Final

# A loop waiting this long without a free slot gets its consumer paused: with work this slow
# the re-fetch after the resume costs little.
MAX_WAIT_SEC: Final = 10.0

# Share of max_poll_interval_ms a waiting poll loop may use: aiokafka counts the time outside
# its fetch calls against that limit and leaves the group past it.
_WAIT_SHARE: Final = 0.5

# Share of the rebalance timeout a revocation flush may use: past the timeout Kafka finishes
# the rebalance without this member and refuses the flush's commit.
_FLUSH_SHARE: Final = 0.6


def fetch_size(
    *,
    lane_limit: int,
    lane_running: int,
    lane_backlog: int,
    global_limit: int,
    global_running: int,
    uncommitted_room: int,
) -> int:
    """How many records one fetch may bring: the free slots plus the room left in the
    backlog (so it never passes the limit), within the uncommitted budget; at least one."""
    free = min(lane_limit - lane_running, global_limit - global_running)
    room = max(0, free) + lane_limit - lane_backlog
    return max(1, min(room, uncommitted_room))


def backlog_full(backlog: int, limit: int) -> bool:
    """As many messages wait for a slot as the lane may run: its poll loop waits."""
    return backlog >= limit


def may_resume(backlog: int, limit: int) -> bool:
    """A paused lane fetches again once its backlog halved."""
    return backlog <= limit // 2


def over_budget(uncommitted: int, max_uncommitted: int) -> bool:
    """Admitted messages the commit point has not passed reached ``max_uncommitted_tasks``."""
    return uncommitted >= max_uncommitted


def wait_budget_sec(max_poll_interval_ms: int | None) -> float:
    """How long a full backlog may keep the poll loop waiting before pausing instead."""
    if max_poll_interval_ms is None:
        return MAX_WAIT_SEC
    return min(max_poll_interval_ms / 1000 * _WAIT_SHARE, MAX_WAIT_SEC)


def flush_budget_sec(rebalance_timeout_ms: int | None) -> float:
    """How long a revocation may wait for running messages: most of the rebalance timeout,
    since waiting longer only adds duplicates."""
    if rebalance_timeout_ms is None:
        return float("inf")
    return rebalance_timeout_ms / 1000 * _FLUSH_SHARE
