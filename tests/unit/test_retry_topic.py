"""Retry topics without Kafka: the settings' checks, the record format (``core.retry_topic``)
and the engine's side (sending, reading back, waiting, the last hop) on the fakes. The real
broker's side is tests/kafka/test_retry_topic.py."""

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaTimeoutError, TopicAuthorizationFailedError
from hypothesis import given, settings
from hypothesis import strategies as st

from faststream_concurrent_aiokafka.core import retry_topic as fmt
from faststream_concurrent_aiokafka.core.dead_letters import Origin
from faststream_concurrent_aiokafka.core.failure_policy import FailurePolicy
from faststream_concurrent_aiokafka.core.health import assess
from faststream_concurrent_aiokafka.core.settings import (
    ConcurrencySettings,
    SubscriberSettings,
    check_overrides,
)
from faststream_concurrent_aiokafka.engine.attempts import current_attempt, is_final_failure
from faststream_concurrent_aiokafka.engine.engine import Engine
from faststream_concurrent_aiokafka.engine.monitor import current_faults, snapshot
from faststream_concurrent_aiokafka.engine.state import ConsumerLane
from tests.fakes import TOPIC, FakeConsumer, FakePipeline, tp, wait_until

VIRTUAL_CLOCK = True  # see tests/unit/conftest.py

RETRY = "r"
NOW_MS = 1_700_000_000_000


class Boom(Exception):
    """A handler failure the policy retries."""


class Rejected(Exception):
    """A failure the policy dead-letters at once."""


# ---- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "delays",
    [(), [1.0], (0,), (-1.0,), (math.nan,), (math.inf,), (86_401,), (True,), ("1",), (1.0,) * 21],
)
def test_retry_topic_delays_must_be_a_short_tuple_of_sane_seconds(delays: Any) -> None:
    with pytest.raises(ValueError, match="retry_topic_delays_sec") as error:
        ConcurrencySettings(retry_topic="orders-retry", retry_topic_delays_sec=delays)
    assert "retry_topic=" not in str(error.value)
    with pytest.raises(ValueError, match="retry_topic_delays_sec"):
        check_overrides({"retry_topic_delays_sec": delays})


@pytest.mark.parametrize("topic", ["", "a b", "x" * 250, ".", 1])
def test_retry_topic_must_be_a_kafka_topic_name(topic: Any) -> None:
    with pytest.raises(ValueError, match="retry_topic must be a Kafka topic name"):
        ConcurrencySettings(retry_topic=topic)


@pytest.mark.parametrize(
    ("conflict", "named"),
    [
        ({"ordering": "key"}, "ordering"),
        ({"ordering": "partition"}, "ordering"),
        ({"ordering": lambda record: record.key}, "ordering"),
        ({"processing_guarantee": "exactly_once"}, "exactly_once"),
        ({"dead_letter_topic": "orders-retry"}, "dead_letter_topic"),
    ],
)
def test_retry_topic_is_refused_with_what_it_cannot_keep(
    conflict: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match="retry_topic") as error:
        ConcurrencySettings(retry_topic="orders-retry", **conflict)
    assert named in str(error.value)
    # Per subscriber too: a subscriber's ordering against the global retry topic.
    with pytest.raises(ValueError, match="retry_topic"):
        ConcurrencySettings(retry_topic="orders-retry").for_subscriber(conflict)


@pytest.mark.parametrize("bound", [0, -1, True, 1.5, "10", 1_000_001, None])
def test_retry_topic_max_waiting_must_be_a_sane_count(bound: Any) -> None:
    with pytest.raises(ValueError, match="retry_topic_max_waiting"):
        ConcurrencySettings(retry_topic="orders-retry", retry_topic_max_waiting=bound)
    with pytest.raises(ValueError, match="retry_topic_max_waiting"):
        ConcurrencySettings().for_subscriber({"retry_topic_max_waiting": bound or 0})


def test_retry_topic_settings_default_to_off_with_a_ladder_of_delays() -> None:
    defaults = ConcurrencySettings()
    assert defaults.retry_topic is None
    assert defaults.retry_topic_delays_sec == (10.0, 60.0, 600.0)
    assert defaults.retry_topic_max_waiting == 1_000
    # The delays alone do nothing; they are checked even so.
    assert ConcurrencySettings(retry_topic_delays_sec=(1.0,)).retry_topic is None


# ---- the record format ----------------------------------------------------------------------

origins = st.builds(
    Origin,
    topic=st.from_regex(r"[a-zA-Z0-9._-]{1,40}", fullmatch=True),
    partition=st.integers(0, 10_000),
    offset=st.integers(0, 2**62),
    timestamp=st.none() | st.integers(0, 2**42),
    group=st.none() | st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True),
)
hops = st.builds(
    fmt.RetryHop,
    hop=st.integers(1, 20),
    attempts=st.integers(1, 1000),
    due_ms=st.integers(0, 2**45),
    origin=origins,
)
user_headers = st.lists(
    st.tuples(st.text(min_size=1, max_size=20), st.binary(max_size=20)), max_size=5
).map(lambda headers: [(n, v) for n, v in headers if not n.startswith(fmt.PREFIX)])


@settings(max_examples=200, deadline=None)
@given(hop=hops, headers=user_headers)
def test_retry_headers_read_back_as_written_and_keep_the_user_s(
    hop: fmt.RetryHop, headers: list[tuple[str, bytes]]
) -> None:
    written = fmt.retry_headers(headers, hop)
    assert fmt.read_retry(written) == hop
    assert fmt.user_headers(written) == headers
    # A second hop replaces ours, never piles them up.
    again = fmt.retry_headers(written, hop)
    assert again == written


@settings(max_examples=200, deadline=None)
@given(
    delays=st.lists(st.floats(0.001, 86_400), min_size=1, max_size=20).map(tuple),
    origin=origins,
    now=st.integers(0, 2**44),
)
def test_each_hop_is_due_its_own_delay_after_it_is_sent_until_none_is_left(
    delays: tuple[float, ...], origin: Origin, now: int
) -> None:
    current = None
    for number, delay in enumerate(delays, start=1):
        current = fmt.send_hop(current, origin, number, delays, now)
        assert current is not None
        assert (current.hop, current.attempts, current.origin) == (number, number, origin)
        assert -1e-6 <= current.due_ms - now - delay * 1000 < 1  # whole milliseconds, up
        assert current.wait_sec(now, max(delays)) == pytest.approx(delay, abs=0.001)
    assert fmt.send_hop(current, origin, len(delays) + 1, delays, now) is None


def test_a_due_time_in_the_past_is_now_and_one_too_far_away_is_capped() -> None:
    hop = fmt.RetryHop(hop=1, attempts=1, due_ms=NOW_MS, origin=Origin("t", 0, 0, None, None))
    assert hop.wait_sec(NOW_MS + 5000, 60) == 0
    assert hop.wait_sec(NOW_MS - 3_600_000, 60) == 60


@pytest.mark.parametrize(
    "broken",
    [
        {fmt.HOP: b"x"},
        {fmt.HOP: b"0"},
        {fmt.ATTEMPTS: b"0"},
        {fmt.PARTITION: b""},
        {fmt.OFFSET: None},
        {fmt.DUE: None},
    ],
)
def test_garbled_retry_headers_read_as_none(broken: dict[str, bytes | None]) -> None:
    hop = fmt.RetryHop(hop=1, attempts=2, due_ms=NOW_MS, origin=Origin("t", 0, 5, 7, "g"))
    headers = dict(fmt.retry_headers([], hop))
    for name, value in broken.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    assert fmt.read_retry(list(headers.items())) is None


# ---- the engine ---------------------------------------------------------------------------


class Rig:
    """One engine, one lane over a fake consumer assigned the input and the retry topic."""

    def __init__(self, engine: Engine, consumer: FakeConsumer, pipeline: FakePipeline) -> None:
        self.engine = engine
        self.consumer = consumer
        self.pipeline = pipeline
        self.lane: ConsumerLane = engine.lane_for(consumer, pipeline)

    def admit(self, *offsets: int) -> None:
        missing = max(offsets) + 1 - self.consumer.cluster.end(tp(0))
        if missing > 0:
            self.consumer.produce(0, missing)
        self.engine.admit(self.lane, self.consumer.deliver(tp(0), *offsets))

    def read_back(self, offset: int, headers: list[tuple[str, bytes]]) -> None:
        """A record of the retry topic at ``offset`` of its partition 0."""
        record = ConsumerRecord(
            topic=RETRY,
            partition=0,
            offset=offset,
            timestamp=int(time.time() * 1000),  # written now
            timestamp_type=0,
            key=None,
            value=b"v",
            checksum=None,
            serialized_key_size=0,
            serialized_value_size=1,
            headers=tuple(headers),
        )
        self.engine.admit(self.lane, [record])

    async def committed(self, partition: Any) -> int | None:
        await self.engine.committer.commit_lane(self.lane)
        return self.consumer.cluster.committed_offset(partition)


@pytest.fixture
async def make_rig() -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    engines: list[Engine] = []

    async def make(**lane_settings: Any) -> Rig:
        engine = Engine(ConcurrencySettings(commit_batch_size=1000, shutdown_timeout_sec=0.5))
        await engine.start()
        engines.append(engine)
        consumer = FakeConsumer(assignment=[tp(0), tp(0, RETRY)])
        settings = SubscriberSettings(
            **{
                "retry_topic": RETRY,
                "retry_topic_delays_sec": (30.0, 60.0),
                "dead_letter_topic": "dlq",
                "retry_backoff_sec": 0.01,
                "retry_backoff_max_sec": 0.02,
                **lane_settings,
            }
        )
        policy = FailurePolicy(dead_letter=(Rejected,))
        return Rig(engine, consumer, FakePipeline(settings, policy, hold=False))

    yield make
    for engine in engines:
        await engine.close()


@pytest.fixture
async def rig(make_rig: Callable[..., Awaitable[Rig]]) -> Rig:
    return await make_rig()


def _hop(hop: int, attempts: int, due_in_sec: float, group: str = "fake-group") -> fmt.RetryHop:
    """A hop due ``due_in_sec`` from now on the wall clock, as the engine reads due times."""
    due = int(time.time() * 1000 + due_in_sec * 1000)
    return fmt.RetryHop(hop, attempts, due, Origin(TOPIC, 0, 7, 1234, group))


async def test_a_message_out_of_attempts_goes_to_the_retry_topic_and_is_committed(
    rig: Rig,
) -> None:
    rig.pipeline.fail(0, 0, Boom())
    rig.admit(0, 1)
    await wait_until(lambda: rig.engine.counters.processed == 2)
    ((topic, record, headers),) = rig.pipeline.retries_sent
    assert (topic, record.offset) == (RETRY, 0)
    hop = fmt.read_retry(headers)
    assert hop is not None
    assert (hop.hop, hop.attempts, hop.origin) == (1, 1, Origin(TOPIC, 0, 0, 0, "fake-group"))
    assert rig.pipeline.dead_letters == []
    assert await rig.committed(tp(0)) == 2
    totals = snapshot(rig.engine).subscribers[0].totals
    assert (totals.retry_topic, totals.ok, totals.failed) == (1, 1, 0)


async def test_an_error_not_worth_retrying_skips_the_retry_topic(rig: Rig) -> None:
    rig.pipeline.fail(0, 0, Rejected())
    rig.admit(0)
    await wait_until(lambda: rig.engine.counters.processed == 1)
    assert rig.pipeline.retries_sent == []
    assert len(rig.pipeline.dead_letters) == 1


async def test_a_failing_send_holds_the_commit_point_visibly_until_it_goes_through(
    rig: Rig,
) -> None:
    rig.pipeline.retry_failures.extend([KafkaTimeoutError(), KafkaTimeoutError()])
    publish = rig.pipeline.publish_retry
    while_failing: list[tuple[bool, int | None]] = []

    async def publish_retry(topic: str, record: Any, headers: list[tuple[str, bytes]]) -> None:
        if rig.pipeline.retries_sent or len(rig.pipeline.retry_failures) < 2:
            while_failing.append((_degraded(rig), await rig.committed(tp(0))))
        await publish(topic, record, headers)

    rig.pipeline.publish_retry = publish_retry  # type: ignore[method-assign]
    rig.pipeline.fail(0, 0, Boom())
    rig.admit(0)
    await wait_until(lambda: rig.engine.counters.processed == 1)
    assert while_failing == [(True, 0), (True, 0)]  # degraded, committed before it
    assert assess(current_faults(rig.engine)).status == "ok"
    assert await rig.committed(tp(0)) == 1


def _degraded(rig: Rig) -> bool:
    return any("retry topic" in fault.reason for fault in current_faults(rig.engine))


async def test_a_send_no_retry_fixes_fails_the_message_for_good_instead(rig: Rig) -> None:
    rig.pipeline.retry_failures.append(TopicAuthorizationFailedError())
    rig.pipeline.fail(0, 0, Boom())
    rig.admit(0)
    await wait_until(lambda: rig.engine.counters.processed == 1)
    assert rig.pipeline.retries_sent == []
    assert len(rig.pipeline.dead_letters) == 1
    assert await rig.committed(tp(0)) == 1


async def test_a_record_read_back_waits_for_its_due_time_without_a_slot(rig: Rig) -> None:
    seen: list[int] = []
    rig.pipeline.on_start = lambda call: seen.append(current_attempt())
    rig.read_back(0, fmt.retry_headers([("user", b"1")], _hop(1, 3, due_in_sec=20)))
    assert len(rig.lane.waiting_retry) == 1
    assert not rig.lane.running
    assert snapshot(rig.engine).subscribers[0].waiting_in_retry_topic == 1
    assert rig.engine.uncommitted == 1  # counts against max_uncommitted_tasks
    loop = asyncio.get_running_loop()
    started = loop.time()
    await wait_until(lambda: rig.engine.counters.processed == 1, timeout=60)
    assert loop.time() - started == pytest.approx(20, abs=1)
    assert seen == [4]  # its attempts so far, over every hop, plus this one
    assert await rig.committed(tp(0, RETRY)) == 1


async def test_a_record_read_back_that_fails_goes_on_its_next_hop(rig: Rig) -> None:
    rig.pipeline.fail(0, 0, Boom())
    rig.read_back(0, fmt.retry_headers([("user", b"1")], _hop(1, 2, due_in_sec=0)))
    await wait_until(lambda: rig.engine.counters.processed == 1)
    ((topic, _, headers),) = rig.pipeline.retries_sent
    hop = fmt.read_retry(headers)
    assert hop is not None
    assert (topic, hop.hop, hop.attempts, hop.origin.offset) == (RETRY, 2, 3, 7)
    assert ("user", b"1") in headers


async def test_after_the_last_hop_the_record_is_dead_lettered(rig: Rig) -> None:
    rig.pipeline.fail(0, 0, Boom())
    rig.read_back(0, fmt.retry_headers([], _hop(2, 5, due_in_sec=0)))
    await wait_until(lambda: rig.engine.counters.processed == 1)
    assert rig.pipeline.retries_sent == []
    ((letter),) = rig.pipeline.dead_letters
    assert letter.attempts == 6


async def test_a_record_another_group_sent_is_skipped_unrun(rig: Rig) -> None:
    rig.read_back(0, fmt.retry_headers([], _hop(1, 1, due_in_sec=0, group="other")))
    assert rig.pipeline.calls == []
    assert rig.engine.counters.skipped == 1
    assert await rig.committed(tp(0, RETRY)) == 1


async def test_a_record_without_our_headers_runs_as_a_new_message(rig: Rig) -> None:
    seen: list[int] = []
    rig.pipeline.on_start = lambda call: seen.append(current_attempt())
    rig.read_back(0, [("user", b"1")])
    await wait_until(lambda: rig.engine.counters.processed == 1)
    assert seen == [1]


async def test_a_record_read_back_expires_by_its_original_timestamp(
    make_rig: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await make_rig(max_message_age_sec=60.0)
    fresh = fmt.retry_headers([], _hop(1, 1, due_in_sec=0))  # first read in 1970: too old
    rig.read_back(0, fresh)
    await wait_until(lambda: rig.engine.counters.processed == 1)
    assert rig.pipeline.calls == []
    ((letter),) = rig.pipeline.dead_letters
    assert type(letter.error).__name__ == "MessageExpiredError"


async def test_a_tripped_brake_holds_a_failure_instead_of_sending_it(
    make_rig: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await make_rig(max_consecutive_failures=1, dead_letter_topic=None)
    rig.pipeline.hold = True
    rig.admit(5)  # runs until released
    for offset in (0, 1):  # two records on their last hop fail for good: the brake trips
        rig.pipeline.fail(0, offset, Boom())
        rig.read_back(offset, fmt.retry_headers([], _hop(2, 2, due_in_sec=0)))
    await wait_until(lambda: rig.lane.brake.tripped)
    await rig.pipeline.release(0, 5, Boom())
    await wait_until(lambda: not rig.lane.running)
    assert rig.pipeline.retries_sent == []  # held by the brake, as every failure now
    assert await rig.committed(tp(0)) == 5  # not past it


async def test_an_attempt_that_goes_on_in_the_retry_topic_is_not_a_final_failure(
    rig: Rig,
) -> None:
    """What the middlewares around the library are told: a message with a trip left did not
    fail for good; one on its last trip did."""
    rig.pipeline.hold = True
    rig.admit(0)
    rig.read_back(1, fmt.retry_headers([], _hop(1, 1, due_in_sec=0)))
    rig.read_back(2, fmt.retry_headers([], _hop(2, 1, due_in_sec=0)))
    await wait_until(lambda: len(rig.pipeline.waiting()) == 3)  # every attempt runs
    final = {m.offset: is_final_failure(m, Boom()) for m in rig.lane.running}
    assert final == {0: False, 1: False, 2: True}


def _health(rig: Rig) -> tuple[str, ...]:
    return assess(current_faults(rig.engine)).reasons


async def test_a_retry_partition_full_of_records_not_due_stops_fetching_until_some_run(
    make_rig: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await make_rig(retry_topic_max_waiting=3)
    retry_tp = tp(0, RETRY)
    for offset in range(2):
        rig.read_back(offset, fmt.retry_headers([], _hop(1, 1, due_in_sec=20)))
    assert rig.consumer.paused() == set()
    rig.read_back(2, fmt.retry_headers([], _hop(1, 1, due_in_sec=20)))
    # At the bound: this retry partition fetches no more; what is behind stays in Kafka.
    assert rig.consumer.paused() == {retry_tp}
    assert any("retry_topic_max_waiting=3" in reason for reason in _health(rig))
    assert snapshot(rig.engine).subscribers[0].paused_partitions == 1
    # What the fetch already made brings is admitted (the overshoot: one fetch at most).
    rig.read_back(3, fmt.retry_headers([], _hop(1, 1, due_in_sec=40)))
    assert len(rig.lane.waiting_retry) == 4
    # The input partition goes on: fetched and run while the retry partition is paused.
    rig.consumer.produce(0, 2)
    fetched = await rig.consumer.getmany(timeout_ms=0)
    assert set(fetched) == {tp(0)}
    rig.engine.admit(rig.lane, fetched[tp(0)])
    await wait_until(lambda: rig.engine.counters.processed == 2)
    assert rig.consumer.paused() == {retry_tp}
    # The first three come due and run: below the bound again, the retry partition fetches.
    await wait_until(lambda: rig.engine.counters.processed == 5, timeout=60)
    assert rig.consumer.paused() == set()
    assert len(rig.lane.waiting_retry) == 1
    assert assess(current_faults(rig.engine)).status == "ok"


async def test_a_revoked_retry_partition_takes_its_pause_with_it(
    make_rig: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await make_rig(retry_topic_max_waiting=2)
    retry_tp = tp(0, RETRY)
    for offset in range(2):
        rig.read_back(offset, fmt.retry_headers([], _hop(1, 1, due_in_sec=20)))
    assert rig.lane.fetching.pinned == {retry_tp}
    await rig.engine.release_partitions(rig.lane, {retry_tp}, timeout=1)
    rig.consumer.revoke(retry_tp)
    assert rig.lane.fetching.pinned == set()
    assert not rig.lane.waiting_retry
    assert assess(current_faults(rig.engine)).status == "ok"
    # Assigned again, it fetches: its records are read again from the committed offset.
    rig.consumer.add(retry_tp)
    rig.engine.lane_for(rig.consumer, rig.pipeline).fetching.reapply()
    assert rig.consumer.paused() == set()
