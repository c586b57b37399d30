"""Copying dead letters back: read the dead-letter topic with the replay's own consumer group,
copy what the filter selects, commit the group's place only behind acknowledged copies.

A run reads each partition of the dead-letter topic from the group's committed offset up to
the end it had when the run started (dead letters that arrive meanwhile, a replayed message
failing again among them, wait for the next run). Each batch is copied under an intent (see
``core.replay_intent``), so a run killed at any point and started again copies no record
twice and skips none. A dead letter of a copy an earlier replay made (it failed again) is
left out once it went through ``max_replays`` replays: running the same replay again after a
fix that did not work copies nothing unless asked. A real run that would write to more than
one topic asks for ``target`` or ``all_targets=True`` first.
"""

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import for_code
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import OffsetAndMetadata
from faststream.kafka import KafkaBroker

from faststream_concurrent_aiokafka.compat import aiokafka as aiokafka_compat
from faststream_concurrent_aiokafka.core.dead_letters import (
    REPLAYED_FROM,
    DeadLetter,
    ReplayFilter,
    read_dead_letter,
    replay_headers,
    replayed_from,
    replayed_place,
)
from faststream_concurrent_aiokafka.core.replay_intent import MAX_LENGTH, Intent, decode_intent
from faststream_concurrent_aiokafka.replay.connection import KafkaConnection, client_settings

FETCH_WAIT_MS = 500
DEFAULT_MAX_REPLAYS = 1


class TargetsNotConfirmed(ValueError):
    """A real run would write to several topics, named by the dead letters' headers."""

    def __init__(self, targets: dict[str, int]) -> None:
        self.targets = targets
        listed = ", ".join(f"{topic} ({count})" for topic, count in sorted(targets.items()))
        super().__init__(
            f"the dead letters go to {len(targets)} topics: {listed}; copy them to one topic "
            "(--to / target=) or confirm every topic (--all-targets / all_targets=True)"
        )


@dataclass(frozen=True, slots=True)
class Copy:
    """One dead letter the replay copies (or, in a dry run, would copy)."""

    partition: int  # of the dead-letter topic
    offset: int
    letter: DeadLetter | None  # what its headers say; None for a record without them
    topic: str  # where the copy goes
    target_partition: int


@dataclass(slots=True)
class ReplayReport:
    """What a run did: records read, copied, left out by the filter, not dead letters of
    ours (without ``target``: nowhere to copy them), found already copied by an interrupted
    run, and left out as copies that failed again after ``max_replays`` replays; ``targets``
    counts the copies (made, or in a dry run to make) per topic."""

    group: str
    total: int = 0
    read: int = 0
    copied: int = 0
    filtered_out: int = 0
    unrecognised: int = 0
    already_copied: int = 0
    replayed_too_often: int = 0
    without_value: int = 0  # sent without their values (too large): nothing to copy back
    dry_run: bool = False
    copies: list[Copy] = field(default_factory=list)
    targets: dict[str, int] = field(default_factory=dict)


async def replay_dead_letters(
    source: str,
    connection: KafkaConnection | KafkaBroker,
    *,
    target: str | None = None,
    group: str | None = None,
    dry_run: bool = False,
    only: ReplayFilter | None = None,
    keep_history: bool = True,
    batch_size: int = 100,
    progress: Callable[[ReplayReport], None] | None = None,
    on_copy: Callable[[Copy], None] | None = None,
    max_replays: int = DEFAULT_MAX_REPLAYS,
    all_targets: bool = False,
) -> ReplayReport:
    """Copy the dead letters of ``source`` back to the topic each came from (or ``target``).

    ``connection`` is a FastStream ``KafkaBroker`` (its servers and security are reused; it
    need not be started) or a ``KafkaConnection``. ``group`` (default ``<source>.replay``,
    or ``<source>.replay-to.<target>``) remembers how far the replay got: a second run with
    the same group goes on from there, whatever ``only`` said. Copies keep the original key,
    value and headers; the dead-letter headers are moved under ``x-dead-letter-history-``
    (``keep_history=False``: dropped) and ``x-dead-letter-replayed-from`` names the dead
    letter. A ``dry_run`` copies and commits nothing: it lists (``on_copy``, and the report's
    ``copies``) what a run would copy. ``progress`` is called after each batch.

    A copy carries ``x-dead-letter-replays``, its count of replays; when it fails again its
    dead letter keeps it, and a dead letter that went through ``max_replays`` replays is left
    out (counted in ``replayed_too_often``): raise it to copy repeated failures again. A real
    run (not ``dry_run``) without ``target`` whose dead letters name more than one topic raises
    ``TargetsNotConfirmed`` before copying anything, unless ``all_targets`` is True.

    Do not run two replays with the same group at once: each would copy the same records.
    """
    if batch_size < 1:
        msg = f"batch_size must be >= 1, got {batch_size!r}"
        raise ValueError(msg)
    if isinstance(max_replays, bool) or not isinstance(max_replays, int) or max_replays < 1:
        msg = f"max_replays must be an int >= 1, got {max_replays!r}"
        raise ValueError(msg)
    settings = client_settings(connection)
    group = group or (f"{source}.replay" if target is None else f"{source}.replay-to.{target}")
    replay = _Replay(
        source,
        settings,
        target=target,
        group=group,
        dry_run=dry_run,
        only=only or ReplayFilter(),
        keep_history=keep_history,
        batch_size=batch_size,
        max_replays=max_replays,
        confirm_targets=not (dry_run or all_targets or target is not None),
    )
    return await replay.run(progress, on_copy)


class _Replay:
    def __init__(
        self,
        source: str,
        settings: dict[str, Any],
        *,
        target: str | None,
        group: str,
        dry_run: bool,
        only: ReplayFilter,
        keep_history: bool,
        batch_size: int,
        max_replays: int,
        confirm_targets: bool,
    ) -> None:
        self.source = source
        self.max_replays = max_replays
        self.confirm_targets = confirm_targets
        self.settings = settings
        self.target = target
        self.only = only
        self.keep_history = keep_history
        self.batch_size = batch_size
        self.report = ReplayReport(group=group, dry_run=dry_run)
        # read_committed: a dead letter of an aborted transaction was never written; its end
        # offsets are then the last stable ones.
        self.consumer = AIOKafkaConsumer(
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            **settings,
        )
        self.partitioner = DefaultPartitioner()
        # Per partition of the source: offsets an interrupted run already copied, and the
        # intent that finds them, carried forward until this run commits past its upto.
        self.already: dict[TopicPartition, set[int]] = {}
        self.carried: dict[TopicPartition, Intent] = {}
        self.admin = AIOKafkaAdminClient(**settings)
        self.probe: AIOKafkaConsumer
        self.producer: AIOKafkaProducer
        self.partitions: dict[str, list[int]] = {}

    async def run(
        self,
        progress: Callable[[ReplayReport], None] | None,
        on_copy: Callable[[Copy], None] | None,
    ) -> ReplayReport:
        consumer = self.consumer
        async with contextlib.AsyncExitStack() as clients:
            # Each is closed even when its start failed (wrong credentials fail the first).
            for client in self._clients():
                clients.push_async_callback(_close, client)
                await client.start()
            ends = await self._start_positions()
            if self.confirm_targets:
                await self._confirm_targets(ends)
            while await _short_of(consumer, ends):
                fetched = await consumer.getmany(timeout_ms=FETCH_WAIT_MS)
                for tp, records in fetched.items():
                    end = ends[tp]
                    for batch in self._batches(r for r in records if r.offset < end):
                        await self._replay_batch(tp, batch, on_copy)
                if progress is not None and fetched:
                    progress(self.report)
        return self.report

    def _clients(self) -> Iterator[Any]:
        """The clients this run opens, made one by one as the previous one started (a dry run
        neither writes nor needs end offsets)."""
        yield self.consumer
        yield self.admin
        if not self.report.dry_run:
            # Asks for the end offsets of the partitions copies go to: the reading consumer
            # answers only after its fetch in flight (up to fetch_max_wait_ms, 500 ms).
            self.probe = AIOKafkaConsumer(enable_auto_commit=False, **self.settings)
            yield self.probe
            self.producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **self.settings)
            yield self.producer

    # ---- where to start ------------------------------------------------------------------

    async def _start_positions(self) -> dict[TopicPartition, int]:
        """Assign every partition of the source, seek to the group's place (resolving what an
        interrupted run left), and return where this run stops."""
        consumer = self.consumer
        partitions = await self._partitions(self.source, "the dead-letter topic")
        tps = [TopicPartition(self.source, p) for p in partitions]
        consumer.assign(tps)
        committed = await aiokafka_compat.fetch_committed_offsets(consumer, tps)
        beginnings = await consumer.beginning_offsets(tps)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        for tp in tps:
            meta = committed.get(tp)
            start = beginnings[tp] if meta is None or meta.offset < 0 else meta.offset
            consumer.seek(tp, start)
            self.report.total += max(0, ends[tp] - start)
            intent = decode_intent(meta.metadata) if meta is not None and meta.metadata else None
            if intent is not None:  # a dry run too: it lists only what a run would copy
                # The note is only a claim: bounded by the real end, its places checked.
                intent = await self._trusted(intent, ends[tp])
                self.already[tp] = await self._copies_made(tp, start, intent)
                self.carried[tp] = intent
        return ends

    async def _trusted(self, intent: Intent, end: int) -> Intent:
        """The intent as far as it can be true: ``upto`` no further than the partition's end,
        and only places that exist (reading one that does not would create its topic on a
        broker with auto.create.topics.enable)."""
        existing = set(await self.admin.list_topics())
        ends: dict[tuple[str, int], int] = {}
        for (topic, partition), target_end in intent.ends.items():
            if topic in existing and partition in await self._partitions(topic, "named by a note"):
                ends[topic, partition] = max(0, target_end)
        return Intent(min(intent.upto, end), ends)

    async def _copies_made(self, tp: TopicPartition, start: int, intent: Intent) -> set[int]:
        """Offsets of ``tp`` in [start, intent.upto) an interrupted run already copied: found
        by their ``x-dead-letter-replayed-from`` in the partitions the intent names, read from
        where they ended before that run's copies."""
        targets = [TopicPartition(topic, partition) for topic, partition in intent.ends]
        found: set[int] = set()
        if not targets or start >= intent.upto:
            return found
        # read_uncommitted: under read_committed an open transaction on a target partition
        # would hide the (non-transactional) copies behind it, and they would be made again.
        scanner = AIOKafkaConsumer(enable_auto_commit=False, **self.settings)
        try:
            await scanner.start()  # inside: stopped even when its start failed
            scanner.assign(targets)
            ends = await scanner.end_offsets(targets)
            for target in targets:
                scanner.seek(target, min(intent.ends[target.topic, target.partition], ends[target]))
            while await _short_of(scanner, ends):
                fetched = await scanner.getmany(timeout_ms=FETCH_WAIT_MS)
                for records in fetched.values():
                    for record in records:
                        found.update(_markers(record.headers, tp, start, intent.upto))
        finally:
            await scanner.stop()
        return found

    async def _confirm_targets(self, ends: dict[TopicPartition, int]) -> None:
        """Read what this run will copy once without copying, and refuse to write to more
        than one topic unconfirmed; then go back to the start."""
        consumer = self.consumer
        starts = {tp: await consumer.position(tp) for tp in ends}
        targets: Counter[str] = Counter()
        while await _short_of(consumer, ends):
            fetched = await consumer.getmany(timeout_ms=FETCH_WAIT_MS)
            for tp, records in fetched.items():
                already = self.already.get(tp, set())
                for record in records:
                    if record.offset >= ends[tp] or record.offset in already:
                        continue
                    letter = read_dead_letter(record.headers)
                    if self._selects(letter) and letter is not None:
                        targets[letter.topic] += 1
        for tp, start in starts.items():
            consumer.seek(tp, start)
        if len(targets) > 1:
            raise TargetsNotConfirmed(dict(targets))

    def _selects(self, letter: DeadLetter | None) -> bool:
        return self.only.matches(letter) and (letter is None or letter.replays < self.max_replays)

    async def _partitions(self, topic: str, role: str) -> list[int]:
        """The partitions of ``topic``, asked once per topic; ``role`` says in an error why
        the replay needs it (which dead letter is to go there)."""
        known = self.partitions.get(topic)
        if known is None:
            # Asked first among all topic names: describing a topic that does not exist creates
            # it on a broker with auto.create.topics.enable (Kafka's default), so a mistyped
            # name would leave an empty topic behind.
            if topic not in await self.admin.list_topics():
                msg = f"cannot find topic {topic!r}, {role}: it does not exist"
                raise ValueError(msg)
            [description] = await self.admin.describe_topics([topic])
            known = sorted(p["partition"] for p in description["partitions"])
            code = description["error_code"]
            if code or not known:
                reason = for_code(code).__name__ if code else "it has none"
                msg = f"cannot find the partitions of topic {topic!r}, {role}: {reason}"
                raise ValueError(msg)
            self.partitions[topic] = known
        return known

    # ---- copying -------------------------------------------------------------------------

    def _batches(
        self, records: "Iterable[ConsumerRecord[Any, Any]]"
    ) -> "Iterable[list[ConsumerRecord[Any, Any]]]":
        batch: list[ConsumerRecord[Any, Any]] = []
        for record in records:
            batch.append(record)
            if len(batch) >= self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    async def _replay_batch(
        self,
        tp: TopicPartition,
        batch: "list[ConsumerRecord[Any, Any]]",
        on_copy: Callable[[Copy], None] | None,
    ) -> None:
        """Plan the batch's copies; in a real run commit the intent, copy, wait for every
        acknowledgement, then commit past the batch. An intent too long for the commit
        metadata splits the batch."""
        report = self.report
        already = self.already.get(tp, set())
        carried = self.carried.get(tp)
        # The intent committed for this batch may have to name the carried one's places too.
        kept: set[tuple[str, int]] = set()
        if carried is not None and batch[0].offset < carried.upto:
            kept = set(carried.ends)
        plan: list[tuple[ConsumerRecord[Any, Any], Copy]] = []
        targets: set[tuple[str, int]] = set()
        for index, record in enumerate(batch):
            report.read += 1
            copy = await self._plan(tp, record)
            if copy is None:
                continue
            if record.offset in already:
                report.already_copied += 1
                continue
            place = (copy.topic, copy.target_partition)
            if place not in targets and _intent_length(kept | targets | {place}) > MAX_LENGTH:
                if not plan:
                    msg = (
                        f"cannot copy dead letter {tp.partition}@{record.offset} of {tp.topic!r} "
                        f"to {copy.topic}[{copy.target_partition}]: the replay intent of an "
                        "interrupted run, which named other places, leaves no room for it; "
                        "run the replay with the options the interrupted run had"
                    )
                    raise ValueError(msg)
                report.read -= 1  # read again with the rest of the batch
                await self._copy(tp, plan, targets, upto=record.offset)
                await self._replay_batch(tp, batch[index:], on_copy)
                return
            targets.add(place)
            plan.append((record, copy))
            if on_copy is not None:
                on_copy(copy)
        await self._copy(tp, plan, targets, upto=batch[-1].offset + 1)

    async def _plan(self, tp: TopicPartition, record: "ConsumerRecord[Any, Any]") -> Copy | None:
        letter = read_dead_letter(record.headers)
        if not self.only.matches(letter):
            self.report.filtered_out += 1
            return None
        if letter is not None and letter.replays >= self.max_replays:
            self.report.replayed_too_often += 1
            return None
        if letter is not None and letter.value_dropped:
            self.report.without_value += 1
            return None
        topic = self.target or (letter.topic if letter is not None else None)
        if topic is None:
            self.report.unrecognised += 1
            return None
        role = f"where dead letter {tp.partition}@{record.offset} of {tp.topic!r} goes"
        partitions = await self._partitions(topic, role)
        if self.target is None and letter is not None and letter.partition in partitions:
            partition = letter.partition  # back where it was: the key keeps its partition
        elif record.key is not None:
            partition = self.partitioner(record.key, partitions, partitions)
        else:
            fallback = letter.partition if letter is not None else record.offset
            partition = partitions[fallback % len(partitions)]
        return Copy(tp.partition, record.offset, letter, topic, partition)

    async def _copy(
        self,
        tp: TopicPartition,
        plan: "list[tuple[ConsumerRecord[Any, Any], Copy]]",
        targets: set[tuple[str, int]],
        *,
        upto: int,
    ) -> None:
        report = self.report
        for _, copy in plan:
            report.targets[copy.topic] = report.targets.get(copy.topic, 0) + 1
        if report.dry_run:
            report.copies += [copy for _, copy in plan]
            report.copied += len(plan)
            return
        producer = self.producer
        if plan:
            places = [TopicPartition(topic, partition) for topic, partition in sorted(targets)]
            before = await self.probe.end_offsets(places)
            ends = {(t.topic, t.partition): before[t] for t in places}
            await self._commit(tp, plan[0][0].offset, Intent(upto, ends))
            sent = [
                await producer.send(
                    copy.topic,
                    value=record.value,
                    key=record.key,
                    partition=copy.target_partition,
                    headers=replay_headers(
                        record.headers,
                        replayed_from(tp.topic, tp.partition, record.offset),
                        keep_history=self.keep_history,
                        replays=1 if copy.letter is None else copy.letter.replays + 1,
                    ),
                )
                for record, copy in plan
            ]
            await asyncio.gather(*sent)
            report.copied += len(plan)
        await self._commit(tp, upto)

    async def _commit(self, tp: TopicPartition, offset: int, intent: Intent | None = None) -> None:
        """Commit ``offset`` with ``intent``, merged with the carried one while that may still
        name copies at or past ``offset`` (its ends are older, so they win): a run killed
        after this commit then finds every copy made past it, by this run or earlier ones."""
        carried = self.carried.get(tp)
        if carried is not None and offset < carried.upto:
            intent = carried if intent is None else _merged(intent, carried)
        metadata = "" if intent is None else intent.encode()
        await self.consumer.commit({tp: OffsetAndMetadata(offset, metadata)})


def _intent_length(targets: set[tuple[str, int]]) -> int:
    return len(Intent(2**63, dict.fromkeys(targets, 2**63)).encode())


def _merged(intent: Intent, older: Intent) -> Intent:
    return Intent(max(intent.upto, older.upto), {**intent.ends, **older.ends})


def _markers(
    headers: Iterable[tuple[str, bytes]], tp: TopicPartition, start: int, upto: int
) -> Iterable[int]:
    """Offsets in [start, upto) of ``tp`` that the markers among ``headers`` name."""
    for name, value in headers:
        if name != REPLAYED_FROM:
            continue
        place = replayed_place(value)
        if place is not None and place[:2] == (tp.topic, tp.partition) and start <= place[2] < upto:
            yield place[2]


async def _short_of(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    """Whether the consumer has not yet read up to ``ends`` on some partition."""
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return True
    return False


async def _close(client: Any) -> None:
    await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())
