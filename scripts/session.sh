# shellcheck shell=bash
# Sourced by demo.sh and test.sh: the virtualenv, then a Kafka broker for this session.
#
# After `start_session NAME`: the venv is on PATH, KAFKA_BOOTSTRAP_SERVERS points at a broker
# that answers, and a broker started here is stopped on exit unless KEEP_KAFKA=1.
# KAFKA_BOOTSTRAP_SERVERS (reuse that broker) and KAFKA_PORT (default 9092) are honoured.
# A broker started here also opens a SASL_PLAINTEXT listener on KAFKA_SASL_PORT (default
# KAFKA_PORT+2; set it empty to go without): one more listener, no second broker, so the SASL
# tests run in every full run. KAFKA_SASL_BOOTSTRAP_SERVERS is exported when it answers.

log() { printf '%s: %s\n' "${SESSION_NAME:-session}" "$*" >&2; }

_started_kafka=0
_stop_session_kafka() {
    local rc=$?
    if ((_started_kafka)); then
        if [[ "${KEEP_KAFKA:-0}" == 1 ]]; then
            log "KEEP_KAFKA=1: broker left running (stop: scripts/kafka.sh stop)"
        else
            bash scripts/kafka.sh stop >/dev/null 2>&1 || log "warning: stopping Kafka failed"
        fi
    fi
    exit "${rc}"
}

start_session() {
    SESSION_NAME="$1"
    bash scripts/dev-setup.sh
    export VIRTUAL_ENV="${REPO_ROOT}/.venv"
    export PATH="${VIRTUAL_ENV}/bin:${PATH}"

    trap _stop_session_kafka EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    local report bootstrap bootstrap_rc=0
    report="$(mktemp "${TMPDIR:-/tmp}/fca-kafka-start.XXXXXX")"
    # Only for this broker: not exported, or every broker a test starts would ask for it too.
    local sasl_port="${KAFKA_SASL_PORT-$((${KAFKA_PORT:-9092} + 2))}"
    bootstrap="$(KAFKA_SASL_PORT="${sasl_port}" KAFKA_START_REPORT="${report}" \
        bash scripts/kafka.sh start)" || bootstrap_rc=$?
    [[ "$(cat "${report}" 2>/dev/null)" == started ]] && _started_kafka=1
    rm -f "${report}"
    if ((bootstrap_rc != 0)); then
        log "could not start Kafka"
        exit 1
    fi
    export KAFKA_BOOTSTRAP_SERVERS="${bootstrap}"
    log "KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS}"
    if [[ -n "${sasl_port}" ]] &&
        timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "${sasl_port}" 2>/dev/null; then
        export KAFKA_SASL_BOOTSTRAP_SERVERS="127.0.0.1:${sasl_port}"
        log "KAFKA_SASL_BOOTSTRAP_SERVERS=${KAFKA_SASL_BOOTSTRAP_SERVERS}"
    else
        log "no SASL listener: the SASL tests will be skipped"
    fi
}
