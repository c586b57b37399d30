"""The opt-in collector settings: what they change, what they keep, and bad input."""

import gc
from collections.abc import Iterator

import pytest

from faststream_concurrent_aiokafka.gc_tuning import GcThresholds, tune_garbage_collector


@pytest.fixture(autouse=True)
def restore_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()


def test_raises_only_the_first_threshold_and_returns_the_previous_ones() -> None:
    gc.set_threshold(700, 11, 12)
    before = tune_garbage_collector(gen0_threshold=40_000)
    assert before == GcThresholds(700, 11, 12)
    assert gc.get_threshold() == (40_000, 11, 12)


def test_default_threshold_and_no_freeze() -> None:
    gc.unfreeze()
    tune_garbage_collector()
    assert gc.get_threshold()[0] == 100_000
    assert gc.get_freeze_count() == 0


def test_freeze_moves_live_objects_out_of_collection() -> None:
    gc.unfreeze()
    tune_garbage_collector(freeze=True)
    assert gc.get_freeze_count() > 0


@pytest.mark.parametrize("bad", [0, -5, 1.5, "1000", True])
def test_bad_threshold_is_refused_by_name_and_changes_nothing(bad: object) -> None:
    thresholds = gc.get_threshold()
    with pytest.raises(ValueError, match="gen0_threshold"):
        tune_garbage_collector(gen0_threshold=bad)  # type: ignore[arg-type]
    assert gc.get_threshold() == thresholds
