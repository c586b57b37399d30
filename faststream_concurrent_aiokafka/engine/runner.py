"""A slot's task in an at-least-once lane: runs its message through the lane's pipeline; a
failed one goes down the one failure path (``attempts``).

The pipeline (for FastStream: the subscriber's whole ``process_message``, middlewares,
handler and publishing) is awaited right here, not in a helper coroutine: a frame less for
every message in flight. The message's offset is committed only after all of it.
"""

from faststream_concurrent_aiokafka.engine.attempts import LaneAttempts
from faststream_concurrent_aiokafka.engine.expiry import age_sec, expire
from faststream_concurrent_aiokafka.engine.flow_control import raise_key_error
from faststream_concurrent_aiokafka.engine.state import AdmittedMessage, TakeNext

RUNNING: dict[int, AdmittedMessage] = {}
"""Messages whose pipeline runs now, by ``id()`` of the raw record the pipeline is given.

The integration finds a message's state here from inside its pipeline: no context variable
to set (and allocate) per message, and found even when a middleware runs the rest of the
pipeline in a task of its own.
"""


async def run_slot(message: AdmittedMessage, take_next: TakeNext) -> None:
    """Task body of a slot: runs its message, then each one ``take_next`` hands it after that.

    The first attempt runs here; one that failed goes on in ``LaneAttempts`` (retries,
    dead letter). A message back from waiting for its retry outside a slot (``retry``) goes
    on from there. Never raises.
    """
    current: AdmittedMessage | None = message
    while current is not None:
        key = id(current.record)
        RUNNING[key] = current
        parked = current.retry
        try:
            limit = current.lane.settings.max_message_age_sec
            if parked is not None:
                current.retry = None
                current.error = None  # a braked message failed for good, then was kept
                # Read back from the retry topic: its turn came now, aged from its original.
                age = age_sec(current, limit) if parked.hop and limit is not None else None
                if age is not None and limit is not None:
                    await expire(current, age, limit)
                else:
                    await LaneAttempts(current).resume_parked(parked)
            elif limit is not None and (age := age_sec(current, limit)) is not None:
                await expire(current, age, limit)
            else:
                current.attempt = 1
                try:
                    if current.lane.flow.key_errors:
                        raise_key_error(current)
                    await current.lane.process(current.record)
                    error = current.attempt_error
                except (Exception, SystemExit) as exc:  # every failure: the policy's
                    error = exc
                if error is not None:
                    current.attempt_error = None
                    await LaneAttempts(current).after_attempt(1, error)
        finally:
            del RUNNING[key]
        current = take_next(current)
