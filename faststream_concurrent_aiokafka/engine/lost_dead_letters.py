"""Dead letters that can never be published: given up at once, not retried for good.

A publish refused for a reason no retry changes (the topic is invalid, unknown or not ours
to write; ``core.dead_letters.classify_publish_error``) would hold its partition's commit
point forever. The message is settled as failed instead, logged, and its subscriber's
health is degraded naming the topic and the cause until the processing stops.
"""

from faststream_concurrent_aiokafka.core.health import DEGRADED, Fault
from faststream_concurrent_aiokafka.engine.state import AdmittedMessage


def give_up_dead_letter(message: AdmittedMessage, topic: str, error: BaseException) -> None:
    """The dead letter of ``message`` cannot be published: settle it without one."""
    lane = message.lane
    cause = f"{type(error).__name__}, which retrying cannot fix"
    lane.log.error(
        "Dead letter of %s cannot be published to %r (%s); not retried: the message is "
        "committed without a dead letter",
        message.describe(),
        topic,
        cause,
        extra=message.log_extra(),
    )
    lane.faults.set(
        ("dead letter lost", lane.pipeline, topic),
        Fault(
            DEGRADED,
            f"{lane.name}: dead letters to {topic!r} cannot be published ({cause}); the last "
            f"one lost was {message.describe()}, committed without it",
        ),
    )
