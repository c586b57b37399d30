#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, broker+controller) for local development and tests.
#
#   scripts/kafka.sh start     start (or reuse) a broker; prints the bootstrap address on stdout
#   scripts/kafka.sh stop      stop the broker this script started and delete its data
#   scripts/kafka.sh status    print whether it runs (exit 0 running, 3 not running)
#   scripts/kafka.sh restart   stop + start
#   scripts/kafka.sh logs      tail the broker's log
#   scripts/kafka.sh kill      SIGKILL the broker and keep its data (an outage, for tests);
#                              `KAFKA_KEEP_DATA=1 scripts/kafka.sh start` brings it back
#
# No Docker and no tarball download: the broker's jars come from Maven Central through
# scripts/kafka-pom.xml and are resolved once into a cache folder.
#
# Environment (all optional):
#   KAFKA_PORT                 client port (default 9092); the controller uses KAFKA_PORT+1
#   KAFKA_BOOTSTRAP_SERVERS    if set and reachable, `start` starts nothing and reuses it
#   KAFKA_STATE_DIR            data + pid + logs (default ${TMPDIR:-/tmp}/fca-kafka-<port>)
#   KAFKA_CACHE_DIR            jars + JVM class-data archive, shared by all checkouts
#                              (default ${XDG_CACHE_HOME:-~/.cache}/fca-kafka/kafka-4.1.1)
#   KAFKA_CDS                  1 (default): reuse a class-data-sharing archive of the broker's
#                              classes (made on the first clean stop), ~2 s faster starts
#   KAFKA_START_TIMEOUT        seconds `start` waits for readiness (default 90)
#   KAFKA_STOP_TIMEOUT         seconds `stop` waits after SIGTERM before SIGKILL (default 30)
#   KAFKA_HEAP_OPTS            JVM heap flags (default "-Xms256m -Xmx1g")
#   KAFKA_PYTHON               python with aiokafka for the readiness probe
#                              (default <repo>/.venv/bin/python; TCP check if unusable)
#   KAFKA_START_REPORT         file that `start` writes "started" or "reused" into
#   KAFKA_SASL_PORT            also open a SASL_PLAINTEXT listener on this port (PLAIN
#                              mechanism, one user: fcak-test / fcak-test-secret), for tests
#                              of the library's own clients with SASL; off when unset or empty
#   KAFKA_KEEP_DATA            1: `start` restarts on the data a `kill` left (topics, offsets,
#                              groups) instead of a fresh broker; without such data it starts
#                              fresh as usual
#
# Human-readable messages go to stderr; stdout of `start` is only the bootstrap address.
set -euo pipefail

readonly KAFKA_VERSION="4.1.1"
readonly HOST="127.0.0.1"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
POM="${SCRIPT_DIR}/kafka-pom.xml"

PORT="${KAFKA_PORT:-9092}"
if ! [[ "${PORT}" =~ ^[0-9]+$ ]] || ((PORT < 1 || PORT > 65534)); then
    echo "kafka.sh: invalid KAFKA_PORT '${PORT}'" >&2
    exit 2
fi
CTRL_PORT=$((PORT + 1))
BOOTSTRAP="${HOST}:${PORT}"
SASL_PORT="${KAFKA_SASL_PORT:-}"
if [[ -n "${SASL_PORT}" ]] && { ! [[ "${SASL_PORT}" =~ ^[0-9]+$ ]] || ((SASL_PORT < 1 || SASL_PORT > 65535)); }; then
    echo "kafka.sh: invalid KAFKA_SASL_PORT '${SASL_PORT}'" >&2
    exit 2
fi
readonly SASL_USER="fcak-test"
readonly SASL_PASSWORD="fcak-test-secret"

STATE_DIR="$(realpath -m -- "${KAFKA_STATE_DIR:-${TMPDIR:-/tmp}/fca-kafka-${PORT}}")"
cache_base="${XDG_CACHE_HOME:-${HOME:+${HOME}/.cache}}"
CACHE_DIR="${KAFKA_CACHE_DIR:-${cache_base:-${REPO_ROOT}/.cache}/fca-kafka/kafka-${KAFKA_VERSION}}"
LIBS_DIR="${CACHE_DIR}/libs"
LIBS_STAMP="${LIBS_DIR}/.resolved"
PID_FILE="${STATE_DIR}/kafka.pid"
PROPS_FILE="${STATE_DIR}/server.properties"
LOG4J_FILE="${STATE_DIR}/log4j2.xml"
DATA_DIR="${STATE_DIR}/data"
LOG_DIR="${STATE_DIR}/logs"
CONSOLE_LOG="${STATE_DIR}/console.log"
CDS_DUMP="${STATE_DIR}/broker.jsa"
CDS_TARGET_FILE="${STATE_DIR}/cds-target"
LOCK_FILE="${STATE_DIR%/}.lock"

case "${STATE_DIR}" in
    / | "${HOME:-/}" | "$(realpath -m -- "${REPO_ROOT}")" | /tmp | /var/tmp | "")
        echo "kafka.sh: refusing to use '${STATE_DIR}' as KAFKA_STATE_DIR (it gets deleted)" >&2
        exit 2
        ;;
esac

START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# --------------------------------------------------------------------------- helpers

# port_open HOST PORT -> 0 if something accepts TCP connections there.
port_open() {
    local host="$1" port="$2"
    # shellcheck disable=SC2016 # $1/$2 expand inside the child bash, on purpose
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "${host}" "${port}" >/dev/null 2>&1
}

# First reachable "host:port" of a comma-separated bootstrap list, or nothing.
first_reachable() {
    local list="$1" entry hostport host port
    local -a entries
    IFS=',' read -r -a entries <<<"${list}"
    for entry in "${entries[@]}"; do
        hostport="${entry//[[:space:]]/}"
        hostport="${hostport#*://}" # tolerate PLAINTEXT://host:port
        [[ -n "${hostport}" ]] || continue
        host="${hostport%:*}"
        port="${hostport##*:}"
        [[ "${host}" == "${hostport}" ]] && port=9092
        host="${host#[}"
        host="${host%]}"
        if port_open "${host}" "${port}"; then
            return 0
        fi
    done
    return 1
}

# Pid of the broker this script started for this state dir, if it is alive.
our_pid() {
    local pid cmdline
    [[ -f "${PID_FILE}" ]] || return 1
    pid="$(<"${PID_FILE}")"
    [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/${pid}/cmdline" ]] || return 1
    # Guard against pid reuse: the process must be *our* broker (its properties file).
    cmdline="$(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null || true)"
    [[ "${cmdline}" == *kafka.Kafka*"${PROPS_FILE}"* ]] || return 1
    printf '%s\n' "${pid}"
}

with_lock() {
    # Serialise concurrent start/stop calls for the same port (e.g. two test runs).
    mkdir -p "$(dirname "${LOCK_FILE}")"
    exec 9>"${LOCK_FILE}"
    if command -v flock >/dev/null 2>&1; then
        flock -w $((START_TIMEOUT + STOP_TIMEOUT + 60)) 9 || die "could not lock ${LOCK_FILE}"
    fi
}

report() {
    if [[ -n "${KAFKA_START_REPORT:-}" ]]; then
        printf '%s\n' "$1" >"${KAFKA_START_REPORT}"
    fi
}

show_log_tail() {
    local f
    for f in "${CONSOLE_LOG}" "${LOG_DIR}/server.log"; do
        if [[ -s "${f}" ]]; then
            log "---- last lines of ${f} ----"
            tail -n 40 "${f}" >&2 || true
        fi
    done
}

pom_hash() {
    sha256sum "${POM}" | cut -d' ' -f1
}

# Resolve the broker's jars with Maven exactly once (per pom content).
ensure_libs() {
    local want
    want="$(pom_hash)"
    if [[ -f "${LIBS_STAMP}" && "$(<"${LIBS_STAMP}")" == "${want}" ]]; then
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "mvn (Maven) is required to fetch Kafka ${KAFKA_VERSION} jars"
    command -v java >/dev/null 2>&1 || die "java (17+) is required to run Kafka ${KAFKA_VERSION}"

    log "resolving Kafka ${KAFKA_VERSION} jars with Maven into ${LIBS_DIR} (one-time)"
    mkdir -p "${CACHE_DIR}"
    local tmp mvn_log
    tmp="$(mktemp -d "${CACHE_DIR}/libs.tmp.XXXXXX")"
    mvn_log="${CACHE_DIR}/maven.log"
    if ! mvn -B -q -f "${POM}" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="${tmp}" >"${mvn_log}" 2>&1; then
        tail -n 40 "${mvn_log}" >&2 || true
        rm -rf "${tmp}"
        die "Maven could not resolve the Kafka jars (full log: ${mvn_log})"
    fi
    compgen -G "${tmp}/kafka_2.13-${KAFKA_VERSION}.jar" >/dev/null ||
        die "Maven finished but kafka_2.13-${KAFKA_VERSION}.jar is missing in ${tmp}"
    printf '%s\n' "${want}" >"${tmp}/.resolved"
    chmod 755 "${tmp}"
    rm -rf "${LIBS_DIR}"
    mv "${tmp}" "${LIBS_DIR}"
}

new_cluster_id() {
    # Same format as `kafka.tools.StorageTool random-uuid` (URL-safe base64 of 16 random
    # bytes, no padding, never starting with '-'), without paying for a JVM start.
    local id=""
    while [[ -z "${id}" || "${id}" == -* ]]; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    done
    printf '%s\n' "${id}"
}

write_config() {
    local listeners="PLAINTEXT://${HOST}:${PORT},CONTROLLER://${HOST}:${CTRL_PORT}"
    local advertised="PLAINTEXT://${HOST}:${PORT}"
    local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    if [[ -n "${SASL_PORT}" ]]; then
        listeners+=",SASL_PLAINTEXT://${HOST}:${SASL_PORT}"
        advertised+=",SASL_PLAINTEXT://${HOST}:${SASL_PORT}"
        protocols+=",SASL_PLAINTEXT:SASL_PLAINTEXT"
    fi
    cat >"${PROPS_FILE}" <<EOF
# Generated by scripts/kafka.sh -- single-node KRaft broker for development/tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@${HOST}:${CTRL_PORT}
listeners=${listeners}
advertised.listeners=${advertised}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=${protocols}
log.dirs=${DATA_DIR}

num.partitions=1
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0

# Sized for a 2-core dev machine.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
    if [[ -n "${SASL_PORT}" ]]; then
        cat >>"${PROPS_FILE}" <<EOF

# SASL_PLAINTEXT listener (KAFKA_SASL_PORT): PLAIN, one fixed test user, no authorizer.
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="${SASL_USER}" password="${SASL_PASSWORD}" user_${SASL_USER}="${SASL_PASSWORD}";
EOF
    fi

    cat >"${LOG4J_FILE}" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/kafka.sh: broker logs go to files, never to the console. -->
<Configuration status="WARN">
  <Appenders>
    <RollingFile name="server" fileName="${LOG_DIR}/server.log"
                 filePattern="${LOG_DIR}/server.log.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="20 MB"/></Policies>
      <DefaultRolloverStrategy max="2"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="server"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.log.LogCleaner" level="WARN"/>
    <Logger name="org.apache.kafka.storage.internals.log" level="WARN"/>
  </Loggers>
</Configuration>
EOF
}

# Where the broker's AppCDS archive lives: keyed by the JDK and by this resolution of the
# jars (the JVM only accepts an archive made by the same JDK build for the same jar files).
cds_archive() {
    local jdk
    jdk="$(readlink -f "$(command -v java)")"
    printf '%s/broker-%s.jsa\n' "${CACHE_DIR}" "$(
        printf '%s\n%s\n%s\n' "${jdk}" "$(<"${LIBS_STAMP}")" "$(stat -c %Y "${LIBS_STAMP}")" |
            sha256sum | cut -c1-16
    )"
}

# Prints the JVM flags for class-data sharing, and remembers where a new archive goes.
cds_flags() {
    [[ "${KAFKA_CDS:-1}" == 1 ]] || return 0
    local archive
    archive="$(cds_archive)"
    if [[ -s "${archive}" ]]; then
        printf '%s\0' "-XX:SharedArchiveFile=${archive}"
    else
        # Dumped by the JVM when it exits; `stop` moves it into the cache.
        printf '%s\n' "${archive}" >"${CDS_TARGET_FILE}"
        printf '%s\0' "-XX:ArchiveClassesAtExit=${CDS_DUMP}"
    fi
}

# java_cmd broker|tool [extra jvm flags...] -> NUL-separated java command line.
java_cmd() {
    local kind="$1"
    shift
    local -a jvm
    if [[ "${kind}" == broker ]]; then
        # shellcheck disable=SC2206 # word splitting of KAFKA_HEAP_OPTS is intended
        jvm=(${HEAP_OPTS} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError "$@")
    else
        # Short-lived CLI tool: small heap, C1 only -> starts ~1 s faster.
        jvm=(-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1)
    fi
    printf '%s\0' java "${jvm[@]}" \
        -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="${LOG4J_FILE}" \
        -Dkafka.logs.dir="${LOG_DIR}" \
        -cp "${LIBS_DIR}/*"
}

# Readiness: produce to a probe topic with acks=all and make sure the group coordinator
# (__consumer_offsets) answers, using aiokafka from the project venv. Falls back to the
# TCP port when no such python is around.
probe_python() {
    local py="${KAFKA_PYTHON:-${REPO_ROOT}/.venv/bin/python}"
    [[ -x "${py}" ]] || command -v "${py}" >/dev/null 2>&1 || return 1
    "${py}" -c 'import aiokafka' >/dev/null 2>&1 || return 1
    printf '%s\n' "${py}"
}

wait_ready() {
    local deadline="$1" py remaining
    if ! py="$(probe_python)"; then
        log "no python with aiokafka found (run scripts/dev-setup.sh); readiness = TCP port only"
        return 0
    fi
    remaining=$((deadline - SECONDS))
    ((remaining > 0)) || remaining=1
    "${py}" - "${BOOTSTRAP}" "${remaining}" <<'PY'
import asyncio
import logging
import sys
import time

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

logging.disable(logging.CRITICAL)  # aiokafka logs every refused connection while we wait

bootstrap = sys.argv[1]
deadline = time.monotonic() + float(sys.argv[2])
PROBE = "_fca_readiness_probe"


async def attempt() -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", request_timeout_ms=5000
    )
    await producer.start()
    try:
        await producer.send_and_wait(PROBE, b"ping")
    finally:
        await producer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        # Needs a group coordinator, i.e. creates and loads __consumer_offsets, so the
        # first consumer group in the tests does not pay for it.
        await admin.describe_consumer_groups([PROBE])
    finally:
        await admin.close()


async def main() -> int:
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            left = max(1.0, deadline - time.monotonic())
            await asyncio.wait_for(attempt(), timeout=min(left, 20.0))
            return 0
        except Exception as exc:  # keep retrying until the deadline
            last = exc
            await asyncio.sleep(0.5)
    print(f"readiness probe failed: {last!r}", file=sys.stderr)
    return 1


sys.exit(asyncio.run(main()))
PY
}

# --------------------------------------------------------------------------- commands

cmd_start() {
    local deadline=$((SECONDS + START_TIMEOUT))

    if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
        if first_reachable "${KAFKA_BOOTSTRAP_SERVERS}"; then
            log "using existing broker at KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS}"
            report reused
            printf '%s\n' "${KAFKA_BOOTSTRAP_SERVERS}"
            return 0
        fi
        log "KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS} is not reachable;" \
            "starting a local broker on ${BOOTSTRAP}"
    fi

    with_lock

    local pid
    if pid="$(our_pid)"; then
        if ! wait_ready "${deadline}"; then
            show_log_tail
            die "broker (pid ${pid}) runs but is not ready"
        fi
        log "already running (pid ${pid}) on ${BOOTSTRAP}"
        report reused
        printf '%s\n' "${BOOTSTRAP}"
        return 0
    fi
    if port_open "${HOST}" "${PORT}"; then
        log "${BOOTSTRAP} already answers (not started by this script); reusing it"
        if ! wait_ready "${deadline}"; then
            die "${BOOTSTRAP} answers but does not behave like a ready Kafka broker"
        fi
        report reused
        printf '%s\n' "${BOOTSTRAP}"
        return 0
    fi
    if port_open "${HOST}" "${CTRL_PORT}"; then
        die "controller port ${HOST}:${CTRL_PORT} is taken; choose another KAFKA_PORT"
    fi
    if [[ -n "${SASL_PORT}" ]] && port_open "${HOST}" "${SASL_PORT}"; then
        die "SASL port ${HOST}:${SASL_PORT} is taken; choose another KAFKA_SASL_PORT"
    fi

    ensure_libs
    # The bound is for the broker itself, not for a (possibly slow) first Maven resolve.
    deadline=$((SECONDS + START_TIMEOUT))

    # Fresh state every time (a dev/test broker never keeps data across restarts), except
    # when an outage test restarts a killed broker on its own data.
    local keep=0
    if [[ "${KAFKA_KEEP_DATA:-0}" == 1 && -s "${DATA_DIR}/meta.properties" ]]; then
        keep=1
    else
        rm -rf "${STATE_DIR}"
    fi
    mkdir -p "${DATA_DIR}" "${LOG_DIR}"
    write_config

    local -a cds java tool
    mapfile -d '' -t cds < <(cds_flags)
    mapfile -d '' -t java < <(java_cmd broker "${cds[@]}")
    mapfile -d '' -t tool < <(java_cmd tool)

    if ((keep)); then
        log "restarting on the data kept in ${DATA_DIR}"
    else
        local cluster_id
        cluster_id="$(new_cluster_id)"
        if ! "${tool[@]}" kafka.tools.StorageTool format -t "${cluster_id}" -c "${PROPS_FILE}" \
            >"${CONSOLE_LOG}" 2>&1; then
            show_log_tail
            die "formatting the KRaft storage failed"
        fi
    fi

    log "starting Kafka ${KAFKA_VERSION} (KRaft) on ${BOOTSTRAP}, state in ${STATE_DIR}"
    # Own session (so a Ctrl-C aimed at a caller does not hit the broker) and detached
    # from our stdin/stdout so callers (CI, $(...)) never wait on the JVM. In a script
    # there is no job control, so the background child is no group leader and setsid
    # execs in place: $! is the JVM's pid.
    local launcher=()
    command -v setsid >/dev/null 2>&1 && launcher=(setsid)
    "${launcher[@]}" "${java[@]}" kafka.Kafka "${PROPS_FILE}" \
        </dev/null >>"${CONSOLE_LOG}" 2>&1 9>&- &
    pid=$!
    printf '%s\n' "${pid}" >"${PID_FILE}"

    # 1) wait for the listener, 2) wait for a real produce + coordinator round-trip.
    until port_open "${HOST}" "${PORT}"; do
        if ! kill -0 "${pid}" 2>/dev/null; then
            show_log_tail
            die "the broker exited during startup"
        fi
        if ((SECONDS >= deadline)); then
            show_log_tail
            cmd_stop_locked >/dev/null 2>&1 || true
            die "the broker did not open ${BOOTSTRAP} within ${START_TIMEOUT}s"
        fi
        sleep 0.25
    done
    if ! wait_ready "${deadline}"; then
        show_log_tail
        cmd_stop_locked >/dev/null 2>&1 || true
        die "the broker did not become ready within ${START_TIMEOUT}s"
    fi
    if ((${#cds[@]})) && [[ "${cds[0]}" == -XX:SharedArchiveFile=* ]] &&
        grep -qiE 'shared archive|\[cds\]|sharing' "${CONSOLE_LOG}"; then
        # The JVM refused the archive (e.g. JDK update): drop it, the next clean stop
        # makes a new one.
        log "class-data archive not usable; it will be rebuilt (see ${CONSOLE_LOG})"
        rm -f "${cds[0]#-XX:SharedArchiveFile=}"
    fi
    log "ready on ${BOOTSTRAP}${SASL_PORT:+ (SASL_PLAINTEXT on ${HOST}:${SASL_PORT})} (pid ${pid}, ${SECONDS}s)"
    report started
    printf '%s\n' "${BOOTSTRAP}"
}

# After a clean JVM exit, keep the class-data archive it dumped for later starts.
promote_cds_archive() {
    [[ -f "${CDS_TARGET_FILE}" && -s "${CDS_DUMP}" ]] || return 0
    local target
    target="$(<"${CDS_TARGET_FILE}")"
    [[ -n "${target}" ]] || return 0
    mkdir -p "$(dirname "${target}")"
    if cp "${CDS_DUMP}" "${target}.tmp.$$" 2>/dev/null; then
        mv -f "${target}.tmp.$$" "${target}"
        # Archives of older JDKs / jar resolutions are dead weight (~50 MB each).
        find "$(dirname "${target}")" -maxdepth 1 -name 'broker-*.jsa' ! -path "${target}" \
            -delete 2>/dev/null || true
    else
        rm -f "${target}.tmp.$$"
    fi
}

cmd_stop_locked() {
    local pid
    if pid="$(our_pid)"; then
        log "stopping broker (pid ${pid})"
        kill -TERM "${pid}" 2>/dev/null || true
        local until_=$((SECONDS + STOP_TIMEOUT))
        while kill -0 "${pid}" 2>/dev/null && ((SECONDS < until_)); do
            sleep 0.25
        done
        if kill -0 "${pid}" 2>/dev/null; then
            log "still alive after ${STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "${pid}" 2>/dev/null || true
            while kill -0 "${pid}" 2>/dev/null; do sleep 0.1; done
            rm -f "${CDS_DUMP}" # possibly half-written
        fi
        promote_cds_archive
    else
        if port_open "${HOST}" "${PORT}"; then
            log "${BOOTSTRAP} answers but was not started by this script; leaving it alone"
        else
            log "not running"
        fi
    fi
    rm -rf "${STATE_DIR}"
}

cmd_stop() {
    with_lock
    cmd_stop_locked
}

# An outage: the broker dies at once (no controlled shutdown) and its data stays for a
# `KAFKA_KEEP_DATA=1 start`. `stop` still cleans up afterwards.
cmd_kill() {
    with_lock
    local pid
    if pid="$(our_pid)"; then
        log "killing broker (pid ${pid}) with SIGKILL; data kept in ${DATA_DIR}"
        kill -KILL "${pid}" 2>/dev/null || true
        while kill -0 "${pid}" 2>/dev/null; do sleep 0.05; done
        rm -f "${CDS_DUMP}" "${PID_FILE}"
    else
        log "not running"
    fi
}

cmd_status() {
    local pid
    if pid="$(our_pid)"; then
        if port_open "${HOST}" "${PORT}"; then
            echo "running (pid ${pid}) on ${BOOTSTRAP}"
        else
            echo "starting (pid ${pid}); ${BOOTSTRAP} not answering yet"
        fi
        return 0
    fi
    if port_open "${HOST}" "${PORT}"; then
        echo "running on ${BOOTSTRAP} (not managed by this script)"
        return 0
    fi
    echo "not running (${BOOTSTRAP})"
    return 3
}

cmd_logs() {
    [[ -f "${LOG_DIR}/server.log" ]] || die "no log at ${LOG_DIR}/server.log"
    tail -n "${KAFKA_LOG_LINES:-100}" "${LOG_DIR}/server.log"
}

usage() {
    echo "usage: $(basename "$0") {start|stop|status|restart|logs|kill}" >&2
    exit 2
}

main() {
    (($# == 1)) || usage
    case "$1" in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        restart)
            cmd_stop
            exec 9>&-
            cmd_start
            ;;
        logs) cmd_logs ;;
        kill) cmd_kill ;;
        -h | --help | help) usage ;;
        *) usage ;;
    esac
}

main "$@"
