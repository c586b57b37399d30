"""``bench.paired``'s two sides: another checkout, or this one with a setting toggled."""

import dataclasses
from pathlib import Path

import pytest

# bench.paired reaches the report module, which needs matplotlib (the dev extra's, absent
# from the lowest-FastStream environment).
pytest.importorskip("matplotlib")

from bench import paired
from bench.model import RunSpec


def test_a_toggled_pair_is_this_checkout_with_the_setting_on_against_off(tmp_path: Path) -> None:
    args = paired.parse_args(["--toggle", "measure_processing_time"])
    what, first, second = paired.sides_of(args, tmp_path)
    assert "measure_processing_time on against off" in what
    assert (first[0], first[2]) == ("on", {"measure_processing_time": True})
    assert (second[0], second[2]) == ("off", {})
    assert first[1] == second[1]  # the same library
    assert "measure_processing_time" in {f.name for f in dataclasses.fields(RunSpec)}
