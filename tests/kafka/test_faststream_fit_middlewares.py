"""Other broker middlewares keep seeing what they saw before the library was added (real broker).

A middleware registered before the library's (outer) or after it (inner) must see every
message once, with the handler's real duration, return value or exception; FastStream's
Prometheus middleware must count and time real processing; a DI-style middleware's scope
must be open for the whole handler call and closed after it.

``mode``: with a ``FastStream`` app in the context the subscriber is set up at
initialisation from the app; a bare broker is handed to ``initialize_concurrent_processing``
as ``broker=`` (without it, setup waits for the first message, which outer middlewares then
see twice; see docs/getting-started.md).
"""

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import pytest
from aiokafka import ConsumerRecord
from faststream import BaseMiddleware, Context, ContextRepo, FastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.subscriber.usecase import DefaultSubscriber
from faststream.message import StreamMessage
from faststream.middlewares import AckPolicy, ExceptionMiddleware

from faststream_concurrent_aiokafka import (
    KafkaConcurrentProcessingMiddleware,
    initialize_concurrent_processing,
    stop_concurrent_processing,
)
from tests.kafka_helpers import (
    BOOTSTRAP,
    committed_offsets,
    create_topic,
    end_offsets,
    produce,
    unique,
    wait_until,
)

pytestmark = pytest.mark.kafka

WAIT = 30.0
POLL = 0.2
OVERLAP_WAIT = 10.0
HANDLER_SLEEP = 0.01

Mode = Literal["app", "bare"]
Order = Literal["before", "after"]
with_each_mode = pytest.mark.parametrize("mode", ["app", "bare"], ids=["app", "bare-broker"])
with_each_order = pytest.mark.parametrize(
    "order", ["before", "after"], ids=["registered-before", "registered-after"]
)


# ---- helpers -----------------------------------------------------------------------------


class Gauge:
    """Handler calls running at once; the first calls wait (bounded) for a second one."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.overlapped = asyncio.Event()
        self.gave_up = False

    def enter(self) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)
        if self.active >= 2:
            self.overlapped.set()

    def leave(self) -> None:
        self.active -= 1

    async def await_overlap(self) -> None:
        if self.overlapped.is_set() or self.gave_up:
            return
        try:
            await asyncio.wait_for(self.overlapped.wait(), OVERLAP_WAIT)
        except TimeoutError:
            self.gave_up = True


def numbers(count: int) -> list[bytes]:
    return [str(i).encode() for i in range(count)]


def manual(broker: KafkaBroker, topic: str, group: str) -> DefaultSubscriber:
    return broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.MANUAL, auto_offset_reset="earliest"
    )


def register(broker: KafkaBroker, other: Any, order: Order) -> None:
    """Register ``other`` before or after the library's middleware."""
    if order == "before":
        broker.add_middleware(other)
        broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    else:
        broker.add_middleware(KafkaConcurrentProcessingMiddleware)
        broker.add_middleware(other)


async def run_until_committed(
    broker: KafkaBroker,
    *,
    mode: Mode,
    topic: str,
    group: str,
    partitions: int,
    finished: Callable[[], bool],
) -> None:
    """Start processing and the broker, wait for ``finished()`` and for the commit of the
    whole topic, then stop the broker and the processing."""
    if mode == "app":
        FastStream(broker, logger=None)
    await initialize_concurrent_processing(
        broker.context,
        concurrency_limit=10,
        commit_batch_timeout_sec=0.2,
        broker=broker if mode == "bare" else None,
    )
    ends = await end_offsets(topic, partitions)

    async def committed_to_end() -> bool:
        return await committed_offsets(group, topic) == ends

    try:
        await broker.start()
        await wait_until(finished, timeout=WAIT)
        await wait_until(committed_to_end, timeout=WAIT, interval=POLL)
    finally:
        await broker.stop()
        await stop_concurrent_processing(broker.context)


def ident_of(msg: StreamMessage[Any]) -> int:
    return int(msg.body)


# ---- outer and inner custom middlewares ----------------------------------------------------


class Boom(Exception):
    """Raised by the handler for some messages."""


@dataclass
class HandlerCalls:
    """What the handler did, per message id."""

    started: dict[int, float] = field(default_factory=dict)
    finished: dict[int, float] = field(default_factory=dict)
    returned: dict[int, Any] = field(default_factory=dict)
    raised: dict[int, BaseException] = field(default_factory=dict)


@dataclass
class Seen:
    """One consume_scope call as a middleware saw it."""

    entered: float
    exited: float
    handler_started_before: bool
    handler_finished_at_exit: bool
    result: Any = None
    error: BaseException | None = None


class Recorder:
    """A broker middleware (a factory, like FastStream's own): one ``RecordingMiddleware``
    per message, all reporting here."""

    def __init__(self, calls: HandlerCalls) -> None:
        self.calls = calls
        self.seen: dict[int, list[Seen]] = {}

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> "RecordingMiddleware":
        return RecordingMiddleware(msg, context=context, recorder=self)


class RecordingMiddleware(BaseMiddleware):
    def __init__(self, msg: Any, /, *, context: ContextRepo, recorder: Recorder) -> None:
        super().__init__(msg, context=context)
        self.recorder = recorder

    async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
        ident = ident_of(msg)
        calls = self.recorder.calls
        started_before = ident in calls.started
        entered = time.monotonic()
        try:
            result = await call_next(msg)
        except Exception as exc:
            self._note(ident, entered, started_before, error=exc)
            raise
        self._note(ident, entered, started_before, result=result)
        return result

    def _note(
        self,
        ident: int,
        entered: float,
        started_before: bool,
        *,
        result: Any = None,
        error: BaseException | None = None,
    ) -> None:
        seen = Seen(
            entered=entered,
            exited=time.monotonic(),
            handler_started_before=started_before,
            handler_finished_at_exit=ident in self.recorder.calls.finished,
            result=result,
            error=error,
        )
        self.recorder.seen.setdefault(ident, []).append(seen)


def check_recorder(name: str, recorder: Recorder, calls: HandlerCalls, count: int) -> None:
    seen = recorder.seen
    twice = {i: [s.error for s in entries] for i, entries in seen.items() if len(entries) != 1}
    assert twice == {}, f"{name}: consume_scope ran more than once for these messages: {twice}"
    assert set(seen) == set(range(count)), f"{name}: messages never seen"
    for ident, (entry,) in seen.items():
        assert not entry.handler_started_before, f"{name}: entered after handler {ident} began"
        assert entry.handler_finished_at_exit, f"{name}: returned before handler {ident} ended"
        assert entry.entered <= calls.started[ident]
        assert entry.exited >= calls.finished[ident]
        assert entry.exited - entry.entered >= calls.finished[ident] - calls.started[ident]
        if ident in calls.raised:
            assert entry.error is calls.raised[ident], f"{name}: {ident} raised {entry.error!r}"
        else:
            assert entry.error is None, f"{name}: {ident} failed with {entry.error!r}"
            # FastStream validates the return value against the annotation: an equal copy.
            assert entry.result == calls.returned[ident], f"{name}: {ident} got {entry.result!r}"


@pytest.mark.smoke
@with_each_mode
async def test_outer_and_inner_middlewares_see_each_real_handler_call(mode: Mode) -> None:
    count, partitions = 60, 2
    topic, group = unique("fit-mw"), unique("g-fit-mw")
    await create_topic(topic, partitions)
    await produce(topic, numbers(count), partitions=partitions)
    calls = HandlerCalls()
    outer, inner = Recorder(calls), Recorder(calls)
    broker = KafkaBroker(BOOTSTRAP, logger=None)
    broker.add_middleware(outer)
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)
    broker.add_middleware(inner)
    gauge = Gauge()

    @manual(broker, topic, group)
    async def handle(body: int) -> dict[str, int]:
        calls.started[body] = time.monotonic()
        gauge.enter()
        try:
            await gauge.await_overlap()
            await asyncio.sleep(HANDLER_SLEEP)
        finally:
            gauge.leave()
        if body % 7 == 3:
            error = Boom(f"message {body}")
            calls.raised[body] = error
            calls.finished[body] = time.monotonic()
            raise error
        result = {"id": body, "triple": 3 * body}
        calls.returned[body] = result
        calls.finished[body] = time.monotonic()
        return result

    await run_until_committed(
        broker,
        mode=mode,
        topic=topic,
        group=group,
        partitions=partitions,
        finished=lambda: len(calls.finished) == count,
    )

    assert gauge.peak > 1
    assert calls.raised, "some handlers raised"
    check_recorder("inner middleware (registered after)", inner, calls, count)
    check_recorder("outer middleware (registered before)", outer, calls, count)


# ---- Prometheus ------------------------------------------------------------------------------


def sample_sum(registry: Any, name: str, **labels: str) -> float:
    """Sum of the registry's samples called ``name`` whose labels include ``labels``."""
    return float(
        sum(
            sample.value
            for metric in registry.collect()
            for sample in metric.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )
    )


@with_each_mode
@with_each_order
async def test_prometheus_middleware_counts_and_times_real_processing(
    mode: Mode, order: Order
) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from faststream.kafka.prometheus import KafkaPrometheusMiddleware

    count, partitions = 80, 2
    topic, out, group = unique("fit-prom"), unique("fit-prom-out"), unique("g-fit-prom")
    await create_topic(topic, partitions)
    await create_topic(out, 1)
    await produce(topic, numbers(count), partitions=partitions)
    registry = prometheus_client.CollectorRegistry()
    broker = KafkaBroker(BOOTSTRAP, logger=None)
    register(broker, KafkaPrometheusMiddleware(registry=registry), order)
    gauge = Gauge()
    done: Counter[int] = Counter()

    @manual(broker, topic, group)
    @broker.publisher(out)
    async def handle(body: int) -> dict[str, int]:
        gauge.enter()
        try:
            await gauge.await_overlap()
            await asyncio.sleep(HANDLER_SLEEP)
        finally:
            gauge.leave()
        done[body] += 1
        return {"id": body}

    await run_until_committed(
        broker,
        mode=mode,
        topic=topic,
        group=group,
        partitions=partitions,
        finished=lambda: len(done) == count,
    )

    assert done == Counter(range(count))
    assert gauge.peak > 1
    prefix = "faststream_received"
    statuses = {
        status: sample_sum(registry, f"{prefix}_processed_messages_total", status=status)
        for status in ("acked", "nacked", "rejected", "skipped", "error")
    }
    assert statuses == {"acked": count, "nacked": 0, "rejected": 0, "skipped": 0, "error": 0}
    assert sample_sum(registry, f"{prefix}_messages_total") == count
    assert sample_sum(registry, f"{prefix}_messages_in_process") == 0
    duration = f"{prefix}_processed_messages_duration_seconds"
    assert sample_sum(registry, f"{duration}_count") == count
    # Every handler awaited 10 ms: none may be timed below 5 ms (the library's admission
    # returning at once would be timed at ~0).
    assert sample_sum(registry, f"{duration}_bucket", le="0.005") == 0
    assert sample_sum(registry, f"{duration}_sum") >= count * HANDLER_SLEEP * 0.9
    published = "faststream_published_messages_total"
    assert sample_sum(registry, published, status="success") == count
    assert sample_sum(registry, published, status="error") == 0


# ---- a DI-scope middleware -----------------------------------------------------------------


class DIScope:
    """A per-message resource, as a DI container's request scope: open until closed."""

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.open = True
        self.in_use = 0
        self.closed_while_in_use = False


class DIScopes:
    """Broker middleware: opens a scope when a message arrives (``on_receive``), exposes it
    in FastStream's context, closes it in ``after_processed``."""

    def __init__(self) -> None:
        self.opened: list[DIScope] = []

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> "DIScopeMiddleware":
        return DIScopeMiddleware(msg, context=context, scopes=self)


class DIScopeMiddleware(BaseMiddleware):
    def __init__(self, msg: Any, /, *, context: ContextRepo, scopes: DIScopes) -> None:
        super().__init__(msg, context=context)
        self.scopes = scopes
        self.scope: DIScope | None = None
        self.token: Any = None

    async def on_receive(self) -> None:
        record = self.msg
        assert isinstance(record, ConsumerRecord)
        self.scope = DIScope(int(record.value))
        self.scopes.opened.append(self.scope)
        self.token = self.context.set_local("di_scope", self.scope)

    async def after_processed(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: Any = None,
    ) -> bool | None:
        scope = self.scope
        assert scope is not None
        scope.closed_while_in_use = scope.in_use > 0
        scope.open = False
        self.context.reset_local("di_scope", self.token)
        return False


@with_each_mode
@with_each_order
async def test_di_scope_is_open_for_the_whole_handler_call(mode: Mode, order: Order) -> None:
    count, partitions = 60, 2
    topic, group = unique("fit-di"), unique("g-fit-di")
    await create_topic(topic, partitions)
    await produce(topic, numbers(count), partitions=partitions)
    scopes = DIScopes()
    broker = KafkaBroker(BOOTSTRAP, logger=None)
    register(broker, scopes, order)
    gauge = Gauge()
    used: dict[int, DIScope] = {}
    problems: list[str] = []

    @manual(broker, topic, group)
    async def handle(body: int, scope: Annotated[DIScope, Context("di_scope")]) -> None:
        if not scope.open:
            problems.append(f"{body}: scope closed at handler start")
        if scope.ident != body:
            problems.append(f"{body}: got the scope of message {scope.ident}")
        scope.in_use += 1
        gauge.enter()
        try:
            await gauge.await_overlap()
            await asyncio.sleep(HANDLER_SLEEP)
        finally:
            gauge.leave()
            scope.in_use -= 1
        if not scope.open:
            problems.append(f"{body}: scope closed while the handler ran")
        used[body] = scope

    await run_until_committed(
        broker,
        mode=mode,
        topic=topic,
        group=group,
        partitions=partitions,
        finished=lambda: len(used) == count,
    )

    assert problems == []
    assert gauge.peak > 1
    assert len({id(scope) for scope in used.values()}) == count, "one scope per message"
    assert all(not scope.open for scope in used.values()), "a scope was never closed"
    assert [s.ident for s in scopes.opened if s.closed_while_in_use] == []
    assert all(not scope.open for scope in scopes.opened), "a scope leaked"


# ---- FastStream's ExceptionMiddleware registered before the library -----------------------


class BadBody(Exception):
    """Raised by the subscriber's decoder."""


@with_each_mode
async def test_exception_middleware_before_the_library_sees_each_final_failure(
    mode: Mode,
) -> None:
    # Issue 26 item 13: the library's __aexit__ kept every failure for its policy, so a
    # middleware registered before it (the quick start's order) never saw one.
    count, partitions, retries = 12, 2, 2
    topic, group = unique("fit-exc"), unique("g-fit-exc")
    await create_topic(topic, partitions)
    await produce(topic, numbers(count), partitions=partitions)
    undecodable, failing = {1, 6}, {3, 8}
    decoded: Counter[int] = Counter()
    handled: Counter[int] = Counter()
    seen: list[tuple[str, int]] = []

    async def on_bad_body(exc: BadBody) -> None:
        seen.append(("decoder", int(str(exc))))

    async def on_boom(exc: Boom) -> None:
        seen.append(("handler", int(str(exc))))

    broker = KafkaBroker(
        BOOTSTRAP,
        logger=None,
        middlewares=[ExceptionMiddleware(handlers={BadBody: on_bad_body, Boom: on_boom})],
    )
    broker.add_middleware(KafkaConcurrentProcessingMiddleware)

    async def decoder(msg: StreamMessage[Any], original: Any) -> Any:
        ident = ident_of(msg)
        decoded[ident] += 1
        if ident in undecodable:
            raise BadBody(ident)
        return await original(msg)

    @broker.subscriber(
        topic,
        group_id=group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        decoder=decoder,
    )
    async def handle(body: int) -> None:
        handled[body] += 1
        if body in failing:
            raise Boom(body)

    def all_attempts_ran() -> bool:
        return all(decoded[i] == retries + 1 for i in undecodable) and all(
            handled[i] == retries + 1 for i in failing
        )

    if mode == "app":
        FastStream(broker, logger=None)
    await initialize_concurrent_processing(
        broker.context,
        commit_batch_timeout_sec=0.2,
        max_retries=retries,
        retry_backoff_sec=0.01,
        retry_backoff_max_sec=0.01,
        broker=broker if mode == "bare" else None,
    )
    ends = await end_offsets(topic, partitions)

    async def committed_to_end() -> bool:
        return await committed_offsets(group, topic) == ends

    try:
        await broker.start()
        await wait_until(all_attempts_ran, timeout=WAIT)
        await wait_until(committed_to_end, timeout=WAIT, interval=POLL)
    finally:
        await broker.stop()
        await stop_concurrent_processing(broker.context)

    # Once per message, after its last attempt: the attempts that were retried stay inside.
    assert sorted(seen) == sorted(
        [("decoder", i) for i in undecodable] + [("handler", i) for i in failing]
    )
