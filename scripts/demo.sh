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

log() { printf 'demo.sh: %s\n' "$*" >&2; }

bash scripts/dev-setup.sh
export VIRTUAL_ENV="${REPO_ROOT}/.venv"
export PATH="${VIRTUAL_ENV}/bin:${PATH}"

started_kafka=0
stop_kafka() {
    local rc=$?
    if ((started_kafka)); then
        if [[ "${KEEP_KAFKA:-0}" == 1 ]]; then
            log "KEEP_KAFKA=1: broker left running (stop: scripts/kafka.sh stop)"
        else
            bash scripts/kafka.sh stop >/dev/null 2>&1 || log "warning: stopping Kafka failed"
        fi
    fi
    exit "${rc}"
}
trap stop_kafka EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

report="$(mktemp "${TMPDIR:-/tmp}/fca-kafka-start.XXXXXX")"
bootstrap_rc=0
bootstrap="$(KAFKA_START_REPORT="${report}" bash scripts/kafka.sh start)" || bootstrap_rc=$?
[[ "$(cat "${report}" 2>/dev/null)" == started ]] && started_kafka=1
rm -f "${report}"
if ((bootstrap_rc != 0)); then
    log "could not start Kafka"
    exit 1
fi
export KAFKA_BOOTSTRAP_SERVERS="${bootstrap}"

python -m examples.demo "$@"
