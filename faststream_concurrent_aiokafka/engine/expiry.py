"""Expiry (``max_message_age_sec``): a record older than that when its turn comes is not run.

It is dead-lettered (its exception type ``MessageExpiredError`` says why) or, without a
dead-letter topic, counted ``expired`` and committed; logged at WARNING once per partition per
``LOG_INTERVAL_SEC`` with how many expired since the last line, never silently. The throttle
is the lane's (``ConsumerLane.expiry_lines``): two subscribers never share it, and it goes
with the lane.
"""

import time
from typing import Any, Final

from faststream_concurrent_aiokafka.core.errors import MessageExpiredError
from faststream_concurrent_aiokafka.core.failure_policy import AttemptRecord
from faststream_concurrent_aiokafka.engine.attempts import LaneAttempts
from faststream_concurrent_aiokafka.engine.retry_topic import original_timestamp
from faststream_concurrent_aiokafka.engine.state import AdmittedMessage

LOG_INTERVAL_SEC: Final = 10.0


def age_sec(message: AdmittedMessage, limit: float) -> float | None:
    """The message's record's age when older than ``limit`` seconds, else None; a record
    read back from the retry topic is as old as its original."""
    return record_age_sec(message.record, limit, message.lane.settings.retry_topic)


def record_age_sec(record: Any, limit: float, retry_topic: str | None = None) -> float | None:
    """A record's age when older than ``limit`` seconds, else None (batches never expire:
    ``subscribers.validate`` refuses the setting for them)."""
    if isinstance(record, tuple):
        return None
    timestamp = original_timestamp(record, retry_topic)
    if timestamp is None or timestamp < 0:
        return None
    age = time.time() - timestamp / 1000.0
    return age if age > limit else None


def expired_error(age: float, limit: float) -> MessageExpiredError:
    """What an expired record fails with (its dead letter's exception type)."""
    return MessageExpiredError(f"record {age:.1f} s old, max_message_age_sec={limit:g}")


async def expire(
    message: AdmittedMessage, age: float, limit: float, attempts: LaneAttempts | None = None
) -> bool:
    """The record is not run: dead-lettered down ``attempts``' failure path (with retries,
    holding the commit point while its publish fails; exactly-once: inside its transaction)
    or counted ``expired``. True when it finished (its offset may be committed)."""
    lane = message.lane
    error = expired_error(age, limit)
    _log(message, error)
    if lane.settings.dead_letter_topic is None:
        lane.counters.expired += 1
        return True
    record = AttemptRecord(0, error, final=True, retried=False, counted=True)
    return await (attempts or LaneAttempts(message)).final(record)


def _log(message: AdmittedMessage, error: MessageExpiredError) -> None:
    lane = message.lane
    lines = lane.expiry_lines
    tp = message.topic_partition
    now = time.monotonic()
    last, count = lines.get(tp, (0.0, 0))
    count += 1
    if now - last < LOG_INTERVAL_SEC and last:
        lines[tp] = (last, count)
        return
    lines[tp] = (now, 0)
    then = (
        "counted expired"
        if lane.settings.dead_letter_topic is None
        else f"dead-lettered to {lane.settings.dead_letter_topic!r}"
    )
    lane.log.warning(
        "%d message(s) of %s[%d] not run since the last line, the latest %s (%s): %s",
        count,
        tp.topic,
        tp.partition,
        message.describe(),
        error,
        then,
        extra=message.log_extra(),
    )
