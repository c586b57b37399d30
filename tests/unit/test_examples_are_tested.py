"""Every example under examples/ is run by the suite (tests/kafka/test_examples.py)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def runs(tests: str, example: str) -> bool:
    """Run as a module (``-m examples.<name>``), served (``examples.<name>:app``) or through
    its ``demo()``."""
    return any(
        form in tests
        for form in (f'"examples.{example}"', f'"examples.{example}:', f"{example}.demo(")
    )


def test_every_example_module_is_run_by_a_test() -> None:
    examples = {p.stem for p in (ROOT / "examples").glob("*.py") if not p.stem.startswith("_")}
    tests = (ROOT / "tests" / "kafka" / "test_examples.py").read_text(encoding="utf-8")
    assert sorted(name for name in examples if not runs(tests, name)) == []
