"""Local Apache Kafka brokers (KRaft, loopback only), run by the project itself.

One broker by default; ``start_cluster`` runs N combined broker+controller nodes
(replication factor min(3, N), ``min.insync.replicas`` 2 from three nodes on)
so that tests can SIGKILL one of them (:class:`Cluster`).

The broker jars come from Maven Central (``fetch_jars``) and are cached outside the
repository, in ``$MYNAPOINT_CACHE/kafka-<version>/libs`` (default cache:
``~/.cache/mynapoint``). Each broker lives in its own data directory, by default
``.kafka/broker-<port>`` below the current directory, holding its configuration,
log files, pid file and the topic data itself.

A cluster lives in ``.kafka/cluster-<port>``: ``cluster.json`` (nodes and ports)
and one broker data directory per node, ``node-<id>``. Node ``i`` (1-based) listens
on ``port + i - 1``, its controller on ``port + 1000 + i - 1``.

CLI: ``mynapoint kafka fetch|start|stop|status [--port N] [--brokers N]``. ``stop``
and ``status`` find a cluster started on ``--port`` by its ``cluster.json``.
``status`` exits 0 when the broker (every node) is running and answers, 1 when
not; failures exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.devtools import security
from engine.kafka.topics import Topics, ensure_topics, replication_for
from engine.rules.model import OPERATOR_ID

KAFKA_VERSION = "3.9.1"
SCALA_VERSION = "2.13"
SLF4J_BACKEND = ("org.slf4j", "slf4j-reload4j", "1.7.36")
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

HOST = "127.0.0.1"
PID_FILE = "broker.pid"
SERVER_PROPERTIES = "server.properties"
LOG4J_PROPERTIES = "log4j.properties"
SERVER_LOG = "logs/server.log"
CONSOLE_LOG = "logs/console.log"
STARTED_LINE = "Kafka Server started"

# The garbage collector settings of Kafka's own start scripts (kafka-run-class.sh),
# and like kafka-server-start.sh a heap fixed at its size: one that starts small and
# grows kept G1's concurrent marking at 0.2-0.3 of the 2 cores under a latency run's
# load (DECISIONS 108).
_GC = ["-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
       "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true"]
JVM_OPTS = ["-Xms1g", "-Xmx1g", *_GC]
# Several nodes share 2 cores and the tests' memory: a smaller heap each.
CLUSTER_JVM_OPTS = ["-Xms512m", "-Xmx512m", *_GC]
CLUSTER_FILE = "cluster.json"
ACLS_APPLIED = "acls.applied"
TLS_DIR = "tls"
TLS_CA = "ca.pem"
TLS_KEYSTORE = "broker-keystore.pem"
MAKE_CERTS = Path(__file__).resolve().parents[2] / "scripts" / "make-certs.sh"
MAX_BROKERS = 9

# Jars whose presence marks a complete download; the rename makes partial copies
# invisible already, this guards against a libs dir someone filled by hand.
_REQUIRED_JARS = (
    f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar",
    f"kafka-clients-{KAFKA_VERSION}.jar",
    f"{SLF4J_BACKEND[1]}-{SLF4J_BACKEND[2]}.jar",
)

# Brokers started by this Python process. Keeping the Popen lets us reap them, so a
# killed broker does not linger as a zombie that still looks alive in /proc.
_children: dict[int, subprocess.Popen[bytes]] = {}


class KafkaError(RuntimeError):
    """The local broker could not be fetched, started or stopped."""


@dataclass
class Broker:
    """A running local broker."""

    port: int
    pid: int
    data_dir: Path
    controller_port: int
    startup_seconds: float | None = None  # None when it was already running
    node_id: int = 1
    # where credentials/ lives: the data dir of a single broker, a cluster's root
    secrets_root: Path | None = None
    tls: bool = False  # the client listener is SASL_SSL (else SASL_PLAINTEXT)

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def credentials(self, principal: str = security.ADMIN) -> Path:
        """The client properties file of ``principal`` (``--client-config``)."""
        return security.credentials_file(self.secrets_root or self.data_dir, principal)

    def client(self, principal: str = security.ADMIN) -> dict[str, Any]:
        """aiokafka keyword arguments authenticating as ``principal``."""
        from engine.kafka.client_config import load_client_config

        return load_client_config(self.credentials(principal))

    def stop(self, timeout: float = 30.0) -> bool:
        return stop(self.port, self.data_dir, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the broker (no clean shutdown), to exercise crash recovery.

        A ``start`` after this takes ~15 s instead of ~3 s: the controller refuses the
        new incarnation until the dead one's session (``broker.session.timeout.ms``,
        9 s) expires. Shortening that timeout would risk fencing the only broker
        under load, so it stays at the default.
        """
        if _broker_pid(self.data_dir) != self.pid:
            raise KafkaError(f"pid {self.pid} is not the broker of {self.data_dir}")
        os.kill(self.pid, signal.SIGKILL)
        if not _wait_gone(self.pid, 30.0):
            raise KafkaError(f"broker pid {self.pid} survived SIGKILL")


# --------------------------------------------------------------------------- jars


def cache_root() -> Path:
    env = os.environ.get("MYNAPOINT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mynapoint"


def libs_dir() -> Path:
    return cache_root() / f"kafka-{KAFKA_VERSION}" / "libs"


def jars_present() -> bool:
    libs = libs_dir()
    return all((libs / jar).is_file() for jar in _REQUIRED_JARS)


def _pom() -> str:
    group, artifact, version = SLF4J_BACKEND
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by mynapoint-engine: only used to copy the Kafka broker jars. -->
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0
                             http://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>mynapoint</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{SCALA_VERSION}</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <!-- kafka_2.13 ships no logging backend; without one SLF4J drops every line. -->
    <dependency>
      <groupId>{group}</groupId>
      <artifactId>{artifact}</artifactId>
      <version>{version}</version>
    </dependency>
  </dependencies>
</project>
"""


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _require(tool: str, why: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise KafkaError(f"`{tool}` not found on PATH; {why}")
    return path


def fetch_jars() -> Path:
    """Download the broker jars once; return the libs directory. Safe to call concurrently."""
    libs = libs_dir()
    if jars_present():
        return libs
    home = libs.parent
    with _file_lock(home / "fetch.lock"):
        if jars_present():  # another process finished while we waited for the lock
            return libs
        mvn = _require("mvn", "Maven is needed once to download the Kafka jars")
        _require("java", "Maven and the Kafka broker need a Java 17 runtime")
        pom = home / "pom.xml"
        pom.write_text(_pom())
        tmp = Path(tempfile.mkdtemp(prefix="libs.partial-", dir=home))
        try:
            cmd = [
                mvn, "-B", "-q", "-f", str(pom),
                f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                "-DincludeScope=runtime", f"-DoutputDirectory={tmp}",
            ]
            proc = subprocess.run(cmd, cwd=home, capture_output=True, text=True)
            if proc.returncode != 0:
                raise KafkaError(
                    f"mvn could not download Kafka {KAFKA_VERSION} (exit {proc.returncode}):\n"
                    + _tail(proc.stdout + proc.stderr)
                )
            missing = [jar for jar in _REQUIRED_JARS if not (tmp / jar).is_file()]
            if missing:
                raise KafkaError(f"mvn finished but did not copy {', '.join(missing)}")
            if libs.exists():  # incomplete leftovers from an older layout; never ours
                shutil.rmtree(libs)
            os.rename(tmp, libs)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return libs


# ------------------------------------------------------------------ configuration


def default_data_dir(port: int) -> Path:
    return Path.cwd() / ".kafka" / f"broker-{port}"


# The longest producer.id.expiration.ms takes (an int): see _server_properties.
PRODUCER_ID_EXPIRATION_MS = 2**31 - 1


def _server_properties(data_dir: Path, port: int, controller_port: int, admin_password: str,
                       node_id: int = 1, voters: str | None = None, nodes: int = 1,
                       tls_dir: Path | None = None) -> str:
    protocol = "SASL_SSL" if tls_dir else "SASL_PLAINTEXT"
    # PEM stores (KIP-651): the key must be PKCS#8; no store passwords with PEM
    tls = "" if tls_dir is None else f"""ssl.keystore.type=PEM
ssl.keystore.location={tls_dir / TLS_KEYSTORE}
ssl.truststore.type=PEM
ssl.truststore.location={tls_dir / TLS_CA}
"""
    segment = 128 * 1024 * 1024
    max_message = 10 * 1024 * 1024
    replicas, min_isr = replication_for(nodes)
    return f"""# Written by mynapoint-engine on every start; edits are overwritten.
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={voters or f"{node_id}@{HOST}:{controller_port}"}
listeners=BROKER://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}
advertised.listeners=BROKER://{HOST}:{port}
# Clients (and brokers among themselves) authenticate with SCRAM; the controller
# listener stays PLAINTEXT on loopback, its ANONYMOUS callers being super users
# (engine.devtools.security). No client listener is PLAINTEXT.
listener.security.protocol.map=BROKER:{protocol},CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=BROKER
sasl.enabled.mechanisms={security.MECHANISM}
sasl.mechanism.inter.broker.protocol={security.MECHANISM}
listener.name.broker.{security.MECHANISM.lower()}.sasl.jaas.config=\
  {security.jaas(security.ADMIN, admin_password)}
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users={security.SUPER_USERS}
allow.everyone.if.no.acl.found=false
{tls}log.dirs={data_dir / "data"}

# The worker creates its topics with explicit partition counts.
auto.create.topics.enable=false
num.partitions=8
default.replication.factor={replicas}
min.insync.replicas={min_isr}

# Internal topics get one replica per node (at most three): a single node cannot
# hold the default three, and then a transactional producer would hang at start.
offsets.topic.replication.factor={replicas}
transaction.state.log.replication.factor={replicas}
transaction.state.log.min.isr={min_isr}
# Verification adds a round trip per transactional partition for no gain on one node.
transaction.partition.verification.enable=false

# Tests and the demo start consumers constantly; do not wait for more members.
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000

# Keep the data of a campaign (a year) instead of the default week.
log.retention.hours=8760
# Records carry business time as CreateTime, and a segment rolls once a record is
# log.roll.ms past the segment's first one: a replay of a months-long campaign would
# start a new segment (and producer-state snapshot) on almost every append. Size
# rolls them instead.
log.roll.ms=9223372036854775807
log.segment.bytes={segment}
# An idempotent producer's sequences are forgotten once its newest record is stamped
# this long before the broker's clock (checked when the broker reloads them): a batch
# retried across a restart is then stored twice. Business time makes a backlog's
# records old; keep them the longest the setting allows, 24.8 days (DECISIONS 142).
producer.id.expiration.ms={PRODUCER_ID_EXPIRATION_MS}
message.max.bytes={max_message}
replica.fetch.max.bytes={max_message}
"""


def _log4j_properties(data_dir: Path) -> str:
    return f"""# Written by mynapoint-engine on every start; edits are overwritten.
log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={data_dir / SERVER_LOG}
log4j.appender.file.Append=true
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=3
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n

log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=WARN
# start() waits for this logger's "{STARTED_LINE}" line.
log4j.logger.kafka.server.KafkaRaftServer=INFO
log4j.logger.kafka.server.KafkaServer=INFO
# These log every request / partition state change at INFO.
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.controller=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.kafka.authorizer.logger=WARN
"""


def _read_properties(path: Path) -> dict[str, str]:
    props: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                props[key.strip()] = value.strip()
    return props


def _ports_of(data_dir: Path) -> tuple[int, int] | None:
    """(port, controller port) from a data dir's server.properties."""
    props = _read_properties(data_dir / SERVER_PROPERTIES)
    try:
        port = int(props["advertised.listeners"].rsplit(":", 1)[1])
        node = props.get("node.id", "1")
        # a cluster lists every node's controller: "1@host:p1,2@host:p2,..."
        voters = dict(v.split("@", 1) for v in props["controller.quorum.voters"].split(","))
        cport = int(voters[node].rsplit(":", 1)[1])
    except (KeyError, IndexError, ValueError):
        return None
    return port, cport


# ---------------------------------------------------------------------- processes


def _cmdline(pid: int) -> list[str] | None:
    """argv of a live process, None if it is gone or a zombie."""
    proc = Path("/proc") / str(pid)
    if proc.is_dir():
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            raw = (proc / "cmdline").read_bytes()
        except (OSError, IndexError):
            return None
        if state in ("Z", "X"):
            return None
        return raw.decode(errors="replace").split("\0")[:-1]
    if Path("/proc/self").is_dir():
        return None
    # No procfs (macOS): ps gives the command line as one string, good enough here.
    out = subprocess.run(
        ["ps", "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True
    ).stdout.strip()
    if not out or out.startswith("Z"):
        return None
    return out.split()[1:]


def _is_our_broker(pid: int, data_dir: Path) -> bool:
    argv = _cmdline(pid) or []
    return "kafka.Kafka" in argv and str(data_dir / SERVER_PROPERTIES) in argv


def _broker_pid(data_dir: Path) -> int | None:
    """The pid in the pid file, if that process really is this data dir's broker."""
    try:
        pid = int((data_dir / PID_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _is_our_broker(pid, data_dir) else None


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    return _cmdline(pid) is not None


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    _children.pop(pid, None)
    return True


def _port_free(port: int) -> bool:
    # SO_REUSEADDR so that a port in TIME_WAIT (a broker just stopped) counts as free;
    # a socket that is really listening still makes bind fail.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _check_port_free(port: int) -> None:
    if not _port_free(port):
        raise KafkaError(
            f"port {port} on {HOST} is already in use by another process; "
            f"stop it or choose another port (--port)"
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; IANA's (49152) is higher, so this is safe too


def restartable_port(brokers: int = 1, attempts: int = 200) -> int:
    """A ``port`` for :func:`start` or :func:`start_cluster` whose node ports
    (``port`` .. ``port + brokers - 1``) and controller ports (+1000) are free now
    and lie below the kernel's ephemeral range.

    While a broker is down its clients keep connecting to its port; an outgoing
    connection may be given that very port as its own and connect to itself (TCP
    self-connect), and the broker's restart then finds its port taken. Ports outside
    the ephemeral range are never handed out that way.
    """
    floor = _ephemeral_floor()
    rng = random.Random()
    for _ in range(attempts):
        if floor - 1000 - brokers > 20000:
            port = rng.randrange(20000, floor - 1000 - brokers)
        else:  # a machine with a wide ephemeral range: free now is the best we have
            port = free_port()
        wanted = [*range(port, port + brokers), *range(port + 1000, port + 1000 + brokers)]
        if wanted[-1] <= 65535 and all(_port_free(p) for p in wanted):
            return port
    raise KafkaError(f"found no free run of {brokers} ports on {HOST}")


def _choose_controller_port(port: int, previous: int | None) -> int:
    for candidate in (previous, port + 1000):
        if candidate and candidate != port and candidate < 65536 and _port_free(candidate):
            return candidate
    while True:
        candidate = free_port()
        if candidate != port:
            return candidate


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as fh:
            if fh.seek(0, os.SEEK_END) < offset:  # rolled over since we looked
                offset = 0
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# ---------------------------------------------------------------------- readiness


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return bytes(buf)


def _api_versions(host: str, port: int, timeout: float, tls: bool = False) -> bool:
    """Send one ApiVersions request (v0) and return whether the broker answered it
    without error.

    Hand-rolled so that readiness can be checked from any thread or event loop
    without starting a client; ApiVersions is the one request a SASL listener answers
    before authentication, so no password is needed to probe.
    """
    correlation_id = 0x6D79
    client_id = b"mynapoint-probe"
    request = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    with socket.create_connection((host, port), timeout=timeout) as raw:
        raw.settimeout(timeout)
        sock = raw
        if tls:
            # a liveness probe only: nothing secret is sent, so no verification
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(raw, server_hostname=host)
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        data = _recv_exact(sock, size)
    got, error = struct.unpack_from(">ih", data, 0)
    return bool(got == correlation_id and error == 0)


def _count_brokers(bootstrap: str, client: dict[str, Any], timeout: float) -> int:
    """Brokers the cluster metadata lists, asked with credentials (in a thread of
    its own, so that this works from inside a running event loop too)."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def ask() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=
                                    int(timeout * 1000), **client)
        await admin.start()
        try:
            return len((await admin.describe_cluster())["brokers"])
        finally:
            await admin.close()

    return _run_async(ask())


def _run_async(coro: Any) -> Any:
    """Run a coroutine to its end from synchronous code, also when the caller is itself
    inside an event loop (the demo starts the broker from one): on a thread of its own."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def is_ready(bootstrap: str, timeout: float = 5.0, tls: bool = False) -> bool:
    """True once the broker at ``host:port`` answers an ApiVersions request.

    Retries until ``timeout`` seconds have passed (0 = a single attempt).
    """
    host, _, port_text = bootstrap.rpartition(":")
    port = int(port_text)
    deadline = time.monotonic() + timeout
    while True:
        remaining = max(deadline - time.monotonic(), 0.0)
        try:
            if _api_versions(host or HOST, port, min(max(remaining, 1.0), 5.0), tls):
                return True
        except (OSError, struct.error, UnicodeDecodeError):  # ssl.SSLError is an OSError
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))


# ------------------------------------------------------------------ start / stop


def _java_tool(java: str, libs: Path, log4j: Path, *args: str, hide: tuple[str, ...] = ()
               ) -> str:
    """Run a Kafka tool; its output in an error never shows the strings of ``hide``
    (passwords a tool may echo when it rejects its input)."""
    cmd = [java, "-Xmx256m", f"-Dlog4j.configuration=file:{log4j}",
           "-cp", f"{libs}{os.sep}*", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        message = (f"{args[0]} {args[1]} failed (exit {proc.returncode}):\n"
                   + _tail(proc.stdout + proc.stderr))
        for secret in hide:
            message = message.replace(secret, "******")
        raise KafkaError(message)
    return proc.stdout.strip()


def _wait_ready(broker: Broker, log_offset: int, wait: float) -> None:
    data_dir = broker.data_dir
    log = data_dir / SERVER_LOG
    deadline = time.monotonic() + wait
    while True:
        if not _alive(broker.pid):
            _children.pop(broker.pid, None)
            raise KafkaError(
                f"Kafka broker exited during start-up; last log lines "
                f"({log}, {data_dir / CONSOLE_LOG}):\n"
                + _tail(_read_from(log, log_offset) + _read_from(data_dir / CONSOLE_LOG, 0))
            )
        if STARTED_LINE in _read_from(log, log_offset) and is_ready(broker.bootstrap, 0,
                                                                     broker.tls):
            return
        if time.monotonic() > deadline:
            _terminate(broker.pid, 10.0)
            raise KafkaError(
                f"Kafka broker on {broker.bootstrap} was not ready after {wait:.0f} s "
                f"and was stopped; see {log}:\n" + _tail(_read_from(log, log_offset))
            )
        time.sleep(0.2)


def start(port: int = 9092, data_dir: str | Path | None = None, wait: float = 60.0,
          operators: str | Path | None = None, tls: bool = False,
          extra_properties: dict[str, str] | None = None) -> Broker:
    """Start (or find already running) the broker of ``data_dir`` on ``127.0.0.1:port``;
    ``extra_properties`` are appended to its server.properties (tests: retention)."""
    data = Path(data_dir).resolve() if data_dir is not None else default_data_dir(port)
    java = _require("java", "install a Java 17 runtime to run the Kafka broker")
    if _broker_pid(data) is None:
        _check_port_free(port)  # before creating anything for a start that cannot work
    data.mkdir(parents=True, exist_ok=True)
    with _file_lock(data / ".lock"):
        pid = _broker_pid(data)
        if pid is not None:
            ports = _ports_of(data)
            if ports is None or ports[0] != port:
                running_on = ports[0] if ports else "an unknown port"
                raise KafkaError(
                    f"the broker of {data} is already running (pid {pid}) on {running_on}, "
                    f"not on {port}; stop it first"
                )
            broker = Broker(port, pid, data, ports[1], secrets_root=data,
                            tls=_uses_tls(data))
            if not is_ready(broker.bootstrap, wait, broker.tls):
                raise KafkaError(f"broker pid {pid} on {broker.bootstrap} does not answer")
            return broker

        _check_port_free(port)
        libs = fetch_jars()
        previous = _ports_of(data)
        controller_port = _choose_controller_port(port, previous[1] if previous else None)
        tls_dir = _tls_dir(data, tls)
        creds = _new_credentials(data, data, operators, tls_dir)
        props, log4j = _write_config(data, _server_properties(
            data, port, controller_port, security.read_password(data, security.ADMIN),
            tls_dir=tls_dir) + "".join(f"{k}={v}\n"
                                       for k, v in (extra_properties or {}).items()))
        _format(java, libs, props, log4j, None, creds)
        broker, log_offset, t0 = _launch(java, libs, data, props, log4j, JVM_OPTS,
                                         port, controller_port, 1, data)
        broker.tls = tls_dir is not None
        _wait_ready(broker, log_offset, wait)
        _ensure_acls(java, libs, log4j, broker.bootstrap, data, operators)
        broker.startup_seconds = time.monotonic() - t0
        return broker


def _operator_ids(operators: str | Path | None) -> tuple[str, ...]:
    from engine.config import ConfigError, load_operators

    try:
        return tuple(o.id for o in load_operators(operators).operators)
    except (ConfigError, OSError) as e:
        raise KafkaError(f"operators: {e}") from None


def _uses_tls(data: Path) -> bool:
    return (data / TLS_DIR / TLS_CA).is_file()


def _tls_dir(data: Path, tls: bool) -> Path | None:
    """The certificates of a TLS broker: made once (scripts/make-certs.sh) when a new
    data dir is started with ``tls``; an existing data dir keeps what it was made with."""
    formatted = (data / "data" / "meta.properties").is_file()
    if formatted:
        if tls and not _uses_tls(data):
            raise KafkaError(f"{data} was made without TLS; stop it and remove {data} to "
                             "start afresh with --tls")
        return data / TLS_DIR if _uses_tls(data) else None
    shutil.rmtree(data / TLS_DIR, ignore_errors=True)
    if not tls:
        return None
    if not MAKE_CERTS.is_file():
        raise KafkaError(f"{MAKE_CERTS} is missing (it comes with the source tree)")
    proc = subprocess.run(["bash", str(MAKE_CERTS), str(data / TLS_DIR)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise KafkaError("making certificates failed:\n" + _tail(proc.stderr, 8))
    return data / TLS_DIR


def _new_credentials(data: Path, secrets_root: Path, operators: str | Path | None,
                     tls_dir: Path | None = None) -> security.Credentials | None:
    """Fresh passwords for every principal when ``data`` is not formatted yet (SCRAM
    users can only be added by ``format``); None when it is."""
    if (data / "data" / "meta.properties").is_file():
        if not security.credentials_file(secrets_root, security.ADMIN).is_file():
            raise KafkaError(f"{data} is formatted but its credentials "
                             f"({security.credentials_dir(secrets_root)}) are gone; "
                             f"stop it and remove {data} to start afresh")
        return None
    try:
        creds = security.Credentials.generate(
            security.principals(_operator_ids(operators)))
    except security.SecurityError as e:
        raise KafkaError(str(e)) from None
    shutil.rmtree(security.credentials_dir(secrets_root), ignore_errors=True)
    (secrets_root / ACLS_APPLIED).unlink(missing_ok=True)
    if tls_dir is None:
        creds.write(secrets_root)
    else:
        creds.write(secrets_root, "SASL_SSL", tls_dir / TLS_CA)
    return creds


def _ensure_acls(java: str, libs: Path, log4j: Path, bootstrap: str, secrets_root: Path,
                 operators: str | Path | None) -> None:
    """Create the ACLs of the default topic names once per formatted deployment."""
    from engine.kafka.topics import Topics

    marker = secrets_root / ACLS_APPLIED
    if marker.is_file():
        return
    add_acls(bootstrap, secrets_root, security.acl_plan(Topics(), _operator_ids(operators)))
    marker.write_text("ACLs of the default topics were created\n")


def add_acls(bootstrap: str, secrets_root: Path, plan: list[list[str]]) -> None:
    """Create the ACLs of ``plan`` (``kafka.admin.AclCommand --add`` argument groups,
    the form the compose file's one-shot service runs) as admin, in one CreateAcls
    request: a JVM per group cost about a second each, and a registry of eleven
    operators needs three dozen groups."""
    admin = load_client_config_file(security.credentials_file(secrets_root, security.ADMIN))
    try:
        _run_async(security.create_acls(bootstrap, admin, plan))
    except security.SecurityError as e:
        raise KafkaError(f"creating ACLs failed: {e}") from None


def _write_config(data: Path, server_properties: str) -> tuple[Path, Path]:
    props = data / SERVER_PROPERTIES
    log4j = data / LOG4J_PROPERTIES
    (data / "logs").mkdir(parents=True, exist_ok=True)
    # holds the inter-broker password
    security.write_private(props, server_properties)
    log4j.write_text(_log4j_properties(data))
    (data / PID_FILE).unlink(missing_ok=True)
    return props, log4j


def _format(java: str, libs: Path, props: Path, log4j: Path, cluster_id: str | None,
            creds: security.Credentials | None) -> None:
    """Format the data dir once with every SCRAM user; the nodes of a cluster must
    share ``cluster_id``. The passwords go through a 0600 argument file (``java
    @file``), never the command line."""
    if (props.parent / "data" / "meta.properties").is_file():
        return
    if creds is None:
        raise KafkaError(f"{props.parent} is not formatted and has no new credentials")
    if cluster_id is None:
        cluster_id = _java_tool(java, libs, log4j, "kafka.tools.StorageTool", "random-uuid")
    argfile = props.parent / "format.args"
    args = ["format", "-t", cluster_id, "-c", str(props), *creds.scram_args()]
    # read by argparse4j (fromfile prefix @): one argument per line, verbatim
    security.write_private(argfile, "\n".join(args) + "\n")
    try:
        _java_tool(java, libs, log4j, "kafka.tools.StorageTool", f"@{argfile}",
                   hide=tuple(creds.passwords.values()))
    finally:
        argfile.unlink(missing_ok=True)


def _launch(java: str, libs: Path, data: Path, props: Path, log4j: Path, jvm_opts: list[str],
            port: int, controller_port: int, node_id: int, secrets_root: Path
            ) -> tuple[Broker, int, float]:
    """Start the JVM without waiting; returns the broker, its log offset and start time."""
    t0 = time.monotonic()
    log_offset = _file_size(data / SERVER_LOG)
    cmd = [java, *jvm_opts, f"-Dlog4j.configuration=file:{log4j}",
           "-cp", f"{libs}{os.sep}*", "kafka.Kafka", str(props)]
    with open(data / CONSOLE_LOG, "wb") as console:
        # A session of its own: Ctrl-C in the shell that ran `mynapoint kafka start`
        # (or a test run) must not take the broker down with it.
        proc = subprocess.Popen(cmd, cwd=data, stdin=subprocess.DEVNULL, stdout=console,
                                stderr=subprocess.STDOUT, start_new_session=True)
    _children[proc.pid] = proc
    (data / PID_FILE).write_text(f"{proc.pid}\n")
    return (Broker(port, proc.pid, data, controller_port, node_id=node_id,
                   secrets_root=secrets_root), log_offset, t0)


def _terminate(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 10.0)


def stop(port: int = 9092, data_dir: str | Path | None = None, timeout: float = 30.0) -> bool:
    """Stop the broker recorded in the data dir's pid file; False if none was running.

    Only a process whose command line is this data dir's ``kafka.Kafka`` is signalled,
    so a stale pid file (pid reused by something else) never kills an unrelated process.
    """
    data = Path(data_dir).resolve() if data_dir is not None else default_data_dir(port)
    if not data.is_dir():
        return False
    with _file_lock(data / ".lock"):
        pid = _broker_pid(data)
        if pid is None:
            (data / PID_FILE).unlink(missing_ok=True)
            return False
        _terminate(pid, timeout)
        (data / PID_FILE).unlink(missing_ok=True)
        return True


def status(port: int = 9092, data_dir: str | Path | None = None) -> Broker | None:
    """The running broker of ``data_dir``, or None."""
    data = Path(data_dir).resolve() if data_dir is not None else default_data_dir(port)
    pid = _broker_pid(data)
    ports = _ports_of(data)
    if pid is None or ports is None:
        return None
    return Broker(ports[0], pid, data, ports[1], secrets_root=data, tls=_uses_tls(data))


# ------------------------------------------------------------------------ cluster


def default_cluster_dir(port: int) -> Path:
    return Path.cwd() / ".kafka" / f"cluster-{port}"


@dataclass(frozen=True)
class _Node:
    node_id: int
    port: int
    controller_port: int


@dataclass(frozen=True)
class _Layout:
    cluster_id: str
    nodes: tuple[_Node, ...]

    @property
    def voters(self) -> str:
        return ",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in self.nodes)

    def node(self, node_id: int) -> _Node:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KafkaError(f"the cluster has no node {node_id} (nodes: "
                         f"{', '.join(str(n.node_id) for n in self.nodes)})")


def _read_layout(root: Path) -> _Layout | None:
    try:
        raw = json.loads((root / CLUSTER_FILE).read_text())
        return _Layout(str(raw["cluster_id"]),
                       tuple(_Node(int(n["node_id"]), int(n["port"]), int(n["controller_port"]))
                             for n in raw["nodes"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        raise KafkaError(f"{root / CLUSTER_FILE} is damaged ({e}); stop the nodes and "
                         f"remove {root}") from None


def _node_dir(root: Path, node_id: int) -> Path:
    return root / f"node-{node_id}"


def _node_broker(root: Path, node: _Node) -> Broker | None:
    data = _node_dir(root, node.node_id)
    pid = _broker_pid(data)
    if pid is None:
        return None
    return Broker(node.port, pid, data, node.controller_port, node_id=node.node_id,
                  secrets_root=root)


@dataclass
class Cluster:
    """Local brokers forming one KRaft cluster; every node is also a controller.

    ``kill`` and ``restart`` let tests take one node down hard and bring it back
    on the same data directory, as after a machine crash.
    """

    root: Path
    layout: _Layout
    nodes: dict[int, Broker]  # the running nodes, by node id
    startup_seconds: float | None = None  # None when every node was already running

    @property
    def size(self) -> int:
        return len(self.layout.nodes)

    @property
    def bootstrap(self) -> str:
        """Every node, running or not: clients try the next one when one is down."""
        return ",".join(f"{HOST}:{n.port}" for n in self.layout.nodes)

    def kill(self, node_id: int) -> None:
        """SIGKILL one node; its data directory stays for :meth:`restart`."""
        broker = self.nodes.get(node_id)
        if broker is None:
            raise KafkaError(f"node {node_id} of {self.root} is not running")
        broker.kill()
        del self.nodes[node_id]

    def restart(self, node_id: int, wait: float = 120.0) -> Broker:
        """Start a stopped or killed node again on its own data directory."""
        with _file_lock(self.root / ".lock"):
            (broker, log_offset, t0), = _launch_nodes(self.root, self.layout, [node_id])
            _wait_ready(broker, log_offset, wait)
            self.nodes[node_id] = broker
            _wait_complete(list(self.nodes.values()), len(self.nodes), wait)
        broker.startup_seconds = time.monotonic() - t0
        return broker

    def credentials(self, principal: str = security.ADMIN) -> Path:
        return security.credentials_file(self.root, principal)

    def client(self, principal: str = security.ADMIN) -> dict[str, Any]:
        from engine.kafka.client_config import load_client_config

        return load_client_config(self.credentials(principal))

    def stop(self, timeout: float = 30.0) -> int:
        self.nodes.clear()
        return stop_cluster(root=self.root, timeout=timeout)


def _wait_complete(nodes: list[Broker], expected: int, wait: float) -> None:
    """Wait until every node lists ``expected`` brokers: a node that has started may
    not yet know the others, and a client asking it would, say, create topics with
    fewer replicas than the cluster has."""
    deadline = time.monotonic() + wait
    for b in nodes:
        while True:
            try:
                if _count_brokers(b.bootstrap, b.client(), 5.0) >= expected:
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise KafkaError(f"node {b.node_id} on {b.bootstrap} does not list all "
                                 f"{expected} brokers after {wait:.0f} s")
            time.sleep(0.2)


def _launch_nodes(root: Path, layout: _Layout, node_ids: list[int],
                  creds: security.Credentials | None = None
                  ) -> list[tuple[Broker, int, float]]:
    java = _require("java", "install a Java 17 runtime to run the Kafka broker")
    libs = fetch_jars()
    launched = []
    for node_id in node_ids:
        node = layout.node(node_id)
        data = _node_dir(root, node_id)
        if _broker_pid(data) is not None:
            raise KafkaError(f"node {node_id} of {root} is already running")
        _check_port_free(node.port)
        _check_port_free(node.controller_port)
        props, log4j = _write_config(data, _server_properties(
            data, node.port, node.controller_port,
            security.read_password(root, security.ADMIN), node_id, layout.voters,
            len(layout.nodes)))
        _format(java, libs, props, log4j, layout.cluster_id, creds)
        launched.append(_launch(java, libs, data, props, log4j, CLUSTER_JVM_OPTS,
                                node.port, node.controller_port, node_id, root))
    return launched


def start_cluster(brokers: int = 3, port: int = 9092, root: str | Path | None = None,
                  wait: float = 120.0, operators: str | Path | None = None) -> Cluster:
    """Start (or find running) a cluster of ``brokers`` nodes; node ``i`` listens on
    ``port + i - 1``. Nodes that are down are started; all must answer in ``wait`` s."""
    if not 1 <= brokers <= MAX_BROKERS:
        raise KafkaError(f"--brokers must be 1 to {MAX_BROKERS}, got {brokers}")
    top = port + 1000 + brokers - 1
    if port < 1 or top > 65535:
        raise KafkaError(f"ports {port}..{port + brokers - 1} and controller ports "
                         f"{port + 1000}..{top} must lie in 1..65535")
    base = Path(root).resolve() if root is not None else default_cluster_dir(port)
    base.mkdir(parents=True, exist_ok=True)
    with _file_lock(base / ".lock"):
        layout = _read_layout(base)
        creds = None
        if layout is None:
            # every node formats with the same users: one deployment, one password each
            creds = _new_credentials(base / "unformatted", base, operators)
            nodes = tuple(_Node(i + 1, port + i, port + 1000 + i) for i in range(brokers))
            for n in nodes:
                _check_port_free(n.port)
                _check_port_free(n.controller_port)
            java = _require("java", "install a Java 17 runtime to run the Kafka broker")
            libs = fetch_jars()
            log4j = base / LOG4J_PROPERTIES
            log4j.write_text(_log4j_properties(base))
            cluster_id = _java_tool(java, libs, log4j, "kafka.tools.StorageTool", "random-uuid")
            layout = _Layout(cluster_id, nodes)
            (base / CLUSTER_FILE).write_text(json.dumps({
                "cluster_id": cluster_id,
                "nodes": [{"node_id": n.node_id, "port": n.port,
                           "controller_port": n.controller_port} for n in nodes]}, indent=2))
        elif len(layout.nodes) != brokers or layout.nodes[0].port != port:
            raise KafkaError(f"{base} holds a cluster of {len(layout.nodes)} nodes from port "
                             f"{layout.nodes[0].port}; stop it and remove {base} first")
        running = {n.node_id: b for n in layout.nodes
                   if (b := _node_broker(base, n)) is not None}
        down = [n.node_id for n in layout.nodes if n.node_id not in running]
        # All missing nodes start before any is awaited: none is ready without a quorum.
        launched = _launch_nodes(base, layout, down, creds)
        t0 = min((t for _, _, t in launched), default=None)
        try:
            for broker, log_offset, _ in launched:
                _wait_ready(broker, log_offset, wait)
                running[broker.node_id] = broker
        except KafkaError:
            for broker, _, _ in launched:  # half a cluster would only confuse a retry
                _terminate(broker.pid, 10.0)
            raise
        _wait_complete(list(running.values()), len(layout.nodes), wait)
        first = next(iter(running.values()))
        _ensure_acls(_require("java", "install a Java 17 runtime"), fetch_jars(),
                     base / LOG4J_PROPERTIES, first.bootstrap, base, operators)
    return Cluster(base, layout, running,
                   None if t0 is None else time.monotonic() - t0)


def cluster_status(port: int = 9092, root: str | Path | None = None) -> Cluster | None:
    """The cluster started from ``root`` (running nodes only), or None if there is none."""
    base = Path(root).resolve() if root is not None else default_cluster_dir(port)
    layout = _read_layout(base)
    if layout is None:
        return None
    running = {n.node_id: b for n in layout.nodes if (b := _node_broker(base, n)) is not None}
    return Cluster(base, layout, running)


def stop_cluster(port: int = 9092, root: str | Path | None = None,
                 timeout: float = 30.0) -> int:
    """Stop every node of a cluster; returns how many were running.

    All nodes get SIGTERM at once: stopped one by one, the last ones would wait for a
    controller quorum that no longer exists before giving up.
    """
    found = cluster_status(port, root)
    if found is None:
        return 0
    pids = [b.pid for b in found.nodes.values()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pid in pids:
        if not _wait_gone(pid, max(deadline - time.monotonic(), 0.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10.0)
    for n in found.layout.nodes:
        (_node_dir(found.root, n.node_id) / PID_FILE).unlink(missing_ok=True)
    return len(pids)


# ---------------------------------------------------------------------------- CLI


def _print_cluster(c: Cluster) -> bool:
    """One line per node; True when every node runs and answers."""
    ok = True
    for n in c.layout.nodes:
        b = c.nodes.get(n.node_id)
        if b is None:
            print(f"node {n.node_id}: not running ({HOST}:{n.port})")
            ok = False
        elif is_ready(b.bootstrap, 2.0):
            print(f"node {n.node_id}: running on {b.bootstrap} (pid {b.pid})")
        else:
            print(f"node {n.node_id}: process {b.pid} runs but {b.bootstrap} does not answer")
            ok = False
    return ok


def add_operator(bootstrap: str, secrets_root: Path, operator_id: str,
                 topics: Topics | None = None) -> Path:
    """A new operator on a running deployment, without a restart: its SCRAM user
    (ConfigCommand, the password through ``--add-config-file``), its ACLs, its client
    properties file (returned)."""
    if not OPERATOR_ID.fullmatch(operator_id):
        raise KafkaError(f"operator id must match {OPERATOR_ID.pattern}: {operator_id!r}")
    try:
        security.principals([operator_id])
    except security.SecurityError as e:
        raise KafkaError(str(e)) from None
    target = security.credentials_file(secrets_root, operator_id)
    if target.is_file():
        raise KafkaError(f"operator {operator_id!r} already has credentials: {target}")
    admin_file = security.credentials_file(secrets_root, security.ADMIN)
    admin = load_client_config_file(admin_file)
    password = security.new_password()
    java = _require("java", "install a Java 17 runtime to run the Kafka tools")
    libs = fetch_jars()
    config = secrets_root / f"add-{operator_id}.properties"
    # a properties file: the value without the brackets of the --add-config syntax
    security.write_private(config, f"{security.MECHANISM}=iterations=8192,password={password}\n")
    log4j = secrets_root / LOG4J_PROPERTIES
    if not log4j.is_file():
        log4j.write_text(_log4j_properties(secrets_root))
    try:
        _java_tool(java, libs, log4j, "kafka.admin.ConfigCommand", "--bootstrap-server",
                   bootstrap, "--command-config", str(admin_file), "--alter",
                   "--add-config-file", str(config), "--entity-type", "users",
                   "--entity-name", operator_id, hide=(password,))
    finally:
        config.unlink(missing_ok=True)
    add_acls(bootstrap, secrets_root, security.operator_acls(topics or Topics(), [operator_id]))
    names = topics or Topics()
    # the unattributed input first: an existing topic sets the partition count
    wanted = [names.input_of(None, "transaction"), *names.operator_topics(operator_id)]
    try:
        _run_async(ensure_topics(bootstrap, names, 8, changelog=False, only=wanted,
                                 client=admin))
    except Exception as e:
        raise KafkaError(f"creating the topics of {operator_id} failed: {e}") from None
    protocol = admin.get("security_protocol", "SASL_PLAINTEXT")
    ca = secrets_root / TLS_DIR / TLS_CA
    security.write_private(target, security.client_properties(
        operator_id, password, protocol, ca if protocol == "SASL_SSL" else None))
    return target


def load_client_config_file(path: Path) -> dict[str, Any]:
    from engine.kafka.client_config import ClientConfigError, load_client_config

    try:
        return load_client_config(path)
    except ClientConfigError as e:
        raise KafkaError(str(e)) from None


def _secrets_root(port: int) -> Path:
    cluster = default_cluster_dir(port)
    return cluster if (cluster / CLUSTER_FILE).is_file() else default_data_dir(port)


def credentials_path(port: int, principal: str | None) -> Path:
    """The client properties file of ``principal`` for the broker (or cluster) of
    ``port``; the path only, never the password."""
    if not principal:
        raise KafkaError("credentials needs a PRINCIPAL (admin, engine, finance or an "
                         "operator id)")
    root = _secrets_root(port)
    path = security.credentials_file(root, principal)
    if not path.is_file():
        known = sorted(p.stem for p in security.credentials_dir(root).glob("*.properties"))
        raise KafkaError(f"no credentials for {principal!r} in {security.credentials_dir(root)}"
                         + (f" (principals: {', '.join(known)})" if known else
                            "; start the broker first"))
    return path


def main(args: argparse.Namespace) -> int:
    port: int = args.port
    brokers: int = getattr(args, "brokers", 1)
    try:
        if args.action in ("fetch", "start") and not jars_present():
            print(f"Downloading Kafka {KAFKA_VERSION} jars with Maven (once, ~30 s) ...")
        cluster = cluster_status(port) if args.action in ("stop", "status") else None
        if args.action == "fetch":
            print(f"Kafka {KAFKA_VERSION} jars: {fetch_jars()}")
        elif args.action == "add-operator":
            if not getattr(args, "principal", None):
                raise KafkaError("add-operator needs an operator ID")
            root = _secrets_root(port)
            if not security.credentials_file(root, security.ADMIN).is_file():
                raise KafkaError(f"no local broker with credentials for port {port}")
            cluster_now = cluster_status(port)
            bootstrap = cluster_now.bootstrap if cluster_now else f"{HOST}:{port}"
            print(add_operator(bootstrap, root, args.principal))
        elif args.action == "credentials":
            print(credentials_path(port, getattr(args, "principal", None)))
        elif args.action == "start" and brokers != 1 and getattr(args, "tls", False):
            raise KafkaError("--tls is for the single local broker; a cluster runs "
                             "SASL_PLAINTEXT on loopback")
        elif args.action == "start" and brokers != 1:
            c = start_cluster(brokers, port, operators=getattr(args, "operators", None))
            rf, isr = replication_for(c.size)
            state = ("already running" if c.startup_seconds is None
                     else f"ready in {c.startup_seconds:.1f} s")
            print(f"Kafka {KAFKA_VERSION} cluster of {c.size} brokers {state}: "
                  f"--broker {c.bootstrap} (replication factor {rf}, "
                  f"min.insync.replicas {isr}); data in {c.root}")
        elif args.action == "start":
            broker = start(port, operators=getattr(args, "operators", None),
                           tls=getattr(args, "tls", False))
            if broker.startup_seconds is None:
                print(f"Kafka already running on {broker.bootstrap} (pid {broker.pid})")
            else:
                print(f"Kafka {KAFKA_VERSION} ready on {broker.bootstrap} (pid {broker.pid}, "
                      f"{broker.startup_seconds:.1f} s); data in {broker.data_dir}")
        elif args.action == "stop" and cluster is not None:
            n = stop_cluster(port)
            print(f"Kafka cluster of {port} stopped ({n} of {cluster.size} nodes were running)")
        elif args.action == "stop":
            if stop(port):
                print(f"Kafka on {HOST}:{port} stopped")
            else:
                print(f"no Kafka broker of ours running for port {port}")
        elif cluster is not None:
            print(f"Kafka cluster in {cluster.root} (--broker {cluster.bootstrap}):")
            return 0 if _print_cluster(cluster) else 1
        else:
            found = status(port)
            bootstrap = f"{HOST}:{port}"
            if found is not None and is_ready(found.bootstrap, 2.0, found.tls):
                print(f"Kafka running on {found.bootstrap} (pid {found.pid}); "
                      f"data in {found.data_dir}")
                return 0
            if found is not None:
                print(f"Kafka process {found.pid} is running but {found.bootstrap} "
                      f"does not answer yet")
            elif is_ready(bootstrap, 0):
                print(f"a Kafka broker answers on {bootstrap}, but it was not started "
                      f"from {default_data_dir(port)}")
            else:
                print(f"Kafka is not running on {bootstrap}")
            return 1
    except KafkaError as exc:
        print(f"mynapoint kafka {args.action}: {exc}", file=sys.stderr)
        return 2
    return 0
