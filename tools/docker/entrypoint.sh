#!/bin/sh
# The image's entry point: `docker run IMAGE ARGS...` runs `tweakline ARGS...` (a service, the
# model server, `bus init`), unless ARGS start with another program on the PATH. CI systems start
# the image with a command of their own (Jenkins' docker agent runs `cat` and then `docker exec`s
# each step; GitLab runs a shell): that command must run as given, not as `tweakline cat`.
# The list of tweakline's commands is checked against the CLI by tests/helm/test_dockerfile.py.
set -e
case "${1:-}" in
    "" | -*) exec tweakline "$@" ;;
    bus | cancel | console | down | experiments | history | pki | report | rollback | run | serve | service | status | submit | up | validate)
        exec tweakline "$@" ;;
esac
if command -v "$1" >/dev/null 2>&1; then
    exec "$@"
fi
exec tweakline "$@"
