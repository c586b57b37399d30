"""What a replay is about to copy, stored with its consumer group's commit.

Pure: no I/O. A replay commits its place in the dead-letter topic only after the copies are
acknowledged, so a replay killed in between would copy them again. Before copying a batch it
therefore commits, at the batch's first offset, an *intent*: the end of the batch and the end
offset of every partition it is about to write to. A replay that finds an intent reads those
partitions from there, finds the copies that did land (by ``x-dead-letter-replayed-from``) and
skips them; it keeps that intent in its own commits (merged, the older ends winning) until it
commits past the intent's end, so a replay killed again still finds them. The text stays
within Kafka's commit-metadata limit (the replay cuts batches so that it does).
"""

from dataclasses import dataclass, field
from typing import Final

from faststream_concurrent_aiokafka.core.offset_codec import DEFAULT_MAX_METADATA_BYTES

VERSION: Final = "fcak-replay1:"
# The whole limit, as the offset codec uses it: the replay measures an intent with every
# number at its longest, and topic names are ASCII, so characters are bytes.
MAX_LENGTH: Final = DEFAULT_MAX_METADATA_BYTES


@dataclass(frozen=True, slots=True)
class Intent:
    """Offsets below ``upto`` of the dead-letter partition are being copied; ``ends`` holds,
    for each (topic, partition) written to, its end offset before the first copy."""

    upto: int
    ends: dict[tuple[str, int], int] = field(default_factory=dict)

    def encode(self) -> str:
        targets = ",".join(
            f"{topic}/{partition}={end}" for (topic, partition), end in self.ends.items()
        )
        return f"{VERSION}{self.upto}:{targets}"


def decode_intent(metadata: str) -> Intent | None:
    """The intent stored as ``metadata``; None when it holds none (empty, or not ours)."""
    if not metadata.startswith(VERSION):
        return None
    try:
        upto, _, targets = metadata[len(VERSION) :].partition(":")
        ends: dict[tuple[str, int], int] = {}
        for item in filter(None, targets.split(",")):
            place, _, end = item.rpartition("=")
            topic, _, partition = place.rpartition("/")
            if not topic:
                raise ValueError(item)
            ends[topic, int(partition)] = int(end)
        return Intent(int(upto), ends)
    except ValueError as exc:
        msg = f"unreadable replay intent {metadata!r}"
        raise ValueError(msg) from exc
