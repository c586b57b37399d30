#!/usr/bin/env bash
# Build the documentation site (mkdocs.yml, docs/) with the project's virtualenv.
#
#   scripts/docs.sh            mkdocs build --strict into site/ (what scripts/test.sh runs)
#   scripts/docs.sh serve      a live preview at http://127.0.0.1:8000
#   scripts/docs.sh build -d DIR   any other mkdocs arguments
#
# Sets up .venv first (scripts/dev-setup.sh) when it has no mkdocs.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"

if [[ ! -x .venv/bin/mkdocs ]]; then
    bash scripts/dev-setup.sh
fi
if (($# == 0)); then
    set -- build --strict
fi
NO_MKDOCS_2_WARNING=1 exec .venv/bin/mkdocs "$@"
