"""At-least-once set-up of newly assigned partitions: what their commit metadata claims an
earlier owner finished, checked against each partition's end, kept as trackers that skip it.

A claim is taken on trust below the end: it cannot be told from a real one, and whoever may
commit for the group can skip anything by committing a higher offset anyway. A claim at or
beyond the end offset read here is of records that do not exist yet; it is ignored (WARNING),
so records produced later run. Claims are kept as bits (``core.offset_bitmap``): 2**20 of them
take 128 KiB, decoded in a worker thread so the event loop goes on heartbeating meanwhile.
"""

import asyncio
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from faststream_concurrent_aiokafka.compat import aiokafka as aiokafka_compat
from faststream_concurrent_aiokafka.core.offset_bitmap import OffsetBitmap
from faststream_concurrent_aiokafka.core.offset_codec import (
    MetadataDecodeError,
    decode_finished_bitmap,
)
from faststream_concurrent_aiokafka.core.offsets import PartitionOffsets
from faststream_concurrent_aiokafka.engine.state import ConsumerLane

# Partitions named in the one WARNING line that lists what will be skipped.
_NAMED_MAX = 5


@dataclass(frozen=True, slots=True)
class Claim:
    """What the commit metadata of one partition says was finished above its offset."""

    kept: OffsetBitmap  # below the partition's end: skipped when read
    ignored: OffsetBitmap  # at or beyond it: records that did not exist yet
    error: str | None = None  # the metadata could not be read (not ours, corrupt, stale)


def read_claims(
    committed: dict[TopicPartition, OffsetAndMetadata], ends: dict[TopicPartition, int] | None
) -> dict[TopicPartition, Claim]:
    """Decode each partition's claim and split it at its end (``ends`` None: unknown, so
    every claim is ignored). Pure CPU work, run in a worker thread."""
    claims = {}
    for tp, meta in committed.items():
        if not meta.metadata:
            continue
        try:
            claimed = decode_finished_bitmap(meta.metadata, meta.offset)
        except MetadataDecodeError as exc:
            empty = OffsetBitmap(meta.offset + 1)
            claims[tp] = Claim(empty, empty, str(exc))
            continue
        end = meta.offset + 1 if ends is None else ends.get(tp, meta.offset + 1)
        claims[tp] = Claim(claimed.below(end), claimed.at_or_above(end))
    return claims


async def load_finished_offsets(lane: ConsumerLane, assigned: set[TopicPartition]) -> int:
    """Start trackers that skip what an earlier owner of the newly assigned partitions
    finished below each partition's end; returns how many messages will be skipped.

    aiokafka fetches a partition as soon as it is assigned, while this runs: the partitions
    are held paused until their claims are in place, and a partition that got a record
    admitted anyway keeps its own tracker (its claimed messages then run again)."""
    held = assigned - set(lane.consumer.paused())
    lane.fetching.pin(*held)
    try:
        return await _load(lane, assigned)
    finally:
        lane.fetching.unpin(*held)


async def _load(lane: ConsumerLane, assigned: set[TopicPartition]) -> int:
    consumer = lane.consumer
    try:
        committed = await aiokafka_compat.fetch_committed_offsets(consumer, assigned)
    except Exception as exc:
        lane.log.warning("Could not read commit metadata of %s: %r", lane.name, exc)
        return 0
    fresh = {
        tp: meta
        for tp, meta in committed.items()
        if meta.metadata and not _busy(lane, tp)  # busy: its own state is newer
    }
    if not fresh:
        return 0
    ends: dict[TopicPartition, int] | None
    try:
        ends = await consumer.end_offsets(list(fresh))
    except Exception as exc:
        ends = None
        lane.log.warning(
            "Could not read the end offsets of %d partition(s) of %s (%r): the finished "
            "offsets their commit metadata claims are ignored and run again",
            len(fresh),
            lane.name,
            exc,
        )
    claims = await asyncio.to_thread(read_claims, fresh, ends)
    skipping: dict[TopicPartition, int] = {}
    for tp, claim in claims.items():
        _log_ignored(lane, tp, fresh[tp], claim, ends)
        lane.counters.claims_ignored += len(claim.ignored)
        if claim.kept and not _busy(lane, tp):
            lane.offsets.retire(tp)
            lane.offsets.install(tp, PartitionOffsets(claim.kept))
            skipping[tp] = len(claim.kept)
    total = sum(skipping.values())
    if total:
        lane.counters.claims_accepted += total
        _log_skipping(lane, skipping, total)
    return total


def _busy(lane: ConsumerLane, tp: TopicPartition) -> bool:
    current = lane.offsets.trackers.get(tp)
    return current is not None and current.pending_count > 0


def _log_ignored(
    lane: ConsumerLane,
    tp: TopicPartition,
    meta: OffsetAndMetadata,
    claim: Claim,
    ends: dict[TopicPartition, int] | None,
) -> None:
    where = f"{tp.topic}[{tp.partition}]"
    if claim.error is not None:
        lane.log.warning("Ignoring commit metadata of %s: %s", where, claim.error)
    elif claim.ignored and ends is not None:  # unknown ends: logged once for all
        lane.log.warning(
            "Commit metadata of %s (committed offset %d) claims %d offset(s) from %s to %s as "
            "finished, at or beyond the partition's end (%s): records that did not exist yet; "
            "ignored, they run when they come",
            where,
            meta.offset,
            len(claim.ignored),
            claim.ignored.first,
            claim.ignored.last,
            ends.get(tp),
        )


def _log_skipping(lane: ConsumerLane, skipping: dict[TopicPartition, int], total: int) -> None:
    largest = sorted(skipping.items(), key=lambda item: -item[1])[:_NAMED_MAX]
    named = ", ".join(f"{tp.topic}[{tp.partition}]: {count}" for tp, count in largest)
    more = len(skipping) - len(largest)
    lane.log.warning(
        "%s: skipping %d message(s) above the committed offsets of %d partition(s) that the "
        "commit metadata says an earlier owner finished (%s%s); they are not run here",
        lane.name,
        total,
        len(skipping),
        named,
        f", and {more} more partition(s)" if more else "",
    )
