"""The ACL plan follows from the registry, and the TLS material and passwords are made
once, owner-only, with the names clients and brokers verify."""

from __future__ import annotations

import ipaddress
import re
import stat
from pathlib import Path

import pytest
from confluent_kafka.admin import AclOperation, ResourcePatternType, ResourceType
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.messaging.connection import KafkaConnection, client_config
from shared.runtime.settings import ServiceSettings
from tools.local.certs import BROKER_PRINCIPAL, ensure_password, ensure_tls
from tools.local.cluster import LocalCluster, NodePorts, min_insync_for
from tools.local.kafka_security import Grant, Topology, acl_plan, principals
from tools.local.stack import Stack

pytestmark = pytest.mark.unit

P = "p-"
READ, WRITE, DESCRIBE = AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE
TOPOLOGY = Topology.of_registry()
PLAN = acl_plan(P, TOPOLOGY)


def topics(principal: str, operation: AclOperation) -> set[str]:
    return {
        g.name
        for g in PLAN
        if g.principal == principal
        and g.operation == operation
        and g.resource == ResourceType.TOPIC
    }


def groups(principal: str) -> set[tuple[str, str, str]]:
    return {
        (g.name, g.pattern.name, g.operation.name)
        for g in PLAN
        if g.principal == principal and g.resource == ResourceType.GROUP
    }


def test_the_topology_is_the_registrys_topic_map() -> None:
    assert TOPOLOGY.owns["order"] == ["orders"]
    assert set(TOPOLOGY.subscribes["user"]) == {"orders"}
    assert "dead-letters" in TOPOLOGY.topics
    assert principals(TOPOLOGY) == [*sorted(TOPOLOGY.owns), "observer", "redrive"]


@pytest.mark.parametrize("service", sorted(TOPOLOGY.owns))
def test_a_service_writes_what_it_owns_and_reads_what_it_subscribes_to(service: str) -> None:
    owned = {P + t for t in TOPOLOGY.owns[service]} | {P + "dead-letters"}
    subscribed = {P + t for t in TOPOLOGY.subscribes[service]}
    assert topics(service, WRITE) == owned
    assert topics(service, READ) == subscribed
    assert topics(service, DESCRIBE) == owned | subscribed
    assert topics(service, AclOperation.DESCRIBE_CONFIGS) == owned  # /ready's min.insync.replicas
    assert groups(service) == {(P + service, "LITERAL", "READ")}


def test_no_two_services_write_the_same_topic_but_dead_letters() -> None:
    writers: dict[str, set[str]] = {}
    for service in TOPOLOGY.services:
        for topic in topics(service, WRITE):
            writers.setdefault(topic, set()).add(service)
    shared = {topic for topic, who in writers.items() if len(who) > 1}
    assert shared == {P + "dead-letters"}


def test_only_redrive_and_the_observer_read_dead_letters() -> None:
    readers = {g.principal for g in PLAN if g.name == P + "dead-letters" and g.operation == READ}
    assert readers == {"redrive", "observer"}


def test_redrive_rereads_and_puts_events_back_on_subscribed_topics_only() -> None:
    subscribed = {P + t for ts in TOPOLOGY.subscribes.values() for t in ts}
    assert topics("redrive", WRITE) == subscribed
    assert topics("redrive", READ) == subscribed | {P + "dead-letters"}, "redrive by reference"
    assert groups("redrive") == {("redrive-", "PREFIXED", "READ")}


def test_the_observer_reads_every_topic_and_describes_every_group_but_writes_none() -> None:
    assert topics("observer", READ) == {P + t for t in TOPOLOGY.topics}
    assert not topics("observer", WRITE)
    assert groups("observer") == {
        ("*", "LITERAL", "DESCRIBE"),
        (P + "observer", "PREFIXED", "READ"),
    }


def test_every_grant_is_an_allow_for_a_user_principal_from_any_host() -> None:
    assert len(set(PLAN)) == len(PLAN), "no duplicates"
    for grant in PLAN:
        binding = grant.binding()
        assert binding.principal == f"User:{grant.principal}" and binding.host == "*"
        assert binding.permission_type.name == "ALLOW"
    assert all(isinstance(g, Grant) for g in PLAN)
    assert not [g for g in PLAN if g.pattern == ResourcePatternType.PREFIXED and not g.name]


# --- certificates and passwords ---------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_tls_material_is_owner_only_and_made_once(tmp_path: Path) -> None:
    files = ensure_tls(tmp_path / "tls")
    assert mode(files.folder) == 0o700
    for path in (files.ca, files.broker):
        assert mode(path) == 0o600, path
    before = files.broker.read_bytes()
    assert ensure_tls(tmp_path / "tls").broker.read_bytes() == before


def private_keys(folder: Path) -> list[bytes]:
    """The public key (DER) of every private key in any PEM file under `folder`."""
    found = []
    for path in folder.rglob("*"):
        for block in re.findall(
            rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.+?-----END [A-Z ]*PRIVATE KEY-----",
            path.read_bytes(),
            re.S,
        ):
            key = serialization.load_pem_private_key(block, password=None)
            found.append(
                key.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
    return found


def test_the_ca_key_is_gone_once_the_broker_certificate_is_signed(tmp_path: Path) -> None:
    """Whoever reads the running stack's files cannot mint a certificate the brokers
    trust (say CN=kafka-broker, a super user): only the broker's own key is kept."""
    files = ensure_tls(tmp_path / "tls")
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    ca_public = ca.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    kept = private_keys(files.folder)
    assert len(kept) == 1, "the broker's key, nothing else"
    assert ca_public not in kept


def test_setting_up_again_removes_a_ca_key_an_older_set_up_left(tmp_path: Path) -> None:
    files = ensure_tls(tmp_path / "tls")
    before = (files.ca.read_bytes(), files.broker.read_bytes())
    left = files.folder / "ca-key.pem"
    left.write_bytes(b"-----BEGIN PRIVATE KEY-----\nold\n-----END PRIVATE KEY-----\n")
    again = ensure_tls(tmp_path / "tls")
    assert not left.exists()
    assert (again.ca.read_bytes(), again.broker.read_bytes()) == before, "nothing re-issued"


def test_the_broker_certificate_names_every_address_and_the_broker_principal(
    tmp_path: Path,
) -> None:
    files = ensure_tls(tmp_path / "tls")
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    chain = x509.load_pem_x509_certificates(files.broker.read_bytes())
    broker = chain[0]
    assert broker.issuer == ca.subject
    broker.verify_directly_issued_by(ca)
    cn = broker.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == BROKER_PRINCIPAL
    sans = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "kafka-1", "kafka-2", "kafka-3"} <= set(
        sans.get_values_for_type(x509.DNSName)
    )
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    usages = broker.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
    assert b"PRIVATE KEY" in files.broker.read_bytes()
    assert b"PRIVATE KEY" not in files.ca.read_bytes()


def test_each_principal_gets_its_own_random_password_once(tmp_path: Path) -> None:
    order, user = ensure_password(tmp_path, "order"), ensure_password(tmp_path, "user")
    assert order != user and len(order) >= 24
    assert ensure_password(tmp_path, "order") == order
    assert mode(tmp_path / "order") == 0o600


# --- cluster shape and client settings ---------------------------------------------------


@pytest.mark.parametrize(("nodes", "replicas", "min_isr"), [(1, 1, 1), (3, 3, 2)])
def test_replication_follows_the_cluster_size(
    tmp_path: Path, nodes: int, replicas: int, min_isr: int
) -> None:
    ports = [NodePorts(20000 + i, 21000 + i, 22000 + i) for i in range(nodes)]
    cluster = LocalCluster(tmp_path / "kafka", nodes, ports, run_dir=tmp_path)
    node = cluster.nodes[1]
    properties = dict(
        line.split("=", 1)
        for line in node._properties().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert properties["default.replication.factor"] == str(replicas)
    assert properties["min.insync.replicas"] == str(min_isr) == str(min_insync_for(nodes))
    assert properties["offsets.topic.replication.factor"] == str(replicas)
    assert properties["unclean.leader.election.enable"] == "false"
    assert properties["allow.everyone.if.no.acl.found"] == "false"
    assert properties["listener.security.protocol.map"] == (
        "CLIENT:SASL_SSL,INTERNAL:SSL,CONTROLLER:SSL"
    )
    assert len(properties["controller.quorum.voters"].split(",")) == nodes


def test_a_service_gets_a_password_file_not_a_password(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "kafka", 1, [NodePorts(1, 2, 3)], run_dir=tmp_path)
    env = cluster.client_env("order")
    assert env["KAFKA_SASL_USERNAME"] == "order"
    assert Path(env["KAFKA_SASL_PASSWORD_FILE"]).read_text().strip() == cluster.password("order")
    assert cluster.password("order") not in "".join(env.values())


def test_a_bare_bootstrap_string_means_plaintext() -> None:
    assert client_config("h:1") == {"bootstrap.servers": "h:1"}
    secured = KafkaConnection("h:1", "SASL_SSL", username="u", password="pw", ca_location="ca")
    assert secured.config(**{"group.id": "g"}) == {
        "bootstrap.servers": "h:1",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "u",
        "sasl.password": "pw",
        "ssl.ca.location": "ca",
        "group.id": "g",
    }
    assert "pw" not in repr(secured)


def test_service_settings_read_the_password_from_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "h:1,h:2")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "order")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "pw"))
    monkeypatch.setenv("KAFKA_SSL_CA_LOCATION", "ca.pem")
    kafka = ServiceSettings().kafka()
    assert kafka == KafkaConnection(
        "h:1,h:2", "SASL_SSL", "SCRAM-SHA-512", "order", "s3cret", "ca.pem"
    )
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(RuntimeError, match="KAFKA_SASL_PASSWORD_FILE"):
        ServiceSettings().kafka()


def test_a_stack_on_a_cluster_gives_each_service_its_principal_and_group(tmp_path: Path) -> None:
    ports_of_nodes = [NodePorts(i, i + 1, i + 2) for i in (1, 4, 7)]
    cluster = LocalCluster(tmp_path / "kafka", 3, ports_of_nodes, run_dir=tmp_path)
    ports = {"order": 1, "user": 2}
    stack = Stack(run_dir=tmp_path, ports=ports, env={"TOPIC_PREFIX": "p-"}, kafka=cluster)
    assert stack.broker is None and stack.bootstrap == cluster.bootstrap
    for name, service in stack.services.items():
        env = service.env
        assert env["KAFKA_SASL_USERNAME"] == name
        assert env[f"{name.upper()}_CONSUMER_GROUP"] == "p-" + name
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == cluster.bootstrap
        assert cluster.password(name) not in "".join(env.values())
    grants = acl_plan("p-", TOPOLOGY)
    groups = {g.name for g in grants if g.resource == ResourceType.GROUP}
    assert {"p-order", "p-user"} <= groups
