"""The dead-letter record format: its headers, and the headers a replay writes back.

Pure: no I/O. A dead letter is the original record (key, value, headers) plus headers saying
where it came from and why it failed, enough to replay it (the original topic, partition,
offset, timestamp and consumer group). A replay copies it back without our headers, or keeps
them under ``x-dead-letter-history-`` so a second failure shows the first; either way it adds
``x-dead-letter-replayed-from``, the dead letter's own place, which lets an interrupted replay
see what it already copied, and ``x-dead-letter-replays``, how many replays the record went
through. A copy that fails again is dead-lettered with those headers, so the next replay knows
it as a repeated failure and leaves it out unless told to copy it again.
"""

import enum
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Final

PREFIX: Final = "x-dead-letter-"
TOPIC: Final = PREFIX + "topic"
PARTITION: Final = PREFIX + "partition"
OFFSET: Final = PREFIX + "offset"
TIMESTAMP: Final = PREFIX + "timestamp"
CONSUMER_GROUP: Final = PREFIX + "consumer-group"
EXCEPTION_TYPE: Final = PREFIX + "exception-type"
EXCEPTION_MESSAGE: Final = PREFIX + "exception-message"
ATTEMPTS: Final = PREFIX + "attempts"
HEADERS: Final = (
    TOPIC,
    PARTITION,
    OFFSET,
    TIMESTAMP,
    CONSUMER_GROUP,
    EXCEPTION_TYPE,
    EXCEPTION_MESSAGE,
    ATTEMPTS,
)
"""What every dead letter carries after the original headers, in this order."""

VALUE_DROPPED: Final = PREFIX + "value-dropped"
"""Set (to the original value's size in bytes) on a dead letter sent with an empty value: the
whole record was over the dead-letter topic's limit. Its topic, partition and offset headers
say where the value still is (until the topic's retention removes it)."""

RETRY_HOPS: Final = PREFIX + "retry-hops"
"""Set on a dead letter of a record read back from the retry topic: the trips it made through
the retry topic (all of ``retry_topic_delays_sec`` when its last attempt failed). The topic,
partition, offset and timestamp headers name the original record, not the retry record."""

REPLAYED_FROM: Final = PREFIX + "replayed-from"
REPLAYS: Final = PREFIX + "replays"
HISTORY_PREFIX: Final = PREFIX + "history-"

MAX_EXCEPTION_TEXT_BYTES: Final = 512
"""The exception text in a dead letter is cut to this many bytes of UTF-8, whoever wrote it."""

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a failed record was read: its topic, partition, offset, timestamp (ms) and the
    consumer group that failed it (None for a subscriber without a group)."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    group: str | None


def dead_letter_headers(
    original: Iterable[tuple[str, bytes]],
    origin: Origin,
    error: BaseException | None,
    attempts: int,
    exception_text: Callable[[BaseException], str] | None,
) -> Headers:
    """The original headers, then ours (those of an earlier dead-lettering are replaced).

    ``exception_text`` turns the error into the text of ``x-dead-letter-exception-message``
    (None: no text); whatever it returns is cut to ``MAX_EXCEPTION_TEXT_BYTES``.
    """
    text = "" if error is None or exception_text is None else _text(exception_text, error)
    ours = {
        TOPIC: origin.topic,
        PARTITION: str(origin.partition),
        OFFSET: str(origin.offset),
        TIMESTAMP: "" if origin.timestamp is None else str(origin.timestamp),
        CONSUMER_GROUP: origin.group or "",
        EXCEPTION_TYPE: type(error).__name__ if error is not None else "",
        EXCEPTION_MESSAGE: text,
        ATTEMPTS: str(attempts),
    }
    kept = [(name, value) for name, value in original if name not in ours]
    return kept + [(name, value.encode()) for name, value in ours.items()]


def without_value(headers: Headers, value_size: int) -> Headers:
    """The headers of a dead letter sent without its value (see ``VALUE_DROPPED``)."""
    return [*headers, (VALUE_DROPPED, str(value_size).encode())]


class PublishFailure(enum.Enum):
    """What a failed dead-letter publish means for the next try."""

    TRANSIENT = "transient"  # may succeed later (broker away, leader moving): retry
    TOO_LARGE = "too large"  # over a size limit: it never fits as it is
    PERMANENT = "permanent"  # the topic is invalid, unknown or not ours to write: never


# Kafka protocol error codes (the same in every client): a publish failing with one of them
# fails the same way however often it is retried.
_TOO_LARGE_CODES: Final = frozenset({10, 18})  # MESSAGE_TOO_LARGE, RECORD_LIST_TOO_LARGE
_PERMANENT_CODES: Final = frozenset(
    {
        3,  # UNKNOWN_TOPIC_OR_PARTITION (also a producer's metadata wait that never found it)
        17,  # INVALID_TOPIC_EXCEPTION
        29,  # TOPIC_AUTHORIZATION_FAILED
        31,  # CLUSTER_AUTHORIZATION_FAILED
        53,  # TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    }
)


def classify_publish_error(error: BaseException) -> PublishFailure:
    """Sort a dead-letter publish's error by the Kafka error code it (or an error it was
    raised from) carries as ``errno``, as Kafka clients name them; anything else is
    transient."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # An OSError's errno is the system's (3 is ESRCH there), not Kafka's.
        code = None if isinstance(current, OSError) else getattr(current, "errno", None)
        if code in _TOO_LARGE_CODES:
            return PublishFailure.TOO_LARGE
        if code in _PERMANENT_CODES:
            return PublishFailure.PERMANENT
        current = current.__cause__ or current.__context__
    return PublishFailure.TRANSIENT


def _text(exception_text: Callable[[BaseException], str], error: BaseException) -> str:
    """The user's text for the error, cut; a function that fails must not keep the message
    from its dead letter, so its own failure is named instead."""
    try:
        return clip(str(exception_text(error)))
    except Exception as exc:
        return f"(dead_letter_exception_text raised {type(exc).__name__})"


def clip(text: str) -> str:
    """At most MAX_EXCEPTION_TEXT_BYTES of UTF-8, cut on a character boundary."""
    return text.encode()[:MAX_EXCEPTION_TEXT_BYTES].decode(errors="ignore")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """What the headers of a record of a dead-letter topic say about it."""

    topic: str
    partition: int
    offset: int
    exception_type: str
    replays: int = 0  # replays the failed record came from (0: it failed first time round)
    value_dropped: bool = False  # sent without its value (VALUE_DROPPED): nothing to replay


_READ: Final = frozenset({*HEADERS, REPLAYS, REPLAYED_FROM, VALUE_DROPPED})


def read_dead_letter(headers: Iterable[tuple[str, bytes]]) -> DeadLetter | None:
    """The dead-letter facts of a record; None when it is not a dead letter of ours."""
    found = {name: value for name, value in headers if name in _READ}
    try:
        return DeadLetter(
            topic=found[TOPIC].decode(),
            partition=int(found[PARTITION]),
            offset=int(found[OFFSET]),
            exception_type=found.get(EXCEPTION_TYPE, b"").decode(),
            replays=_replays(found),
            value_dropped=VALUE_DROPPED in found,
        )
    except (KeyError, ValueError):
        return None


def _replays(found: dict[str, bytes]) -> int:
    """The replay count; a copy made before the count was written has only its marker."""
    if REPLAYS in found:
        return max(0, int(found[REPLAYS]))
    return 1 if REPLAYED_FROM in found else 0


@dataclass(frozen=True, slots=True)
class ReplayFilter:
    """Which dead letters a replay copies; an empty field matches everything.

    ``exception_types`` are class names as in ``x-dead-letter-exception-type``; ``topics``,
    ``partitions`` and the inclusive ``min_offset``/``max_offset`` are the original record's.
    """

    exception_types: Collection[str] = ()
    topics: Collection[str] = ()
    partitions: Collection[int] = ()
    min_offset: int | None = None
    max_offset: int | None = None

    def __post_init__(self) -> None:
        # A bare string would match by substring ("order" in "orders"): refused, not guessed.
        for name in ("exception_types", "topics", "partitions"):
            if isinstance(getattr(self, name), str | bytes):
                msg = f"ReplayFilter.{name} must be a collection, e.g. ({getattr(self, name)!r},)"
                raise ValueError(msg)
        low, high = self.min_offset, self.max_offset
        if low is not None and high is not None and low > high:
            msg = f"ReplayFilter.min_offset ({low}) is above max_offset ({high}): nothing matches"
            raise ValueError(msg)

    @property
    def is_empty(self) -> bool:
        return not (
            self.exception_types
            or self.topics
            or self.partitions
            or self.min_offset is not None
            or self.max_offset is not None
        )

    def matches(self, letter: DeadLetter | None) -> bool:
        """A record that is no dead letter of ours matches only an empty filter."""
        if letter is None:
            return self.is_empty
        return (
            (not self.exception_types or letter.exception_type in self.exception_types)
            and (not self.topics or letter.topic in self.topics)
            and (not self.partitions or letter.partition in self.partitions)
            and (self.min_offset is None or letter.offset >= self.min_offset)
            and (self.max_offset is None or letter.offset <= self.max_offset)
        )


def replayed_from(topic: str, partition: int, offset: int) -> bytes:
    """The value of ``x-dead-letter-replayed-from``: the dead letter's own place."""
    return f"{topic}/{partition}/{offset}".encode()


def replay_headers(
    headers: Iterable[tuple[str, bytes]], marker: bytes, *, keep_history: bool, replays: int = 1
) -> Headers:
    """The headers a replayed copy carries: the original ones, our dead-letter headers moved
    under ``x-dead-letter-history-`` (or dropped, with every earlier history), then
    ``replays`` (this copy's count of replays, kept either way) and ``marker`` last."""
    copied: Headers = []
    for name, value in headers:
        if name == REPLAYS:
            continue
        if not name.startswith(PREFIX):
            copied.append((name, value))
        elif keep_history:
            kept = name if name.startswith(HISTORY_PREFIX) else HISTORY_PREFIX + name[len(PREFIX) :]
            copied.append((kept, value))
    copied.append((REPLAYS, str(replays).encode()))
    copied.append((REPLAYED_FROM, marker))
    return copied


def replayed_place(marker: bytes) -> tuple[str, int, int] | None:
    """The dead letter's place a ``x-dead-letter-replayed-from`` value names; None if it is
    not one."""
    topic, _, rest = marker.decode(errors="replace").rpartition("/")
    topic, _, partition = topic.rpartition("/")
    try:
        return (topic, int(partition), int(rest)) if topic else None
    except ValueError:
        return None
