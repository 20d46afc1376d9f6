#!/usr/bin/env bash
# A private Docker engine for quiesce's own tests, that leaves the host as it found it.
#
#   docker/test-engine.sh install   install Debian's docker.io (its service is NOT started) and
#                                   mmdebstrap, when missing (root)
#   docker/test-engine.sh start     start dockerd unless one answers; prints DOCKER_HOST=...
#   docker/test-engine.sh stop      stop the engine `start` started, remove what it added
#   docker/test-engine.sh status    say whether an engine started by this script runs
#   docker/test-engine.sh hoststate print the host's forwarding and firewall state
#
# The engine runs with --iptables=false --ip-forward=false --ip=127.0.0.1: it never touches the
# host's firewall or IP forwarding, and publishes container ports on 127.0.0.1 only. Its socket
# is private ($QUIESCE_TEST_DOCKER_STATE/docker.sock, default /run/quiesce-test-docker), so a
# workstation's own engine and tools never see it. Its data root is persistent
# ($QUIESCE_TEST_DOCKER_ROOT, default /var/lib/quiesce-test-docker) so built images survive
# between runs; `stop` removes every container labelled io.quiesce.drill, the docker0 bridge and
# the netns mounts the engine added, and checks that forwarding and the firewall are unchanged.
set -euo pipefail

STATE=${QUIESCE_TEST_DOCKER_STATE:-/run/quiesce-test-docker}
ROOT=${QUIESCE_TEST_DOCKER_ROOT:-/var/lib/quiesce-test-docker}
SOCK="$STATE/docker.sock"
EXEC_ROOT="$STATE/exec"
PIDFILE="$STATE/dockerd.pid"
LOG="$STATE/dockerd.log"
LABEL=io.quiesce.drill

say() { echo "test-engine: $*" >&2; }
die() { say "$*"; exit 1; }

hoststate() {
    # Everything the engine must not change: forwarding, and the firewall's rules.
    echo "ip_forward=$(sysctl -n net.ipv4.ip_forward)"
    echo "ip6_forward=$(sysctl -n net.ipv6.conf.all.forwarding 2>/dev/null || echo none)"
    if command -v nft >/dev/null; then
        nft list ruleset 2>&1 | sed 's/^/nft: /' || true
    fi
    if command -v iptables-save >/dev/null; then
        # Comment lines carry a timestamp; packet counters change with traffic.
        iptables-save 2>&1 | grep -v '^#' | sed -E 's/\[[0-9]+:[0-9]+\]/[-]/; s/^/iptables: /' || true
    fi
}

answers() {
    # True when the engine at $1 (a unix socket path) answers within 5 s.
    [ -S "$1" ] && timeout 5 docker -H "unix://$1" version >/dev/null 2>&1
}

install() {
    [ "$(id -u)" = 0 ] || die "installing docker.io needs root"
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    command -v nft >/dev/null || missing+=(nftables)
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]} (the packaged docker service is not started)"
    # policy-rc.d exit 101: invoke-rc.d starts no service while the package installs. On a
    # systemd host the packaged docker.service would start with its default flags, which turn
    # on IP forwarding and rewrite the firewall. An existing policy-rc.d is left as it is.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=1
    fi
    local rc=0
    apt-get update -qq || rc=$?
    [ $rc = 0 ] && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null || rc=$?; }
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        # Socket activation would start the service on the first client: mask both.
        systemctl mask --now docker.service docker.socket >/dev/null 2>&1 || true
    fi
    [ $own_policy = 1 ] && rm -f "$policy"
    [ $rc = 0 ] || die "apt-get install ${missing[*]} failed (exit $rc)"
}

start() {
    [ "$(id -u)" = 0 ] || die "starting a Docker engine needs root"
    if answers "$SOCK"; then
        say "the engine started earlier answers at unix://$SOCK"
        echo "DOCKER_HOST=unix://$SOCK"
        return 0
    fi
    command -v dockerd >/dev/null || install
    mkdir -p "$STATE" "$ROOT"
    chmod 700 "$STATE"
    # What the engine adds and `stop` must remove: the bridge and the netns mounts.
    ip link show docker0 >/dev/null 2>&1 && echo 1 >"$STATE/had-docker0" || echo 0 >"$STATE/had-docker0"
    hoststate >"$STATE/hoststate.before"
    rm -f "$SOCK" "$PIDFILE"
    say "starting dockerd (data root $ROOT, socket unix://$SOCK)"
    setsid dockerd --iptables=false --ip-forward=false --ip-masq=false --ip=127.0.0.1 \
        --data-root "$ROOT" --exec-root "$EXEC_ROOT" --pidfile "$PIDFILE" \
        -H "unix://$SOCK" >"$LOG" 2>&1 </dev/null &
    echo $! >"$STATE/started-pid"
    local i
    for i in $(seq 1 60); do
        answers "$SOCK" && break
        if ! kill -0 "$(cat "$STATE/started-pid")" 2>/dev/null; then
            tail -20 "$LOG" >&2
            stop_engine
            die "dockerd exited while starting (log above)"
        fi
        sleep 0.5
    done
    if ! answers "$SOCK"; then
        tail -20 "$LOG" >&2
        stop_engine
        die "dockerd did not answer in 30 s (log above)"
    fi
    say "engine answers at unix://$SOCK"
    echo "DOCKER_HOST=unix://$SOCK"
}

stop_engine() {
    local pid=""
    [ -f "$STATE/started-pid" ] && pid=$(cat "$STATE/started-pid")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        if answers "$SOCK"; then
            local left
            left=$(docker -H "unix://$SOCK" ps -aq --filter "label=$LABEL" 2>/dev/null || true)
            if [ -n "$left" ]; then
                say "removing leftover drill containers: $(echo $left)"
                # shellcheck disable=SC2086
                docker -H "unix://$SOCK" rm -f -v $left >/dev/null 2>&1 || true
            fi
        fi
        kill -TERM "$pid" 2>/dev/null || true
        local i
        for i in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "dockerd $pid did not stop in 30 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
        fi
    fi
    # The containerd dockerd started for itself normally exits with it; never leave it.
    local cpid
    for cpid in $(pgrep -f "containerd --config $EXEC_ROOT/" 2>/dev/null || true); do
        kill -TERM "$cpid" 2>/dev/null || true
    done
    # Mounts the engine made under its exec root (netns bind mounts) and under its data root.
    local m
    for m in $(findmnt -rn -o TARGET | grep -E "^($EXEC_ROOT|$ROOT|/run/docker)(/|$)" | sort -r); do
        umount -l "$m" 2>/dev/null || say "could not unmount $m"
    done
    if [ "$(cat "$STATE/had-docker0" 2>/dev/null || echo 1)" = 0 ] \
        && ip link show docker0 >/dev/null 2>&1; then
        ip link delete docker0 || say "could not delete the docker0 bridge"
    fi
    rm -rf "$EXEC_ROOT"
    rm -f "$SOCK" "$PIDFILE" "$STATE/started-pid"
}

stop() {
    [ -d "$STATE" ] || { say "no engine was started by this script"; return 0; }
    stop_engine
    local bad=0
    if [ -f "$STATE/hoststate.before" ]; then
        if ! diff <(cat "$STATE/hoststate.before") <(hoststate) >"$STATE/hoststate.diff"; then
            say "the host's forwarding or firewall changed while the engine ran:"
            cat "$STATE/hoststate.diff" >&2
            bad=1
        else
            say "engine stopped; forwarding and firewall as before, docker0 and mounts removed"
        fi
    fi
    rm -rf "$STATE"
    return $bad
}

status() {
    if answers "$SOCK"; then echo "running: DOCKER_HOST=unix://$SOCK"; else echo "stopped"; return 1; fi
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    hoststate) hoststate ;;
    *) sed -n '2,9p' "$0"; exit 2 ;;
esac
