"""Which dead-letter publish errors are worth retrying (``classify_publish_error``)."""

import pytest
from aiokafka import errors

from faststream_concurrent_aiokafka.core.dead_letters import (
    VALUE_DROPPED,
    PublishFailure,
    classify_publish_error,
    without_value,
)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (errors.MessageSizeTooLargeError(), PublishFailure.TOO_LARGE),
        (errors.RecordListTooLargeError(), PublishFailure.TOO_LARGE),
        (errors.InvalidTopicError(), PublishFailure.PERMANENT),
        (errors.UnknownTopicOrPartitionError(), PublishFailure.PERMANENT),
        (errors.TopicAuthorizationFailedError(), PublishFailure.PERMANENT),
        (errors.ClusterAuthorizationFailedError(), PublishFailure.PERMANENT),
        (errors.TransactionalIdAuthorizationFailed(), PublishFailure.PERMANENT),
        (errors.KafkaConnectionError(), PublishFailure.TRANSIENT),
        (errors.KafkaTimeoutError(), PublishFailure.TRANSIENT),
        (errors.NotLeaderForPartitionError(), PublishFailure.TRANSIENT),
        (RuntimeError("anything else"), PublishFailure.TRANSIENT),
        # The system's errno is no Kafka error code: ESRCH is 3, as UNKNOWN_TOPIC_OR_PARTITION.
        (ProcessLookupError(3, "no such process"), PublishFailure.TRANSIENT),
    ],
)
def test_each_error_is_sorted_by_its_kafka_error_code(
    error: BaseException, expected: PublishFailure
) -> None:
    assert classify_publish_error(error) is expected


def test_an_error_raised_from_a_permanent_one_is_permanent() -> None:
    try:
        try:
            raise errors.TopicAuthorizationFailedError
        except errors.KafkaError as inner:
            msg = "publish failed"
            raise RuntimeError(msg) from inner
    except RuntimeError as outer:
        assert classify_publish_error(outer) is PublishFailure.PERMANENT


def test_a_dead_letter_without_its_value_says_how_big_it_was() -> None:
    headers = [("x-dead-letter-offset", b"7")]
    assert without_value(headers, 1_048_000) == [*headers, (VALUE_DROPPED, b"1048000")]
