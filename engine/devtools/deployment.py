"""Secrets of the compose deployment (``docker-compose.yml``, SASL_SSL).

    python -m engine.devtools.deployment deploy/secrets [--operators operators.toml]

writes, once (an existing directory is refused: its passwords are in a formatted
broker's metadata), with the same principals, passwords and ACLs as the local broker
(:mod:`engine.devtools.security`):

- ``tls/``: a CA and the broker's keystore for the host name ``kafka``
  (``scripts/make-certs.sh``);
- ``credentials/<principal>.properties``: Kafka client properties on SASL_SSL for
  every principal. The services' files (admin, engine, finance) trust the CA at its
  path inside the containers; the operators', who publish from the host through
  ``127.0.0.1:9094``, at its path on the host;
- ``broker.properties``: the broker's own secret settings (the inter-broker login);
- ``scram.args``: the ``kafka-storage.sh format`` arguments that create the users;
- ``acls.args``: one ``kafka-acls.sh --add`` argument list per line, the ACL plan of
  the default topic names.

Every file is mode 0600 in a 0700 directory, except the CA certificate.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from engine.config import ConfigError, load_operators
from engine.devtools import security
from engine.kafka.topics import Topics

MAKE_CERTS = Path(__file__).resolve().parents[2] / "scripts" / "make-certs.sh"
HOST = "kafka"
# where docker-compose.yml mounts the secrets directory in every container
MOUNT = Path("/etc/mynapoint/secrets")
SERVICE_LISTENER, HOST_LISTENER = "internal", "external"


def broker_properties(admin_password: str) -> str:
    """Settings appended to the broker's server.properties that hold a secret."""
    mech = security.MECHANISM.lower()
    return (f"listener.name.{SERVICE_LISTENER}.{mech}.sasl.jaas.config="
            f"{security.jaas(security.ADMIN, admin_password)}\n"
            f"listener.name.{HOST_LISTENER}.{mech}.sasl.jaas.config="
            f"{security.jaas(security.ADMIN, admin_password)}\n")


def write_secrets(out: Path, operator_ids: list[str]) -> None:
    if out.exists():
        raise FileExistsError(f"{out} exists: its passwords belong to a formatted broker; "
                              "remove it (and the broker's volume) to start afresh")
    names = security.principals(operator_ids)
    proc = subprocess.run(["bash", str(MAKE_CERTS), str(out / "tls"), HOST],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise OSError(f"making certificates failed: {proc.stderr.strip()[-300:]}")
    creds = security.Credentials.generate(names)
    services = security.Credentials({n: creds.passwords[n] for n in security.SERVICE_PRINCIPALS})
    operators = security.Credentials({n: creds.passwords[n] for n in operator_ids})
    services.write(out, "SASL_SSL", MOUNT / "tls" / "ca.pem")
    operators.write(out, "SASL_SSL", (out / "tls" / "ca.pem").resolve())
    security.write_private(out / "broker.properties",
                           broker_properties(creds.passwords[security.ADMIN]))
    security.write_private(out / "scram.args", "\n".join(creds.scram_args()) + "\n")
    plan = security.acl_plan(Topics(), operator_ids)
    security.write_private(out / "acls.args",
                           "".join(shlex.join(group) + "\n" for group in plan))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.devtools.deployment",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--operators", default=None, help="operators.toml (default: shipped)")
    args = ap.parse_args(argv)
    try:
        ops = [o.id for o in load_operators(args.operators).operators]
        write_secrets(args.out, ops)
    except (ConfigError, security.SecurityError, OSError) as e:
        print(f"deployment secrets: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: tls/, credentials/ ({len(ops) + 3} principals), broker.properties, "
          "scram.args, acls.args")
    return 0


if __name__ == "__main__":
    sys.exit(main())
