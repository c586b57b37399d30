"""The engine's facade: its lanes, start and close, admission gates, rebalance and drain.

Admission and settling live in ``scheduler``, running in ``runner``, commits in
``committer``; this module ties them together and owns what spans lanes: which lanes exist,
what happens to a lane's partitions when they move, and how work ends on shutdown.
"""

import asyncio
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from faststream_concurrent_aiokafka.compat import aiokafka as aiokafka_compat
from faststream_concurrent_aiokafka.core import backpressure
from faststream_concurrent_aiokafka.core.commit_policy import final_commit_timeout
from faststream_concurrent_aiokafka.core.dead_letter_brake import DeadLetterBrake
from faststream_concurrent_aiokafka.core.health import DEGRADED, FAILED, Fault
from faststream_concurrent_aiokafka.core.histogram import Histogram
from faststream_concurrent_aiokafka.core.settings import ConcurrencySettings
from faststream_concurrent_aiokafka.engine.committer import KafkaBatchCommitter
from faststream_concurrent_aiokafka.engine.lag import LagReader
from faststream_concurrent_aiokafka.engine.processing_time import timed
from faststream_concurrent_aiokafka.engine.scheduler import Scheduler
from faststream_concurrent_aiokafka.engine.state import (
    ConsumerLane,
    Counters,
    Dropped,
    Faults,
    Pipeline,
    Tally,
)
from faststream_concurrent_aiokafka.engine.strategies import strategy_for
from faststream_concurrent_aiokafka.engine.watchdog import Watchdog


class Engine:
    """Runs the messages of any number of consumers within one set of limits, and keeps each
    consumer's commit point behind its first unfinished message."""

    def __init__(self, settings: ConcurrencySettings | None = None) -> None:
        self.settings = settings or ConcurrencySettings()
        self._lanes: dict[AIOKafkaConsumer, ConsumerLane] = {}
        self._tally = Tally()
        # Per pipeline (subscriber), kept after its lanes are gone: totals only ever grow.
        self._counters: dict[Pipeline, Counters] = {}
        # Per pipeline that measures its processing time (measure_processing_time), kept too.
        self._processing_times: dict[Pipeline, Histogram] = {}
        self.faults = Faults()
        self.committer = KafkaBatchCommitter(
            self._lanes.values,
            commit_batch_size=self.settings.commit_batch_size,
            commit_batch_timeout_sec=self.settings.commit_batch_timeout_sec,
            commit_timeout_sec=self.settings.commit_timeout_sec,
        )
        self.scheduler = Scheduler(
            self.settings,
            lanes=self._lanes,
            committer=self.committer,
            tally=self._tally,
        )
        self._make_strategy = strategy_for(self.settings, self.committer)
        self.watchdog = Watchdog(self._lanes.values)
        self.lag = LagReader(self._lanes.values)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.is_running = False

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.committer.start()
        self.watchdog.start()
        self.lag.start()
        self.is_running = True

    async def close(self) -> None:
        """Drain every lane (up to ``shutdown_timeout_sec``), commit, stop the committer."""
        lanes = self.lanes
        await self.drain(lanes, self.settings.shutdown_timeout_sec)
        self.scheduler.cancel_retry_timer()
        self.retire(lanes)
        self.is_running = False
        await self.watchdog.close()
        await self.lag.close()
        await self.committer.close()

    @property
    def brake_faults(self) -> list[Fault]:
        """One fault per subscriber whose dead-letter brake tripped: which, where, why;
        degraded while a brake that recovers cools down, failed for one that never does."""
        faults: dict[int, Fault] = {}
        for lane in self._lanes.values():
            brake = lane.brake
            if not brake.tripped or id(brake) in faults:
                continue
            if brake.recovers:
                faults[id(brake)] = Fault(DEGRADED, _cooling_down(lane.name, brake, self.loop))
            else:
                faults[id(brake)] = Fault(
                    FAILED,
                    f"{lane.name}: dead-letter brake tripped at {brake.tripped_at}: {brake.cause}; "
                    "nothing from there on is committed, restart after the fix",
                )
        return list(faults.values())

    @property
    def brake_reasons(self) -> list[str]:
        """The brake faults' lines."""
        return [fault.reason for fault in self.brake_faults]

    @property
    def in_flight(self) -> int:
        return self.scheduler.running

    @property
    def uncommitted(self) -> int:
        """Admitted messages no commit point has passed yet, over all lanes."""
        return self._tally.count

    def counters_by_pipeline(self) -> list[tuple[Pipeline, Counters]]:
        return list(self._counters.items())

    def processing_time(self, pipeline: Pipeline) -> Histogram | None:
        """The pipeline's processing time, if it measures it."""
        return self._processing_times.get(pipeline)

    @property
    def counters(self) -> Counters:
        """Every pipeline's counters added up."""
        total = Counters()
        for counters in self._counters.values():
            for name in Counters.__slots__:
                setattr(total, name, getattr(total, name) + getattr(counters, name))
        return total

    # ---- lanes -----------------------------------------------------------------------

    @property
    def lanes(self) -> list[ConsumerLane]:
        return list(self._lanes.values())

    def lanes_of(self, owner: object) -> list[ConsumerLane]:
        return [lane for lane in self._lanes.values() if lane.pipeline.owner is owner]

    def lane_for(self, consumer: AIOKafkaConsumer, pipeline: Pipeline) -> ConsumerLane:
        lane = self._lanes.get(consumer)
        if lane is None or lane.pipeline is not pipeline:
            if lane is not None:
                lane.offsets.retire_from_tally()
            counters = self._counters.setdefault(pipeline, Counters())
            # The pipeline's other consumers share one brake: it stops the whole subscriber.
            brake = next((o.brake for o in self._lanes.values() if o.pipeline is pipeline), None)
            lane = ConsumerLane(
                consumer,
                pipeline,
                pipeline.settings(),
                tally=self._tally,
                counters=counters,
                faults=self.faults,
                brake=brake,
                strategy=self._make_strategy,
            )
            if lane.settings.measure_processing_time:
                histogram = self._processing_times.setdefault(pipeline, Histogram())
                lane.process = timed(lane.process, histogram)
            self._lanes[consumer] = lane
            self.watchdog.wake()
            if lane.brake.tripped:
                lane.close_admission()
        return lane

    def retire(self, lanes: Iterable[ConsumerLane]) -> None:
        for lane in lanes:
            if self._lanes.pop(lane.consumer, None) is lane:
                lane.offsets.retire_from_tally()

    # ---- admission -------------------------------------------------------------------

    def admit(self, lane: ConsumerLane, records: "Iterable[ConsumerRecord[Any, Any]]") -> None:
        """Take fetched records into the lane (see ``Scheduler.admit``). Nothing is taken
        while the lane closes or the engine is stopped: untracked, so never committed past,
        the next owner reads it again."""
        if lane.closing or not self.is_running:
            return
        if lane.brake.tripped and not lane.brake.recovers:  # by another consumer of it
            lane.close_admission()
            return
        self.committer.check_alive()
        self.scheduler.admit(lane, lane.strategy.admissible(records))

    def admit_batch(
        self, lane: ConsumerLane, records: "tuple[ConsumerRecord[Any, Any], ...]"
    ) -> None:
        """A ``batch=True`` subscriber's records, as one message."""
        if lane.closing or not self.is_running or not records:
            return
        if lane.brake.tripped:
            lane.close_admission()
            return
        self.committer.check_alive()
        self.scheduler.admit_batch(lane, records)

    # ---- rebalance -------------------------------------------------------------------

    async def partitions_assigned(self, lane: ConsumerLane, assigned: set[TopicPartition]) -> None:
        """Re-apply pauses; the lane's strategy learns where each partition starts."""
        lane.counters.rebalances += 1
        lane.counters.assignments += len(assigned)
        lane.fetching.reapply()
        await lane.strategy.assign(assigned)

    async def release_partitions(
        self, lane: ConsumerLane, partitions: Iterable[TopicPartition], timeout: float
    ) -> None:
        """Before partitions move: let their running work finish, commit it, forget them.

        Running work gets ``timeout`` (capped by the consumer's rebalance timeout), the commit
        (the lane's strategy's ``release``) what is left of that and at least
        ``MIN_FINAL_COMMIT_SEC``."""
        revoked = lane.strategy.owned(partitions)
        if not revoked:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        dropped = lane.drop_waiting(revoked)
        budget = backpressure.flush_budget_sec(aiokafka_compat.rebalance_timeout_ms(lane.consumer))
        wait = min(timeout, budget)
        running = {message for message in lane.running if message.touches(revoked)}
        await self.scheduler.wait_settled(running, wait)
        # Those that failed meanwhile and wait for a retry are left uncommitted too.
        dropped = dropped.plus(lane.drop_waiting(revoked))
        left = wait - (loop.time() - started)
        await lane.strategy.release(revoked, final_commit_timeout(left))
        self._retire_partitions(lane, revoked, dropped)

    def _retire_partitions(
        self, lane: ConsumerLane, revoked: set[TopicPartition], dropped: Dropped
    ) -> None:
        for tp in revoked:
            lane.offsets.retire(tp)
        # Retiring gave their messages' share of the uncommitted budget back: a lane paused for
        # the budget may fetch again (no settle would come to tell it).
        self.scheduler.refresh_pause(lane)
        lane.counters.revocations += len(revoked)
        lane.log.info(
            "Released %d partition(s) of %s (%d queued message(s) and %d waiting retry(ies) "
            "left uncommitted for the next owner)",
            len(revoked),
            lane.name,
            dropped.queued,
            dropped.retries,
        )

    # ---- drain -----------------------------------------------------------------------

    async def drain(self, lanes: Iterable[ConsumerLane], timeout: float) -> None:
        """Stop admitting, let running work finish up to ``timeout``, cancel the rest, commit.

        Returns within ``timeout`` + ``SHUTDOWN_MARGIN_SEC`` whatever the broker does: the
        commit gets what is left of ``timeout``, at least ``MIN_FINAL_COMMIT_SEC``, and every
        partition it could not commit is logged with the offsets that are read again."""
        lanes = list(lanes)
        loop = asyncio.get_running_loop()
        started = loop.time()
        dropped = []
        for lane in lanes:
            # Admission is closed first: nothing starts from here on.
            dropped.append(lane.close_admission())
        running = {message for lane in lanes for message in lane.running}
        await self.scheduler.wait_settled(running, timeout)
        # What still runs is cancelled; each lane's strategy then commits what finished (an
        # exactly-once lane ends its transactions: committed, or aborted when a message in
        # one still runs) with what is left of ``timeout``.
        cancelled = []
        for lane in lanes:
            tasks = [message.task for message in lane.running if message.task]
            for task in tasks:
                task.cancel()
            if tasks:
                lane.log.warning(
                    "%d message(s) of %s still running after %.1f s were cancelled and stay "
                    "uncommitted",
                    len(tasks),
                    lane.name,
                    timeout,
                )
            cancelled.append(tasks)
        deadline = started + timeout
        await asyncio.gather(
            *(
                lane.strategy.close(deadline, tasks)
                for lane, tasks in zip(lanes, cancelled, strict=True)
            )
        )
        for lane, not_started in zip(lanes, dropped, strict=True):
            if not_started.queued or not_started.retries:
                lane.log.info(
                    "%d fetched message(s) of %s were not started and %d waiting retry(ies) "
                    "were handed back; they stay uncommitted for the next owner",
                    not_started.queued,
                    lane.name,
                    not_started.retries,
                )


def _cooling_down(name: str, brake: DeadLetterBrake, loop: asyncio.AbstractEventLoop | None) -> str:
    """A recovering brake's state (``brake_cooldown_sec``): cooling down, or half-open."""
    left = brake.reopen_at - (loop.time() if loop is not None else 0.0)
    state = (
        f"cooling down, one message is tried in {left:.1f} s"
        if left > 0
        else "half-open: one message is tried, its success resumes the subscriber"
    )
    return (
        f"{name}: dead-letter brake tripped at {brake.tripped_at}: {brake.cause}; {state} "
        f"(brake_cooldown_sec={brake.cooldown_sec:g})"
    )
