#!/usr/bin/env bash
# Entrypoint of the compose broker: server.properties = this directory's settings + the
# secrets directory's broker.properties; on first start the storage is formatted with
# the SCRAM users of scram.args (KRaft creates users at format time, or later through
# an already authenticated admin). Passwords reach the JVM through files and a Java
# argument file (@file), never a command line or the environment.
set -euo pipefail
secrets=/etc/mynapoint/secrets
umask 077
config=/tmp/server.properties
cat /etc/mynapoint/kafka/server.properties "$secrets/broker.properties" > "$config"
if [[ ! -f /tmp/kraft-combined-logs/meta.properties ]]; then
  args=/tmp/format.args
  { printf '%s\n' format -t "$CLUSTER_ID" -c "$config"; cat "$secrets/scram.args"; } > "$args"
  "${JAVA_HOME:+$JAVA_HOME/bin/}java" -cp '/opt/kafka/libs/*' kafka.tools.StorageTool "@$args"
  rm -f "$args"
fi
exec /opt/kafka/bin/kafka-server-start.sh "$config"
