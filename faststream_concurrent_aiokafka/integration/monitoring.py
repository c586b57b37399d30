"""What operators ask a running service: ``processing_snapshot`` and ``health_report``.

Both read the engine's state when called and may be called from any thread (a metrics
server's, for one): off the event loop they are run on it, waiting up to 5 s.
"""

from typing import Protocol, TypeAlias, cast

from faststream import ContextRepo

from faststream_concurrent_aiokafka.compat import faststream as faststream_compat
from faststream_concurrent_aiokafka.core.health import FAILED, Fault, HealthReport, assess
from faststream_concurrent_aiokafka.core.snapshot import ProcessingSnapshot
from faststream_concurrent_aiokafka.engine import monitor
from faststream_concurrent_aiokafka.integration.handler import find_handler
from faststream_concurrent_aiokafka.integration.subscribers import starting_faults


class HasContext(Protocol):
    """A broker or an app: its ``context`` is read each time it is needed."""

    @property
    def context(self) -> ContextRepo: ...


ContextSource: TypeAlias = "ContextRepo | HasContext"
"""Where long-lived readers (metrics exporters) find the processing. A broker is safest:
FastStream gives a broker a new context when an app is made around it, so a
``broker.context`` taken before that is not the one the processing is stored in."""


def current_context(source: ContextSource) -> ContextRepo:
    if faststream_compat.is_context_repo(source):
        return cast("ContextRepo", source)
    return cast("HasContext", source).context


NOT_RUNNING = Fault(
    FAILED, "concurrent processing is not running (not initialised in this context, or stopped)"
)


def processing_snapshot(context: ContextSource) -> ProcessingSnapshot:
    """The processing in ``context`` (or a broker's) as it is now: per subscriber and
    partition, and totals (see ``ProcessingSnapshot``). Without running processing, an empty
    one (``running`` False)."""
    handler = find_handler(current_context(context))
    if handler is None:
        return ProcessingSnapshot.stopped()
    engine = handler.engine
    return monitor.on_engine_loop(engine, lambda: monitor.snapshot(engine))


def health_report(context: ContextSource) -> HealthReport:
    """``status`` ``"ok"``, ``"starting"``, ``"degraded"`` or ``"failed"``, and the ``reasons``.

    failed: the processing does not run, its committer is dead, a subscriber cannot run or its
    consuming stopped by an error. degraded: a dead-letter publish keeps failing, 3 or more
    commits of a consumer failed in a row (until one succeeds), a message runs longer than its
    ``stall_warning_sec``. starting: a subscriber's consumer has not been given its first
    partition assignment yet (``is_ready`` False; liveness, ``is_failed``, is unaffected).
    ``context`` may be a broker, whose context is read now.
    """
    handler = find_handler(current_context(context))
    if handler is None:
        return assess([NOT_RUNNING])
    return monitor.on_engine_loop(
        handler.engine, lambda: assess([*handler.faults(), *starting_faults(handler)])
    )
