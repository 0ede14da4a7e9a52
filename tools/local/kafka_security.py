"""Who may do what on the stack's topics: one principal per service, derived from
services/registry.py and each service's `ServiceSpec` (`owns`, `subscribes`).

    service    WRITE+DESCRIBE+DESCRIBE_CONFIGS the topics it owns and `dead-letters`
               (its /ready reads their `min.insync.replicas`),
               READ+DESCRIBE the topics it subscribes to, READ its consumer group
    redrive    READ+DESCRIBE `dead-letters`, READ+WRITE+DESCRIBE every subscribed topic
               (a dead letter's record is re-read there and re-published there: redrive
               by reference, shared/messaging/redrive.py), READ its groups (`redrive-*`)
    observer   READ+DESCRIBE every topic of the stack, DESCRIBE every group (lag,
               offsets), READ its own groups (`<prefix>observer*`)
    admin      a super user: creates the topics, the credentials and these ACLs

WRITE on a topic also allows the idempotent producer's IDEMPOTENT_WRITE (Kafka 3.0+,
KIP-679), so services need no cluster-level right. `acl_plan` is pure; `secure_stack`
applies it to a running cluster.

    python -m tools.local.kafka_security --bootstrap HOSTS --ca CA.pem --client-pem BROKER.pem \
        --secrets DIR [--prefix P]

does the same once from outside (compose's one-shot `kafka-init`): it signs in with the
brokers' own certificate (mutual TLS, a super user) on their inter-broker listener, so
even the admin's SCRAM credential is made here, from `DIR/kafka_password_<principal>`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from services.registry import SERVICES, load
from shared.messaging.connection import KafkaConnection
from shared.messaging.deadletter import DEAD_LETTERS
from shared.messaging.topics import align_configs, ensure_topics, topic_configs
from tools.local.certs import ADMIN, OBSERVER, REDRIVE, ensure_password, ensure_tls

SCRAM_ITERATIONS = 8192

TOPIC, GROUP = ResourceType.TOPIC, ResourceType.GROUP
LITERAL, PREFIXED = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
READ, WRITE, DESCRIBE = AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE
DESCRIBE_CONFIGS = AclOperation.DESCRIBE_CONFIGS


@dataclass(frozen=True)
class Grant:
    """One ALLOW rule: `principal` may `operation` on a resource (name or prefix)."""

    principal: str
    resource: ResourceType
    name: str
    pattern: ResourcePatternType
    operation: AclOperation

    def binding(self) -> AclBinding:
        return AclBinding(
            self.resource,
            self.name,
            self.pattern,
            f"User:{self.principal}",
            "*",
            self.operation,
            AclPermissionType.ALLOW,
        )

    def __str__(self) -> str:
        where = f"{self.name}*" if self.pattern == PREFIXED else self.name
        return f"{self.principal:<10} {self.operation.name:<9} {self.resource.name:<6} {where}"


@dataclass(frozen=True)
class Topology:
    """Each service's own and subscribed topics (unprefixed) and its consumer group."""

    owns: dict[str, list[str]]
    subscribes: dict[str, list[str]]

    @classmethod
    def of_registry(cls) -> Topology:
        specs = [load(f"{service.package}.main:SPEC") for service in SERVICES]
        return cls(
            owns={spec.name: list(spec.owns) for spec in specs},
            subscribes={spec.name: list(spec.subscribes) for spec in specs},
        )

    @property
    def services(self) -> list[str]:
        return sorted(self.owns)

    @property
    def topics(self) -> list[str]:
        named = {t for ts in (*self.owns.values(), *self.subscribes.values()) for t in ts}
        return sorted(named | {DEAD_LETTERS})


def principals(topology: Topology) -> list[str]:
    """Everyone but the admin that signs in with a SCRAM password."""
    return [*topology.services, OBSERVER, REDRIVE]


def acl_plan(prefix: str, topology: Topology) -> list[Grant]:
    """Exactly the grants of the table in this module's docstring, for topics `prefix*`."""
    grants: list[Grant] = []

    def topic(who: str, names: Iterable[str], *operations: AclOperation) -> None:
        for name in sorted(set(names)):
            for operation in operations:
                grants.append(Grant(who, TOPIC, prefix + name, LITERAL, operation))

    for service in topology.services:
        topic(service, [*topology.owns[service], DEAD_LETTERS], WRITE, DESCRIBE, DESCRIBE_CONFIGS)
        topic(service, topology.subscribes[service], READ, DESCRIBE)
        grants.append(Grant(service, GROUP, prefix + service, LITERAL, READ))
    subscribed = {t for ts in topology.subscribes.values() for t in ts}
    topic(REDRIVE, [DEAD_LETTERS], READ, DESCRIBE)
    topic(REDRIVE, subscribed - {DEAD_LETTERS}, READ, WRITE, DESCRIBE)
    grants.append(Grant(REDRIVE, GROUP, "redrive-", PREFIXED, READ))
    topic(OBSERVER, topology.topics, READ, DESCRIBE)
    grants.append(Grant(OBSERVER, GROUP, "*", LITERAL, DESCRIBE))
    grants.append(Grant(OBSERVER, GROUP, prefix + OBSERVER, PREFIXED, READ))
    return grants


def upsert_credentials(admin: AdminClient, passwords: dict[str, str], timeout: float) -> None:
    """Set each principal's SCRAM-SHA-512 password (creating the user if new)."""
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    changes = [
        UserScramCredentialUpsertion(user, info, pw.encode()) for user, pw in passwords.items()
    ]
    for future in admin.alter_user_scram_credentials(changes, request_timeout=timeout).values():
        future.result(timeout)


def create_acls(admin: AdminClient, grants: Sequence[Grant], timeout: float) -> None:
    futures = admin.create_acls([g.binding() for g in grants], request_timeout=timeout)
    for future in futures.values():
        future.result(timeout)


def secure_stack(
    admin: KafkaConnection,
    prefix: str,
    passwords: dict[str, str],
    topology: Topology | None = None,
    partitions: int = 3,
    timeout: float = 60,
) -> list[Grant]:
    """As the admin: create the stack's topics (replicated by the cluster's size) with
    their settings (`shared.messaging.topics.TOPICS`, set again on topics that exist), the
    principals' credentials and the ACLs; return the grants. Safe to repeat."""
    topology = topology or Topology.of_registry()
    names = [prefix + t for t in topology.topics]
    configs = {name: config for name, config in topic_configs(prefix).items() if name in names}
    ensure_topics(admin, names, partitions, timeout=timeout, configs=configs)
    align_configs(admin, configs, timeout)
    client = AdminClient(admin.config())
    upsert_credentials(client, passwords, timeout)
    grants = acl_plan(prefix, topology)
    try:
        create_acls(client, grants, timeout)
    except KafkaException as exc:
        raise RuntimeError(f"creating ACLs failed: {exc}") from exc
    return grants


def compose_env(run_dir: Path) -> dict[str, str]:
    """What compose's secrets are made of (SHOP_KAFKA_*): the CA, the brokers' key and
    certificate, each principal's password; made under `run_dir` on first use."""
    tls = ensure_tls(run_dir / "kafka-tls")
    env = {"SHOP_KAFKA_CA": tls.ca.read_text(), "SHOP_KAFKA_BROKER": tls.broker.read_text()}
    for name in (ADMIN, *principals(Topology.of_registry())):
        password = ensure_password(run_dir / "kafka-credentials", name)
        env[f"SHOP_KAFKA_PASSWORD_{name.upper()}"] = password
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.local.kafka_security", description=__doc__
    )
    parser.add_argument("--bootstrap", required=True, help="the brokers' SSL listeners")
    parser.add_argument("--ca", required=True, help="the CA certificate (PEM)")
    parser.add_argument("--client-pem", required=True, help="key and certificate (PEM)")
    parser.add_argument("--secrets", type=Path, required=True, help="kafka_password_* files")
    parser.add_argument("--prefix", default="", help="the stack's topic prefix")
    parser.add_argument("--partitions", type=int, default=3)
    args = parser.parse_args(argv)
    broker = KafkaConnection(args.bootstrap, "SSL", ca_location=args.ca, client_pem=args.client_pem)
    topology = Topology.of_registry()
    passwords = {
        name: (args.secrets / f"kafka_password_{name}").read_text().strip()
        for name in (ADMIN, *principals(topology))
    }
    grants = secure_stack(broker, args.prefix, passwords, topology, args.partitions)
    print(f"topics, {len(passwords)} principals and {len(grants)} ACLs in place")
    return 0


if __name__ == "__main__":
    sys.exit(main())
