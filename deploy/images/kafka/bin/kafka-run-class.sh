#!/usr/bin/env bash
# kafka-run-class.sh CLASS [ARGS...]: runs a class of Kafka's jars (/opt/kafka/libs) with the
# JVM options Kafka's own scripts take from the environment:
#   KAFKA_HEAP_OPTS             default -Xmx256M
#   KAFKA_JVM_PERFORMANCE_OPTS  default G1 with short pauses
#   KAFKA_LOG4J_OPTS            default: the tools' logging (config/tools-log4j2.yaml, stderr)
#   KAFKA_GC_LOG_OPTS, KAFKA_JMX_OPTS, KAFKA_OPTS   passed as they are
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 CLASS [ARGS...]" >&2
  exit 1
fi
KAFKA_HOME=${KAFKA_HOME:-/opt/kafka}
if [[ -z "${KAFKA_LOG4J_OPTS-}" ]]; then
  KAFKA_LOG4J_OPTS="-Dlog4j2.configurationFile=$KAFKA_HOME/config/tools-log4j2.yaml"
  if [[ ! -f "$KAFKA_HOME/config/tools-log4j2.yaml" ]]; then
    KAFKA_LOG4J_OPTS="-Dlog4j2.configurationFile=/etc/kafka/docker/tools-log4j2.yaml"
  fi
fi
# Word splitting is wanted: each variable holds a list of JVM options.
# shellcheck disable=SC2086
exec java ${KAFKA_HEAP_OPTS:--Xmx256M} \
  ${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true} \
  ${KAFKA_GC_LOG_OPTS-} ${KAFKA_JMX_OPTS-} $KAFKA_LOG4J_OPTS \
  -cp "$KAFKA_HOME/libs/*" ${KAFKA_OPTS-} "$@"
