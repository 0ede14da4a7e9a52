#!/usr/bin/env bash
# Starts PostgreSQL configured from its environment, as the official postgres image does:
#   POSTGRES_PASSWORD           the superuser's password; required unless
#                               POSTGRES_HOST_AUTH_METHOD=trust
#   POSTGRES_USER               the superuser (default postgres)
#   POSTGRES_DB                 a database made on first start (default $POSTGRES_USER)
#   POSTGRES_INITDB_ARGS        more arguments for initdb
#   POSTGRES_HOST_AUTH_METHOD   how clients over TCP sign in (default scram-sha-256)
#   NAME_FILE                   for each of the above: read the value from that file
# On an empty PGDATA it runs initdb, then the files of /docker-entrypoint-initdb.d in name
# order (*.sh run, or sourced if not executable; *.sql, *.sql.gz, *.sql.xz, *.sql.zst fed to
# psql as the superuser, in POSTGRES_DB) on a server that listens on its Unix socket only,
# so nothing reaches it over TCP before it is ready. Then `postgres "$@"` replaces this script.
# Arguments starting with "-" are postgres's (`-c name=value`); any other command runs as is.
set -Eeuo pipefail

# file_env NAME [DEFAULT]: NAME from $NAME, or from the file named by $NAME_FILE.
file_env() {
  local name=$1 file="${1}_FILE" default=${2-}
  if [[ -n "${!name-}" && -n "${!file-}" ]]; then
    echo "error: both $name and $file are set (but are exclusive)" >&2
    exit 1
  fi
  local value=$default
  if [[ -n "${!name-}" ]]; then
    value=${!name}
  elif [[ -n "${!file-}" ]]; then
    value=$(<"${!file}")
  fi
  export "$name"="$value"
  unset "$file"
}

if [[ "${1:0:1}" == "-" ]]; then
  set -- postgres "$@"
fi

if [[ "$1" != "postgres" ]]; then
  exec "$@"
fi

# As root: own the data and socket folders, then run again as postgres.
if [[ "$(id -u)" == "0" ]]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  file_env POSTGRES_PASSWORD
  file_env POSTGRES_USER postgres
  file_env POSTGRES_DB "$POSTGRES_USER"
  file_env POSTGRES_INITDB_ARGS
  auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
  if [[ -z "$POSTGRES_PASSWORD" && "$auth" != "trust" ]]; then
    cat >&2 <<'MESSAGE'
error: the database is uninitialized and no superuser password is given.
  Set POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) to a password, or
  POSTGRES_HOST_AUTH_METHOD=trust to let anyone who reaches the port sign in as anyone.
MESSAGE
    exit 1
  fi

  echo "initializing the database cluster in $PGDATA"
  # The password goes to initdb on its standard input, never in a file or an argument.
  pwfile=()
  if [[ -n "$POSTGRES_PASSWORD" ]]; then
    pwfile=(--pwfile=/dev/stdin)
  fi
  # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of arguments
  initdb --username="$POSTGRES_USER" "${pwfile[@]}" --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host="$auth" $POSTGRES_INITDB_ARGS \
    <<<"$POSTGRES_PASSWORD" >/dev/null
  printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"
  printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"

  # A server on the Unix socket only, for the database and the init scripts. It logs to
  # stdout like the final one, so "ready to accept connections" appears twice, as with the
  # official image (what some clients wait for).
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
  export PGPASSWORD=${PGPASSWORD:-$POSTGRES_PASSWORD}
  psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --username "$POSTGRES_USER")
  if [[ "$POSTGRES_DB" != "postgres" ]]; then
    "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";' >/dev/null
  fi
  psql+=(--dbname "$POSTGRES_DB")
  for script in /docker-entrypoint-initdb.d/*; do
    case "$script" in
      *.sh)
        if [[ -x "$script" ]]; then
          echo "running $script"
          "$script"
        else
          echo "sourcing $script"
          # shellcheck disable=SC1090
          . "$script"
        fi
        ;;
      *.sql) echo "running $script" && "${psql[@]}" -f "$script" ;;
      *.sql.gz) echo "running $script" && gunzip -c "$script" | "${psql[@]}" ;;
      *.sql.xz) echo "running $script" && xz -dc "$script" | "${psql[@]}" ;;
      *.sql.zst) echo "running $script" && zstd -dc "$script" | "${psql[@]}" ;;
      */\*) ;;  # an empty folder
      *) echo "ignoring $script" ;;
    esac
  done
  unset PGPASSWORD
  pg_ctl -D "$PGDATA" -m fast -w stop
  echo "PostgreSQL init process complete; ready for start up."
fi

exec "$@"
