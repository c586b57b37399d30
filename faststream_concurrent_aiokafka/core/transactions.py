"""Exactly-once bookkeeping of one input partition: its transactional id, how far above its
commit point messages may be admitted, the metadata its transactions commit, and the state of
its open transaction.

Pure: no I/O. Every record a message publishes goes into its input partition's open
transaction, and the transaction commits the partition's commit point and the offsets finished
above it. A transaction may therefore commit only when no message that published into it is
still running; one that never ends must not hold it forever, and one that failed after
publishing must not have its records committed.
"""

import enum
from collections.abc import Collection, Hashable
from collections.abc import Set as AbstractSet
from typing import Final

from faststream_concurrent_aiokafka.core.offset_codec import (
    DEFAULT_MAX_METADATA_BYTES,
    decode_finished_offsets,
    encode_finished_offsets,
)

MAX_SPAN: Final = 1 << 14
"""Offsets admitted above a partition's commit point stay below ``commit point + MAX_SPAN``.

Kafka caps commit metadata at 4096 bytes and exactly-once cannot drop finished offsets that do
not fit (each would run again and publish again), so admission keeps them within a span whose
worst case fits: a bitset of 16,383 bits is 2,048 bytes, 2,750 characters once encoded with a
9-byte commit point (``tests/unit/test_transactions.py`` checks it against the codec).
"""

OPEN_SHARE: Final = 0.5
"""Share of ``transaction_timeout_sec`` a transaction may stay open while a message that
published into it still runs; past it the transaction is aborted, before Kafka does it."""


OPEN_PER_CLOSED: Final = 9
"""A transaction commits on its count (``commit_batch_size``) only once its gate has been open
this many times as long as it was closed for the last commit, so that commits keep it closed
at most a tenth of the time. While the gate is closed, a message of the partition that
publishes for the first time waits (one producer per partition, one transaction at a time);
at a high rate ``commit_batch_size`` messages finish long before a commit's time has paid off.
The commit interval still commits whatever finished."""


def count_may_commit(open_sec: float, last_closed_sec: float) -> bool:
    """May a transaction whose gate has been open ``open_sec`` commit on its count, after its
    last commit kept the gate closed ``last_closed_sec`` (see ``OPEN_PER_CLOSED``)?"""
    return open_sec >= OPEN_PER_CLOSED * last_closed_sec


ABORTS_DEGRADED: Final = 5
"""Transactions of one partition aborted in a row, without a commit between them, from which
on health reports the partition degraded."""


def transactional_id(prefix: str, group: str, topic: str, partition: int) -> str:
    """The transactional id of one input partition: ``{prefix}{group}:{topic}:{partition}``.

    One per partition, so the member that takes a partition over fences the previous owner's
    producer of it (aiokafka has no group-metadata fencing, KIP-447). Topic names cannot hold
    ``:``, so no two partitions of any two groups share an id.
    """
    return f"{prefix}{group}:{topic}:{partition}"


def admissible_below(commit_point: int | None, first_offset: int) -> int:
    """The first offset of a partition that may not be admitted now: ``MAX_SPAN`` above its
    commit point (or above the first offset fetched, before anything was admitted)."""
    base = first_offset if commit_point is None else commit_point
    return base + MAX_SPAN


def span_has_room(commit_point: int | None, next_offset: int) -> bool:
    """A partition paused at the span's end fetches again once half the span is free."""
    return commit_point is None or next_offset < commit_point + MAX_SPAN // 2


def carried(commit_point: int, finished: frozenset[int]) -> frozenset[int]:
    """Of the finished offsets a commit's metadata claims above ``commit_point``, those a
    transaction can carry: within ``MAX_SPAN`` above it. Claims further up (written by another
    client, or by the at-least-once mode, which keeps offsets further up) would make every
    transaction's metadata overflow and abort; left out, those messages just run again."""
    limit = commit_point + MAX_SPAN
    return frozenset(offset for offset in finished if commit_point < offset < limit)


def to_commit(
    point: int, finished: frozenset[int], done_before: AbstractSet[int]
) -> tuple[int, frozenset[int]]:
    """The commit point and finished offsets a transaction commits: the tracker's, plus the
    offsets an earlier transaction recorded as finished (``done_before``) that were not read
    again yet. Committing only the tracker's would forget those, and whoever reads the
    partition next would run them, and publish their results, again."""
    while point in done_before:  # only when nothing is in flight: point is past the last one
        point += 1
    return point, frozenset(o for o in finished | done_before if o > point)


class MetadataOverflowError(ValueError):
    """The finished offsets do not fit the commit metadata whole: committing them would
    drop some (a bug in the admission cap; the transaction is aborted instead)."""


def exact_metadata(commit_point: int, finished: frozenset[int]) -> str:
    """The metadata of a transactional commit: every offset finished above ``commit_point``,
    never a prefix of them. Raises ``MetadataOverflowError`` when they do not all fit."""
    if not finished:
        return ""
    if min(finished) <= commit_point or max(finished) - commit_point >= MAX_SPAN:
        msg = (
            f"finished offsets {min(finished)}..{max(finished)} are not within {MAX_SPAN} "
            f"above commit point {commit_point}"
        )
        raise MetadataOverflowError(msg)
    text = encode_finished_offsets(commit_point, finished, DEFAULT_MAX_METADATA_BYTES)
    if decode_finished_offsets(text, commit_point) != finished:
        msg = f"{len(finished)} finished offsets above {commit_point} do not fit the metadata"
        raise MetadataOverflowError(msg)
    return text


def sticky_partition(available: Collection[int], turn: int) -> int:
    """The partition a transaction's records without key or partition go to, of one topic: one
    per transaction, ``turn`` moving on with each, so the partitions take turns. All in one
    partition, a transaction's records of that topic travel in one batch, not one per
    partition (fewer, fuller produce requests, one partition to add to the transaction), as
    the Java client's sticky partitioner does; the choice among them was random anyway."""
    ordered = sorted(available)
    return ordered[turn % len(ordered)]


class Verdict(enum.Enum):
    """What a commit that closed its transaction's gate may do now."""

    COMMIT = "commit"  # nothing that published runs: commit
    WAIT = "wait"  # messages that published still run: wait for them (or the hold deadline)
    ABORT = "abort"  # something went wrong in the transaction, or it was held too long


class TransactionLedger:
    """The open transaction of one input partition: which running messages published into
    it, whether new ones may start publishing, since when it is open and whether it must be
    aborted.

    A message *enters* the transaction with its first publish and stays in it until it ends.
    While a commit waits, the gate is closed: messages that have not published yet wait for
    the next transaction, those in it go on. A message that ends without finishing (failed
    after publishing, cancelled) or a publish that failed *taints* the transaction: its records
    must not be committed, so it can only be aborted.
    """

    __slots__ = ("_members", "begun", "opened_at", "sticky", "taint")

    def __init__(self) -> None:
        self._members: set[Hashable] = set()
        self.opened_at: float | None = None
        self.taint: str | None = None
        self.begun = 0  # transactions begun: whose turn it is (``sticky_partition``)
        self.sticky: dict[str, int] = {}  # topic: partition of its unkeyed records here

    @property
    def members(self) -> int:
        """Running messages that published into the open transaction."""
        return len(self._members)

    def holds(self, message: Hashable) -> bool:
        return message in self._members

    def enter(self, message: Hashable, now: float) -> None:
        """``message`` publishes into the open transaction (which opens with the first one)."""
        self._members.add(message)
        if self.opened_at is None:
            self.opened_at = now

    def leave(self, message: Hashable) -> bool:
        """``message`` ended; True if it had published into the transaction (if it did not
        finish then, its records must go: ``spoil``)."""
        if message in self._members:
            self._members.discard(message)
            return True
        return False

    def spoil(self, reason: str) -> None:
        """The transaction may only be aborted now (the first reason is kept)."""
        if self.taint is None:
            self.taint = reason

    def deadline(self, max_open_sec: float) -> float | None:
        """When a commit stops waiting for the messages in the transaction and aborts it."""
        return None if self.opened_at is None else self.opened_at + max_open_sec

    def verdict(self, now: float, max_open_sec: float, *, sends_in_flight: int = 0) -> Verdict:
        """What a waiting commit does now (see ``Verdict``)."""
        if self.taint is not None:
            return Verdict.ABORT
        if not self._members and not sends_in_flight:
            return Verdict.COMMIT
        deadline = self.deadline(max_open_sec)
        if deadline is not None and now >= deadline:
            self.spoil(
                f"{len(self._members)} message(s) that published were still running "
                f"{max_open_sec:g} s after the transaction opened"
            )
            return Verdict.ABORT
        return Verdict.WAIT

    def begin(self) -> None:
        """The next transaction: empty, not tainted, unkeyed records' partitions to choose."""
        self._members.clear()
        self.opened_at = None
        self.taint = None
        self.begun += 1
        self.sticky.clear()
