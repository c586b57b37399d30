"""Every example under examples/ is run by the suite (tests/kafka/test_examples.py)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def runs(tests: str, example: str) -> bool:
    """Run as a module (``-m examples.<name>``) or through its ``demo()``."""
    return f'"examples.{example}"' in tests or f"{example}.demo(" in tests


def test_every_example_module_is_run_by_a_test() -> None:
    examples = {p.stem for p in (ROOT / "examples").glob("*.py") if not p.stem.startswith("_")}
    tests = (ROOT / "tests" / "kafka" / "test_examples.py").read_text(encoding="utf-8")
    assert sorted(name for name in examples if not runs(tests, name)) == []
