"""PartitionOffsets: the commit point only ever passes the contiguous finished prefix."""

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from faststream_concurrent_aiokafka.core.offset_bitmap import OffsetBitmap
from faststream_concurrent_aiokafka.core.offsets import PartitionOffsets

HYPOTHESIS = settings(max_examples=80, deadline=None)


class ReferenceOffsets:
    """Obviously-correct model: recomputes everything from the full history."""

    def __init__(self) -> None:
        self.tracked: list[int] = []
        self.finished: set[int] = set()
        self.blocked: set[int] = set()
        self.changed = False  # something finished or was blocked since the last commit

    def point_index(self) -> int:
        """Index in ``tracked`` of the first offset the commit point may not pass."""
        index = 0
        while index < len(self.tracked) and self._done(self.tracked[index]):
            index += 1
        return index

    def _done(self, offset: int) -> bool:
        return offset in self.finished and offset not in self.blocked

    def passed_end(self) -> int | None:
        index = self.point_index()
        return None if index == 0 else self.tracked[index - 1] + 1

    def pending_count(self) -> int:
        return len(self.tracked) - self.point_index()

    def commit_point(self) -> int | None:
        """The first offset not passed yet, else one past the last passed one."""
        index = self.point_index()
        return self.tracked[index] if index < len(self.tracked) else self.passed_end()

    def finished_above(self) -> frozenset[int]:
        index = self.point_index()
        if index == len(self.tracked):
            return frozenset()
        first_unfinished = self.tracked[index]
        return frozenset(o for o in self.finished if o > first_unfinished and self._done(o))

    def track(self, offset: int) -> None:
        self.tracked.append(offset)

    def finish(self, offset: int) -> int:
        """Returns how many offsets the point passed."""
        if offset in self.blocked:
            return 0
        before = self.point_index()
        self.finished.add(offset)
        self.changed = True
        return self.point_index() - before

    def block(self, offset: int) -> None:
        if offset in self.tracked[self.point_index() :]:
            self.blocked.add(offset)
            self.changed = True


def point(tracker: PartitionOffsets) -> int | None:
    """``commit_point``, read through a call so that mypy does not narrow it between steps."""
    return tracker.commit_point


def needs_commit(tracker: PartitionOffsets) -> bool:
    return tracker.needs_commit


def assert_matches(tracker: PartitionOffsets, model: ReferenceOffsets) -> None:
    assert tracker.commit_point == model.commit_point()
    assert tracker.pending_count == model.pending_count()
    assert tracker.finished_above() == model.finished_above()


# Offsets increase with gaps (compacted topics, transaction markers).
gaps = st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=30)


def offsets_from(start: int, steps: Sequence[int]) -> list[int]:
    offsets = [start]
    for step in steps[1:]:
        offsets.append(offsets[-1] + step)
    return offsets


@st.composite
def tracked_and_finish_order(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """Increasing offsets and a possibly partial completion order over them."""
    start = draw(st.integers(min_value=0, max_value=10**9))
    offsets = offsets_from(start, draw(gaps))
    order = draw(st.permutations(offsets))
    count = draw(st.integers(min_value=0, max_value=len(order)))
    return offsets, list(order[:count])


# ---- examples ------------------------------------------------------------------------


def test_fresh_tracker_has_nothing_to_commit() -> None:
    tracker = PartitionOffsets()

    assert point(tracker) is None
    assert tracker.committed is None
    assert tracker.commit_point is None
    assert tracker.pending_count == 0
    assert not needs_commit(tracker)
    assert not tracker.changed_since_commit
    assert tracker.finished_above() == frozenset()
    assert not tracker.retired


def test_in_order_completion_moves_point_one_by_one() -> None:
    tracker = PartitionOffsets()
    for offset in (5, 6, 7):
        tracker.track(offset)

    assert tracker.finish(5) == 1
    assert point(tracker) == 6
    assert tracker.finish(6) == 1
    assert point(tracker) == 7
    assert tracker.pending_count == 1


def test_out_of_order_completion_waits_for_the_gap() -> None:
    tracker = PartitionOffsets()
    for offset in range(5):
        tracker.track(offset)

    assert tracker.finish(2) == 0
    assert tracker.finish(3) == 0
    assert point(tracker) == 0
    assert tracker.finished_above() == {2, 3}
    assert tracker.pending_count == 5

    assert tracker.finish(0) == 1
    assert point(tracker) == 1
    assert tracker.finish(1) == 3
    assert point(tracker) == 4
    assert tracker.finished_above() == frozenset()
    assert tracker.pending_count == 1


def test_gaps_between_offsets_do_not_stop_the_point() -> None:
    tracker = PartitionOffsets()
    for offset in (10, 12, 15):
        tracker.track(offset)

    assert tracker.finish(12) == 0
    assert point(tracker) == 10
    assert tracker.finish(10) == 2
    assert point(tracker) == 15
    assert tracker.finish(15) == 1
    assert point(tracker) == 16
    assert tracker.pending_count == 0


def test_blocked_offset_stops_the_point_even_when_it_finishes_later() -> None:
    tracker = PartitionOffsets()
    for offset in range(4):
        tracker.track(offset)
    tracker.finish(0)

    tracker.block(1)

    assert tracker.finish(2) == 0
    assert tracker.finish(3) == 0
    assert tracker.finish(1) == 0
    assert point(tracker) == 1
    assert tracker.pending_count == 3
    assert tracker.finished_above() == {2, 3}


def test_blocking_an_already_finished_offset_above_the_point_unfinishes_it() -> None:
    tracker = PartitionOffsets()
    for offset in range(3):
        tracker.track(offset)
    tracker.finish(1)

    tracker.block(1)

    assert tracker.finished_above() == frozenset()
    assert tracker.finish(0) == 1
    assert point(tracker) == 1
    assert tracker.finish(2) == 0
    assert point(tracker) == 1


def test_blocking_a_passed_or_untracked_offset_changes_nothing() -> None:
    tracker = PartitionOffsets()
    for offset in range(3):
        tracker.track(offset)
    tracker.finish(0)

    tracker.block(0)  # already below the commit point
    tracker.block(99)  # never tracked

    assert tracker.finish(1) == 1
    assert tracker.finish(2) == 1
    assert point(tracker) == 3
    assert tracker.pending_count == 0


def test_blocked_lowest_offset_holds_the_point_at_it() -> None:
    tracker = PartitionOffsets()
    for offset in range(3):
        tracker.track(offset)

    tracker.block(0)
    for offset in range(3):
        tracker.finish(offset)

    assert point(tracker) == 0
    assert tracker.pending_count == 3


def test_needs_commit_until_the_commit_point_is_recorded_as_committed() -> None:
    tracker = PartitionOffsets()
    for offset in range(3):
        tracker.track(offset)
    tracker.finish(0)

    assert needs_commit(tracker)
    tracker.committed = tracker.commit_point
    assert not needs_commit(tracker)

    tracker.finish(2)  # above the gap at 1: the point does not move
    assert not needs_commit(tracker)
    tracker.finish(1)
    assert needs_commit(tracker)
    assert point(tracker) == 3


def test_tracking_the_same_offset_twice_counts_it_once() -> None:
    tracker = PartitionOffsets()
    assert tracker.track(3)
    assert tracker.track(4)
    assert not tracker.track(3)  # said, so the caller does not count it again

    assert tracker.pending_count == 2
    assert tracker.finish(3) == 1
    assert tracker.finish(4) == 1
    assert point(tracker) == 5


def test_tracking_a_lower_offset_after_a_seek_keeps_the_order() -> None:
    tracker = PartitionOffsets()
    for offset in (5, 6, 7):
        tracker.track(offset)
    tracker.track(3)  # the consumer moved back

    assert tracker.pending_count == 4
    assert tracker.finish(5) == 0
    assert point(tracker) == 3
    assert tracker.finish(3) == 2
    assert point(tracker) == 6


# ---- properties ----------------------------------------------------------------------


@HYPOTHESIS
@given(case=tracked_and_finish_order())
def test_commit_point_is_always_the_end_of_the_contiguous_finished_prefix(
    case: tuple[list[int], list[int]],
) -> None:
    offsets, order = case
    tracker = PartitionOffsets()
    for offset in offsets:
        tracker.track(offset)
    done: set[int] = set()
    prefix = 0  # how many of the lowest tracked offsets are all finished

    for offset in order:
        passed = tracker.finish(offset)
        done.add(offset)

        before = prefix
        while prefix < len(offsets) and offsets[prefix] in done:
            prefix += 1
        expected = offsets[prefix] if prefix < len(offsets) else offsets[-1] + 1
        assert tracker.commit_point == expected
        assert tracker.pending_count == len(offsets) - prefix
        assert passed == prefix - before
        assert tracker.finished_above() == frozenset(done - set(offsets[:prefix]))

    if len(order) == len(offsets):
        assert tracker.commit_point == offsets[-1] + 1
        assert tracker.pending_count == 0
        assert tracker.finished_above() == frozenset()


@HYPOTHESIS
@given(case=tracked_and_finish_order())
def test_finish_results_add_up_to_the_offsets_below_the_point(
    case: tuple[list[int], list[int]],
) -> None:
    offsets, order = case
    tracker = PartitionOffsets()
    for offset in offsets:
        tracker.track(offset)

    total = sum(tracker.finish(offset) for offset in order)

    reached = tracker.commit_point
    below = 0 if reached is None else sum(1 for o in offsets if o < reached)
    assert total == below
    assert total == len(offsets) - tracker.pending_count


@HYPOTHESIS
@given(
    start=st.integers(min_value=0, max_value=10**6),
    steps=gaps,
    data=st.data(),
)
def test_a_blocked_offset_is_never_passed(
    start: int, steps: list[int], data: st.DataObject
) -> None:
    offsets = offsets_from(start, steps)
    blocked = data.draw(st.sampled_from(offsets), label="blocked")
    # Block at any moment: before, between or after the other completions.
    order = data.draw(st.permutations([*offsets, "block"]), label="order")
    tracker = PartitionOffsets()
    model = ReferenceOffsets()
    for offset in offsets:
        tracker.track(offset)
        model.track(offset)

    for step in order:
        if step == "block":
            tracker.block(blocked)
            model.block(blocked)
        else:
            assert isinstance(step, int)
            assert tracker.finish(step) == model.finish(step)
        assert_matches(tracker, model)

    # Every message finished; the point stops at the blocked one only if it was blocked in time.
    index = offsets.index(blocked)
    if blocked in model.blocked:
        assert tracker.commit_point == offsets[index]
        assert tracker.pending_count == len(offsets) - index
        assert tracker.finished_above() == frozenset(offsets[index + 1 :])
    else:
        assert tracker.commit_point == offsets[-1] + 1


class PartitionOffsetsMachine(RuleBasedStateMachine):
    """Tracking, completions, cancellations and commits interleaved in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.tracker = PartitionOffsets()
        self.model = ReferenceOffsets()
        self.next_offset = 0
        self.finish_called: set[int] = set()

    def _unfinished(self) -> list[int]:
        return [o for o in self.model.tracked if o not in self.finish_called]

    @rule(gap=st.integers(min_value=0, max_value=3))
    def track(self, gap: int) -> None:
        offset = self.next_offset + gap
        self.next_offset = offset + 1
        self.tracker.track(offset)
        self.model.track(offset)

    @precondition(lambda self: bool(self._unfinished()))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        offset = data.draw(st.sampled_from(self._unfinished()), label="finish")
        self.finish_called.add(offset)
        assert self.tracker.finish(offset) == self.model.finish(offset)

    @precondition(lambda self: bool(self.model.tracked))
    @rule(data=st.data())
    def block(self, data: st.DataObject) -> None:
        offset = data.draw(st.sampled_from(self.model.tracked), label="block")
        self.tracker.block(offset)
        self.model.block(offset)

    @rule()
    def commit(self) -> None:
        # What the committer records once a commit of this tracker succeeded.
        self.tracker.committed = self.tracker.commit_point
        self.tracker.committed_version = self.tracker.version
        self.model.changed = False

    @invariant()
    def matches_reference(self) -> None:
        assert_matches(self.tracker, self.model)

    @invariant()
    def needs_commit_iff_point_moved_since_last_commit(self) -> None:
        tracker = self.tracker
        expected = tracker.commit_point is not None and tracker.commit_point != tracker.committed
        assert tracker.needs_commit == expected

    @invariant()
    def changed_since_commit_iff_a_finish_or_block_happened(self) -> None:
        assert self.tracker.changed_since_commit == self.model.changed

    @invariant()
    def point_never_passes_a_blocked_offset(self) -> None:
        commit_point = self.tracker.commit_point
        if commit_point is not None:
            assert all(o >= commit_point for o in self.model.blocked)


PartitionOffsetsMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None
)
TestPartitionOffsetsMachine = PartitionOffsetsMachine.TestCase


# ---- OffsetBitmap ----------------------------------------------------------------------

offset_sets = st.sets(st.integers(0, 3000), max_size=200)


def runs_of(offsets: set[int], first: int) -> list[tuple[int, int]]:
    """(start, stop) runs of ``offsets``, relative to ``first``."""
    runs: list[tuple[int, int]] = []
    for offset in sorted(offsets):
        if runs and runs[-1][1] == offset - first:
            runs[-1] = (runs[-1][0], offset - first + 1)
        else:
            runs.append((offset - first, offset - first + 1))
    return runs


@HYPOTHESIS
@given(offsets=offset_sets, first=st.integers(0, 2**40), cut=st.integers(-10, 3100))
def test_a_bitmap_holds_exactly_its_offsets(offsets: set[int], first: int, cut: int) -> None:
    wanted = {first + offset for offset in offsets}
    bitmap = OffsetBitmap.from_runs(first, runs_of(wanted, first))
    assert set(bitmap) == wanted
    assert len(bitmap) == len(wanted)
    assert sorted(bitmap) == sorted(wanted)
    assert (bitmap.first, bitmap.last) == (min(wanted, default=None), max(wanted, default=None))
    for probe in (first - 1, first, first + cut, first + 3001, "x"):
        assert (probe in bitmap) is (probe in wanted)
    end = first + cut
    assert set(bitmap.below(end)) == {o for o in wanted if o < end}
    assert set(bitmap.at_or_above(end)) == {o for o in wanted if o >= end}


def test_a_bitmap_takes_a_bit_per_offset() -> None:
    bitmap = OffsetBitmap.from_runs(10, [(0, 1 << 20)])
    assert len(bitmap) == 1 << 20
    assert bitmap.nbytes == (1 << 20) // 8
    assert (1 << 20) + 9 in bitmap
    assert (1 << 20) + 10 not in bitmap


def test_a_tracker_skips_what_its_bitmap_claims() -> None:
    tracker = PartitionOffsets(OffsetBitmap.from_runs(1, [(0, 2)]))  # offsets 1 and 2
    tracker.track(0)
    assert tracker.skip(1) == 0  # 0 still runs
    assert tracker.finish(0) == 2
    assert tracker.skip(2) == 1
    assert tracker.commit_point == 3
    assert tracker.skipped == 2


# ---- not committed ---------------------------------------------------------------------


def test_not_committed_counts_what_finished_since_the_acknowledged_commit() -> None:
    tracker = PartitionOffsets()
    for offset in range(6):
        tracker.track(offset)
    tracker.finish(0)
    tracker.finish(1)
    tracker.finish(3)
    assert tracker.not_committed(running=2) == 5  # 2 running, 3 finished, nothing committed
    # A commit taken now (point 2, offset 3 in its metadata) and acknowledged.
    tracker.committed, tracker.committed_version = tracker.commit_point, tracker.version
    assert tracker.not_committed(running=2) == 2
    tracker.finish(2)
    assert tracker.not_committed(running=1) == 2
    # Had the metadata left offset 3 out, it would run again too.
    tracker.committed_left_out = 1
    assert tracker.not_committed(running=1) == 3


def test_skipped_offsets_count_only_once_a_commit_moved_past_their_metadata() -> None:
    tracker = PartitionOffsets(frozenset({1, 2}))
    tracker.track(0)
    tracker.skip(1)
    tracker.skip(2)
    tracker.finish(0)
    assert tracker.not_committed(running=0) == 1  # a crash skips 1 and 2 again
    tracker.committed, tracker.committed_version = tracker.commit_point, tracker.version
    tracker.track(3)
    assert tracker.not_committed(running=1) == 1
