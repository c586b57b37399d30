"""The replay tool against a real broker: dead letters copied back and processed once, a run
interrupted at any point and started again copying none twice, filters and dry runs, and the
broker's SASL settings reused."""

import asyncio
import os
import signal
import sys
import tracemalloc
from collections import Counter
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from faststream.exceptions import RejectMessage
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.security import SASLPlaintext

from faststream_concurrent_aiokafka.core.dead_letters import (
    REPLAYED_FROM,
    Origin,
    ReplayFilter,
    dead_letter_headers,
    without_value,
)
from faststream_concurrent_aiokafka.core.replay_intent import Intent
from faststream_concurrent_aiokafka.replay import (
    KafkaConnection,
    TargetsNotConfirmed,
    copier,
    replay_dead_letters,
)
from faststream_concurrent_aiokafka.replay.__main__ import main
from tests.kafka.test_failure_policy import header_map, manual_subscriber, record_count, running
from tests.kafka_helpers import (
    BOOTSTRAP,
    committed_offsets,
    concurrent_broker,
    create_topic,
    end_offsets,
    numbered_topic,
    read_all,
    topics,
    unique,
    wait_committed,
    wait_until,
)

pytestmark = pytest.mark.kafka

SASL_BOOTSTRAP = os.environ.get("KAFKA_SASL_BOOTSTRAP_SERVERS")
SASL_USER, SASL_PASSWORD = "fcak-test", "fcak-test-secret"  # scripts/kafka.sh's test user

Letter = tuple[str, int, int, str]  # original topic, partition, offset, exception type


def letter_headers(letter: Letter) -> list[tuple[str, bytes]]:
    original, partition, offset, error = letter
    origin = Origin(original, partition, offset, 1_700_000_000_000, "billing")
    return dead_letter_headers(
        [("origin", b"producer")], origin, type(error, (Exception,), {})(), 1, str
    )


async def make_dead_letters(
    topic: str, letters: list[Letter], *, bootstrap: str = BOOTSTRAP
) -> None:
    """Produce dead letters in the library's format, value ``b"<offset>"``."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for letter in letters:
            offset = letter[2]
            value, key = str(offset).encode(), b"k%d" % offset
            await producer.send(topic, value, key=key, headers=letter_headers(letter))
        await producer.flush()
    finally:
        await producer.stop()


def replayed(records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]) -> Counter[bytes]:
    """How often each dead letter (by its x-dead-letter-replayed-from) was copied."""
    return Counter(
        value for _k, _v, headers in records for name, value in headers if name == REPLAYED_FROM
    )


# ---- replayed and processed ----------------------------------------------------------------


@pytest.mark.smoke
async def test_dead_letters_replayed_to_their_topic_are_processed_once_by_the_fixed_handler() -> (
    None
):
    total, partitions = 100, 2
    topic, group = await numbered_topic("replay", total, partitions)
    dead_letters = unique("replay-dlt")
    await create_topic(dead_letters, 1)
    settings: dict[str, Any] = {
        "commit_batch_size": 10,
        "commit_batch_timeout_sec": 0.1,
        "dead_letter_topic": dead_letters,
    }

    broken = concurrent_broker()

    @manual_subscriber(broken, topic, group)
    async def reject(body: int) -> None:
        raise RejectMessage

    async with running(broken, **settings):
        await wait_committed(group, topic, await end_offsets(topic, partitions))
    assert await record_count(dead_letters, 1) == total

    # The replay reuses a FastStream broker's connection settings (not started).
    report = await replay_dead_letters(dead_letters, KafkaBroker(BOOTSTRAP))
    assert (report.read, report.copied, report.filtered_out, report.unrecognised) == (
        total,
        total,
        0,
        0,
    )
    assert report.group == f"{dead_letters}.replay"
    assert await committed_offsets(report.group, dead_letters) == {0: total}
    ends = await end_offsets(topic, partitions)
    assert sum(ends.values()) == 2 * total  # each back in its own partition
    assert ends == {0: total, 1: total}

    fixed = concurrent_broker()
    processed: Counter[int] = Counter()
    replays: list[dict[str, bytes]] = []

    @manual_subscriber(fixed, topic, group)
    async def handle(body: int, msg: KafkaMessage) -> None:
        processed[body] += 1
        raw = msg.raw_message
        assert not isinstance(raw, tuple)
        replays.append(header_map(raw.headers))

    async with running(fixed, **settings):
        await wait_committed(group, topic, ends)
    assert processed == Counter(range(total))
    headers = replays[0]
    assert headers[REPLAYED_FROM].startswith(f"{dead_letters}/0/".encode())
    assert headers["x-dead-letter-history-exception-type"] == b"RejectMessage"
    assert headers["x-dead-letter-history-topic"] == topic.encode()
    assert "x-dead-letter-topic" not in headers

    # The replay's group remembers: a second run copies nothing.
    again = await replay_dead_letters(dead_letters, KafkaBroker(BOOTSTRAP))
    assert (again.total, again.copied) == (0, 0)


# ---- interrupted runs ----------------------------------------------------------------------


async def dead_letter_topic(count: int, partitions: int = 2) -> tuple[str, str, str]:
    """A dead-letter topic holding ``count`` dead letters of a 4-partition topic (offset ``i``
    of partition ``i % 4``), that topic, and a 3-partition topic to replay to."""
    source, original, target = unique("replay-src"), unique("orders"), unique("replay-to")
    await create_topic(source, partitions)
    await create_topic(original, 4)
    await create_topic(target, 3)
    await make_dead_letters(source, [(original, i % 4, i, "PoisonError") for i in range(count)])
    return source, original, target


async def interrupt_between_copy_and_commit(
    monkeypatch: pytest.MonkeyPatch, source: str, target: str
) -> tuple[int, int]:
    """Run a replay (batches of 10) killed after its third batch was copied, before that
    batch's commit: how many copies landed, and how far the group's commit got."""
    real_commit = AIOKafkaConsumer.commit
    done_commits = 0

    async def commit_then_die(self: AIOKafkaConsumer, offsets: Any = None) -> None:
        nonlocal done_commits
        if offsets and all(meta.metadata == "" for meta in offsets.values()):
            done_commits += 1
            if done_commits == 3:
                raise RuntimeError("killed between the copies and the commit")
        await real_commit(self, offsets)

    monkeypatch.setattr(AIOKafkaConsumer, "commit", commit_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        await replay_dead_letters(source, KafkaConnection(BOOTSTRAP), target=target, batch_size=10)
    monkeypatch.undo()
    landed = sum((await end_offsets(target, 3)).values())
    committed = sum((await committed_offsets(f"{source}.replay-to.{target}", source)).values())
    assert committed < landed  # the last batch's copies landed, its commit did not
    return landed, committed


async def test_a_replay_interrupted_between_copy_and_commit_copies_none_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    count = 60
    source, _original, target = await dead_letter_topic(count)
    landed, committed = await interrupt_between_copy_and_commit(monkeypatch, source, target)

    report = await replay_dead_letters(
        source, KafkaConnection(BOOTSTRAP), target=target, batch_size=10
    )

    assert report.already_copied == landed - committed  # found by their markers
    assert report.copied == count - landed
    assert sum((await end_offsets(target, 3)).values()) == count  # read_all stops at count
    copies = replayed(await read_all(target, count))
    assert len(copies) == count
    assert set(copies.values()) == {1}


async def test_a_dry_run_after_an_interrupted_replay_leaves_out_what_it_copied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    count = 60
    source, _original, target = await dead_letter_topic(count)
    landed, committed = await interrupt_between_copy_and_commit(monkeypatch, source, target)

    dry = await replay_dead_letters(
        source, KafkaConnection(BOOTSTRAP), target=target, batch_size=10, dry_run=True
    )

    assert dry.already_copied == landed - committed
    assert dry.copied == len(dry.copies) == count - landed
    assert sum((await end_offsets(target, 3)).values()) == landed


@pytest.mark.parametrize(
    ("second_batch_size", "second_run_killed"),
    [(10, "during its copies"), (3, "after its first batch")],
)
async def test_a_resumed_replay_killed_again_copies_none_twice(
    monkeypatch: pytest.MonkeyPatch, second_batch_size: int, second_run_killed: str
) -> None:
    count = 30
    source, _original, target = await dead_letter_topic(count, partitions=1)
    group = f"{source}.replay-to.{target}"
    real_send, real_commit = AIOKafkaProducer.send, AIOKafkaConsumer.commit
    lost: list[int] = []  # the target partition whose copies a kill keeps from landing

    async def send_or_lose(self: AIOKafkaProducer, topic: str, **kwargs: Any) -> Any:
        # A kill lets the copies to some partitions land and not those to another.
        lost[:] = lost or [kwargs["partition"]]
        if kwargs["partition"] != lost[0]:
            return await real_send(self, topic, **kwargs)
        never = asyncio.get_running_loop().create_future()
        never.set_exception(RuntimeError("killed during its copies"))
        return never

    async def commit_then_die(self: AIOKafkaConsumer, offsets: Any = None) -> None:
        await real_commit(self, offsets)
        if any(meta.offset == second_batch_size for meta in offsets.values()):
            raise RuntimeError("killed after its first batch")

    monkeypatch.setattr(AIOKafkaProducer, "send", send_or_lose)
    with pytest.raises(RuntimeError, match="killed"):
        await replay_dead_letters(source, KafkaConnection(BOOTSTRAP), target=target, batch_size=10)
    landed = sum((await end_offsets(target, 3)).values())
    assert 0 < landed < 10  # the first batch's copies landed in part
    assert (await committed_offsets(group, source)) == {0: 0}

    if second_run_killed == "after its first batch":
        monkeypatch.undo()
        monkeypatch.setattr(AIOKafkaConsumer, "commit", commit_then_die)
    with pytest.raises(RuntimeError, match=second_run_killed):
        await replay_dead_letters(
            source, KafkaConnection(BOOTSTRAP), target=target, batch_size=second_batch_size
        )
    monkeypatch.undo()
    landed_before = sum((await end_offsets(target, 3)).values())

    report = await replay_dead_letters(
        source, KafkaConnection(BOOTSTRAP), target=target, batch_size=10
    )

    assert report.copied == count - landed_before
    assert sum((await end_offsets(target, 3)).values()) == count
    copies = replayed(await read_all(target, count))
    assert len(copies) == count
    assert set(copies.values()) == {1}


async def leave_intent(group: str, source: str, intent: Intent) -> None:
    """Commit, as an interrupted run would have, ``intent`` at the start of partition 0."""
    consumer = AIOKafkaConsumer(
        group_id=group, bootstrap_servers=BOOTSTRAP, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(source, 0)
        consumer.assign([tp])
        await consumer.commit({tp: OffsetAndMetadata(0, intent.encode())})
    finally:
        await consumer.stop()


async def test_a_resumed_replay_with_no_room_beside_the_old_intent_fails_copying_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, _original, target = await dead_letter_topic(5, partitions=1)
    elsewhere = unique("replay-to")  # where an interrupted run with other options copied
    await create_topic(elsewhere, 1)
    group = unique("replay-group")
    await leave_intent(group, source, Intent(5, {(elsewhere, 0): 0}))
    # Room for the old intent's one place, none for one of this run's beside it.
    monkeypatch.setattr(copier, "MAX_LENGTH", len(Intent(2**63, {(target, 2): 2**63}).encode()))

    with pytest.raises(ValueError, match="leaves no room"):
        await replay_dead_letters(source, KafkaConnection(BOOTSTRAP), target=target, group=group)

    assert sum((await end_offsets(target, 3)).values()) == 0
    assert await committed_offsets(group, source) == {0: 0}


async def test_a_scanner_that_fails_to_start_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    source, _original, target = await dead_letter_topic(5, partitions=1)
    group = unique("replay-group")
    await leave_intent(group, source, Intent(5, {(target, 0): 0}))
    real_start, real_stop = AIOKafkaConsumer.start, AIOKafkaConsumer.stop
    failed: list[AIOKafkaConsumer] = []
    stopped: list[AIOKafkaConsumer] = []

    async def start_or_fail(self: AIOKafkaConsumer) -> None:
        if self._group_id is None:  # in a dry run only the scanner reads without a group
            failed.append(self)
            raise RuntimeError("the scanner failed to start")
        await real_start(self)

    async def stop(self: AIOKafkaConsumer) -> None:
        stopped.append(self)
        await real_stop(self)

    monkeypatch.setattr(AIOKafkaConsumer, "start", start_or_fail)
    monkeypatch.setattr(AIOKafkaConsumer, "stop", stop)
    with pytest.raises(RuntimeError, match="failed to start"):
        await replay_dead_letters(
            source, KafkaConnection(BOOTSTRAP), target=target, group=group, dry_run=True
        )

    assert len(failed) == 1
    assert failed[0] in stopped


async def run_replay(*args: str) -> tuple[int, str, str]:
    """Run the command line to its end: exit status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "faststream_concurrent_aiokafka.replay",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_a_replay_killed_halfway_and_run_again_copies_none_twice() -> None:
    count = 200
    source, _original, target = await dead_letter_topic(count)
    args = ["--bootstrap", BOOTSTRAP, "--from", source, "--to", target, "--batch-size", "1"]
    first = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "faststream_concurrent_aiokafka.replay",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:

        async def halfway() -> bool:
            return sum((await end_offsets(target, 3)).values()) >= count // 4

        await wait_until(halfway, timeout=60, interval=0.01)
        assert first.returncode is None, "the replay ended before it could be killed"
        first.send_signal(signal.SIGKILL)
    finally:
        if first.returncode is None:
            first.kill()
        await first.wait()
    copied_before = sum((await end_offsets(target, 3)).values())
    assert count // 4 <= copied_before < count

    status, out, err = await run_replay(*args)

    assert status == 0, err
    assert "copied" in out
    assert sum((await end_offsets(target, 3)).values()) == count  # read_all stops at count
    copies = replayed(await read_all(target, count))
    assert sum(copies.values()) == count
    assert len(copies) == count


async def test_a_dead_letter_of_an_aborted_transaction_is_not_replayed() -> None:
    source, target = unique("replay-tx"), unique("replay-tx-to")
    await create_topic(source, 1)
    await create_topic(target, 1)
    await make_dead_letters(source, [("orders", 0, 2, "PoisonError")])
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, transactional_id=unique("tx"))
    await producer.start()
    try:
        await producer.begin_transaction()
        aborted: Letter = ("orders", 0, 1, "PoisonError")
        await producer.send_and_wait(source, b"1", headers=letter_headers(aborted))
        await producer.abort_transaction()
    finally:
        await producer.stop()

    report = await replay_dead_letters(source, KafkaConnection(BOOTSTRAP), target=target)

    assert report.copied == 1
    assert await end_offsets(target, 1) == {0: 1}
    [(_key, value, _headers)] = await read_all(target, 1)
    assert value == b"2"


async def test_a_dead_letter_sent_without_its_value_is_not_copied_back() -> None:
    """A dead letter that was over its topic's size limit has no value: copying it back would
    put an empty record where the original was."""
    source, target = unique("replay-novalue"), unique("replay-novalue-to")
    await create_topic(source, 1)
    await create_topic(target, 1)
    await make_dead_letters(source, [("orders", 0, 2, "PoisonError")])
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
    await producer.start()
    try:
        letter: Letter = ("orders", 0, 3, "PoisonError")
        dropped = without_value(letter_headers(letter), 2_000_000)
        await producer.send_and_wait(source, b"", headers=dropped)
    finally:
        await producer.stop()

    report = await replay_dead_letters(source, KafkaConnection(BOOTSTRAP), target=target)

    assert (report.copied, report.without_value) == (1, 1)
    [(_key, value, _headers)] = await read_all(target, 1)
    assert value == b"2"


async def test_a_dead_letter_whose_topic_is_gone_fails_naming_the_error_and_the_letter() -> None:
    source, gone = unique("replay-gone"), unique("gone")
    await create_topic(source, 1)
    await make_dead_letters(source, [(gone, 0, 7, "PoisonError")])

    with pytest.raises(ValueError, match=r"does not exist") as failure:
        await replay_dead_letters(source, KafkaConnection(BOOTSTRAP))

    assert f"dead letter 0@0 of {source!r}" in str(failure.value)
    assert repr(gone) in str(failure.value)
    assert gone not in await topics()  # not created by asking (the broker auto-creates)


async def test_a_mistyped_dead_letter_topic_fails_and_is_not_created() -> None:
    missing = unique("replay-typo")

    with pytest.raises(ValueError, match=rf"{missing}.*the dead-letter topic: it does not exist"):
        await replay_dead_letters(missing, KafkaConnection(BOOTSTRAP))

    assert missing not in await topics()


# ---- filters and dry runs ------------------------------------------------------------------


async def test_a_dry_run_lists_what_the_filter_selects_and_changes_nothing() -> None:
    source, target = unique("replay-f"), unique("replay-f-to")
    await create_topic(source, 1)
    await create_topic(target, 1)
    letters: list[Letter] = [
        ("orders", i % 3, i, "ValidationError" if i % 2 else "TimeoutError") for i in range(30)
    ]
    await make_dead_letters(source, letters)
    only = ReplayFilter(
        exception_types={"ValidationError"}, partitions={1}, min_offset=5, max_offset=25
    )
    expected = [i for i in range(30) if i % 2 and i % 3 == 1 and 5 <= i <= 25]
    listed: list[int] = []

    dry = await replay_dead_letters(
        source,
        KafkaConnection(BOOTSTRAP),
        target=target,
        dry_run=True,
        only=only,
        on_copy=lambda copy: listed.append(copy.letter.offset if copy.letter else -1),
    )

    assert listed == expected
    assert [copy.offset for copy in dry.copies] == expected
    assert (dry.copied, dry.filtered_out) == (len(expected), 30 - len(expected))
    assert await end_offsets(target, 1) == {0: 0}
    assert await committed_offsets(dry.group, source) == {}

    real = await replay_dead_letters(source, KafkaConnection(BOOTSTRAP), target=target, only=only)
    assert real.copied == len(expected)
    copies = await read_all(target, len(expected))
    assert sorted(int(value) for _k, value, _h in copies) == expected
    _key, _value, headers = copies[0]
    assert headers[0] == ("origin", b"producer")
    assert header_map(headers)["x-dead-letter-history-consumer-group"] == b"billing"


async def test_the_command_line_dry_run_prints_one_line_per_dead_letter() -> None:
    source, original, _target = await dead_letter_topic(3, partitions=1)

    status, out, err = await run_replay("--bootstrap", BOOTSTRAP, "--from", source, "--dry-run")

    assert status == 0, err
    assert out.splitlines() == [
        *(f"0@{i}\t{original}[{i}]@{i}\tPoisonError\t-> {original}[{i}]" for i in range(3)),
        f"group {source}.replay: read 3 of 3, would copy 3 ({original} 3), filtered out 0, "
        "not dead letters 0, already copied by an interrupted run 0, failed again after "
        "--max-replays replays 0, without their values (not copied) 0",
    ]
    assert await end_offsets(original, 4) == dict.fromkeys(range(4), 0)


# ---- SASL ----------------------------------------------------------------------------------


@pytest.mark.skipif(SASL_BOOTSTRAP is None, reason="no SASL listener (KAFKA_SASL_PORT)")
async def test_the_replay_connects_with_the_broker_s_sasl_settings() -> None:
    assert SASL_BOOTSTRAP is not None
    source, target = unique("replay-sasl"), unique("replay-sasl-to")
    await create_topic(source, 1)
    await create_topic(target, 1)
    await make_dead_letters(source, [("orders", 0, i, "PoisonError") for i in range(5)])

    wrong = KafkaBroker(
        SASL_BOOTSTRAP, security=SASLPlaintext(username=SASL_USER, password="wrong")
    )
    with pytest.raises(Exception, match=r"Authentication failed|Unable to bootstrap"):
        await replay_dead_letters(source, wrong, target=target)

    broker = KafkaBroker(
        SASL_BOOTSTRAP, security=SASLPlaintext(username=SASL_USER, password=SASL_PASSWORD)
    )
    report = await replay_dead_letters(source, broker, target=target)

    assert report.copied == 5
    assert len(replayed(await read_all(target, 5))) == 5


# ---- repeated failures, untrusted notes, several targets (issue 26 item 6) --------------------


async def test_a_second_replay_after_a_failing_fix_copies_nothing_unless_asked() -> None:
    total, partitions = 20, 2
    topic, group = await numbered_topic("replay-loop", total, partitions)
    dead_letters = unique("replay-loop-dlt")
    await create_topic(dead_letters, 1)
    settings: dict[str, Any] = {"commit_batch_timeout_sec": 0.1, "dead_letter_topic": dead_letters}

    async def run_broken_handler(expected_dead_letters: int) -> None:
        broken = concurrent_broker()

        @manual_subscriber(broken, topic, group)
        async def reject(body: int) -> None:
            raise RejectMessage

        async with running(broken, **settings):
            await wait_committed(group, topic, await end_offsets(topic, partitions))
        assert await record_count(dead_letters, 1) == expected_dead_letters

    await run_broken_handler(total)
    first = await replay_dead_letters(dead_letters, KafkaConnection(BOOTSTRAP))
    assert first.copied == total
    await run_broken_handler(2 * total)  # the "fix" did not work: every copy failed again

    second = await replay_dead_letters(dead_letters, KafkaConnection(BOOTSTRAP))

    assert (second.read, second.copied) == (total, 0)
    assert second.replayed_too_often == total
    assert sum((await end_offsets(topic, partitions)).values()) == 2 * total  # nothing copied

    # Asked for: a replay with max_replays=2 (a new group, from the start) copies the repeated
    # failures too, with their count raised.
    asked = await replay_dead_letters(
        dead_letters, KafkaConnection(BOOTSTRAP), group=unique("again"), max_replays=2
    )
    assert (asked.copied, asked.replayed_too_often) == (2 * total, 0)
    copies = await read_all(topic, 4 * total)
    counts = Counter(dict(headers).get("x-dead-letter-replays") for _k, _v, headers in copies)
    assert counts == {None: total, b"1": 2 * total, b"2": total}


async def commit_note(group: str, topic: str, metadata: str) -> None:
    """Commit offset 0 with ``metadata`` for ``group``, as any client of the group could."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=BOOTSTRAP, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.commit({tp: OffsetAndMetadata(0, metadata)})
    finally:
        await consumer.stop()


async def test_a_forged_progress_note_is_bounded_and_creates_no_topic() -> None:
    # The note claims copies of offsets up to 2 * 10**6 went to a topic that does not exist:
    # the old code built a set of every offset it named (2.6 GB for 2 * 10**7) and read that
    # topic, which a broker with auto.create.topics.enable then created.
    count = 5
    source, original, _target = await dead_letter_topic(count, partitions=1)
    missing = unique("replay-note-missing")
    group = f"{source}.replay"
    await commit_note(group, source, Intent(2 * 10**6, {(missing, 0): 0}).encode())

    tracemalloc.start()
    try:
        dry = await replay_dead_letters(source, KafkaConnection(BOOTSTRAP), dry_run=True)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert (dry.copied, dry.already_copied) == (count, 0)
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MiB traced"
    assert missing not in await topics()
    assert dry.targets == {original: count}


async def test_a_real_run_to_several_topics_needs_a_target_or_confirmation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    source, first, second = unique("replay-many"), unique("orders-a"), unique("orders-b")
    for name in (source, first, second):
        await create_topic(name, 1)
    await make_dead_letters(source, [(first, 0, 1, "E"), (second, 0, 2, "E"), (first, 0, 3, "E")])

    with pytest.raises(TargetsNotConfirmed) as refused:
        await replay_dead_letters(source, KafkaConnection(BOOTSTRAP))
    assert refused.value.targets == {first: 2, second: 1}
    status = await asyncio.to_thread(main, ["--bootstrap", BOOTSTRAP, "--from", source])
    assert status == 2
    assert f"{first} (2), {second} (1)" in capsys.readouterr().err
    assert await end_offsets(first, 1) == await end_offsets(second, 1) == {0: 0}
    assert await committed_offsets(f"{source}.replay", source) == {}

    report = await replay_dead_letters(source, KafkaConnection(BOOTSTRAP), all_targets=True)

    assert report.targets == {first: 2, second: 1}
    assert (await end_offsets(first, 1), await end_offsets(second, 1)) == ({0: 2}, {0: 1})
