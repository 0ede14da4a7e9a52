#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests and local development.
#
#   tools/postgres_local.sh install   install the server (apt) unless initdb/pg_ctl exist
#   tools/postgres_local.sh start     init (once) and start it; idempotent
#   tools/postgres_local.sh stop      pg_ctl stop -m fast; idempotent
#   tools/postgres_local.sh status    exit 0 if running, 3 if not
#   tools/postgres_local.sh url       print the SQLAlchemy URL of the superuser role
#
# Listens on 127.0.0.1:${PG_PORT:-5433} only, trust auth on loopback, data in .run/postgres.
# Role `shop` (password `shop`) is a superuser, so tests can CREATE DATABASE their own; it
# owns one database per registered service (`python -m tools.pginit --psql`, stdlib only).
# Tuned for tests, not for durability (fsync off): never keep data you care about here.
# Root cannot run the server: as root it runs as the `postgres` OS user (created if missing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_PORT="${PG_PORT:-5433}"
PG_OS_USER="${PG_OS_USER:-postgres}"
if [[ -z "${PG_DATA:-}" ]]; then
  PG_DATA="$ROOT/.run/postgres"
  # As root the server runs as $PG_OS_USER, which must be able to reach the data dir. A clone
  # under a closed directory (say a 0700 home) cannot be: then the data goes to a temporary
  # directory and .run/postgres becomes a symlink to it.
  if [[ "$(id -u)" == 0 ]] && id "$PG_OS_USER" >/dev/null 2>&1 && [[ ! -d "$PG_DATA" || -L "$PG_DATA" ]]; then
    mkdir -p "$ROOT/.run"
    if ! (cd / && runuser -u "$PG_OS_USER" -- test -x "$ROOT/.run"); then
      PG_DATA="${TMPDIR:-/tmp}/shop-postgres-$PG_PORT"
      ln -sfn "$PG_DATA" "$ROOT/.run/postgres"
    fi
  fi
fi
PG_ROLE=shop
PG_PASSWORD=shop

find_bin() {  # directory holding initdb and pg_ctl, newest major version first
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -V -r); do
    if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then echo "$dir"; return 0; fi
  done
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    dirname "$(command -v pg_ctl)"; return 0
  fi
  return 1
}

install() {
  if find_bin >/dev/null; then return 0; fi
  [[ "$(id -u)" == 0 ]] || { echo "postgres_local: PostgreSQL is missing; run as root to install" >&2; exit 1; }
  echo "postgres_local: installing PostgreSQL (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql postgresql-client >/dev/null
  find_bin >/dev/null
}

as_pg() {  # run a command as the server's OS user
  if [[ "$(id -u)" == 0 ]]; then (cd / && runuser -u "$PG_OS_USER" -- "$@"); else "$@"; fi
}

url() { echo "postgresql+psycopg://$PG_ROLE:$PG_PASSWORD@127.0.0.1:$PG_PORT/postgres"; }

is_running() {
  local bin; bin="$(find_bin)" || return 1
  [[ -f "$PG_DATA/PG_VERSION" ]] && as_pg "$bin/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PG_PORT") 2>/dev/null; }

start() {
  local bin
  bin="$(find_bin)" || { echo "postgres_local: no initdb/pg_ctl; run '$0 install'" >&2; exit 1; }
  if [[ "$(id -u)" == 0 ]] && ! id "$PG_OS_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_OS_USER"
  fi
  if ! is_running; then
    if port_open; then echo "postgres_local: port $PG_PORT is taken by another process" >&2; exit 1; fi
    mkdir -p "$PG_DATA"
    if [[ "$(id -u)" == 0 ]]; then chown "$PG_OS_USER" "$PG_DATA"; fi
    chmod 700 "$PG_DATA"
    if ! as_pg test -w "$PG_DATA"; then
      echo "postgres_local: user $PG_OS_USER cannot reach $PG_DATA (a parent dir is closed);" \
        "set PG_DATA to a directory it can reach" >&2
      exit 1
    fi
    if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
      as_pg "$bin/initdb" -D "$PG_DATA" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
    fi
    as_pg "$bin/pg_ctl" start -D "$PG_DATA" -w -t 60 -l "$PG_DATA/server.log" -o "\
      -c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories='' \
      -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
      >/dev/null || { tail -n 30 "$PG_DATA/server.log" >&2; exit 1; }
  fi
  # Idempotent: the role is (re)asserted on every start.
  "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt >/dev/null <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
    CREATE ROLE $PG_ROLE LOGIN SUPERUSER PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;
SQL
  (cd "$ROOT" && "${PYTHON:-python3}" -m tools.pginit --psql) |
    "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_ROLE" -d postgres -v ON_ERROR_STOP=1 -qAt >/dev/null
  echo "postgres_local: PostgreSQL running at $(url)"
}

stop() {
  local bin
  if is_running; then
    bin="$(find_bin)"
    as_pg "$bin/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 60 >/dev/null
    echo "postgres_local: stopped"
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  url) url ;;
  status) if is_running; then echo "running at $(url)"; else echo "not running"; exit 3; fi ;;
  *) echo "usage: $0 {install|start|stop|status|url}" >&2; exit 2 ;;
esac
