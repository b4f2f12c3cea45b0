#!/usr/bin/env bash
# Start/stop a private Docker engine (Debian's docker.io, 20.10) on a machine with no systemd,
# no bridge networking and no image registry.
#
#   engine.sh start    # idempotent; waits for the socket (TWEAKLINE_DOCKER_TIMEOUT, default 30 s)
#   engine.sh stop     # idempotent; also unmounts <exec-root>/netns/default and leftover mounts
#   engine.sh status   # exit 0 if the engine answers
#   engine.sh env      # prints: export DOCKER_HOST=unix://...
#
# Everything lives under TWEAKLINE_DOCKER_ROOT (default /var/lib/tweakline-docker):
#   data/  (--data-root)   run/ (--exec-root)   docker.sock   dockerd.pid   dockerd.log   daemon.json
# The daemon has no bridge: use `--network host` for `docker build` and `docker run`.
# Installs docker.io if dockerd is missing (needs root and apt).
set -euo pipefail

ROOT="${TWEAKLINE_DOCKER_ROOT:-/var/lib/tweakline-docker}"
TIMEOUT="${TWEAKLINE_DOCKER_TIMEOUT:-30}"
DATA="$ROOT/data"
EXEC="$ROOT/run"
SOCK="$ROOT/docker.sock"
PIDFILE="$ROOT/dockerd.pid"
LOG="$ROOT/dockerd.log"
CONF="$ROOT/daemon.json"

log() { echo "engine.sh: $*" >&2; }

# Answer of the API's /_ping (curl if present, else the docker client).
ping_engine() {
    [ -S "$SOCK" ] || return 1
    if command -v curl >/dev/null 2>&1; then
        [ "$(curl -s --max-time 2 --unix-socket "$SOCK" http://localhost/_ping 2>/dev/null)" = OK ]
    else
        DOCKER_HOST="unix://$SOCK" timeout 5 docker version >/dev/null 2>&1
    fi
}

# alive PID NAME: PID runs NAME and is not a zombie. (kill -0 succeeds on a zombie, and
# zombies linger here: PID 1 of this VM reaps late.)
alive() {
    [ -n "$1" ] && [ -r "/proc/$1/stat" ] || return 1
    [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" != Z ] || return 1
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q "$2"
}

daemon_pid() {
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null)" || return 1
    alive "$pid" dockerd || return 1
    echo "$pid"
}

CTRD_PIDFILE="$EXEC/containerd/containerd.pid"

# dockerd supervises its own containerd through CTRD_PIDFILE: if that file names a process that
# still "exists" (even a zombie), a new dockerd waits for its socket and gives up after ~30 s
# ("failed to start containerd: timeout waiting for containerd to start"). After a crash or a
# kill -9, end our orphaned containerd and remove its pidfile and sockets.
clear_stale_containerd() {
    local cpid i
    cpid="$(cat "$CTRD_PIDFILE" 2>/dev/null || true)"
    if alive "$cpid" containerd; then
        log "ending orphaned containerd $cpid"
        kill -TERM "$cpid" 2>/dev/null || true
        for i in $(seq 50); do alive "$cpid" containerd || break; sleep 0.2; done
        alive "$cpid" containerd && kill -KILL "$cpid" 2>/dev/null || true
    fi
    rm -f "$CTRD_PIDFILE" "$EXEC"/containerd/containerd.sock*  "$EXEC"/containerd/containerd-debug.sock
}

# Unmount whatever dockerd/containerd left mounted under ROOT (deepest first);
# <exec-root>/netns/default is always left behind.
unmount_leftovers() {
    local m
    awk -v root="$ROOT" '$2 == root || index($2, root "/") == 1 { print $2 }' /proc/self/mounts \
        | sort -r | while read -r m; do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
        done
}

ensure_installed() {
    if ! command -v dockerd >/dev/null 2>&1; then
        log "dockerd missing: installing docker.io"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >/dev/null
    fi
}

start() {
    if ping_engine; then
        log "already running (socket $SOCK)"
        return 0
    fi
    if pid="$(daemon_pid)"; then
        log "dockerd $pid is up but its socket does not answer yet; waiting"
    else
        ensure_installed
        # A previous daemon that died or was killed: clear its leftovers.
        clear_stale_containerd
        unmount_leftovers
        rm -f "$PIDFILE" "$SOCK"
        mkdir -p "$DATA" "$EXEC"
        [ -f "$CONF" ] || echo '{}' >"$CONF"   # do not pick up /etc/docker/daemon.json
        log "starting dockerd (root $ROOT)"
        # setsid + nohup: the daemon outlives the calling shell/job.
        setsid nohup dockerd \
            --config-file "$CONF" \
            --data-root "$DATA" \
            --exec-root "$EXEC" \
            --pidfile "$PIDFILE" \
            -H "unix://$SOCK" \
            --bridge=none --iptables=false --ip6tables=false \
            --storage-driver=overlay2 \
            >>"$LOG" 2>&1 </dev/null &
    fi
    local deadline=$((SECONDS + TIMEOUT))
    until ping_engine; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "no answer on $SOCK after ${TIMEOUT}s; last lines of $LOG:"
            tail -n 20 "$LOG" >&2 || true
            return 1
        fi
        sleep 0.2
    done
    log "up: export DOCKER_HOST=unix://$SOCK"
}

stop() {
    local pid deadline
    if pid="$(daemon_pid)"; then
        log "stopping dockerd $pid"
        kill -TERM "$pid"
        deadline=$((SECONDS + TIMEOUT))
        while alive "$pid" dockerd; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                log "dockerd $pid still alive after ${TIMEOUT}s: SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
                sleep 1
                break
            fi
            sleep 0.2
        done
    else
        log "not running"
    fi
    # dockerd's own containerd normally exits with it; make sure.
    clear_stale_containerd
    unmount_leftovers
    rm -f "$PIDFILE" "$SOCK"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    status)
        if ping_engine; then echo "running: unix://$SOCK"; else echo "stopped"; exit 1; fi ;;
    env) echo "export DOCKER_HOST=unix://$SOCK" ;;
    *) echo "usage: $0 start|stop|restart|status|env" >&2; exit 2 ;;
esac
