"""The floors pyproject.toml declares are the versions CI installs and tests
(scripts/dev-setup.sh --lowest): a floor raised or lowered in one place fails here."""

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Requirement in pyproject -> the dev-setup variable holding the release installed for it.
FLOORS = {
    ("dependencies", "faststream"): "LOWEST_FASTSTREAM",
    ("dependencies", "aiokafka"): "LOWEST_AIOKAFKA",
    ("prometheus", "prometheus-client"): "LOWEST_PROMETHEUS_CLIENT",
    ("otel", "opentelemetry-api"): "LOWEST_OPENTELEMETRY",
}


def _declared(group: str, name: str) -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = (
        project["dependencies"]
        if group == "dependencies"
        else project["optional-dependencies"][group]
    )
    for requirement in requirements:
        found = re.fullmatch(rf"{re.escape(name)}(\[[\w,]+\])?>=([\d.]+)(,<[\d.]+)?", requirement)
        if found:
            return found.group(2)
    raise AssertionError(f"{name} has no floor in {group}: {requirements}")


def _installed_by_dev_setup(variable: str) -> str:
    script = (ROOT / "scripts" / "dev-setup.sh").read_text()
    found = re.search(rf'^readonly {variable}="([\d.]+)"$', script, re.MULTILINE)
    assert found, f"{variable} missing from scripts/dev-setup.sh"
    return found.group(1)


def _release(version: str) -> tuple[int, ...]:
    parts = [int(part) for part in version.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


@pytest.mark.parametrize(("group", "name"), list(FLOORS), ids=[n for _, n in FLOORS])
def test_the_declared_floor_is_what_the_lowest_environment_installs(group: str, name: str) -> None:
    declared = _declared(group, name)

    assert _release(_installed_by_dev_setup(FLOORS[group, name])) == _release(declared)


def test_aiokafka_is_held_to_the_release_line_the_compat_layer_is_written_for() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    assert "aiokafka>=0.14,<0.15" in project["dependencies"]
