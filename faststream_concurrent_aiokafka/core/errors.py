"""Errors this library raises."""


class CommitterIsDeadError(RuntimeError):
    """The background committer stopped: no offset would be committed any more."""


class ConcurrentProcessingSetupError(RuntimeError):
    """A subscriber or the app is wired in a way that would lose or duplicate messages."""


class TaskTimeoutError(TimeoutError):
    """A handler ran longer than ``task_timeout_sec`` and was cancelled."""


class TransactionalPublishError(RuntimeError):
    """A publish of an exactly-once message cannot join its partition's transaction: the
    transaction was aborted (the message runs again), or the message had ended already (a
    task it spawned published after the handler returned)."""


class OrderingKeyError(Exception):
    """The ``ordering`` key function raised for a record, or returned an unhashable key: the
    record fails without its handler running, as an error not worth retrying (the function
    would raise again), so it goes to the dead-letter topic and never stops the consumer."""

    @classmethod
    def of(cls, cause: Exception) -> "OrderingKeyError":
        error = cls(f"the ordering key function failed: {type(cause).__name__}: {cause}")
        error.__cause__ = cause
        return error


class MessageExpiredError(Exception):
    """A record older than ``max_message_age_sec`` when its turn came: not run. The type a
    dead letter of an expired record names in its exception-type header."""


class RetryTopicError(Exception):
    """Stands for the failure that sent a message to the retry topic, in an earlier run: the
    retry record carries no exception (no more of the message than needed)."""
