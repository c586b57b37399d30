"""In-memory stand-ins for an aiokafka consumer and a FastStream pipeline, to drive the engine
without Kafka.

``FakeConsumer`` offers what the engine and ``compat.aiokafka`` use of ``AIOKafkaConsumer``:
assignment, pause and resume, ``getmany`` from an in-memory log, ``commit`` (validated and
refused like aiokafka's, with injectable failures) and the private attributes the compat
seams read. ``FakePipeline`` implements the engine's ``Pipeline`` protocol; what each attempt
does is decided by the test: it waits until the test releases it, or plays a scripted outcome.
"""

import asyncio
import logging
import selectors
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.errors import IllegalStateError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import OffsetAndMetadata

from faststream_concurrent_aiokafka.core.failure_policy import FailurePolicy
from faststream_concurrent_aiokafka.core.settings import SubscriberSettings
from faststream_concurrent_aiokafka.engine.transactional_send import (
    TransactionalSender,
    current_ticket,
)

TOPIC = "t"
DELIVERY_HEADER = "delivery"

Key = tuple[int, int]
"""A message as tests name it: (partition, offset) on ``TOPIC``."""


def tp(partition: int, topic: str = TOPIC) -> Any:
    """TopicPartition of ``topic`` (aiokafka ships no type hints, hence Any)."""
    return TopicPartition(topic, partition)


def delivery_id(record: Any) -> int:
    """The serial number the fake consumer stamped on one delivery of a record: the same
    offset read again after a rebalance is another delivery, hence another admission."""
    for name, value in record.headers:
        if name == DELIVERY_HEADER:
            return int(value)
    msg = f"record {record.topic}[{record.partition}]@{record.offset} was not delivered"
    raise LookupError(msg)


def key_of(record: Any) -> Key:
    """(partition, offset) of a record, or of a batch's first record."""
    first = record[0] if isinstance(record, tuple) else record
    return (first.partition, first.offset)


async def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll ``condition`` while the event loop runs; fail the test if it never holds within
    ``timeout`` of the loop's clock."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            msg = f"condition not met within {timeout} s"
            raise AssertionError(msg)
        await asyncio.sleep(0.001)


async def let_run(steps: int = 20) -> None:
    """Let every ready callback run a few times over: for checking that something did *not*
    happen once the loop had its chance."""
    for _ in range(steps):
        await asyncio.sleep(0)


# ---- time ----------------------------------------------------------------------------


class _SkippingSelector(selectors.DefaultSelector):
    """Never sleeps: where the loop would wait for its next timer, the clock jumps to it."""

    def __init__(self, loop: "VirtualClockLoop") -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            # Nothing ready, no timer: only another thread could wake the loop now.
            events = super().select(DEADLOCK_AFTER_SEC)
            if not events:
                msg = (
                    f"event loop deadlocked: nothing to run and no timer for {DEADLOCK_AFTER_SEC} s"
                )
                raise RuntimeError(msg)
            return events
        self._loop.advance(timeout)
        return events


DEADLOCK_AFTER_SEC = 5.0


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock only moves when nothing is ready to run, straight to the next
    timer: sleeps and timeouts cost no wall time, and which of two timers fires first depends
    on their deadlines alone, not on how busy the machine is, so runs replay exactly."""

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_SkippingSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


# ---- consumer ------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredRecord:
    key: bytes | None
    value: bytes


@dataclass(frozen=True)
class Output:
    """A record a transactional producer sent: where, and which transaction it was in."""

    topic: str
    value: bytes | None
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    transactional_id: str
    partition: int | None = None  # as sent; None: the producer would have chosen


class FakeCluster:
    """The partitions' logs and one consumer group's committed offsets, shared by every
    consumer of the group (a new owner reads what the previous one committed), and the
    transactions of producers with a transactional id: what they committed and aborted, and
    which epoch of each id is current (a newer producer fences the older)."""

    def __init__(self) -> None:
        self.logs: dict[Any, list[StoredRecord]] = {}
        self.committed: dict[Any, OffsetAndMetadata] = {}
        self.deliveries = 0
        self.epochs: Counter[str] = Counter()
        self.open_transactions: dict[str, FakeProducer] = {}
        self.committed_output: list[Output] = []
        self.aborted_output: list[Output] = []
        self.transactions: list[tuple[str, str]] = []  # (transactional id, "commit"/"abort")
        # Output topics' partitions with a leader, as a producer's metadata knows them.
        self.output_partitions: dict[str, set[int]] = {}

    def read_committed(self, topic: str | None = None) -> list[Output]:
        """What a ``read_committed`` consumer of the output sees."""
        return [o for o in self.committed_output if topic is None or o.topic == topic]

    def produce(
        self, partition: int, count: int = 1, *, key: bytes | None = None, topic: str = TOPIC
    ) -> list[int]:
        """Append ``count`` records; returns their offsets."""
        log = self.logs.setdefault(tp(partition, topic), [])
        first = len(log)
        log.extend(StoredRecord(key, b"v%d" % (first + i)) for i in range(count))
        return list(range(first, first + count))

    def end(self, topic_partition: Any) -> int:
        return len(self.logs.get(topic_partition, ()))

    def committed_offset(self, topic_partition: Any) -> int | None:
        meta = self.committed.get(topic_partition)
        return None if meta is None else int(meta.offset)


class FakeCoordinator:
    """The group coordinator's committed-offset fetch, which the engine reaches through
    ``compat.aiokafka.fetch_committed_offsets`` to read commit metadata."""

    def __init__(self, cluster: FakeCluster) -> None:
        self._cluster = cluster
        self.failures: deque[BaseException] = deque()
        self.fetches: list[set[Any]] = []
        self.rejoins = 0

    def request_rejoin(self) -> None:
        """``compat.aiokafka.request_rejoin``: the member asks the group for a rebalance."""
        self.rejoins += 1

    async def fetch_committed_offsets(self, partitions: Iterable[Any]) -> dict[Any, Any]:
        wanted = set(partitions)
        self.fetches.append(wanted)
        if self.failures:
            raise self.failures.popleft()
        # As aiokafka: partitions without a committed offset are left out.
        committed = self._cluster.committed
        return {p: committed[p] for p in wanted if p in committed}


class FakeFetcher:
    """aiokafka keeps buffered records per partition in ``Fetcher._records``, in the order it
    serves them; the engine rotates that order (``rotate_buffered_partitions``)."""

    def __init__(self) -> None:
        self._records: OrderedDict[Any, deque[int]] = OrderedDict()


@dataclass
class CommitRequest:
    """One ``commit()`` call: what was asked, what was assigned then, what became of it."""

    offsets: dict[Any, OffsetAndMetadata]
    assignment: frozenset[Any]
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class FakeConsumer:
    """What the engine uses of ``AIOKafkaConsumer``, over a ``FakeCluster``."""

    def __init__(
        self,
        cluster: FakeCluster | None = None,
        assignment: Iterable[Any] = (),
        *,
        max_poll_interval_ms: int | None = 300_000,
        rebalance_timeout_ms: int | None = 60_000,
        max_poll_records: int | None = None,
    ) -> None:
        self.cluster = cluster or FakeCluster()
        self._max_poll_interval_ms = max_poll_interval_ms
        self._rebalance_timeout_ms = rebalance_timeout_ms
        self._max_poll_records = max_poll_records
        self._coordinator = FakeCoordinator(self.cluster)
        self._fetcher = FakeFetcher()
        self._assignment: set[Any] = set()
        self._paused: set[Any] = set()
        self._positions: dict[Any, int] = {}
        self._arrived = asyncio.Event()
        self.commits: list[CommitRequest] = []
        self.commit_failures: deque[BaseException] = deque()
        self.on_commit: Callable[[CommitRequest], None] | None = None
        self.assign(assignment)

    # ---- assignment and pausing ----------------------------------------------------

    def assignment(self) -> set[Any]:
        return set(self._assignment)

    def assign(self, partitions: Iterable[Any]) -> None:
        """A rebalance's outcome: the new assignment. As in aiokafka every pause is lost and
        the buffer dropped; a newly assigned partition is read from its committed offset, a
        kept one goes on from its position."""
        new = set(partitions)
        self._positions = {
            p: self._positions[p] if p in self._assignment else self._start_position(p) for p in new
        }
        self._assignment = new
        self._paused.clear()
        self._fetcher._records.clear()
        self._arrived.set()

    def revoke(self, *partitions: Any) -> None:
        self.assign(self._assignment - set(partitions))

    def add(self, *partitions: Any) -> None:
        self.assign(self._assignment | set(partitions))

    def _start_position(self, partition: Any) -> int:
        committed = self.cluster.committed_offset(partition)
        return 0 if committed is None else committed

    def position_now(self, partition: Any) -> int:
        """The next offset this consumer delivers from ``partition``."""
        return self._positions[partition]

    async def position(self, partition: Any) -> int:
        """As aiokafka's: the next offset this consumer delivers from ``partition``."""
        self._assigned(partition)
        return self._positions[partition]

    def seek(self, partition: Any, offset: int) -> None:
        """Deliver from ``offset`` next (what was buffered before it is dropped)."""
        self._assigned(partition)
        self._positions[partition] = offset

    def _assigned(self, partition: Any) -> None:
        if partition not in self._assignment:
            msg = f"No current assignment for partition {partition}"
            raise IllegalStateError(msg)

    def pause(self, *partitions: Any) -> None:
        for partition in partitions:
            self._assigned(partition)
        for partition in partitions:
            self._paused.add(partition)
            self._fetcher._records.pop(partition, None)

    def resume(self, *partitions: Any) -> None:
        for partition in partitions:
            self._assigned(partition)
        self._paused.difference_update(partitions)
        self._arrived.set()

    def paused(self) -> set[Any]:
        return set(self._paused)

    # ---- fetching --------------------------------------------------------------------

    def produce(self, partition: int, count: int = 1, *, key: bytes | None = None) -> list[int]:
        offsets = self.cluster.produce(partition, count, key=key)
        self._arrived.set()
        return offsets

    def fetchable(self) -> bool:
        """Whether ``getmany`` would return records right away."""
        self._buffer()
        return any(self._fetcher._records.values())

    def _buffer(self) -> None:
        """Buffer what the unpaused assigned partitions have beyond their positions."""
        records = self._fetcher._records
        for partition in sorted(self._assignment - self._paused):
            buffered = records.get(partition)
            start = buffered[-1] + 1 if buffered else self._positions[partition]
            new = range(start, self.cluster.end(partition))
            if new:
                records.setdefault(partition, deque()).extend(new)

    def record(self, partition: Any, offset: int) -> Any:
        """A delivery of the stored record at ``offset``: a new ``ConsumerRecord`` stamped
        with the next delivery number."""
        stored = self.cluster.logs[partition][offset]
        self.cluster.deliveries += 1
        return ConsumerRecord(
            topic=partition.topic,
            partition=partition.partition,
            offset=offset,
            timestamp=0,
            timestamp_type=0,
            key=stored.key,
            value=stored.value,
            checksum=None,
            serialized_key_size=len(stored.key or b""),
            serialized_value_size=len(stored.value),
            headers=((DELIVERY_HEADER, b"%d" % self.cluster.deliveries),),
        )

    async def getmany(
        self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[Any, list[Any]]:
        """Up to ``max_records`` buffered records, partition by partition in buffer order;
        waits up to ``timeout_ms`` for some to arrive."""
        self._buffer()
        if not any(self._fetcher._records.values()):
            self._arrived.clear()
            try:
                async with asyncio.timeout(timeout_ms / 1000):
                    await self._arrived.wait()
            except TimeoutError:
                return {}
            self._buffer()
        wanted = set(partitions) or None
        room = max_records if max_records is not None else 1 << 30
        batches: dict[Any, list[Any]] = {}
        for partition, offsets in list(self._fetcher._records.items()):
            if room <= 0:
                break
            if wanted is not None and partition not in wanted:
                continue
            taken = [offsets.popleft() for _ in range(min(room, len(offsets)))]
            if not offsets:
                del self._fetcher._records[partition]
            if taken:
                batches[partition] = [self.record(partition, offset) for offset in taken]
                self._positions[partition] = taken[-1] + 1
                room -= len(taken)
        return batches

    def deliver(self, partition: Any, *offsets: int) -> list[Any]:
        """Deliveries of given stored records, bypassing positions: for tests that admit
        records by hand."""
        return [self.record(partition, offset) for offset in offsets]

    # ---- committing ------------------------------------------------------------------

    async def end_offsets(self, partitions: Iterable[Any]) -> dict[Any, int]:
        return {partition: self.cluster.end(partition) for partition in partitions}

    async def commit(self, offsets: dict[Any, Any] | None = None) -> None:
        """As aiokafka's: refuses a partition not assigned (``IllegalStateError``), else
        raises the next injected failure, else stores the offsets."""
        if not offsets or not isinstance(offsets, dict):
            raise ValueError(offsets)
        normalized = {p: _offset_and_metadata(value) for p, value in offsets.items()}
        request = CommitRequest(normalized, frozenset(self._assignment))
        self.commits.append(request)
        if self.on_commit is not None:
            self.on_commit(request)
        for partition in normalized:
            if partition not in self._assignment:
                request.error = IllegalStateError(f"Partition {partition} is not assigned")
                raise request.error
        if self.commit_failures:
            request.error = self.commit_failures.popleft()
            raise request.error
        self.cluster.committed.update(normalized)

    def committed_offsets(self) -> list[dict[int, int]]:
        """The offsets of every successful commit request, by partition."""
        return [
            {p.partition: int(meta.offset) for p, meta in request.offsets.items()}
            for request in self.commits
            if request.ok
        ]


# ---- transactional producer ---------------------------------------------------------


class _FakeTxnState:
    """What ``compat.aiokafka.producer_failure`` reads of a producer's transaction state."""

    def __init__(self) -> None:
        self.fatal = False

    def is_fatal_error(self) -> bool:
        return self.fatal


class _FakeSender:
    def __init__(self) -> None:
        self.sender_task: asyncio.Future[None] | None = None


class _FakeClusterMetadata:
    def __init__(self, cluster: "FakeCluster") -> None:
        self._cluster = cluster

    def available_partitions_for_topic(self, topic: str) -> set[int] | None:
        return self._cluster.output_partitions.get(topic)


class _FakeClient:
    def __init__(self, cluster: "FakeCluster") -> None:
        self.closed = False
        self.cluster = _FakeClusterMetadata(cluster)

    async def close(self) -> None:
        self.closed = True


class FakeProducer:
    """What the engine uses of a transactional ``AIOKafkaProducer``, over a ``FakeCluster``:
    starting (which fences the id's previous producer and aborts its open transaction), one
    transaction at a time, sends, offsets sent to the transaction, commit and abort. A fenced
    producer fails as aiokafka's does: its sends' futures fail with ``ProducerFenced`` and its
    background sender dies. Tests inject failures and delays."""

    def __init__(self, cluster: FakeCluster, transactional_id: str, timeout_ms: int) -> None:
        self.cluster = cluster
        self.transactional_id = transactional_id
        self.timeout_ms = timeout_ms
        self.epoch = 0
        self.state = "new"
        self.pending: list[Output] = []
        self.pending_offsets: dict[Any, OffsetAndMetadata] = {}
        self.offsets_sent = 0
        self.start_failures: deque[BaseException] = deque()
        self.commit_failures: deque[BaseException] = deque()
        self.commit_gate: asyncio.Event | None = None  # set: commits wait for it
        self.sends = 0
        self._closed = False
        self._sender = _FakeSender()
        self._txn_manager = _FakeTxnState()
        self.client = _FakeClient(cluster)
        self._partitioner: Any = DefaultPartitioner()  # aiokafka's, as FastStream passes it
        self._key_serializer: Any = None
        # Each send takes the next of these, if any, as its record's failure (acknowledgement).
        self.record_failures: deque[BaseException] = deque()

    @property
    def fenced(self) -> bool:
        return self.cluster.epochs[self.transactional_id] != self.epoch

    def _die(self, error: BaseException) -> None:
        """As aiokafka's sender routine dying of an error: the producer is done for."""
        if self._sender.sender_task is None or not self._sender.sender_task.done():
            task = asyncio.get_running_loop().create_future()
            task.set_exception(error)
            self._sender.sender_task = task
        self._txn_manager.fatal = True

    async def start(self) -> None:
        if self.start_failures:
            raise self.start_failures.popleft()
        await asyncio.sleep(0)
        cluster = self.cluster
        previous = cluster.open_transactions.pop(self.transactional_id, None)
        if previous is not None:  # aborted by the coordinator; the old producer knows nothing
            cluster.aborted_output += previous.pending
            previous.pending = []
            previous.pending_offsets = {}
        cluster.epochs[self.transactional_id] += 1
        self.epoch = cluster.epochs[self.transactional_id]
        self._sender.sender_task = asyncio.get_running_loop().create_future()
        self.state = "ready"

    async def begin_transaction(self) -> None:
        if self.state != "ready":
            msg = f"begin_transaction in state {self.state}"
            raise AssertionError(msg)
        self.state = "in"

    def _check_in_transaction(self) -> None:
        if self.state != "in" or self._txn_manager.fatal:
            raise kafka_errors.IllegalOperation("Can't send messages while not in transaction")

    async def send(  # noqa: PLR0917 - AIOKafkaProducer.send's signature
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Any = None,
    ) -> "asyncio.Future[Any]":
        del timestamp_ms
        self._check_in_transaction()
        await asyncio.sleep(0)
        self._check_in_transaction()
        self.sends += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fenced:
            error = kafka_errors.ProducerFenced()
            future.set_exception(error)
            self._die(error)
            return future
        if self.record_failures:  # not written: aiokafka commits the transaction without it
            future.set_exception(self.record_failures.popleft())
            return future
        record = Output(topic, value, key, tuple(headers or ()), self.transactional_id, partition)
        self.pending.append(record)
        self.cluster.open_transactions[self.transactional_id] = self
        future.set_result(record)
        return future

    async def send_and_wait(self, topic: str, value: Any = None, key: Any = None) -> Any:
        return await (await self.send(topic, value, key))

    async def send_offsets_to_transaction(self, offsets: dict[Any, Any], group_id: str) -> None:
        del group_id
        self._check_in_transaction()
        self.offsets_sent += 1
        if self.fenced:
            error = kafka_errors.ProducerFenced()
            self._die(error)
            raise error
        self.pending_offsets.update({p: _offset_and_metadata(v) for p, v in offsets.items()})
        self.cluster.open_transactions[self.transactional_id] = self

    async def flush(self) -> None:
        await asyncio.sleep(0)

    def _check_may_end(self, what: str) -> None:
        """As aiokafka's transaction manager: only a begun transaction can be ended."""
        if self._txn_manager.fatal:
            msg = f"{what} of a dead producer"
            raise AssertionError(msg)
        if self.state != "in":
            msg = f"Invalid state transition: {what} in state {self.state}"
            raise AssertionError(msg)

    async def commit_transaction(self) -> None:
        self._check_may_end("commit_transaction")
        self.state = "committing"
        if self.commit_gate is not None:
            await self.commit_gate.wait()
        await asyncio.sleep(0)
        if self.commit_failures:
            error = self.commit_failures.popleft()
            if isinstance(error, kafka_errors.ProducerFenced):
                self._die(error)
            raise error
        if self.fenced:
            error = kafka_errors.ProducerFenced()
            self._die(error)
            raise error
        cluster = self.cluster
        cluster.committed_output += self.pending
        cluster.committed.update(self.pending_offsets)
        cluster.transactions.append((self.transactional_id, "commit"))
        self._end()

    async def abort_transaction(self) -> None:
        self._check_may_end("abort_transaction")
        await asyncio.sleep(0)
        self.cluster.transactions.append((self.transactional_id, "abort"))
        self.discard()

    def discard(self) -> None:
        """The open transaction is aborted (by this producer, or by a newer one's start)."""
        self.cluster.aborted_output += self.pending
        self._end()

    def _end(self) -> None:
        if self.cluster.open_transactions.get(self.transactional_id) is self:
            del self.cluster.open_transactions[self.transactional_id]
        self.pending = []
        self.pending_offsets = {}
        if self.state in {"in", "committing"}:
            self.state = "ready"

    async def stop(self) -> None:
        self._closed = True
        self.state = "closed"


def _offset_and_metadata(value: Any) -> OffsetAndMetadata:
    if isinstance(value, int):
        return OffsetAndMetadata(value, "")
    offset, metadata = value
    if not isinstance(metadata, str):
        msg = "Metadata should be a string"
        raise TypeError(msg)
    return OffsetAndMetadata(offset, metadata)


# ---- pipeline ------------------------------------------------------------------------


@dataclass(eq=False)
class Call:
    """One attempt of the pipeline at one message."""

    record: Any
    attempt: int
    task: "asyncio.Task[Any] | None"
    future: "asyncio.Future[BaseException | None] | None" = None
    outcome: str = "running"  # then "finished", "failed" or "cancelled"
    error: BaseException | None = None

    @property
    def key(self) -> Key:
        return key_of(self.record)

    @property
    def waiting(self) -> bool:
        return self.future is not None and not self.future.done()


@dataclass(eq=False)
class DeadLetterCall:
    topic: str
    record: Any
    error: BaseException | None
    attempts: int
    failed: BaseException | None = None

    @property
    def key(self) -> Key:
        return key_of(self.record)


@dataclass(eq=False)
class FakePipeline:
    """The engine's ``Pipeline``, recording every attempt.

    An attempt plays the next outcome scripted for its message (``script``: None succeeds, an
    exception is raised); with nothing scripted it waits for ``release`` when ``hold`` is set,
    or succeeds at once.
    """

    subscriber_settings: SubscriberSettings = field(default_factory=SubscriberSettings)
    policy: FailurePolicy = field(default_factory=FailurePolicy)
    hold: bool = True
    name: str = "fake-pipeline"
    group: str = "fake-group"
    topics: tuple[str, ...] = ("t",)
    owner: object = field(default_factory=object)
    script: dict[Key, deque[BaseException | None]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    dead_letters: list[DeadLetterCall] = field(default_factory=list)
    dead_letter_failures: deque[BaseException] = field(default_factory=deque)
    # Retry topic: what was sent (topic, record, headers) and failures scripted for it.
    retries_sent: list[tuple[str, Any, list[tuple[str, bytes]]]] = field(default_factory=list)
    retry_failures: deque[BaseException] = field(default_factory=deque)
    stops: list[BaseException] = field(default_factory=list)
    on_start: Callable[[Call], None] | None = None
    on_attempt_end: Callable[[Call], None] | None = None
    on_dead_letter: Callable[[DeadLetterCall], None] | None = None
    max_running: int = 0
    # Exactly-once: the cluster the pipeline's transactional producers write to, the
    # producers made so far, and the records each attempt publishes (topic, value).
    cluster: FakeCluster | None = None
    producers: list[FakeProducer] = field(default_factory=list)
    on_producer: Callable[[FakeProducer], None] | None = None
    publish: Callable[[Call], list[tuple[str, bytes]]] | None = None
    publish_first: bool = False  # publish before the attempt's outcome (else just before it)
    ignore_publish_errors: bool = False  # a handler that catches its publishes' failures
    _attempts: Counter[int] = field(default_factory=Counter)

    def settings(self) -> SubscriberSettings:
        return self.subscriber_settings

    def logger(self) -> logging.Logger:
        return logging.getLogger("tests.fakes.pipeline")

    async def process(self, record: Any) -> None:
        # Attempts of one admission share the record object, a redelivery is a new one.
        self._attempts[id(record)] += 1
        call = Call(record, self._attempts[id(record)], asyncio.current_task())
        self.calls.append(call)
        self.max_running = max(self.max_running, len(self.running()))
        if self.on_start is not None:
            self.on_start(call)
        try:
            if self.publish_first:
                await self._publish(call)
            scripted = self.script.get(call.key)
            if scripted:
                outcome = scripted.popleft()
            elif self.hold:
                call.future = asyncio.get_running_loop().create_future()
                outcome = await call.future
            else:
                outcome = None
            if not self.publish_first:
                await self._publish(call)
            if outcome is not None:
                raise outcome
        except asyncio.CancelledError:
            call.outcome = "cancelled"
            self._ended(call)
            raise
        except BaseException as exc:
            call.outcome, call.error = "failed", exc
            self._ended(call)
            raise
        call.outcome = "finished"
        self._ended(call)

    async def _publish(self, call: Call) -> None:
        """Publish what ``publish`` says this attempt publishes, as FastStream does: through
        the running exactly-once message's transaction."""
        if self.publish is None:
            return
        for topic, value in self.publish(call):
            ticket = current_ticket()
            assert ticket is not None, "publishing outside an exactly-once message"
            future = await TransactionalSender(ticket).send(topic, value)
            try:
                await future
            except kafka_errors.KafkaError:
                if not self.ignore_publish_errors:
                    raise

    def transactional_producer(self, transactional_id: str, timeout_ms: int) -> Any:
        assert self.cluster is not None, "give the pipeline a cluster for exactly-once"
        producer = FakeProducer(self.cluster, transactional_id, timeout_ms)
        self.producers.append(producer)
        if self.on_producer is not None:
            self.on_producer(producer)
        return producer

    def _ended(self, call: Call) -> None:
        if self.on_attempt_end is not None:
            self.on_attempt_end(call)

    async def dead_letter(
        self,
        topic: str,
        record: Any,
        error: BaseException | None,
        attempts: int,
        exception_text: Callable[[BaseException], str] | None = None,
    ) -> None:
        del exception_text
        entry = DeadLetterCall(topic, record, error, attempts)
        self.dead_letters.append(entry)
        if self.dead_letter_failures:
            entry.failed = self.dead_letter_failures.popleft()
        if self.on_dead_letter is not None:
            self.on_dead_letter(entry)
        ticket = current_ticket()
        if ticket is not None:  # exactly-once: the dead letter joins the transaction
            sender = TransactionalSender(ticket)
            if entry.failed is not None:
                await sender.send(topic, b"failing dead letter")
            else:
                await (await sender.send(topic, record.value))
        if entry.failed is not None:
            raise entry.failed

    async def publish_retry(
        self, topic: str, record: Any, headers: list[tuple[str, bytes]]
    ) -> None:
        if self.retry_failures:
            raise self.retry_failures.popleft()
        self.retries_sent.append((topic, record, headers))

    def stop_requested(self, error: BaseException) -> None:
        self.stops.append(error)

    # ---- what tests read and do --------------------------------------------------------

    def fail(self, partition: int, offset: int, *outcomes: BaseException | None) -> None:
        """Script the next attempts of a message: an exception fails one, None succeeds."""
        self.script.setdefault((partition, offset), deque()).extend(outcomes)

    def running(self) -> list[Call]:
        return [call for call in self.calls if call.outcome == "running"]

    def running_keys(self) -> set[Key]:
        return {call.key for call in self.running()}

    def waiting(self) -> list[Call]:
        return [call for call in self.calls if call.waiting]

    def started(self) -> list[Key]:
        """Messages in the order their first attempt started."""
        return [call.key for call in self.calls if call.attempt == 1]

    def finished(self) -> list[Key]:
        return [call.key for call in self.calls if call.outcome == "finished"]

    def attempts(self, partition: int, offset: int) -> int:
        return sum(1 for call in self.calls if call.key == (partition, offset))

    async def release(
        self, partition: int, offset: int, error: BaseException | None = None
    ) -> Call:
        """End the attempt of a message once it waits: successfully, or raising ``error``."""
        await wait_until(lambda: any(call.key == (partition, offset) for call in self.waiting()))
        return self.release_now(partition, offset, error)

    def release_now(self, partition: int, offset: int, error: BaseException | None = None) -> Call:
        """End the waiting attempt of a message: successfully, or raising ``error``."""
        calls = [call for call in self.waiting() if call.key == (partition, offset)]
        if len(calls) != 1:
            msg = f"{len(calls)} waiting attempt(s) of {partition}@{offset}, expected one"
            raise AssertionError(msg)
        assert calls[0].future is not None
        calls[0].future.set_result(error)
        return calls[0]

    def release_all(self) -> int:
        calls = self.waiting()
        for call in calls:
            assert call.future is not None
            call.future.set_result(None)
        return len(calls)
