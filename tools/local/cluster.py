"""A local KRaft cluster of N nodes, each both broker and controller, secured as in
production, run from the same Maven jars as tools/local/kafka.py.

    python -m tools.local.cluster {start,stop,status} [--nodes N]
    python -m tools.local.cluster {start,stop,kill} --node ID
    python -m tools.local.cluster env PRINCIPAL     shell variables to sign in as PRINCIPAL

Listeners per node: CLIENT (SASL_SSL, SCRAM-SHA-512) for clients, INTERNAL (SSL, mutual
TLS) between brokers and CONTROLLER (SSL, mutual TLS) for the quorum. The brokers
authenticate each other by their certificate (`User:kafka-broker`, a super user with
`User:admin`); StandardAuthorizer denies whatever no ACL allows. Replication follows
the size: three copies and two in sync for a write from three nodes on, else one.

Each node has its home under .run/kafka/node-<id> (config, data, log, pid) and can be
stopped, killed (SIGKILL) and started on its own; the certificates live in
.run/kafka-tls and the SCRAM passwords in .run/kafka-credentials (tools/local/certs.py)."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from shared.messaging.connection import KafkaConnection
from shared.messaging.topics import TOPICS, TopicPolicy, replication_for
from tools.local.certs import (
    ADMIN,
    BROKER_PRINCIPAL,
    OBSERVER,
    TlsFiles,
    ensure_password,
    ensure_tls,
)
from tools.local.kafka import (
    RUN_DIR,
    SMALL_MACHINE,
    LocalBroker,
    new_cluster_id,
    wait_for_broker,
)
from tools.local.kafka_security import upsert_credentials
from tools.local.process import SERVER_COMMANDS, server_command

HEAP_MB = 384
CLIENT_PORT = 19091
"""Node i serves clients on CLIENT_PORT + i (19092, 19093, 19094), the brokers on
INTERNAL_PORT + i and the quorum on CONTROLLER_PORT + i."""
INTERNAL_PORT = 19191
CONTROLLER_PORT = 19291
CLUSTER_ID = "nodes-cluster-id"
"""In the cluster's home: its id (not the single broker's `cluster-id`, tools/local/kafka.py)."""

NODE_PROPERTIES = (
    """\
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={voters}
listeners=CLIENT://127.0.0.1:{client},INTERNAL://127.0.0.1:{internal},\
CONTROLLER://127.0.0.1:{controller}
advertised.listeners=CLIENT://127.0.0.1:{client},INTERNAL://127.0.0.1:{internal}
controller.listener.names=CONTROLLER
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=CLIENT:SASL_SSL,INTERNAL:SSL,CONTROLLER:SSL
log.dirs={data_dir}
# Clients: SCRAM over TLS. Brokers and controllers: mutual TLS, named by certificate
# (its CN; `CN.` rather than `CN=`: the apache/kafka image drops values holding '=').
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.client.scram-sha-512.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.internal.ssl.client.auth=required
listener.name.controller.ssl.client.auth=required
ssl.keystore.type=PEM
ssl.keystore.location={keystore}
ssl.truststore.type=PEM
ssl.truststore.location={truststore}
ssl.principal.mapping.rules=RULE:^CN.([^,]+),.*$/$1/,DEFAULT
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:{broker_principal};User:{admin}
# Durability from the cluster's size: with three nodes an acknowledged write (acks=all)
# is on two at least, and a replica that missed writes never becomes leader.
num.partitions=3
default.replication.factor={replication}
min.insync.replicas={min_isr}
unclean.leader.election.enable=false
auto.create.topics.enable=false
offsets.topic.num.partitions=3
offsets.topic.replication.factor={replication}
transaction.state.log.num.partitions=3
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_isr}
share.coordinator.state.topic.num.partitions=1
share.coordinator.state.topic.replication.factor={replication}
share.coordinator.state.topic.min.isr={min_isr}
"""
    + SMALL_MACHINE
)


@dataclass(frozen=True)
class NodePorts:
    client: int
    internal: int
    controller: int


def default_ports(nodes: int) -> list[NodePorts]:
    return [
        NodePorts(CLIENT_PORT + i, INTERNAL_PORT + i, CONTROLLER_PORT + i)
        for i in range(1, nodes + 1)
    ]


def configured_ports(config: Path) -> NodePorts | None:
    """The ports of a node's `listeners` in its server.properties, or None without them."""
    try:
        lines = config.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("listeners="):
            found = dict(re.findall(r"(\w+)://[^,]*:(\d+)", line))
            with contextlib.suppress(KeyError):
                return NodePorts(
                    int(found["CLIENT"]), int(found["INTERNAL"]), int(found["CONTROLLER"])
                )
    return None


def min_insync_for(nodes: int) -> int:
    return 2 if nodes >= 3 else 1


class ClusterNode(LocalBroker):
    """One node of a LocalCluster: its own home, ports and process."""

    def __init__(self, cluster: LocalCluster, node_id: int, ports: NodePorts) -> None:
        super().__init__(
            cluster.home / f"node-{node_id}",
            port=ports.client,
            controller_port=ports.controller,
            heap_mb=cluster.heap_mb,
        )
        self.cluster = cluster
        self.node_id = node_id
        self.internal_port = ports.internal

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port, self.internal_port, self.controller_port)

    @property
    def probe(self) -> KafkaConnection:
        """The brokers' own identity on INTERNAL: it needs no credential in the metadata."""
        return self.cluster.broker_connection(f"127.0.0.1:{self.internal_port}")

    def _properties(self) -> str:
        cluster, tls = self.cluster, self.cluster.tls
        return NODE_PROPERTIES.format(
            node_id=self.node_id,
            voters=cluster.voters,
            client=self.port,
            internal=self.internal_port,
            controller=self.controller_port,
            data_dir=self.data_dir,
            keystore=tls.broker,
            truststore=tls.ca,
            broker_principal=BROKER_PRINCIPAL,
            admin=ADMIN,
            replication=replication_for(len(cluster.nodes)),
            min_isr=min_insync_for(len(cluster.nodes)),
        )

    def _cluster_id(self) -> str:
        return self.cluster.cluster_id()

    def _format_args(self, config: Path) -> list[str]:
        """Static voters: no --standalone. No --add-scram either (it would put the admin's
        password on a command line): LocalCluster.start() adds it over mutual TLS."""
        return ["format", "-t", self._cluster_id(), "-c", str(config)]


class LocalCluster:
    """`nodes` KRaft nodes on 127.0.0.1, secured (see the module's docstring)."""

    def __init__(
        self,
        home: Path = RUN_DIR / "kafka",
        nodes: int = 3,
        ports: Sequence[NodePorts] | None = None,
        run_dir: Path = RUN_DIR,
        heap_mb: int = HEAP_MB,
    ) -> None:
        ports = list(ports) if ports is not None else default_ports(nodes)
        if len(ports) != nodes or nodes < 1:
            raise ValueError(f"{nodes} node(s) need as many port sets, got {len(ports)}")
        self.home = Path(home).resolve()
        self.heap_mb = heap_mb
        self.tls_dir = run_dir / "kafka-tls"
        self.credentials_dir = run_dir / "kafka-credentials"
        self.nodes = {i: ClusterNode(self, i, p) for i, p in enumerate(ports, start=1)}

    @property
    def tls(self) -> TlsFiles:
        return ensure_tls(self.tls_dir)

    @property
    def voters(self) -> str:
        return ",".join(f"{i}@127.0.0.1:{n.controller_port}" for i, n in self.nodes.items())

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes.values())

    def cluster_id(self) -> str:
        """One id for every node, kept in the cluster's home."""
        path = self.home / CLUSTER_ID
        if not path.is_file():
            self.home.mkdir(parents=True, exist_ok=True)
            path.write_text(new_cluster_id() + "\n")
        return path.read_text().strip()

    def password(self, principal: str) -> str:
        return ensure_password(self.credentials_dir, principal)

    def password_file(self, principal: str) -> Path:
        self.password(principal)
        return self.credentials_dir / principal

    def connection(self, principal: str, bootstrap: str | None = None) -> KafkaConnection:
        """How `principal` reaches this cluster (SASL_SSL, SCRAM-SHA-512)."""
        return KafkaConnection(
            bootstrap or self.bootstrap,
            "SASL_SSL",
            username=principal,
            password=self.password(principal),
            ca_location=str(self.tls.ca),
        )

    def broker_connection(self, bootstrap: str | None = None) -> KafkaConnection:
        """The brokers' identity (a super user) on their INTERNAL listeners, mutual TLS."""
        internal = ",".join(f"127.0.0.1:{n.internal_port}" for n in self.nodes.values())
        tls = self.tls
        return KafkaConnection(
            bootstrap or internal, "SSL", ca_location=str(tls.ca), client_pem=str(tls.broker)
        )

    def client_env(self, principal: str) -> dict[str, str]:
        """The environment a service's settings read to sign in as `principal`: a path to
        the password, never the password."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": principal,
            "KAFKA_SASL_PASSWORD_FILE": str(self.password_file(principal)),
            "KAFKA_SSL_CA_LOCATION": str(self.tls.ca),
        }

    def start(self, timeout: float = 120) -> None:
        """Launch every node that is down, then wait until each serves."""
        self.tls  # noqa: B018 - made before any node reads it
        self.check_size()
        launched = [node for node in self.nodes.values() if node.launch()]
        for node in self.nodes.values():
            if node in launched:
                node.wait_started(timeout)
            else:
                node.start(timeout)
        self._ensure_admin(timeout)

    def _ensure_admin(self, timeout: float) -> None:
        """Give the admin its SCRAM credential (as the brokers' identity), then wait until
        every broker lets it sign in: credentials reach each broker with the metadata."""
        admin = AdminClient(self.broker_connection().config())
        upsert_credentials(admin, {ADMIN: self.password(ADMIN)}, timeout)
        for node in self.nodes.values():
            wait_for_broker(self.connection(ADMIN, bootstrap=node.bootstrap), timeout)

    def check_size(self) -> None:
        """The nodes' data belongs to a quorum of a fixed size: refuse to start it as
        another (KAFKA_NODES changed) rather than fail obscurely, and say how to switch."""
        stamp = self.size_stamp
        formatted_nodes = list(self.home.glob("node-*/data/meta.properties"))
        if not stamp.is_file() or not formatted_nodes:  # no data: any size will do
            self.home.mkdir(parents=True, exist_ok=True)
            stamp.write_text(f"{len(self.nodes)}\n")
        formatted = int(stamp.read_text())
        if formatted != len(self.nodes):
            raise RuntimeError(
                f"{self.home} holds a {formatted}-node cluster, not {len(self.nodes)}: to"
                " switch, run `make down`, then `make clean-kafka` (python -m"
                " tools.local.stack reset-kafka: it removes the cluster's data), then"
                f" `KAFKA_NODES={len(self.nodes)} make up`"
            )

    @property
    def size_stamp(self) -> Path:
        """The size of the cluster whose data the nodes' folders hold."""
        return self.home / "cluster-size"

    def every_node(self) -> list[ClusterNode]:
        """Its nodes, and those of a cluster of another size whose folders are under the
        home (on the ports their configuration names): what `stop` and `reset` must not
        miss after KAFKA_NODES changed."""
        others = []
        for folder in sorted(self.home.glob("node-*")):
            node_id = folder.name.removeprefix("node-")
            if node_id.isdigit() and int(node_id) not in self.nodes:
                ports = configured_ports(folder / "server.properties")
                if ports is not None:  # else it never started
                    others.append(ClusterNode(self, int(node_id), ports))
        return [*self.nodes.values(), *others]

    def reset(self) -> list[Path]:
        """Remove the cluster's data: every node's folder, the cluster's id and its size,
        so that it starts afresh at any size. Its certificates and passwords, and the
        jars, stay. RuntimeError while a node runs. What it removed."""
        running = [broker.home.name for broker in self.every_node() if broker.pid() is not None]
        if running:
            raise RuntimeError(
                f"{', '.join(running)} still run{'s' if len(running) == 1 else ''}:"
                " stop the cluster first (`make down`)"
            )
        removed = [path for path in self.home.glob("node-*") if path.is_dir()]
        for folder in removed:
            shutil.rmtree(folder)
        for path in (self.size_stamp, self.home / CLUSTER_ID):
            if path.is_file():
                path.unlink()
                removed.append(path)
        return sorted(removed)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to every node at once (one by one, the last ones would wait for a
        quorum that is gone), then wait for each."""
        every = self.every_node()  # a node of another KAFKA_NODES too
        for node in every:
            node.process.send(signal.SIGTERM)
        for node in every:
            node.stop(timeout)

    def is_running(self) -> bool:
        return all(node.is_running() for node in self.nodes.values())


def sign_in_locally(principal: str, nodes: int | None = None) -> None:
    """For a tool run by hand after `make up`: when the environment names no Kafka of its
    own (`KAFKA_BOOTSTRAP_SERVERS`, `KAFKA_SECURITY_PROTOCOL`) and this checkout's cluster
    runs, sign in to it as `principal` (the variables `env PRINCIPAL` prints)."""
    if {"KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SECURITY_PROTOCOL"} & set(os.environ):
        return
    cluster = LocalCluster(nodes=nodes or int(os.environ.get("KAFKA_NODES", "3")))
    running = any(node.is_running() for node in cluster.nodes.values())
    if running and (cluster.credentials_dir / principal).is_file():
        for key, value in cluster.client_env(principal).items():
            os.environ.setdefault(key, value)


def describe_cluster(admin: KafkaConnection, prefix: str = "", timeout: float = 5) -> str:
    """The brokers the cluster reports, and each of the stack's topics' partitions with
    leader, replicas and in-sync replicas (fewer in sync than replicas is flagged)."""
    try:
        metadata = AdminClient(admin.config()).list_topics(timeout=timeout)
    except KafkaException as exc:
        return f"  cluster unreachable: {exc}"
    lines = [f"  cluster {metadata.cluster_id}, active controller: node {metadata.controller_id}"]
    for broker in sorted(metadata.brokers.values(), key=lambda b: b.id):
        lines.append(f"  broker {broker.id}  {broker.host}:{broker.port}")
    names = sorted(n for n in metadata.topics if n.startswith(prefix) and not n.startswith("__"))
    settings = topic_settings(AdminClient(admin.config()), names, timeout)
    for name in names:
        lines.append(
            f"  {name}  {describe_settings(settings.get(name), TOPICS.get(name[len(prefix) :]))}"
        )
        for part in sorted(metadata.topics[name].partitions.values(), key=lambda p: p.id):
            flag = "  UNDER-REPLICATED" if len(part.isrs) < len(part.replicas) else ""
            lines.append(
                f"  {name}[{part.id}]  leader {part.leader}  replicas {part.replicas}"
                f"  isr {sorted(part.isrs)}{flag}"
            )
    return "\n".join(lines)


SHOWN = ("cleanup.policy", "retention.ms", "segment.ms")


def topic_settings(
    admin: AdminClient, names: Sequence[str], timeout: float
) -> dict[str, dict[str, str]]:
    """Each topic's `SHOWN` settings as the brokers apply them (describe_configs); a topic
    whose settings could not be read is left out."""
    if not names:
        return {}
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in names]
    found = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        try:
            entries = future.result(timeout)
        except KafkaException:
            continue
        found[resource.name] = {key: entries[key].value for key in SHOWN if key in entries}
    return found


def describe_settings(settings: dict[str, str] | None, policy: TopicPolicy | None) -> str:
    """`cleanup.policy compact, retention forever`, and what differs from `TOPICS`."""
    if settings is None:
        return "settings unreadable"
    text = (
        f"cleanup.policy {settings.get('cleanup.policy', '?')}, "
        f"retention {_span(settings.get('retention.ms'))}"
    )
    if policy is not None:
        wanted = {key: str(value) for key, value in policy.config().items()}
        differs = [f"{key} {wanted[key]}" for key in SHOWN if settings.get(key) != wanted[key]]
        if differs:
            text += f"  DIFFERS from TOPICS: wants {', '.join(differs)}"
    return text


def _span(millis: str | None) -> str:
    """`604800000` as `7d`, `-1` as `forever`."""
    if millis is None or not millis.lstrip("-").isdigit():
        return "?"
    value = int(millis)
    if value < 0:
        return "forever"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if value >= size and value % size == 0:
            return f"{value // size}{unit}"
    return f"{value}ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.local.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=[*SERVER_COMMANDS, "env"])
    parser.add_argument("principal", nargs="?", default=OBSERVER, help="for env")
    parser.add_argument("--nodes", type=int, default=int(os.environ.get("KAFKA_NODES", "3")))
    parser.add_argument("--node", type=int, help="one node's id")
    args = parser.parse_args(argv)
    cluster = LocalCluster(nodes=args.nodes)
    if args.command == "env":
        for key, value in cluster.client_env(args.principal).items():
            print(f"export {key}={shlex.quote(value)}")
        return 0
    if args.node:  # one node, as a server of its own
        node = cluster.nodes[args.node]
        return server_command(args.command, node, f"kafka-{args.node} at {node.bootstrap}")
    if args.command in ("start", "stop"):  # together: a node alone waits for a quorum
        getattr(cluster, args.command)()
    command = "kill" if args.command == "kill" else "status"
    codes = [
        server_command(command, node, f"kafka-{node_id} at {node.bootstrap}")
        for node_id, node in cluster.nodes.items()
    ]
    return max(codes) if args.command == "status" else 0


if __name__ == "__main__":
    sys.exit(main())
