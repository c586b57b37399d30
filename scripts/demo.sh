#!/usr/bin/env bash
# The one demo command: venv, Kafka, then the example app.
#
#   scripts/demo.sh [demo args...]        runs `python -m examples.demo "$@"`
#
# A broker started here is stopped when the demo ends, unless KEEP_KAFKA=1.
# KAFKA_BOOTSTRAP_SERVERS / KAFKA_PORT work as for scripts/test.sh.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"

# shellcheck source=scripts/session.sh
source scripts/session.sh
start_session demo.sh

python -m examples.demo "$@"
