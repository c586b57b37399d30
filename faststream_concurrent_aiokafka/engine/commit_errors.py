"""aiokafka's commit errors, named as the ``core.commit_policy`` failure each one is.

How they surface from ``AIOKafkaConsumer.commit()`` (aiokafka 0.14,
``GroupCoordinator.commit_offsets``): a partition not assigned raises ``IllegalStateError``
before anything is sent; a refused generation (``UnknownMemberIdError``,
``IllegalGenerationError``, ``RebalanceInProgressError``) is raised as ``CommitFailedError``
with the broker's error as its cause, after aiokafka asked for a rejoin; a lost or moved
coordinator (``NotCoordinatorForGroupError``, ``GroupCoordinatorNotAvailableError``,
``RequestTimedOutError``, connection errors) is retried inside ``commit()`` until the
coordinator answers, so it reaches the engine only as the timeout the engine put around it.
"""

from aiokafka import errors as kafka_errors

from faststream_concurrent_aiokafka.core.commit_policy import CommitFailure

_BY_TYPE: tuple[tuple[tuple[type[BaseException], ...], CommitFailure], ...] = (
    ((kafka_errors.IllegalStateError,), CommitFailure.NOT_ASSIGNED),
    ((kafka_errors.RebalanceInProgressError,), CommitFailure.REBALANCING),
    (
        (kafka_errors.UnknownMemberIdError, kafka_errors.IllegalGenerationError),
        CommitFailure.FENCED,
    ),
    ((kafka_errors.OffsetMetadataTooLargeError,), CommitFailure.METADATA_TOO_LARGE),
    (
        (
            kafka_errors.NotCoordinatorForGroupError,
            kafka_errors.GroupCoordinatorNotAvailableError,
            kafka_errors.GroupLoadInProgressError,
            kafka_errors.RequestTimedOutError,
            kafka_errors.KafkaConnectionError,
            kafka_errors.NodeNotReadyError,
            kafka_errors.KafkaTimeoutError,
        ),
        CommitFailure.COORDINATOR,
    ),
)


def classify_commit_error(error: BaseException) -> CommitFailure:
    """The failure a commit's exception stands for; its cause decides for ``CommitFailedError``
    (a rebalance in progress, or a generation that is gone)."""
    if isinstance(error, TimeoutError):
        return CommitFailure.TIMED_OUT
    if isinstance(error, kafka_errors.CommitFailedError):
        cause = error.__cause__
        if isinstance(cause, kafka_errors.RebalanceInProgressError):
            return CommitFailure.REBALANCING
        return CommitFailure.FENCED
    for types, failure in _BY_TYPE:
        if isinstance(error, types):
            return failure
    return CommitFailure.REFUSED
