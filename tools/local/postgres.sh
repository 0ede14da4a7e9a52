#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests and local development.
#
#   tools/local/postgres.sh install   install the server (apt) unless initdb/pg_ctl exist
#   tools/local/postgres.sh start     init (once) and start it; idempotent
#   tools/local/postgres.sh stop      pg_ctl stop -m fast; idempotent
#   tools/local/postgres.sh status    exit 0 if running, 3 if not
#   tools/local/postgres.sh url       print the SQLAlchemy URL of the superuser role
#   tools/local/postgres.sh env       print the exports that point each service at its
#                                     database as its own role: eval "$(... env)"; make up
#
# Listens on 127.0.0.1:${PG_PORT:-5433}, data in .run/postgres. Over TCP every role signs in
# with its password (SCRAM-SHA-256); the Unix socket lives in the data directory (0700), so
# only its owner (and root) reach it, and this script sets up through it. Each registered
# service gets a database owned by a login role of its name that may connect to no other,
# with a random password in .run/postgres-credentials/<service> (owner-only; `python -m
# tools.local.pginit --psql`, stdlib only). Role `shop` is a superuser for tests (they CREATE
# DATABASE their own) and administration; its password is .run/postgres-credentials/shop.
# PG_CREDENTIALS names another folder for these files.
# Tuned for tests, not for durability (fsync off): never keep data you care about here.
# Root cannot run the server: as root it runs as the `postgres` OS user (created if missing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
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
PG_CREDENTIALS="${PG_CREDENTIALS:-$ROOT/.run/postgres-credentials}"
PYTHON="${PYTHON:-python3}"

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
  [[ "$(id -u)" == 0 ]] || { echo "postgres.sh: PostgreSQL is missing; run as root to install" >&2; exit 1; }
  echo "postgres.sh: installing PostgreSQL (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql postgresql-client >/dev/null
  find_bin >/dev/null
}

as_pg() {  # run a command as the server's OS user
  if [[ "$(id -u)" == 0 ]]; then (cd / && runuser -u "$PG_OS_USER" -- "$@"); else "$@"; fi
}

url() {
  [[ -f "$PG_CREDENTIALS/$PG_ROLE" ]] ||
    { echo "postgres.sh: no $PG_CREDENTIALS/$PG_ROLE; run '$0 start' first" >&2; exit 1; }
  echo "postgresql+psycopg://$PG_ROLE:$(<"$PG_CREDENTIALS/$PG_ROLE")@127.0.0.1:$PG_PORT/postgres"
}

pginit() { (cd "$ROOT" && "$PYTHON" -m tools.local.pginit --credentials "$PG_CREDENTIALS" "$@"); }

write_hba() {  # TCP by password only; the socket, in the closed data directory, for set-up
  as_pg tee "$PG_DATA/pg_hba.conf" >/dev/null <<'HBA'
# Written by tools/local/postgres.sh on every start.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
HBA
}

server_options() {
  echo "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories='$PG_DATA'" \
    "-c unix_socket_permissions=0700 -c password_encryption=scram-sha-256" \
    "-c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
}

is_running() {
  local bin; bin="$(find_bin)" || return 1
  [[ -f "$PG_DATA/PG_VERSION" ]] && as_pg "$bin/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PG_PORT") 2>/dev/null; }

start() {
  local bin
  bin="$(find_bin)" || { echo "postgres.sh: no initdb/pg_ctl; run '$0 install'" >&2; exit 1; }
  if [[ "$(id -u)" == 0 ]] && ! id "$PG_OS_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_OS_USER"
  fi
  local socket="$PG_DATA/.s.PGSQL.$PG_PORT"
  if ((${#socket} > 107)); then
    echo "postgres.sh: $socket is too long for a Unix socket; set PG_DATA to a shorter path" >&2
    exit 1
  fi
  if ! is_running; then
    if port_open; then echo "postgres.sh: port $PG_PORT is taken by another process" >&2; exit 1; fi
    mkdir -p "$PG_DATA"
    if [[ "$(id -u)" == 0 ]]; then chown "$PG_OS_USER" "$PG_DATA"; fi
    chmod 700 "$PG_DATA"
    if ! as_pg test -w "$PG_DATA"; then
      echo "postgres.sh: user $PG_OS_USER cannot reach $PG_DATA (a parent dir is closed);" \
        "set PG_DATA to a directory it can reach" >&2
      exit 1
    fi
    if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
      as_pg "$bin/initdb" -D "$PG_DATA" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
    fi
    write_hba  # before the first start: TCP never trusts anyone
    as_pg "$bin/pg_ctl" start -D "$PG_DATA" -w -t 60 -l "$PG_DATA/server.log" -o "$(server_options)" \
      >/dev/null || { tail -n 30 "$PG_DATA/server.log" >&2; exit 1; }
  else
    write_hba
    if [[ ! -S "$socket" ]]; then
      # started by an earlier version of this script (trust on TCP, no socket): restart
      as_pg "$bin/pg_ctl" restart -D "$PG_DATA" -m fast -w -t 60 -l "$PG_DATA/server.log" \
        -o "$(server_options)" >/dev/null || { tail -n 30 "$PG_DATA/server.log" >&2; exit 1; }
    else
      as_pg "$bin/pg_ctl" reload -D "$PG_DATA" >/dev/null
    fi
  fi
  # Idempotent: the roles, their passwords and the databases are (re)asserted every start.
  pginit --psql --superuser "$PG_ROLE" |
    "$bin/psql" -h "$PG_DATA" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt >/dev/null
  echo "postgres.sh: PostgreSQL running on 127.0.0.1:$PG_PORT (superuser $PG_ROLE: '$0 url';" \
    "each service's role: '$0 env')"
}

stop() {
  local bin
  if is_running; then
    bin="$(find_bin)"
    as_pg "$bin/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 60 >/dev/null
    echo "postgres.sh: stopped"
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  url) url ;;
  env) pginit --env "127.0.0.1:$PG_PORT" ;;
  status) if is_running; then echo "running on 127.0.0.1:$PG_PORT"; else echo "not running"; exit 3; fi ;;
  *) echo "usage: $0 {install|start|stop|status|url|env}" >&2; exit 2 ;;
esac
