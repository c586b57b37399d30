"""Everything about commits: which commit points to send, their metadata, sending them in
batches, and what a failed one means (reading the metadata back at assignment:
``finished_claims``).

Finished messages only bump a counter on the hot path; one commit request per consumer is
sent when ``commit_batch_size`` messages finished, when ``commit_batch_timeout_sec`` passed,
or when a flush is asked for (rebalance, shutdown). Each partition's commit point is its
tracker's ``commit_point``: the first admitted offset not finished yet. Every request is
bounded by the deadline it serves, and a failed one is handled as ``core.commit_policy``
decides for its cause.
"""

import asyncio
import contextlib
from collections.abc import Callable, Iterable

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from faststream_concurrent_aiokafka.compat import aiokafka as aiokafka_compat
from faststream_concurrent_aiokafka.core.commit_policy import (
    CommitDecision,
    CommitFailure,
    decide,
    point_to_restore,
)
from faststream_concurrent_aiokafka.core.errors import CommitterIsDeadError
from faststream_concurrent_aiokafka.core.offset_codec import (
    ENCODE_INLINE_MAX,
    MetadataDecodeError,
    decode_finished_bitmap,
    decode_finished_offsets,
    encode_finished_offsets,
)
from faststream_concurrent_aiokafka.core.offsets import PartitionOffsets
from faststream_concurrent_aiokafka.engine.commit_errors import classify_commit_error
from faststream_concurrent_aiokafka.engine.state import ConsumerLane

# Longest error text in a commit's log line.
_ERROR_TEXT_MAX = 200

# The broker writes one OffsetCommit request as one record batch to __consumer_offsets, which
# its message.max.bytes (1 MiB by default) bounds: 1,000 partitions of up to 4 KiB metadata
# each would be refused (UNKNOWN_SERVER_ERROR on every partition). A request is split so that
# its records stay under half of that; each record is about its metadata, the group, the topic
# and this much more.
COMMIT_REQUEST_MAX_BYTES = 512 * 1024
_RECORD_OVERHEAD_BYTES = 96


class CommitBatch:
    """One commit request: commit points, the finished offsets above them, and the tracker
    versions they were taken at; and how many offsets finished above each point its metadata
    leaves out (not tracked, or over the size limit): those run again after a crash."""

    __slots__ = ("_left_out", "_taken")

    def __init__(self) -> None:
        self._taken: list[tuple[TopicPartition, PartitionOffsets, int, frozenset[int], int]] = []
        self._left_out: dict[TopicPartition, int] = {}

    def __bool__(self) -> bool:
        return bool(self._taken)

    def __len__(self) -> int:
        return len(self._taken)

    def add(
        self, tp: TopicPartition, tracker: PartitionOffsets, point: int, finished: frozenset[int]
    ) -> None:
        self._taken.append((tp, tracker, point, finished, tracker.version))
        self._left_out[tp] = tracker.finished_count - len(finished)

    @property
    def partitions(self) -> list[TopicPartition]:
        return [tp for tp, *_ in self._taken]

    def points(self) -> dict[TopicPartition, int]:
        return {tp: point for tp, _, point, _, _ in self._taken}

    async def offsets(
        self, *, with_metadata: bool = True
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """The request body, with each partition's finished offsets encoded as metadata."""
        offsets = {}
        for tp, _, point, finished, _ in self._taken:
            if not with_metadata or not finished:
                metadata, carried = "", 0
            elif len(finished) > ENCODE_INLINE_MAX:
                metadata, carried = await asyncio.to_thread(_encode_counted, point, finished)
            else:
                metadata, carried = _encode_counted(point, finished)
            self._left_out[tp] += len(finished) - carried
            offsets[tp] = OffsetAndMetadata(point, metadata)
        return offsets

    def trackers(self) -> list[PartitionOffsets]:
        return [tracker for _, tracker, *_ in self._taken]

    def mark_committed(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """What Kafka acknowledged (``partitions`` of one request of a split commit, or all)."""
        only = None if partitions is None else set(partitions)
        for tp, tracker, point, _, version in self._taken:
            if only is not None and tp not in only:
                continue
            tracker.committed = point
            tracker.committed_version = version
            tracker.committed_left_out = self._left_out[tp]


def split_commit(
    offsets: dict[TopicPartition, OffsetAndMetadata], group: str
) -> list[dict[TopicPartition, OffsetAndMetadata]]:
    """``offsets`` in requests the broker can write (``COMMIT_REQUEST_MAX_BYTES`` each): one
    request unless the metadata of many partitions adds up to more."""
    requests: list[dict[TopicPartition, OffsetAndMetadata]] = [{}]
    size = 0
    for tp, meta in offsets.items():
        record = len(meta.metadata) + len(group) + len(tp.topic) + _RECORD_OVERHEAD_BYTES
        if requests[-1] and size + record > COMMIT_REQUEST_MAX_BYTES:
            requests.append({})
            size = 0
        requests[-1][tp] = meta
        size += record
    return requests


def _encode_counted(point: int, finished: frozenset[int]) -> tuple[str, int]:
    """The metadata of ``finished`` above ``point``, and how many of them it carries (fewer
    when they do not all fit)."""
    metadata = encode_finished_offsets(point, finished)
    return metadata, len(decode_finished_bitmap(metadata, point)) if metadata else 0


class CommitAttempt:
    """What one commit request became: the batch it carried (empty when it failed before one
    was taken) and, if it failed, why."""

    __slots__ = ("batch", "error", "failure")

    def __init__(
        self,
        batch: CommitBatch,
        failure: CommitFailure | None = None,
        error: BaseException | None = None,
    ) -> None:
        self.batch = batch
        self.failure = failure
        self.error = error

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def decision(self) -> CommitDecision | None:
        return None if self.failure is None else decide(self.failure)

    def reason(self) -> str:
        if self.failure is None:
            return "committed"
        if self.failure is CommitFailure.TIMED_OUT or self.error is None:
            return str(self.failure.value)
        return f"{self.failure.value}: {describe_error(self.error)}"


def describe_error(error: BaseException) -> str:
    """An error in a few words: aiokafka's ``CommitFailedError`` carries a paragraph of advice
    and the broker's error only as its cause."""
    cause = error.__cause__
    if cause is not None:
        return f"{type(error).__name__} from {type(cause).__name__}"
    text = repr(error)
    return text if len(text) <= _ERROR_TEXT_MAX else f"{text[: _ERROR_TEXT_MAX - 3]}..."


def collect_commit(
    lane: ConsumerLane, partitions: set[TopicPartition] | None = None, *, every_change: bool = True
) -> CommitBatch:
    """The commit points (with finished offsets above them) that changed since the last commit,
    on partitions still assigned; partitions no longer assigned are retired instead. Without
    ``every_change`` (a batch tick) a point that did not move is sent again only once its
    finished offsets grew enough (``PartitionOffsets.metadata_grew``). Without ``partitions``
    (a tick, the final commit) only the trackers listed as changed since the last such
    collection are looked at: with 1,000 partitions assigned and a few busy, a tick costs the
    few; one a tick passes over with unsent changes stays listed for the next."""
    assignment = lane.consumer.assignment()
    track = lane.settings.track_completed_offsets
    offsets = lane.offsets
    if partitions is None:
        candidates = offsets.take_changed()
    else:
        candidates = [(tp, t) for tp in partitions if (t := offsets.trackers.get(tp)) is not None]
    batch = CommitBatch()
    for tp, tracker in candidates:
        if tp not in assignment:
            offsets.retire(tp)
            continue
        point = tracker.commit_point
        if point is None:
            continue
        changed = tracker.changed_since_commit if every_change else tracker.metadata_grew
        if tracker.needs_commit or (track and changed):
            batch.add(tp, tracker, point, tracker.finished_above() if track else frozenset())
        elif track and tracker.changed_since_commit:
            tracker.mark_changed()  # not grown enough for this tick: the next looks again
    return batch


class KafkaBatchCommitter:
    """Commits the commit points of every lane's partitions, batched, in the background."""

    def __init__(
        self,
        lanes: Callable[[], Iterable[ConsumerLane]],
        *,
        commit_batch_size: int,
        commit_batch_timeout_sec: float,
        commit_timeout_sec: float = 10.0,
    ) -> None:
        self._lanes = lanes
        self._batch_size = commit_batch_size
        self._timeout = commit_batch_timeout_sec
        self._commit_timeout = commit_timeout_sec
        self._finished_since_commit = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.commit_requests = 0  # at-least-once requests of every lane (lanes count theirs)

    @property
    def commit_timeout_sec(self) -> float:
        return self._commit_timeout

    @property
    def is_alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def error(self) -> BaseException | None:
        """What the background task died of (None while alive, or if it was cancelled)."""
        task = self._task
        if task is None or not task.done() or task.cancelled():
            return None
        return task.exception()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="kafka-batch-committer")

    def check_alive(self) -> None:
        """Raise if the background task died: nothing would be committed any more."""
        task = self._task
        if task is not None and task.done():
            cause = None if task.cancelled() else task.exception()
            msg = "the Kafka batch committer is not running; offsets can no longer be committed"
            raise CommitterIsDeadError(msg) from cause

    def notify_finished(self, count: int = 1) -> None:
        """Called for each finished message; wakes the loop once a batch is complete."""
        self._finished_since_commit += count
        if self._finished_since_commit >= self._batch_size:
            self._wake.set()

    async def _run(self) -> None:
        # The interval runs on its own clock: a full batch wakes the loop in between without
        # pushing the next interval tick back (with several partitions, a global batch fills
        # before any partition's own, and an exactly-once partition commits on the tick).
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + self._timeout
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(next_tick):
                    await self._wake.wait()
            now = loop.time()
            elapsed = now >= next_tick
            if elapsed:
                next_tick = now + self._timeout
            self._wake.clear()
            self._finished_since_commit = 0
            # Every lane's strategy is asked first, and what commits in the background starts
            # then (an exactly-once partition's transaction): one waiting for a slow message
            # must hold no other commit, and other lanes' slow commits must not hold a
            # transaction open. The commits returned are sent one after the other.
            due = [
                lane.strategy.request_commits(interval_elapsed=elapsed) for lane in self._lanes()
            ]
            for commit in due:
                if commit is not None:
                    await commit()

    async def commit_lane(
        self, lane: ConsumerLane, partitions: set[TopicPartition] | None = None
    ) -> bool:
        """Commit the lane's finished work now, as its strategy does (``commit_timeout_sec``
        bounds it); False if it failed."""
        return await lane.strategy.flush(self._commit_timeout, partitions)

    async def send(
        self,
        lane: ConsumerLane,
        partitions: set[TopicPartition] | None,
        *,
        timeout: float,
        every_change: bool = True,
    ) -> CommitAttempt:
        """Commit the lane's changed commit points (of ``partitions``, or all) within
        ``timeout`` seconds, the wait for a commit already in flight included. A failure is
        handled as its decision says (the caller logs what it means for its own deadline);
        nothing is ever marked committed that Kafka did not acknowledge. At-least-once only:
        an exactly-once lane commits its offsets inside its transactions. ``every_change``:
        see ``collect_commit``."""
        deadline = asyncio.get_running_loop().time() + timeout
        attempt = await self._attempt(lane, partitions, deadline, every_change=every_change)
        if attempt.decision is CommitDecision.DROP_UNASSIGNED:
            # The next collection retires what is no longer assigned and keeps the rest.
            lane.log.info(
                "Commit for %s: %s; sending the partitions still assigned again",
                lane.name,
                attempt.reason(),
            )
            attempt = await self._attempt(lane, partitions, deadline, every_change=every_change)
        elif attempt.decision is CommitDecision.WITHOUT_METADATA:
            lane.log.warning(
                "Commit for %s: %s; sending the commit points without the finished offsets "
                "above them (raise the broker's offset.metadata.max.bytes to keep them)",
                lane.name,
                attempt.reason(),
            )
            attempt = await self._attempt(
                lane, partitions, deadline, with_metadata=False, every_change=every_change
            )
        return attempt

    async def _attempt(
        self,
        lane: ConsumerLane,
        partitions: set[TopicPartition] | None,
        deadline: float,
        *,
        with_metadata: bool = True,
        every_change: bool = True,
    ) -> CommitAttempt:
        return await self._request(
            lane,
            lambda: collect_commit(lane, partitions, every_change=every_change),
            deadline,
            with_metadata=with_metadata,
        )

    async def _request(
        self,
        lane: ConsumerLane,
        collect: Callable[[], CommitBatch],
        deadline: float,
        *,
        with_metadata: bool = True,
    ) -> CommitAttempt:
        """One commit request of the batch ``collect`` takes under the lane's commit lock,
        counted, and bounded by ``deadline``."""
        batch = CommitBatch()
        try:
            # aiokafka retries an unreachable coordinator inside commit() without end: the
            # deadline is the only bound. Cancelling it leaves Kafka's state untouched.
            async with asyncio.timeout_at(deadline), lane.offsets.commit_lock:
                batch = collect()
                if not batch:
                    return CommitAttempt(batch)
                offsets = await batch.offsets(with_metadata=with_metadata)
                for request in split_commit(offsets, lane.pipeline.group):
                    self.commit_requests += 1
                    lane.offsets.commits.requested()
                    await lane.consumer.commit(request)
                    batch.mark_committed(request)
        except asyncio.CancelledError:
            aiokafka_compat.collect_abandoned_commits(lane.consumer)
            lane.offsets.relist(batch.trackers())
            raise
        except Exception as exc:  # TimeoutError included: each cause has its decision
            aiokafka_compat.collect_abandoned_commits(lane.consumer)
            # Not acknowledged: the next tick must look at these partitions again.
            lane.offsets.relist(batch.trackers())
            lane.offsets.commits.failed(exc)
            return CommitAttempt(batch, classify_commit_error(exc), exc)
        lane.offsets.commits.succeeded()
        return CommitAttempt(batch)

    async def recommit_after_rejoin(
        self, lane: ConsumerLane, assigned: set[TopicPartition], timeout: float
    ) -> None:
        """Commit the finished work a refused commit left behind (see ``release_partitions``)
        on each partition the rejoin gave back to this consumer, and start reading it after
        that work; the other partitions' new owners read it again, as logged here."""
        kept, lane.offsets.awaiting_rejoin = lane.offsets.awaiting_rejoin, {}
        back = {tp: tracker for tp, tracker in kept.items() if tp in assigned}
        for tp, tracker in kept.items():
            if tp not in assigned:
                log_redelivery(lane, tp, tracker, "it went to another member")
        if not back:
            return
        # Nothing of these may be fetched from the old committed offset meanwhile: pinned paused
        # before the first await, so the poll loop cannot get any of their records. Pinned, not
        # paused directly: a backpressure pause meanwhile then resumes them with the lane.
        pinned = set(back) - set(lane.consumer.paused())
        lane.fetching.pin(*pinned)
        try:
            await self._restore(lane, back, timeout)
        finally:
            lane.fetching.unpin(*pinned)

    async def _restore(
        self, lane: ConsumerLane, back: dict[TopicPartition, PartitionOffsets], timeout: float
    ) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                committed = await aiokafka_compat.fetch_committed_offsets(lane.consumer, back)
        except Exception as exc:
            for tp, tracker in back.items():
                log_redelivery(
                    lane, tp, tracker, f"its committed offset was not read: {describe_error(exc)}"
                )
            return
        track = lane.settings.track_completed_offsets
        batch = CommitBatch()
        for tp, tracker in back.items():
            meta = committed.get(tp)
            now = meta.offset if meta is not None and meta.offset >= 0 else None
            point = point_to_restore(tracker.commit_point, now)
            if point is not None:
                batch.add(tp, tracker, point, tracker.finished_above() if track else frozenset())
        if not batch:
            return
        attempt = await self._request(lane, lambda: batch, deadline)
        if not attempt.ok:
            reason = f"the commit after the rejoin failed, {attempt.reason()}"
            for tp in batch.partitions:
                log_redelivery(lane, tp, back[tp], reason)
            return
        for tp, point in batch.points().items():
            lane.consumer.seek(tp, point)
        lane.log.info(
            "Committed the finished work of %d partition(s) of %s that the rejoin gave back; "
            "none of it runs again",
            len(batch),
            lane.name,
        )

    async def close(self) -> None:
        """Stop the loop; the engine's drain committed what was left before (with ``send``)."""
        if self._task is not None:
            self._task.cancel()
            # Bounded: a commit stuck on a dead connection must not hold up the shutdown.
            await asyncio.wait([self._task], timeout=5)


def log_commit_failure(lane: ConsumerLane, attempt: CommitAttempt, timeout: float) -> None:
    """One line for a failed at-least-once commit: what is kept, and until when."""
    failure = attempt.failure
    count = len(attempt.batch)
    if failure is CommitFailure.TIMED_OUT:
        lane.log.warning(
            "Commit for %s got no answer within %.1f s (broker or group coordinator "
            "unreachable); the commit points are kept and sent with the next commit",
            lane.name,
            timeout,
        )
    elif attempt.decision is CommitDecision.AFTER_REJOIN:
        lane.log.warning(
            "Commit of %d partition(s) for %s refused, %s; the finished work is kept "
            "through the rejoin and committed after it for the partitions this consumer "
            "gets back",
            count,
            lane.name,
            attempt.reason(),
        )
    elif failure is CommitFailure.REFUSED:
        lane.log.error(
            "Commit of %d partition(s) for %s refused, %s; kept and sent again with the "
            "next commit",
            count,
            lane.name,
            attempt.reason(),
        )
    else:
        lane.log.warning(
            "Commit of %d partition(s) for %s failed, %s; kept and sent again with the next commit",
            count,
            lane.name,
            attempt.reason(),
        )


def uncommitted(
    lane: ConsumerLane, partitions: set[TopicPartition] | None = None
) -> list[tuple[TopicPartition, PartitionOffsets]]:
    """The lane's partitions whose commit point moved past what Kafka acknowledged."""
    return [
        (tp, tracker)
        for tp, tracker in lane.offsets.trackers.items()
        if (partitions is None or tp in partitions) and tracker.needs_commit
    ]


def log_redelivery(
    lane: ConsumerLane, tp: TopicPartition, tracker: PartitionOffsets, why: str
) -> None:
    """One WARNING line per partition whose finished work stays uncommitted: which offsets
    its next reader gets again."""
    point = tracker.commit_point
    if point is None:
        return
    if tracker.committed is None:
        offsets = f"offsets below {point} (from the offset committed before this consumer got it)"
    else:
        offsets = f"offsets {tracker.committed} to {point - 1}"
    above = len(tracker.finished_above())
    lane.log.warning(
        "%s[%d] of %s not committed (%s): %s%s were finished here and will be delivered again",
        tp.topic,
        tp.partition,
        lane.name,
        why,
        offsets,
        f" and {above} above them" if above else "",
    )


def decode_metadata(
    lane: ConsumerLane, tp: TopicPartition, meta: OffsetAndMetadata
) -> frozenset[int]:
    """Finished offsets stored with a commit; anything not ours is ignored with a warning."""
    if not meta.metadata:
        return frozenset()
    try:
        return decode_finished_offsets(meta.metadata, meta.offset)
    except MetadataDecodeError as exc:
        lane.log.warning("Ignoring commit metadata of %s[%d]: %s", tp.topic, tp.partition, exc)
        return frozenset()
