"""Pause and resume by hand: ``pause_processing`` / ``resume_processing``.

A paused subscriber starts no new message and fetches nothing; messages already running
finish and are committed; its consumer keeps polling, so it keeps its partitions (no
rebalance). Health and metrics say "paused by the application" until it is resumed.
Both run on the engine's event loop: called from another thread (an operator endpoint served
from a thread), they are handed over to it and the caller waits for the answer.
"""

from faststream_concurrent_aiokafka.core.errors import ConcurrentProcessingSetupError
from faststream_concurrent_aiokafka.engine.monitor import on_engine_loop
from faststream_concurrent_aiokafka.engine.state import ConsumerLane
from faststream_concurrent_aiokafka.integration.handler import ConcurrentProcessing, find_handler
from faststream_concurrent_aiokafka.integration.monitoring import ContextSource, current_context


def pause_processing(context: ContextSource, topic: str | None = None) -> int:
    """Pause every concurrent subscriber (or those reading ``topic``); returns how many
    consumers were paused. From any thread: it runs on the broker's event loop."""
    return _switch(context, topic, "pause_processing", pause=True)


def resume_processing(context: ContextSource, topic: str | None = None) -> int:
    """Resume what ``pause_processing`` paused (every subscriber, or those reading
    ``topic``); returns how many consumers were resumed. From any thread, as pausing."""
    return _switch(context, topic, "resume_processing", pause=False)


def _switch(context: ContextSource, topic: str | None, name: str, *, pause: bool) -> int:
    handler = _handler(context, name)
    scheduler = handler.engine.scheduler

    def switch() -> int:
        lanes = [lane for lane in _lanes(handler, topic) if pause or lane.paused_by_app]
        for lane in lanes:
            if pause:
                scheduler.pause_by_app(lane)
            else:
                scheduler.resume_by_app(lane)
            done = "paused" if pause else "resumed"
            lane.log.warning("%s %s by the application (%s)", lane.name, done, name)
        return len(lanes)

    return on_engine_loop(handler.engine, switch)


def _handler(context: ContextSource, name: str) -> ConcurrentProcessing:
    handler = find_handler(current_context(context))
    if handler is None:
        msg = f"{name}: concurrent processing is not running in this context"
        raise ConcurrentProcessingSetupError(msg)
    return handler


def _lanes(handler: ConcurrentProcessing, topic: str | None) -> list[ConsumerLane]:
    return [lane for lane in handler.engine.lanes if topic is None or topic in lane.pipeline.topics]
