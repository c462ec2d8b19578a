#!/usr/bin/env bash
# with-postgres.sh COMMAND [ARGS...]
#
# Start a throw-away PostgreSQL (trust auth, 127.0.0.1 only, data in a temp dir), run COMMAND
# with GSR_TEST_DATABASE_URL pointing at it, then stop the server and delete its data —
# on success, failure or interrupt. COMMAND's exit status is the script's.
#
# If GSR_TEST_DATABASE_URL is already set, COMMAND runs against that server instead.
# Knobs: GSR_PG_PORT (default 55432), PGBIN (default: newest /usr/lib/postgresql/*/bin).
# As root, the server runs as the `postgres` user (initdb refuses root).
set -euo pipefail

if [ -n "${GSR_TEST_DATABASE_URL:-}" ]; then
  exec "$@"
fi

PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
  echo "with-postgres.sh: PostgreSQL server binaries not found (install the 'postgresql' package or set PGBIN)" >&2
  exit 1
fi
PORT=${GSR_PG_PORT:-55432}
DIR=$(mktemp -d /tmp/gsr-pg.XXXXXX)
chmod 755 "$DIR"

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
stop() {
  if [ -f "$DIR/data/postmaster.pid" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$DIR"
}
trap stop EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] && chown postgres: "$DIR"
as_pg "$PGBIN/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 --no-sync >"$DIR/initdb.log" 2>&1 ||
  { cat "$DIR/initdb.log" >&2; exit 1; }
as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w \
  -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null ||
  { cat "$DIR/log" >&2; exit 1; }
echo "with-postgres.sh: PostgreSQL on 127.0.0.1:$PORT (data in $DIR)" >&2

export GSR_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$PORT/postgres"
"$@"
