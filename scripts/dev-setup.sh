#!/usr/bin/env bash
# Create/refresh the project's virtualenv (.venv) with the package installed editable
# plus the `dev` extra. Idempotent and quiet: when .venv is already in sync with
# pyproject.toml it does nothing.
#
# Environment (optional):
#   PYTHON     interpreter used to create the venv (default: python3.11, else python3 >= 3.11)
#   VENV_DIR   virtualenv location (default <repo>/.venv)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${VENV_DIR:-${REPO_ROOT}/.venv}"
STAMP="${VENV_DIR}/.dev-setup-stamp"
PKG="faststream_concurrent_aiokafka"
DIST="faststream-concurrent-aiokafka"

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
            printf '%s\n' "${candidate}"
            return 0
        fi
    done
    log "error: need Python >= 3.11 (set PYTHON=/path/to/python3.11)"
    return 1
}

VPY="${VENV_DIR}/bin/python"

if [[ ! -x "${VPY}" ]] || ! "${VPY}" -c 'import sys' >/dev/null 2>&1; then
    py="$(pick_python)"
    log "creating ${VENV_DIR} with $("${py}" -c 'import sys; print(sys.executable)')"
    rm -rf "${VENV_DIR}"
    "${py}" -m venv "${VENV_DIR}"
fi

# What the install depends on: the packaging tables of pyproject.toml (not tool configs
# such as ruff/mypy/pytest) and the interpreter.
want="$(
    "${VPY}" - "${REPO_ROOT}/pyproject.toml" <<'PY'
import hashlib
import json
import sys
import tomllib

with open(sys.argv[1], "rb") as fh:
    data = tomllib.load(fh)
relevant = {
    "build-system": data.get("build-system"),
    "project": data.get("project"),
    "setuptools": data.get("tool", {}).get("setuptools"),
    "python": sys.version,
}
print(hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest())
PY
)"

# The editable install must point at *this* checkout (a moved/copied repo reinstalls).
# Checked through the installed distribution's direct_url.json, without importing.
installed_here() {
    (cd / && "${VPY}" - "${REPO_ROOT}" "${DIST}" <<'PY') >/dev/null 2>&1
import json
import os
import sys
from importlib.metadata import PackageNotFoundError, distribution
from urllib.parse import unquote, urlparse

root, dist_name = sys.argv[1], sys.argv[2]
try:
    raw = distribution(dist_name).read_text("direct_url.json")
except PackageNotFoundError:
    sys.exit(1)
info = json.loads(raw or "{}")
path = unquote(urlparse(info.get("url", "")).path)
editable = info.get("dir_info", {}).get("editable", False)
same = bool(path) and os.path.realpath(path) == os.path.realpath(root)
sys.exit(0 if editable and same else 1)
PY
}

if [[ -f "${STAMP}" && "$(<"${STAMP}")" == "${want}" ]] && installed_here; then
    exit 0
fi

log "installing ${PKG} (editable) with the dev extra into ${VENV_DIR}"
pip_log="${VENV_DIR}/dev-setup.log"
pip_flags=(--quiet --disable-pip-version-check --no-input)
if ! {
    "${VPY}" -m pip install "${pip_flags[@]}" --upgrade pip setuptools wheel &&
        "${VPY}" -m pip install "${pip_flags[@]}" -e "${REPO_ROOT}[dev]"
} >"${pip_log}" 2>&1; then
    tail -n 40 "${pip_log}" >&2 || true
    log "error: pip install failed (full log: ${pip_log})"
    rm -f "${STAMP}"
    exit 1
fi
printf '%s\n' "${want}" >"${STAMP}"
log "done"
