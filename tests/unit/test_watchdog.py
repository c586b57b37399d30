"""The watchdog on a virtual clock: when a running message is first seen, and so when its
stall is reported."""

import asyncio

from faststream_concurrent_aiokafka.core.settings import ConcurrencySettings, SubscriberSettings
from faststream_concurrent_aiokafka.engine.engine import Engine
from faststream_concurrent_aiokafka.engine.watchdog import tick_sec
from tests.fakes import FakeConsumer, FakePipeline, let_run, tp, wait_until

VIRTUAL_CLOCK = True  # see tests/unit/conftest.py

STALL_SEC = 2.0


async def test_a_message_started_at_once_is_reported_within_its_lane_s_tick() -> None:
    """The watchdog idles on a 1 s tick while no lane exists; the first lane's message must
    not wait for that tick to be seen, or its age reads low by up to a second and its stall
    comes that much late."""
    engine = Engine(ConcurrencySettings(shutdown_timeout_sec=0.5))
    await engine.start()
    await let_run()  # the watchdog looked once and now waits for its idle tick
    loop = asyncio.get_running_loop()
    consumer = FakeConsumer(assignment=[tp(0)])
    pipeline = FakePipeline(SubscriberSettings(stall_warning_sec=STALL_SEC))
    lane = engine.lane_for(consumer, pipeline)
    consumer.produce(0, 1)
    started = loop.time()
    engine.admit(lane, consumer.deliver(tp(0), 0))
    try:
        await wait_until(lambda: bool(engine.watchdog.stalled), timeout=10)
        reported_after = loop.time() - started
        tick = tick_sec([lane])
        # The promise: a stall is noticed between stall_warning_sec and that plus two ticks.
        assert STALL_SEC < reported_after <= STALL_SEC + 2 * tick, reported_after
        (message,) = engine.watchdog.stalled
        assert engine.watchdog.age(message, engine.watchdog.now()) >= reported_after - tick
    finally:
        pipeline.hold = False
        pipeline.release_all()
        await engine.close()
