#!/usr/bin/env bash
# The one test command: venv, Kafka, lint, format check, type check, import contracts, the
# documentation build (mkdocs --strict), alert rules (promtool), tests;
# then, for a full run (no pytest args), the unit tests and a Kafka smoke subset again with the
# lowest releases the package declares (FastStream, aiokafka, the extras' floors).
#
#   scripts/test.sh [pytest args...]      e.g. scripts/test.sh -k ordering -x
#
# Environment (optional):
#   KAFKA_BOOTSTRAP_SERVERS   use this broker instead of starting one (if reachable)
#   KAFKA_PORT                port for the local broker (default 9092)
#   KEEP_KAFKA=1              leave a broker started by this run running afterwards
#
# Every check runs even if an earlier one failed; the exit status is non-zero if any did.
# A pytest run that collects no tests (exit 5) counts as a failure.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"

# shellcheck source=scripts/session.sh
source scripts/session.sh
start_session test.sh

# ---------------------------------------------------------------- checks
failed=()
run_step() {
    local name="$1"
    shift
    log "== ${name}: $*"
    local rc=0
    "$@" || rc=$?
    if ((rc != 0)); then
        failed+=("${name}(exit ${rc})")
    fi
    return 0
}

run_step "ruff check" ruff check .
run_step "ruff format" ruff format --check .
run_step "import contracts" lint-imports --no-cache
# The documentation site: a broken link, anchor or snippet include fails it (into site/, ignored).
NO_MKDOCS_2_WARNING=1 run_step "docs build" mkdocs build --strict --quiet
# Prometheus and promtool (Debian's package, installed where missing): the shipped alert
# rules are checked and unit-tested, and the end-to-end monitoring test runs a real server.
run_step "prometheus" bash scripts/prometheus.sh ensure
run_step "alert rules" bash scripts/prometheus.sh check

# mypy reads `files` from pyproject.toml. While a configured folder does not exist yet
# (e.g. no bench/ so far) mypy would refuse to run, so pass the existing ones instead;
# all other settings (strict, overrides) still come from pyproject.toml.
# Output: "all" if every configured path exists, else the existing ones, one per line.
mapfile -t mypy_targets < <(
    python - <<'PY'
import os
import tomllib

with open("pyproject.toml", "rb") as fh:
    files = tomllib.load(fh)["tool"]["mypy"]["files"]
entries = [files] if isinstance(files, str) else files
paths = [p.strip() for e in entries for p in e.split(",") if p.strip()]
present = [p for p in paths if os.path.exists(p)]
print("\n".join(["all"] if present == paths else present))
PY
)
if [[ "${mypy_targets[*]}" == all ]]; then
    run_step "mypy" mypy
elif ((${#mypy_targets[@]} == 0)) || [[ -z "${mypy_targets[0]}" ]]; then
    failed+=("mypy(none of the configured paths exist)")
else
    log "mypy: checking only the configured paths that exist: ${mypy_targets[*]}"
    run_step "mypy" mypy "${mypy_targets[@]}"
fi

run_pytest() {
    local name="$1"
    shift
    local rc=0
    log "== ${name}: $*"
    "$@" || rc=$?
    case "${rc}" in
        0) ;;
        5) failed+=("${name}(exit 5: no tests collected)") ;;
        *) failed+=("${name}(exit ${rc})") ;;
    esac
}

if (($# == 0)); then
    # The other end of the supported FastStream range: unit tests and the Kafka smoke subset.
    if bash scripts/dev-setup.sh --lowest; then
        lowest="$(.venv-lowest/bin/python -c 'from importlib.metadata import version; print(version("faststream"))')"
        run_pytest "pytest (faststream ${lowest})" \
            .venv-lowest/bin/python -m pytest -q -p no:cacheprovider -m "not kafka or smoke"
    else
        failed+=("dev-setup --lowest")
    fi
fi

# The locked (newest) FastStream last, so its summary line is the last thing a reader sees.
run_pytest "pytest (faststream $(python -c 'from importlib.metadata import version; print(version("faststream"))'))" \
    pytest -q "$@"

if ((${#failed[@]})); then
    log "FAILED: ${failed[*]}"
    exit 1
fi
