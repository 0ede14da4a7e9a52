#!/usr/bin/env bash
# `haproxy ARGS` (or just `-f cfg ...`) runs in master-worker mode in the foreground, logging
# to stdout as configured; any other command runs as is.
set -euo pipefail
if [[ "${1:0:1}" == "-" ]]; then
  set -- haproxy "$@"
fi
if [[ "$1" == "haproxy" ]]; then
  shift
  set -- haproxy -W -db "$@"
fi
exec "$@"
