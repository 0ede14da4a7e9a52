#!/usr/bin/env bash
# kafka-server-start.sh server.properties [--override key=value ...]: the broker, in the
# foreground, logging per config/log4j2.yaml (stdout); a 1 GiB heap unless KAFKA_HEAP_OPTS.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 server.properties [--override property=value]..." >&2
  exit 1
fi
KAFKA_HOME=${KAFKA_HOME:-/opt/kafka}
export KAFKA_LOG4J_OPTS=${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=$KAFKA_HOME/config/log4j2.yaml}
export KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}
exec "$(dirname "$0")/kafka-run-class.sh" kafka.Kafka "$@"
