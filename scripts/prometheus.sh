#!/usr/bin/env bash
# Prometheus and promtool for the alert-rule checks and the end-to-end monitoring test.
#
#   scripts/prometheus.sh ensure   install Debian's `prometheus` package where `prometheus` or
#                                  `promtool` is missing (apt-get; root or sudo), without
#                                  leaving its system service running
#   scripts/prometheus.sh check    promtool check rules + promtool test rules on
#                                  contrib/prometheus/alerts.yml (and its alerts_test.yml)
#
# The tests start their own Prometheus server on a free port with a config of their own;
# the package's service (which would listen on 9090) is not used.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
RULES_DIR="${REPO_ROOT}/contrib/prometheus"

log() { printf 'prometheus.sh: %s\n' "$*" >&2; }

as_root() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        log "need root (or sudo) to run: $*"
        return 1
    fi
}

ensure() {
    if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || {
        log "prometheus/promtool missing and no apt-get here: install Prometheus 2.x yourself"
        return 1
    }
    log "installing Debian's prometheus package"
    # policy-rc.d exit 101: the package's maintainer scripts may not start its service.
    local policy=/usr/sbin/policy-rc.d placed=0
    if [[ ! -e "${policy}" ]]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "${policy}" >/dev/null
        as_root chmod +x "${policy}"
        placed=1
    fi
    local rc=0
    as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq \
        --no-install-recommends prometheus >/dev/null || rc=$?
    ((placed)) && as_root rm -f "${policy}"
    ((rc == 0)) || return "${rc}"
    # Under systemd the unit may still have been started: stop it, the tests run their own.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
        as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
    prometheus --version 2>&1 | head -n 1 >&2
}

check() {
    promtool check rules "${RULES_DIR}/alerts.yml"
    (cd "${RULES_DIR}" && promtool test rules alerts_test.yml)
}

case "${1:-}" in
    ensure) ensure ;;
    check) check ;;
    *)
        echo "usage: $0 ensure|check" >&2
        exit 2
        ;;
esac
