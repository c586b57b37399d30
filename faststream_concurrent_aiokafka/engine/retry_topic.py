"""Retry topics (``retry_topic``, ``retry_topic_delays_sec``): a message whose in-memory
attempts are used up waits for its next attempt in a topic, not in memory.

Sending: the message is published to the retry topic with its due time and hop
(``core.retry_topic``), and it is finished here only once the broker acknowledged that: its
input offset may then be committed. A publish that fails is tried again with backoff,
holding the commit point (a fault for health while it fails); one that no retry fixes (the
topic is unknown, not ours, the record too large) fails the message for good instead.

Reading back: the subscriber reads the retry topic too (the same consumer and group, added
to its subscription at start-up). A record not yet due waits as a waiting retry: no slot,
its place below the retry partition's commit point, its count against
``max_uncommitted_tasks``; when due it runs as its next attempt. After the last delay it is
dead-lettered (or given up), naming its original place.
"""

import time
from collections.abc import Awaitable, Callable
from typing import Any

from faststream_concurrent_aiokafka.core.dead_letters import (
    Origin,
    PublishFailure,
    classify_publish_error,
)
from faststream_concurrent_aiokafka.core.decode_errors import describe_exception
from faststream_concurrent_aiokafka.core.errors import RetryTopicError
from faststream_concurrent_aiokafka.core.failure_policy import AttemptRecord, Outcome
from faststream_concurrent_aiokafka.core.health import DEGRADED, Fault
from faststream_concurrent_aiokafka.core.retry_topic import (
    RetryHop,
    read_retry,
    retry_headers,
    send_hop,
)
from faststream_concurrent_aiokafka.core.settings import SubscriberSettings
from faststream_concurrent_aiokafka.engine.state import AdmittedMessage


def _now_ms() -> float:
    """Wall-clock time: a due time is read by whichever process consumes the record."""
    return time.time() * 1000.0


def original_timestamp(record: Any, retry_topic: str | None) -> int | None:
    """The Kafka timestamp (ms) of the record as first written: a retry record's is its
    original's, so expiry ages it from there."""
    if record.topic == retry_topic:
        hop = read_retry(record.headers)
        if hop is not None:
            return hop.origin.timestamp
    timestamp: int | None = record.timestamp
    return timestamp


def read_back(message: AdmittedMessage) -> float | None:
    """A record of the retry topic was admitted: the seconds until it is due (its attempts so
    far kept in ``message.retry``), 0 for a record without our headers (it runs as a new
    message), None for one another consumer group sent (not run: it is theirs)."""
    record = message.record
    hop = None if isinstance(record, tuple) else read_retry(record.headers)
    if hop is None:
        return 0.0
    lane = message.lane
    group = lane.pipeline.group or None
    if hop.origin.group != group:
        lane.log.warning(
            "%s is a retry record of consumer group %r, not of %r: skipped (give each "
            "subscriber a retry topic of its own)",
            message.describe(),
            hop.origin.group,
            group,
            extra=message.log_extra(),
        )
        return None
    wait = hop.wait_sec(_now_ms(), max(lane.settings.retry_topic_delays_sec))
    error = RetryTopicError(f"attempt {hop.attempts} failed before hop {hop.hop}")
    message.retry = AttemptRecord(
        hop.attempts, error, final=False, retried=True, wait_sec=wait, hop=hop.hop
    )
    return wait


def next_hop(
    record: Any, settings: SubscriberSettings, group: str | None, attempts: int
) -> RetryHop | None:
    """The hop a record whose in-memory attempts are used up goes on (None: none is left):
    the first for a record of its own topic, the next one for a record read back."""
    topic = settings.retry_topic
    current = read_retry(record.headers) if record.topic == topic else None
    origin = Origin(record.topic, record.partition, record.offset, record.timestamp, group)
    return send_hop(current, origin, attempts, settings.retry_topic_delays_sec, _now_ms())


def has_hop_left(message: AdmittedMessage) -> bool:
    """Whether the message, once its in-memory attempts are used up, goes to the retry topic
    (a trip is left, the brake is not tripped) rather than failing for good."""
    lane = message.lane
    record = message.record
    if lane.settings.retry_topic is None or isinstance(record, tuple) or lane.brake.tripped:
        return False
    current = read_retry(record.headers) if record.topic == lane.settings.retry_topic else None
    return current is None or current.hop < len(lane.settings.retry_topic_delays_sec)


async def send_later(
    message: AdmittedMessage,
    record: AttemptRecord,
    wait: Callable[[float], Awaitable[None]],
    backoff: Callable[[int], float],
) -> bool:
    """Send the message to the retry topic for its next hop; True once the broker
    acknowledged (the message is finished here), False when it has no hop left, cannot be
    sent, or the dead-letter brake is tripped (it fails for good: the brake, a dead letter or
    given up)."""
    lane = message.lane
    settings = lane.settings
    topic = settings.retry_topic
    raw = message.record
    if (
        topic is None
        or isinstance(raw, tuple)
        or lane.brake.tripped  # the brake holds every failure, this one too
        or lane.policy.classify(record.error) is not Outcome.RETRY
    ):
        return False
    delays = settings.retry_topic_delays_sec
    fault = ("retry-topic", message)
    tries = 0
    try:
        while True:
            hop = next_hop(raw, settings, lane.pipeline.group, record.attempts)
            if hop is None:
                return False
            try:
                await lane.pipeline.publish_retry(topic, raw, retry_headers(raw.headers, hop))
            except Exception as exc:
                if classify_publish_error(exc) is not PublishFailure.TRANSIENT:
                    _log_refused(message, topic, exc)
                    return False
                tries += 1
                delay = backoff(tries)
                _log_failed(message, topic, exc, delay)
                lane.faults.set(
                    fault,
                    Fault(
                        DEGRADED,
                        f"sending {message.describe()} to the retry topic {topic!r} is failing "
                        "(retried with backoff); its partition's commit point waits for it",
                    ),
                )
                await wait(delay)
                continue
            lane.counters.retry_topic_sent += 1
            lane.log.info(
                "Attempt %d of %s failed (%s); sent to the retry topic %r, due in %g s (hop %d "
                "of %d)",
                record.attempts,
                message.describe(),
                _summary(record.error),
                topic,
                delays[hop.hop - 1],
                hop.hop,
                len(delays),
                extra=message.log_extra(),
            )
            return True
    finally:
        if tries:
            lane.faults.clear(fault)


def _log_failed(message: AdmittedMessage, topic: str, error: Exception, delay: float) -> None:
    message.lane.log.error(
        "Sending %s to the retry topic %r failed (%s); retrying in %.3f s, not committed",
        message.describe(),
        topic,
        _summary(error),
        delay,
        extra=message.log_extra(),
    )


def _log_refused(message: AdmittedMessage, topic: str, error: Exception) -> None:
    message.lane.log.error(
        "Sending %s to the retry topic %r failed with an error no retry fixes (%s): it fails "
        "for good instead",
        message.describe(),
        topic,
        _summary(error),
        extra=message.log_extra(),
    )


def _summary(error: BaseException) -> str:
    return f"{type(error).__name__}: {describe_exception(error)}"
