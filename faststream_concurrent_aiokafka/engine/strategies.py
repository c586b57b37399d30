"""Where a lane's commit strategy is chosen, once, when the lane is made: the only module
that knows both guarantees (the import contracts keep the others from reaching the
exactly-once modules)."""

from collections.abc import Callable

from faststream_concurrent_aiokafka.core.settings import ConcurrencySettings
from faststream_concurrent_aiokafka.engine.at_least_once import AtLeastOnce
from faststream_concurrent_aiokafka.engine.committer import KafkaBatchCommitter
from faststream_concurrent_aiokafka.engine.state import CommitStrategy, ConsumerLane
from faststream_concurrent_aiokafka.engine.transactions import LaneTransactions


def strategy_for(
    settings: ConcurrencySettings, committer: KafkaBatchCommitter
) -> Callable[[ConsumerLane], CommitStrategy]:
    """What makes a new lane's strategy: exactly-once when its subscriber asked for it."""

    def make(lane: ConsumerLane) -> CommitStrategy:
        if lane.settings.exactly_once:
            return LaneTransactions(lane, settings)
        return AtLeastOnce(lane, committer, settings.rebalance_flush_timeout_sec)

    return make
