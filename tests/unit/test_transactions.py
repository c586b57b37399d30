"""The pure parts of exactly-once: transactional ids, the admission span and the metadata it
must always fit, and the bookkeeping of one partition's open transaction."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faststream_concurrent_aiokafka.core.offset_codec import (
    DEFAULT_MAX_METADATA_BYTES,
    decode_finished_offsets,
)
from faststream_concurrent_aiokafka.core.transactions import (
    MAX_SPAN,
    OPEN_PER_CLOSED,
    MetadataOverflowError,
    TransactionLedger,
    Verdict,
    admissible_below,
    count_may_commit,
    exact_metadata,
    span_has_room,
    sticky_partition,
    to_commit,
    transactional_id,
)

HYPOTHESIS = settings(max_examples=150, deadline=None)
LARGEST_OFFSET = 2**63 - 1 - MAX_SPAN  # a Kafka offset is a signed 64-bit integer
HOLD = 30.0

# ---- transactional ids ------------------------------------------------------------------

topic_names = st.text("abcAB01._-", min_size=1, max_size=12)
groups = st.text(min_size=0, max_size=12)


def test_a_transactional_id_names_prefix_group_topic_and_partition() -> None:
    assert transactional_id("", "billing", "orders", 3) == "billing:orders:3"
    assert transactional_id("prod.", "billing", "orders", 3) == "prod.billing:orders:3"


@HYPOTHESIS
@given(
    st.tuples(groups, topic_names, st.integers(0, 999)),
    st.tuples(groups, topic_names, st.integers(0, 999)),
)
def test_no_two_partitions_of_any_groups_share_a_transactional_id(
    first: tuple[str, str, int], second: tuple[str, str, int]
) -> None:
    """A shared id would make two partitions fence each other's producers for ever; topic
    names cannot hold ':', so group "a:b" and topic "c" never meet group "a" and topic "b:c"."""
    if first != second:
        assert transactional_id("p", *first) != transactional_id("p", *second)


# ---- the admission span and its metadata ---------------------------------------------------


def test_admission_stops_max_span_above_the_commit_point() -> None:
    assert admissible_below(1000, 5000) == 1000 + MAX_SPAN
    assert admissible_below(None, 70) == 70 + MAX_SPAN  # nothing admitted yet: the first fetched


def test_a_partition_held_at_the_span_end_resumes_once_half_the_span_is_free() -> None:
    cut = 100 + MAX_SPAN
    assert not span_has_room(100, cut)
    assert not span_has_room(cut - MAX_SPAN // 2, cut)
    assert span_has_room(cut - MAX_SPAN // 2 + 1, cut)
    assert span_has_room(None, cut)


@pytest.mark.parametrize(
    "pattern",
    ["every offset", "every other offset", "every third offset", "only the last"],
)
@pytest.mark.parametrize("point", [0, 1_000_000, LARGEST_OFFSET])
def test_the_worst_finished_sets_of_the_span_fit_the_metadata_whole(
    pattern: str, point: int
) -> None:
    """Kafka refuses metadata over 4096 bytes (and aiokafka's transactional producer dies of
    that), and exactly-once may not drop a finished offset: the span is chosen so that any
    finished set within it fits, here with the largest commit point a partition can have."""
    above = range(point + 1, point + MAX_SPAN)
    finished = {
        "every offset": frozenset(above),
        "every other offset": frozenset(above[::2]),
        "every third offset": frozenset(above[::3]),
        "only the last": frozenset({above[-1]}),
    }[pattern]
    text = exact_metadata(point, finished)
    assert len(text) <= DEFAULT_MAX_METADATA_BYTES
    assert decode_finished_offsets(text, point) == finished


@HYPOTHESIS
@given(st.integers(0, LARGEST_OFFSET), st.sets(st.integers(1, MAX_SPAN - 1), max_size=3000))
def test_any_finished_set_within_the_span_is_committed_whole(point: int, above: set[int]) -> None:
    finished = frozenset(point + offset for offset in above)
    text = exact_metadata(point, finished)
    assert len(text) <= DEFAULT_MAX_METADATA_BYTES
    assert decode_finished_offsets(text, point) == finished


@HYPOTHESIS
@given(st.integers(0, 2**40), st.binary(min_size=MAX_SPAN // 8 - 1, max_size=MAX_SPAN // 8 - 1))
def test_random_dense_finished_sets_fit_too(point: int, bits: bytes) -> None:
    """Random bits do not compress: the plain bitset is what has to fit."""
    finished = frozenset(
        point + 1 + i for i in range((MAX_SPAN // 8 - 1) * 8) if bits[i // 8] >> (i % 8) & 1
    )
    text = exact_metadata(point, finished)
    assert decode_finished_offsets(text, point) == finished


def test_a_commit_keeps_what_an_earlier_transaction_recorded_as_finished() -> None:
    """Offsets committed as finished and not read again yet stay recorded (and the commit
    point moves past those right at it): forgetting them would run them again."""
    assert to_commit(10, frozenset({12}), frozenset({11, 14})) == (10, frozenset({11, 12, 14}))
    # Nothing in flight, the point at an offset finished before: it moves past it.
    assert to_commit(11, frozenset(), frozenset({11, 12, 14})) == (13, frozenset({14}))
    # Those already passed are not repeated.
    assert to_commit(20, frozenset(), frozenset({11, 14})) == (20, frozenset())


def test_finished_offsets_outside_the_span_are_refused_rather_than_dropped() -> None:
    with pytest.raises(MetadataOverflowError):
        exact_metadata(10, frozenset({11, 10 + MAX_SPAN}))
    with pytest.raises(MetadataOverflowError):
        exact_metadata(10, frozenset({10}))  # the commit point itself is unfinished
    assert exact_metadata(10, frozenset()) == ""


# ---- the open transaction ---------------------------------------------------------------


def test_an_empty_transaction_commits_at_once() -> None:
    ledger = TransactionLedger()
    assert ledger.verdict(0.0, HOLD) is Verdict.COMMIT
    assert ledger.opened_at is None


def test_the_first_publish_opens_the_transaction_and_makes_its_message_a_member() -> None:
    ledger = TransactionLedger()
    ledger.enter("m1", now=5.0)
    ledger.enter("m2", now=7.0)
    assert ledger.opened_at == 5.0
    assert ledger.members == 2
    assert ledger.holds("m1")


def test_each_transaction_begins_empty_with_its_unkeyed_partitions_to_choose_again() -> None:
    ledger = TransactionLedger()
    ledger.begin()
    ledger.enter("m", now=1.0)
    ledger.sticky["out"] = 2
    ledger.spoil("failed")
    ledger.begin()
    assert (ledger.members, ledger.opened_at, ledger.taint, ledger.sticky) == (0, None, None, {})
    assert ledger.begun == 2


def test_unkeyed_records_take_the_partitions_in_turn_one_transaction_each() -> None:
    assert [sticky_partition({3, 1, 0, 2}, turn) for turn in range(6)] == [0, 1, 2, 3, 0, 1]
    assert sticky_partition({5}, 7) == 5


@given(st.sets(st.integers(0, 1000), min_size=1, max_size=50), st.integers(0, 10**6))
def test_the_unkeyed_partition_is_one_of_those_available(available: set[int], turn: int) -> None:
    assert sticky_partition(available, turn) in available


def test_a_commit_waits_for_members_and_publishes_in_flight() -> None:
    ledger = TransactionLedger()
    ledger.enter("m", now=0.0)
    assert ledger.verdict(1.0, HOLD) is Verdict.WAIT
    assert ledger.leave("m")
    assert ledger.verdict(1.0, HOLD, sends_in_flight=1) is Verdict.WAIT
    assert ledger.verdict(1.0, HOLD) is Verdict.COMMIT
    assert not ledger.leave("m")  # left already


def test_members_running_past_the_hold_deadline_abort_the_transaction() -> None:
    ledger = TransactionLedger()
    ledger.enter("slow", now=10.0)
    assert ledger.deadline(HOLD) == 10.0 + HOLD
    assert ledger.verdict(10.0 + HOLD - 0.001, HOLD) is Verdict.WAIT
    assert ledger.verdict(10.0 + HOLD, HOLD) is Verdict.ABORT
    assert ledger.taint is not None
    assert "still running 30 s after the transaction opened" in ledger.taint


def test_a_spoiled_transaction_can_only_be_aborted_and_keeps_its_first_reason() -> None:
    ledger = TransactionLedger()
    ledger.enter("m", now=0.0)
    ledger.spoil("a publish failed")
    ledger.spoil("something later")
    assert ledger.leave("m")
    assert ledger.verdict(0.0, HOLD) is Verdict.ABORT
    assert ledger.taint == "a publish failed"


def test_the_next_transaction_starts_empty_and_open() -> None:
    ledger = TransactionLedger()
    ledger.enter("m", now=1.0)
    ledger.spoil("x")
    ledger.begin()
    assert ledger.members == 0
    assert (ledger.opened_at, ledger.taint) == (None, None)


def test_a_count_commits_once_the_gate_was_open_nine_times_its_last_closing() -> None:
    assert OPEN_PER_CLOSED == 9
    assert count_may_commit(0.0, 0.0)  # no commit yet: the count decides
    assert not count_may_commit(0.089, 0.01)
    assert count_may_commit(0.09, 0.01)
