#!/usr/bin/env bash
# Make a stand-in for docker.io/library/python:3.11-slim with debootstrap (no image registry is
# reachable here) and load it into the engine of engine.sh as python:3.11-slim.
#
#   base-image.sh            # skips when the tag already exists
#   FORCE=1 base-image.sh    # rebuild and re-tag
#
# Env: IMAGE (default python:3.11-slim), SUITE (bookworm), MIRROR (http://deb.debian.org/debian),
#      TWEAKLINE_DOCKER_ROOT (engine.sh's root; the rootfs is built in $ROOT/rootfs.build and the
#      .debs are cached in $ROOT/debootstrap-cache), DOCKER_HOST (default: engine.sh's socket),
#      KEEP_ROOTFS=1 to keep the unpacked rootfs.
#
# What the image gets, besides Debian's python3 (3.11.2), python3-venv, python3-pip,
# python-is-python3 and ca-certificates:
#   * the host's local CAs (/usr/local/share/ca-certificates/*, e.g. a TLS-intercepting proxy's)
#     installed with update-ca-certificates, so pip/curl/openssl inside `docker build` trust them;
#   * /etc/pip.conf with the host pip's network settings (index-url, extra-index-url,
#     trusted-host, proxy, timeout, retries; cert pointed at the image's bundle); host-only
#     things (file:// indexes, local find-links, local constraint files) are left out;
#   * no EXTERNALLY-MANAGED marker (the real python:3.11-slim has none), ENV PATH and LANG like
#     the real image, CMD ["python3"].
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="${TWEAKLINE_DOCKER_ROOT:-/var/lib/tweakline-docker}"
IMAGE="${IMAGE:-python:3.11-slim}"
SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
ROOTFS="$ROOT/rootfs.build"
CACHE="$ROOT/debootstrap-cache"
export DOCKER_HOST="${DOCKER_HOST:-unix://$ROOT/docker.sock}"

log() { echo "base-image.sh: $*" >&2; }

"$HERE/engine.sh" start

if [ -z "${FORCE:-}" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE already exists ($(docker image inspect -f '{{.Id}}' "$IMAGE")): skipping (FORCE=1 to rebuild)"
    exit 0
fi

command -v debootstrap >/dev/null 2>&1 || {
    log "installing debootstrap"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
}

# debootstrap mounts proc/sys (and more) inside the target; never leave them behind.
unmount_rootfs() {
    awk -v r="$ROOTFS" 'index($2, r "/") == 1 { print $2 }' /proc/self/mounts | sort -r |
        while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || true; done
}
trap unmount_rootfs EXIT

unmount_rootfs
rm -rf "$ROOTFS"
mkdir -p "$ROOTFS" "$CACHE"

log "debootstrap $SUITE (minbase + python3) into $ROOTFS"
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    --cache-dir="$CACHE" \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOT/debootstrap.log" 2>&1 || {
    log "debootstrap failed; tail of $ROOT/debootstrap.log:"; tail -n 30 "$ROOT/debootstrap.log" >&2; exit 1; }

# --- the host's local CAs (TLS-intercepting proxy) --------------------------------------------
if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
    log "installing host CAs: $(ls /usr/local/share/ca-certificates | tr '\n' ' ')"
    mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
    cp -a /usr/local/share/ca-certificates/. "$ROOTFS/usr/local/share/ca-certificates/"
fi
chroot "$ROOTFS" update-ca-certificates >/dev/null

# --- pip: the host's network settings --------------------------------------------------------
# `pip config list` prints scope.key='value' for the config files and :env:.key for PIP_* vars;
# environment variables win over files, so they are applied last.
host_pip=""
for p in pip pip3; do command -v "$p" >/dev/null 2>&1 && { host_pip="$p"; break; }; done
{
    echo "# Written by base-image.sh from the host's pip configuration (pip config list)."
    echo "[global]"
    echo "cert = /etc/ssl/certs/ca-certificates.crt"
    if [ -n "$host_pip" ]; then
        "$host_pip" config list 2>/dev/null | python3 -c '
import sys
keep = {"index-url", "extra-index-url", "trusted-host", "proxy", "timeout", "default-timeout",
        "retries", "disable-pip-version-check"}
files, env = {}, {}
for line in sys.stdin:
    line = line.strip()
    if "=" not in line:
        continue
    name, value = line.split("=", 1)
    scope, _, key = name.rpartition(".")
    value = value.strip().strip("\x27\"")
    (env if scope == ":env:" else files)[key] = value
conf = {**files, **env}
for key, value in conf.items():
    if key == "cert":
        continue  # always the image'"'"'s own bundle (written above)
    if key not in keep:
        print(f"# not carried over (host-only): {key} = {value}", file=sys.stderr)
        continue
    if key in ("index-url", "extra-index-url"):
        urls = value.split()
        remote = [u for u in urls if u.startswith(("http://", "https://"))]
        for u in urls:
            if u not in remote:
                print(f"# not carried over (host-only): {key} {u}", file=sys.stderr)
        if not remote:
            continue
        value = " ".join(remote)
    if key == "default-timeout":
        key = "timeout"
    print(f"{key} = {value}")
'
    fi
} >"$ROOTFS/etc/pip.conf"
log "image /etc/pip.conf:"; sed 's/^/    /' "$ROOTFS/etc/pip.conf" >&2

# --- look like the official image ------------------------------------------------------------
rm -f "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/log/*.log \
       "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache
unmount_rootfs

py_version="$(chroot "$ROOTFS" python3 -c 'import platform; print(platform.python_version())')"
log "importing as $IMAGE (Python $py_version, $(du -sh "$ROOTFS" | cut -f1))"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "ENV PYTHON_VERSION=$py_version" \
    --change 'CMD ["python3"]' \
    --message "debootstrap $SUITE minbase + python3 $py_version (stand-in for python:3.11-slim)" \
    - "$IMAGE" >/dev/null

[ -n "${KEEP_ROOTFS:-}" ] || rm -rf "$ROOTFS"
log "done: $(docker image ls --format '{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}' "$IMAGE")"
