#!/usr/bin/env bash
# One-shot service: the ACLs of the default topic names (engine.devtools.security.
# acl_plan), one kafka-acls.sh --add per line of acls.args, as admin. Adding an ACL that
# exists is a no-op, so a re-run is harmless.
set -euo pipefail
secrets=/etc/mynapoint/secrets
while IFS= read -r line; do
  eval "args=($line)"
  /opt/kafka/bin/kafka-acls.sh --bootstrap-server kafka:9092 \
    --command-config "$secrets/credentials/admin.properties" --add "${args[@]}"
done < "$secrets/acls.args"
