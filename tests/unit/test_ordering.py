"""OrderingGate and ordering_key: per key one item at a time, in arrival order, none lost."""

from collections.abc import Hashable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from faststream_concurrent_aiokafka.core.ordering import OrderingGate, key_of_records, ordering_key

HYPOTHESIS = settings(max_examples=80, deadline=None)

# A few keys so that collisions are frequent; tuples like the ones ordering_key builds.
KEYS: tuple[Hashable | None, ...] = (None, "a", "b", ("orders", 0), ("orders", 0, b"k"))


# ---- OrderingGate: examples ----------------------------------------------------------


def test_items_without_key_always_run_and_are_never_held() -> None:
    gate: OrderingGate[int] = OrderingGate()

    assert all(gate.submit(item, None) for item in range(5))
    assert gate.held_count == 0
    assert gate.release(None) is None


def test_second_item_of_a_key_waits_for_the_first() -> None:
    gate: OrderingGate[str] = OrderingGate()

    assert gate.submit("first", "k")
    assert not gate.submit("second", "k")
    assert not gate.submit("third", "k")
    assert gate.held_count == 2

    assert gate.release("k") == "second"
    assert gate.held_count == 1
    assert gate.release("k") == "third"
    assert gate.held_count == 0
    assert gate.release("k") is None

    # The key is free again: the next item runs at once.
    assert gate.submit("fourth", "k")


def test_different_keys_do_not_wait_for_each_other() -> None:
    gate: OrderingGate[str] = OrderingGate()

    assert gate.submit("a1", "a")
    assert gate.submit("b1", "b")
    assert gate.submit("none", None)
    assert not gate.submit("a2", "a")

    assert gate.release("b") is None
    assert gate.held_count == 1


def test_release_of_an_unknown_key_returns_nothing() -> None:
    gate: OrderingGate[int] = OrderingGate()

    assert gate.release("never-submitted") is None
    assert gate.held_count == 0


def test_drop_removes_only_matching_held_items() -> None:
    gate: OrderingGate[tuple[str, int]] = OrderingGate()
    gate.submit(("p0", 1), "k")  # runs
    gate.submit(("p0", 2), "k")
    gate.submit(("p1", 3), "k")
    gate.submit(("p0", 4), "k")
    gate.submit(("p0", 5), "j")  # runs

    dropped = gate.drop(lambda item: item[0] == "p0")

    assert sorted(dropped) == [("p0", 2), ("p0", 4)]
    assert gate.held_count == 1
    assert gate.release("k") == ("p1", 3)
    assert gate.release("k") is None
    assert gate.release("j") is None


def test_drop_of_every_held_item_still_frees_the_key_after_release() -> None:
    gate: OrderingGate[int] = OrderingGate()
    gate.submit(1, "k")
    gate.submit(2, "k")

    assert gate.drop(lambda _item: True) == [2]
    assert gate.held_count == 0
    assert not gate.submit(3, "k")  # 1 still runs
    assert gate.release("k") == 3
    assert gate.release("k") is None
    assert gate.submit(4, "k")


def test_drop_matching_nothing_changes_nothing() -> None:
    gate: OrderingGate[int] = OrderingGate()
    gate.submit(1, "k")
    gate.submit(2, "k")

    assert gate.drop(lambda _item: False) == []
    assert gate.held_count == 1
    assert gate.release("k") == 2


# ---- OrderingGate: model-based -------------------------------------------------------


class OrderingGateMachine(RuleBasedStateMachine):
    """Arrivals, completions and drops in any interleaving, checked against a model."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: OrderingGate[int] = OrderingGate()
        self.next_item = 0
        self.key_of: dict[int, Hashable | None] = {}
        self.running: set[int] = set()
        self.held: dict[Hashable | None, list[int]] = {}
        self.started: list[int] = []
        self.dropped: set[int] = set()

    def _key_is_running(self, key: Hashable | None) -> bool:
        return any(self.key_of[item] == key for item in self.running)

    def _complete(self, item: int) -> None:
        self.running.remove(item)
        key = self.key_of[item]
        if key is None:
            return  # the library never releases items without a key
        successor = self.gate.release(key)
        waiting = self.held.get(key, [])
        expected = waiting.pop(0) if waiting else None
        assert successor == expected
        if successor is not None:
            self.running.add(successor)
            self.started.append(successor)

    @rule(key=st.sampled_from(KEYS))
    def arrive(self, key: Hashable | None) -> None:
        item = self.next_item
        self.next_item += 1
        self.key_of[item] = key
        may_run = key is None or not self._key_is_running(key)

        assert self.gate.submit(item, key) == may_run
        if may_run:
            self.running.add(item)
            self.started.append(item)
        else:
            self.held.setdefault(key, []).append(item)

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        item = data.draw(st.sampled_from(sorted(self.running)), label="complete")
        self._complete(item)

    @precondition(lambda self: self.next_item > 0)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        # Any items at all, running, finished or held: only the held ones may be dropped.
        chosen = data.draw(st.sets(st.integers(0, self.next_item - 1)), label="drop")
        dropped = self.gate.drop(lambda item: item in chosen)

        expected = [item for queue in self.held.values() for item in queue if item in chosen]
        assert sorted(dropped) == sorted(expected)
        for key, queue in self.held.items():
            self.held[key] = [item for item in queue if item not in chosen]
        self.dropped.update(dropped)

    @invariant()
    def held_count_is_the_number_of_held_items(self) -> None:
        assert self.gate.held_count == sum(len(queue) for queue in self.held.values())

    @invariant()
    def one_running_item_per_key(self) -> None:
        keys = [self.key_of[item] for item in self.running if self.key_of[item] is not None]
        assert len(keys) == len(set(keys))

    @invariant()
    def items_of_a_key_start_in_arrival_order(self) -> None:
        last: dict[Hashable, int] = {}
        for item in self.started:
            key = self.key_of[item]
            if key is None:
                continue
            assert item > last.get(key, -1)
            last[key] = item

    @invariant()
    def nothing_runs_twice_and_dropped_items_never_run(self) -> None:
        assert len(self.started) == len(set(self.started))
        assert self.dropped.isdisjoint(self.started)

    def teardown(self) -> None:
        # Everything completes: every item that was not dropped ran exactly once.
        while self.running:
            self._complete(min(self.running))
        assert sorted(self.started) == sorted(set(self.key_of) - self.dropped)
        assert self.gate.held_count == 0
        # No key stays taken: a new item of any key runs at once.
        for index, key in enumerate(KEYS):
            assert self.gate.submit(self.next_item + index, key)


OrderingGateMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None
)
TestOrderingGateMachine = OrderingGateMachine.TestCase


# ---- ordering_key --------------------------------------------------------------------

topics = st.text(min_size=1, max_size=12)
partitions = st.integers(min_value=0, max_value=1000)
record_keys = st.none() | st.binary(max_size=8)


@HYPOTHESIS
@given(topic=topics, partition=partitions, key=record_keys)
def test_unordered_mode_never_orders(topic: str, partition: int, key: bytes | None) -> None:
    assert ordering_key("unordered", topic, partition, key) is None


@HYPOTHESIS
@given(topic=topics, partition=partitions, first=record_keys, second=record_keys)
def test_partition_mode_orders_a_whole_partition_whatever_the_record_key(
    topic: str, partition: int, first: bytes | None, second: bytes | None
) -> None:
    one = ordering_key("partition", topic, partition, first)
    two = ordering_key("partition", topic, partition, second)

    assert one is not None
    assert one == two
    assert hash(one) == hash(two)


@HYPOTHESIS
@given(
    first=st.tuples(topics, partitions, record_keys),
    second=st.tuples(topics, partitions, record_keys),
)
def test_partition_mode_separates_partitions(
    first: tuple[str, int, bytes | None], second: tuple[str, int, bytes | None]
) -> None:
    one = ordering_key("partition", *first)
    two = ordering_key("partition", *second)

    assert (one == two) == (first[:2] == second[:2])


@HYPOTHESIS
@given(topic=topics, partition=partitions)
def test_key_mode_does_not_order_records_without_key(topic: str, partition: int) -> None:
    assert ordering_key("key", topic, partition, None) is None


@HYPOTHESIS
@given(
    first=st.tuples(topics, partitions, st.binary(max_size=8)),
    second=st.tuples(topics, partitions, st.binary(max_size=8)),
)
def test_key_mode_orders_exactly_equal_topic_partition_and_key(
    first: tuple[str, int, bytes], second: tuple[str, int, bytes]
) -> None:
    one = ordering_key("key", *first)
    two = ordering_key("key", *second)

    assert one is not None
    assert two is not None
    assert (one == two) == (first == second)
    if first == second:
        assert hash(one) == hash(two)


def test_key_mode_separates_the_same_key_on_other_partitions_and_topics() -> None:
    base = ordering_key("key", "orders", 0, b"customer-1")

    assert base == ordering_key("key", "orders", 0, b"customer-1")
    assert base != ordering_key("key", "orders", 1, b"customer-1")
    assert base != ordering_key("key", "payments", 0, b"customer-1")
    assert base != ordering_key("key", "orders", 0, b"customer-2")


def test_empty_record_key_is_a_key() -> None:
    assert ordering_key("key", "orders", 0, b"") is not None
    assert ordering_key("key", "orders", 0, b"") != ordering_key("key", "orders", 0, None)


# ---- ordering by a key function --------------------------------------------------------


class _Record:
    """The attributes of aiokafka's ConsumerRecord that ordering reads."""

    def __init__(self, key: object, headers: tuple[tuple[str, bytes], ...] = ()) -> None:
        self.topic, self.partition, self.key, self.headers = "payments", 3, key, headers


def _account(record: Any) -> Hashable | None:
    return dict(record.headers).get("account")


def test_record_keys_of_the_modes_are_those_of_ordering_key() -> None:
    record = _Record(b"k")
    for mode in ("unordered", "key", "partition"):
        assert key_of_records(mode)(record) == ordering_key(mode, "payments", 3, b"k")


def test_a_key_function_key_is_scoped_to_the_records_partition() -> None:
    key_of = key_of_records(_account)

    assert key_of(_Record(b"random", (("account", b"a-17"),))) == ("payments", 3, b"a-17")
    assert key_of(_Record(b"random")) is None  # no key: no ordering constraint


def test_a_key_function_that_raises_or_returns_an_unhashable_key_raises() -> None:
    def broken(record: Any) -> Hashable:
        raise KeyError("account")

    with pytest.raises(KeyError):
        key_of_records(broken)(_Record(None))
    with pytest.raises(TypeError):
        key_of_records(lambda record: [1, 2])(_Record(None))  # type: ignore[arg-type,return-value]


hashables = st.recursive(
    st.none() | st.integers() | st.text(max_size=3) | st.binary(max_size=3),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=4,
)


@HYPOTHESIS
@given(st.lists(st.tuples(hashables, st.booleans()), max_size=60))
def test_any_hashable_keys_run_one_at_a_time_in_arrival_order(
    steps: list[tuple[Hashable, bool]],
) -> None:
    """Submit items under arbitrary hashable keys, releasing the oldest running one now and
    then: per key, items start in submission order and never two at once."""
    gate: OrderingGate[int] = OrderingGate()
    running: list[tuple[Hashable, int]] = []
    started: dict[Hashable, list[int]] = {}
    submitted: dict[Hashable, list[int]] = {}
    for item, (key, release) in enumerate(steps):
        submitted.setdefault(key, []).append(item)
        if gate.submit(item, key):
            running.append((key, item))
            started.setdefault(key, []).append(item)
        if release and running:
            done_key, _ = running.pop(0)
            successor = gate.release(done_key)
            if successor is not None:
                running.append((done_key, successor))
                started.setdefault(done_key, []).append(successor)
        keyed = [k for k, _ in running if k is not None]
        assert len(keyed) == len(set(keyed))
    while running:
        done_key, _ = running.pop(0)
        successor = gate.release(done_key)
        if successor is not None:
            running.append((done_key, successor))
            started.setdefault(done_key, []).append(successor)
    assert started == submitted
    assert gate.held_count == 0
