#!/usr/bin/env bash
# Create/refresh the project's virtualenvs from uv.lock, so every machine gets the versions
# that were tested. Idempotent and quiet: an environment already in sync is left alone.
#
#   scripts/dev-setup.sh            .venv: the package (editable) + the dev extra, as locked
#   scripts/dev-setup.sh --lowest   .venv-lowest: the same, but with the lowest releases the
#                                   package declares (FastStream, aiokafka, prometheus-client,
#                                   opentelemetry); CI runs the unit tests and a smoke subset there
#
# uv itself is taken from PATH when it is the pinned version, else installed once into
# .cache/uv-tool (a plain pip install from PyPI).
#
# Environment (optional):
#   PYTHON     interpreter for the environments (default: python3.11, else python3 >= 3.11)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"

readonly UV_VERSION="0.13.9"
# The floors pyproject.toml declares (a unit test keeps them equal): `faststream>=0.7`,
# `aiokafka>=0.14`, the extras `prometheus-client>=0.20` and `opentelemetry-api>=1.20`.
readonly LOWEST_FASTSTREAM="0.7.0"
readonly LOWEST_AIOKAFKA="0.14.0"
readonly LOWEST_PROMETHEUS_CLIENT="0.20.0"
readonly LOWEST_OPENTELEMETRY="1.20.0"

log() { printf 'dev-setup: %s\n' "$*" >&2; }

pick_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        printf '%s\n' "${PYTHON}"
        return 0
    fi
    local candidate
    for candidate in python3.11 python3 python; do
        if command -v "${candidate}" >/dev/null 2>&1 &&
            "${candidate}" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "${candidate}"
            return 0
        fi
    done
    log "error: need Python >= 3.11 (set PYTHON=/path/to/python3.11)"
    return 1
}

PY="$(pick_python)"

find_uv() {
    if command -v uv >/dev/null 2>&1 && [[ "$(uv --version)" == "uv ${UV_VERSION}"* ]]; then
        command -v uv
        return 0
    fi
    local tool="${REPO_ROOT}/.cache/uv-tool"
    if [[ ! -x "${tool}/bin/uv" ]] || [[ "$("${tool}/bin/uv" --version)" != "uv ${UV_VERSION}"* ]]; then
        log "installing uv ${UV_VERSION} into ${tool}"
        rm -rf "${tool}"
        "${PY}" -m venv "${tool}"
        "${tool}/bin/pip" install --quiet --disable-pip-version-check "uv==${UV_VERSION}" >&2
    fi
    printf '%s\n' "${tool}/bin/uv"
}

UV="$(find_uv)"
export UV_PYTHON="${PY}" UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1

if [[ "${1:-}" == "--lowest" ]]; then
    env_dir="${REPO_ROOT}/.venv-lowest"
    UV_PROJECT_ENVIRONMENT="${env_dir}" "${UV}" sync --quiet --locked --extra test
    # Everything else stays as locked; the declared dependencies move to their floors.
    "${UV}" pip install --quiet --python "${env_dir}/bin/python" \
        "faststream[kafka]==${LOWEST_FASTSTREAM}" \
        "aiokafka==${LOWEST_AIOKAFKA}" \
        "prometheus-client==${LOWEST_PROMETHEUS_CLIENT}" \
        "opentelemetry-api==${LOWEST_OPENTELEMETRY}" \
        "opentelemetry-sdk==${LOWEST_OPENTELEMETRY}"
    log "${env_dir}: faststream ${LOWEST_FASTSTREAM}, aiokafka ${LOWEST_AIOKAFKA}," \
        "prometheus-client ${LOWEST_PROMETHEUS_CLIENT}, opentelemetry ${LOWEST_OPENTELEMETRY}"
else
    # --locked: refuse to run if pyproject.toml changed without `uv lock`.
    "${UV}" sync --quiet --locked --extra dev
fi
