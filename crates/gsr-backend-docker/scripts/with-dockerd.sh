#!/usr/bin/env bash
# with-dockerd.sh COMMAND [ARGS...]
#
# Make sure a Docker engine answers on the default socket and has the docker backend's test
# images (scripts/test-images.sh, built offline), then run COMMAND. When no daemon answers,
# start a throw-away dockerd (data and exec root in a temp dir) that leaves the host's
# networking alone (ENVIRONMENT.md §1: no default bridge, no iptables, no forwarding) and
# hands per-job networks out of its own address pool, and stop it afterwards — on success,
# failure or interrupt. COMMAND's exit status is the script's.
#
# A daemon that already answers is used as it is (and left running).
# Knobs: GSR_TEST_SKIP_DOCKER=1 runs COMMAND without any of this (the docker tests then
#        skip themselves); GSR_DOCKERD_POOL (default 10.213.0.0/16, /24 networks: one per
#        job, and Docker's default pools give only about 31).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

if [ "${GSR_TEST_SKIP_DOCKER:-}" = 1 ]; then
  exec "$@"
fi

DIR=""
PID=""
stop() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true          # dockerd stops its containerd too
    for _ in $(seq 1 150); do kill -0 "$PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$PID" 2>/dev/null || true
  fi
  if [ -n "$DIR" ]; then
    for m in $(awk -v d="$DIR/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r); do
      umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$DIR"
  fi
}
trap stop EXIT
trap 'exit 130' INT TERM

if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || {
    echo "with-dockerd.sh: no Docker engine answers and dockerd is not installed (apt-get install -y docker.io), or set GSR_TEST_SKIP_DOCKER=1" >&2
    exit 1
  }
  DIR=$(mktemp -d /tmp/gsr-dockerd.XXXXXX)
  mkdir -p "$DIR/data" "$DIR/exec"
  dockerd --data-root "$DIR/data" --exec-root "$DIR/exec" --pidfile "$DIR/dockerd.pid" \
          -H unix:///var/run/docker.sock \
          --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
          --default-address-pool "base=${GSR_DOCKERD_POOL:-10.213.0.0/16},size=24" \
          >"$DIR/dockerd.log" 2>&1 </dev/null &
  PID=$!
  for _ in $(seq 1 300); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
  docker info >/dev/null 2>&1 || { tail -n 40 "$DIR/dockerd.log" >&2; echo "with-dockerd.sh: dockerd does not answer after 60 s" >&2; exit 1; }
  echo "with-dockerd.sh: started dockerd (pid $PID, data in $DIR)" >&2
fi
"$HERE/test-images.sh" >&2
"$@"
