"""compose.yaml, Dockerfile and .dockerignore read as data: no Docker engine, no broker.

What `docker compose up -d --wait` relies on is checked here: every long-running container
has a healthcheck, the services wait for healthy Kafka and PostgreSQL and for their
databases (the one-shot `pginit`), compose runs exactly the services of
services/registry.py on their ports, each gets the environment its settings class actually
reads, the user service gets the operator's password as a compose secret that `make up`
writes, and the host sees the same addresses as in the local process mode (tools/local/stack.py,
tools/local/kafka.py)."""

from __future__ import annotations

import ast
import base64
import importlib
import importlib.util
import ipaddress
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from email.message import Message
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from packaging.specifiers import SpecifierSet
from pydantic import AliasChoices, AliasPath
from sqlalchemy import make_url

from services.registry import SERVICES, get, load
from shared.messaging.exporters import span_exporters
from shared.runtime.keys import anchor_text
from shared.runtime.settings import ServiceSettings
from tools.local import haproxy, pginit
from tools.local.certs import ADMIN
from tools.local.cluster import LocalCluster, default_ports
from tools.local.kafka_security import Topology, principals
from tools.local.stack import SAMPLING
from tools.ops.explorer.config import ExplorerSettings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
POM = ROOT / "tools" / "local" / "kafka-broker" / "pom.xml"
INFRA = ("postgres",)
KAFKA_NODES = ("kafka-1", "kafka-2", "kafka-3")
KAFKA_INIT = "kafka-init"
"""Sets up the cluster's security; the services wait for it (it waits for the nodes)."""
OBSERVERS = ("jaeger",)
"""What watches the services; nothing waits for it."""
INIT = "pginit"
EXPLORER = "explorer"
"""The event explorer (tools/ops/explorer): reads Kafka only."""
MONITORING = ("prometheus", "grafana")
"""Checked in tests/unit/test_dashboards.py."""
PROXY = "haproxy"
"""Publishes every service's port and spreads requests over its containers."""
PORTS = {service.name: service.port for service in SERVICES}
APP_IMAGE = "event-driven-shop:latest"
"""The one image of the four services and the jobs beside them (the root Dockerfile)."""
APP_CONTAINERS = (*sorted(PORTS), KAFKA_INIT, INIT, EXPLORER)


# --- helpers ---------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "compose.yaml is not a mapping"
    return data


def service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"compose.yaml has no service {name!r}"
    spec = services[name]
    assert isinstance(spec, dict)
    return spec


def environment(name: str) -> dict[str, str]:
    """A service's environment as a dict, whichever of the two Compose syntaxes it uses."""
    env = service(name).get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def published_ports(name: str) -> list[tuple[str, str, str]]:
    """(host_ip, published, target) of each entry of a service's `ports`."""
    result = []
    for entry in service(name).get("ports") or []:
        if isinstance(entry, dict):
            result.append(
                (
                    str(entry.get("host_ip", "")),
                    str(entry.get("published", "")),
                    str(entry["target"]),
                )
            )
            continue
        parts = str(entry).removesuffix("/tcp").split(":")
        if len(parts) == 3:
            result.append((parts[0], parts[1], parts[2]))
        elif len(parts) == 2:
            result.append(("", parts[0], parts[1]))
        else:
            result.append(("", "", parts[0]))
    return result


def healthcheck_text(name: str) -> str:
    check = service(name).get("healthcheck")
    assert check, f"{name} has no healthcheck, so `up --wait` cannot wait for it"
    assert not check.get("disable"), f"{name}'s healthcheck is disabled"
    test = check.get("test")
    assert test and test != ["NONE"], f"{name}'s healthcheck has no test"
    if isinstance(test, str):
        return test
    assert test[0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck test starts with {test[0]!r}"
    return " ".join(test[1:])


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """`NAME://host:port,...` -> {NAME: (host, port)}."""
    result = {}
    for item in value.split(","):
        listener, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        result[listener] = (host, int(port))
    return result


def settings_class(name: str) -> type[ServiceSettings]:
    settings = load(get(name).settings)
    assert isinstance(settings, type) and issubclass(settings, ServiceSettings), settings
    return settings


def env_names(settings: type[ServiceSettings]) -> dict[str, str]:
    """Every environment variable the settings class reads (upper-case) -> its field.

    pydantic-settings reads `<env_prefix><field>` unless the field has an alias; an alias
    is read as is, without the prefix (that is how KAFKA_BOOTSTRAP_SERVERS is shared)."""
    prefix = settings.model_config.get("env_prefix", "")
    names = {}
    for field, info in settings.model_fields.items():
        alias = info.validation_alias or info.alias
        if alias is None:
            names[(prefix + field).upper()] = field
        elif isinstance(alias, str):
            names[alias.upper()] = field
        elif isinstance(alias, AliasChoices):
            for choice in alias.choices:
                if not isinstance(choice, AliasPath):
                    names[choice.upper()] = field
    return names


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            result.append((keyword.upper(), arguments.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert starts, "the Dockerfile has no FROM"
    return instructions[starts[-1] :]


def base_image(instructions: list[tuple[str, str]]) -> str:
    """The final stage's FROM image, with ARG defaults (`ARG X=y` ... `FROM ${X}`) put in."""
    defaults = {}
    for keyword, arguments in instructions:
        if keyword == "ARG" and "=" in arguments:
            name, value = arguments.split("=", 1)
            defaults[name.strip()] = value.strip()
    [*_, (keyword, arguments)] = [i for i in instructions if i[0] == "FROM"]
    return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults[m.group(1)], arguments.split()[0])


def command_of(spec: dict[str, Any] | str) -> list[str]:
    command = spec if isinstance(spec, str) else spec.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def assert_serves(command: list[str], name: str) -> None:
    """`python -m services <name> --host 0.0.0.0`, naming a registered service whose app
    factory and settings class exist."""
    assert command == ["python", "-m", "services", name, "--host", "0.0.0.0"], command
    assert importlib.util.find_spec("services.__main__") is not None, "no services/__main__.py"
    assert callable(load(get(name).app))
    settings_class(name)


# --- the file as a whole ---------------------------------------------------------------


def test_compose_file_is_compose_specification() -> None:
    data = compose()
    assert "version" not in data, "the Compose Specification has no `version:`"
    expected = {
        *INFRA,
        *KAFKA_NODES,
        INIT,
        KAFKA_INIT,
        *OBSERVERS,
        EXPLORER,
        *MONITORING,
        PROXY,
        *PORTS,
    }
    assert set(data["services"]) == expected, "compose runs the registry's services"


def test_every_long_running_container_has_a_healthcheck_for_up_wait() -> None:
    for name in compose()["services"]:
        if name not in (INIT, KAFKA_INIT):
            healthcheck_text(name)


def test_everything_is_published_on_loopback_only() -> None:
    seen: dict[str, str] = {}
    for name in compose()["services"]:
        for host_ip, published, target in published_ports(name):
            assert host_ip == "127.0.0.1", f"{name} publishes {target} on {host_ip or 'all'}"
            assert published not in seen, f"{name} and {seen.get(published)} both take {published}"
            seen[published] = name


def test_depends_on_names_defined_services() -> None:
    names = set(compose()["services"])
    for name, spec in compose()["services"].items():
        assert set(spec.get("depends_on") or {}) <= names, name


def test_the_explorer_reads_kafka_only_on_its_loopback_port() -> None:
    spec = service(EXPLORER)
    assert spec["command"][:3] == ["python", "-m", "tools.ops.explorer"]
    assert published_ports(EXPLORER) == [("127.0.0.1", "8090", "8090")]
    env = environment(EXPLORER)
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["KAFKA_SASL_USERNAME"] == "observer", "it reads as the observer, writes nothing"
    assert env["KAFKA_SASL_PASSWORD_FILE"] == "/run/secrets/kafka_password_observer"
    assert env["EXPLORER_REDRIVE_PASSWORD_FILE"] == "/run/secrets/kafka_password_redrive"
    assert set(spec["secrets"]) == {"kafka_ca", "kafka_password_observer", "kafka_password_redrive"}
    assert set(spec["depends_on"]) == {"kafka-init"}
    assert "8090/ready" in healthcheck_text(EXPLORER)


# --- kafka -----------------------------------------------------------------------------


def kafka_properties(name: str) -> dict[str, str]:
    """A node's server.properties as the apache/kafka image renders its KAFKA_* variables:
    `_` is `.`, `__` is `_`, `___` is `-`, and a value holding `=` is dropped (compose
    first turns `$$` into `$`)."""
    properties = {}
    for key, value in environment(name).items():
        value = value.replace("$$", "$")
        if not key.startswith("KAFKA_") or key == "KAFKA_HEAP_OPTS" or "=" in value:
            continue
        converted = re.sub(r"[^_]_[^_]", lambda m: m.group(0).replace("_", "."), key[6:])
        properties[converted.replace("___", "-").replace("__", "_").lower()] = value
    return properties


def local_node_properties(run_dir: Path) -> dict[str, str]:
    """What tools/local/cluster.py gives a node of a three-node cluster."""
    cluster = LocalCluster(run_dir / "kafka", nodes=3, run_dir=run_dir)
    text = cluster.nodes[1]._properties()
    lines = [line for line in text.splitlines() if "=" in line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_kafka_image_tag_is_the_version_of_the_local_broker() -> None:
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = ET.parse(POM).getroot().findtext("m:properties/m:kafka.version", namespaces=namespace)
    assert version
    for name in KAFKA_NODES:
        assert service(name)["image"] == f"apache/kafka:{version}"


def test_kafka_nodes_form_one_kraft_quorum_of_three() -> None:
    ids, cluster_ids = set(), set()
    for name in KAFKA_NODES:
        env = environment(name)
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        ids.add(env["KAFKA_NODE_ID"])
        cluster_ids.add(env["CLUSTER_ID"])
        controller = listeners(env["KAFKA_LISTENERS"])[env["KAFKA_CONTROLLER_LISTENER_NAMES"]]
        voters = dict(v.split("@") for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
        assert voters[env["KAFKA_NODE_ID"]] == f"{service(name)['hostname']}:{controller[1]}"
    assert ids == {"1", "2", "3"} and service("kafka-2")["hostname"] == "kafka-2"
    # One fixed cluster id, so a restarted container finds its formatted log dir compatible.
    [cluster_id] = cluster_ids
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, "CLUSTER_ID is no Kafka UUID"


def test_kafka_clients_use_sasl_ssl_and_brokers_mutual_tls() -> None:
    host_ports = [ports.client for ports in default_ports(3)]
    client_addresses = []
    for name, host_port in zip(KAFKA_NODES, host_ports, strict=True):
        env = environment(name)
        protocols = dict(
            item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
        )
        assert protocols == {
            "CLIENT": "SASL_SSL",
            "EXTERNAL": "SASL_SSL",
            "INTERNAL": "SSL",
            "CONTROLLER": "SSL",
        }
        assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "INTERNAL"
        advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
        assert "SSL://" not in env["KAFKA_ADVERTISED_LISTENERS"], "the image would want JKS"
        # The host reaches each node where the local process mode has it.
        assert advertised["EXTERNAL"] == ("127.0.0.1", host_port)
        assert published_ports(name) == [("127.0.0.1", str(host_port), str(host_port))]
        client_addresses.append("{}:{}".format(*advertised["CLIENT"]))
    for name in PORTS:
        assert environment(name)["KAFKA_BOOTSTRAP_SERVERS"] == ",".join(client_addresses)


def test_kafka_is_configured_as_the_local_cluster(tmp_path: Path) -> None:
    """Durability (RF 3, two in sync, no unclean election), the authorizer, the super
    users, the broker principal's mapping and the listeners' authentication."""
    local = local_node_properties(tmp_path)
    keys = [
        "default.replication.factor",
        "min.insync.replicas",
        "unclean.leader.election.enable",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "auto.create.topics.enable",
        "authorizer.class.name",
        "allow.everyone.if.no.acl.found",
        "super.users",
        "ssl.principal.mapping.rules",
        "sasl.enabled.mechanisms",
        "listener.name.client.scram-sha-512.sasl.jaas.config",
        "listener.name.internal.ssl.client.auth",
        "listener.name.controller.ssl.client.auth",
        "ssl.keystore.type",
        "ssl.truststore.type",
    ]
    assert local["min.insync.replicas"] == "2" and local["default.replication.factor"] == "3"
    for name in KAFKA_NODES:
        rendered = kafka_properties(name)
        assert {key: rendered.get(key) for key in keys} == {key: local[key] for key in keys}
        assert (
            rendered["listener.name.external.scram-sha-512.sasl.jaas.config"]
            == local["listener.name.client.scram-sha-512.sasl.jaas.config"]
        )
        mounted = mounted_secrets(name)
        assert rendered["ssl.keystore.location"] == mounted["kafka_broker"]
        assert rendered["ssl.truststore.location"] == mounted["kafka_ca"]
        assert "-Xmx384m" in environment(name)["KAFKA_HEAP_OPTS"].split()


def test_kafka_healthcheck_asks_the_node_alone_over_mutual_tls() -> None:
    """Each node's probe asks that node for its own broker configuration (a request Kafka
    sends to the broker of that id), so another node slow to start holds no probe up."""
    for name in KAFKA_NODES:
        text = healthcheck_text(name)
        node_id = environment(name)["KAFKA_NODE_ID"]
        assert "/opt/kafka/bin/kafka-configs.sh" in text
        assert "kafka-broker-api-versions" not in text, "asks every broker of the metadata"
        assert f"--bootstrap-server {name}:9094" in text and "--command-config" in text
        assert f"--entity-type brokers --entity-name {node_id} " in text + " "
        assert "security.protocol=SSL" in text and "/run/secrets/kafka_broker" in text
        assert "default.api.timeout.ms=" in text, "a node that does not answer fails it"


def test_kafka_init_secures_the_cluster_once_every_node_is_healthy() -> None:
    spec = service(KAFKA_INIT)
    assert spec["image"] == APP_IMAGE, "the services' image"
    assert str(spec.get("restart", "no")) == "no", "a one-shot must not be restarted"
    assert spec["depends_on"] == {n: {"condition": "service_healthy"} for n in KAFKA_NODES}
    command = command_of(spec)
    assert command[:3] == ["python", "-m", "tools.local.kafka_security"]
    args = dict(zip(command[3::2], command[4::2], strict=True))
    internal = [
        "{}:{}".format(*listeners(environment(n)["KAFKA_ADVERTISED_LISTENERS"])["INTERNAL"])
        for n in KAFKA_NODES
    ]
    assert args["--bootstrap"] == ",".join(internal)
    mounted = mounted_secrets(KAFKA_INIT)
    assert args["--client-pem"] == mounted["kafka_broker"]
    assert args["--ca"] == mounted["kafka_ca"]
    for principal in (ADMIN, *principals(Topology.of_registry())):
        assert (
            mounted[f"kafka_password_{principal}"]
            == f"{args['--secrets']}/kafka_password_{principal}"
        )


@pytest.mark.parametrize("name", sorted(PORTS))
def test_each_service_signs_in_to_kafka_as_itself(name: str) -> None:
    env, mounted = environment(name), mounted_secrets(name)
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["KAFKA_SASL_USERNAME"] == name
    assert env["KAFKA_SASL_PASSWORD_FILE"] == mounted[f"kafka_password_{name}"]
    assert env["KAFKA_SSL_CA_LOCATION"] == mounted["kafka_ca"]
    others = {s for s in mounted if s.startswith("kafka_")} - {"kafka_ca", f"kafka_password_{name}"}
    assert not others, f"{name} mounts {others}"


def test_make_up_hands_compose_every_kafka_secret_it_made_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = importlib.import_module("tools.local.stack")
    run_dir = tmp_path / ".run"
    monkeypatch.setattr(stack, "RUN_DIR", run_dir)
    monkeypatch.setattr(stack, "docker_engine", lambda: True)
    handed: list[dict[str, str]] = []
    monkeypatch.setattr(stack.subprocess, "call", lambda command, env: handed.append(env) or 0)

    assert stack.main(["up"]) == 0
    [env] = handed
    for secret, declared in compose()["secrets"].items():
        assert env.get(declared["environment"]), f"{secret} would be empty"
    assert env["SHOP_KAFKA_CA"] == (run_dir / "kafka-tls" / "ca.pem").read_text()
    credentials = run_dir / "postgres-credentials"
    for role in (pginit.SUPERUSER, *pginit.roles()):
        secret = compose()["secrets"][f"{pginit.SECRET_PREFIX}{role}"]
        assert env[secret["environment"]] == (credentials / role).read_text().strip()
    folders = ("kafka-tls", "kafka-credentials", "postgres-credentials", "user-keys")
    for path in [run_dir / f for f in folders] + [
        p for f in folders for p in (run_dir / f).iterdir()
    ]:
        assert path.stat().st_mode & 0o077 == 0, path
    signing_key = load_pem_private_key(env["SHOP_KEYSET_SIGNING_KEY"].encode(), password=None)
    assert isinstance(signing_key, Ed25519PrivateKey)
    assert env["SHOP_KEYSET_PUBLIC_KEY"] == anchor_text(signing_key), "the anchor is its pair"


def test_only_the_user_service_mounts_its_keys_and_every_service_gets_the_anchor() -> None:
    for name in PORTS:
        secrets = set(service(name).get("secrets", []))
        held = secrets & {"keyset_signing_key", "key_encryption_key"}
        assert held == ({"keyset_signing_key", "key_encryption_key"} if name == "user" else set())
        assert environment(name)["AUTH_KEYSET_PUBLIC_KEY"] == "${SHOP_KEYSET_PUBLIC_KEY:-}"
    user = environment("user")
    assert user["USER_KEYSET_SIGNING_KEY_FILE"] == "/run/secrets/keyset_signing_key"
    assert user["USER_KEY_ENCRYPTION_KEY_FILE"] == "/run/secrets/key_encryption_key"


# --- postgres --------------------------------------------------------------------------


def test_postgres_has_a_healthcheck_and_loopback_port() -> None:
    assert service("postgres")["image"] == "postgres:16"
    assert "pg_isready" in healthcheck_text("postgres")
    assert published_ports("postgres") == [("127.0.0.1", "5432", "5432")]


def assert_superuser_url(value: str) -> Any:
    """A URL of the compose PostgreSQL server as its superuser, POSTGRES_USER, with no
    password in it."""
    env = environment("postgres")
    url = make_url(value)
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port or 5432) == ("postgres", 5432)
    assert url.username == env["POSTGRES_USER"] and url.password is None
    return url


def test_the_postgres_superuser_s_password_is_a_generated_secret() -> None:
    env = environment("postgres")
    assert "POSTGRES_PASSWORD" not in env, "no fixed password"
    mounted = mounted_secrets("postgres")
    assert env["POSTGRES_PASSWORD_FILE"] == mounted[f"{pginit.SECRET_PREFIX}{pginit.SUPERUSER}"]
    assert env["POSTGRES_USER"] == pginit.SUPERUSER
    assert set(mounted) == {f"{pginit.SECRET_PREFIX}{pginit.SUPERUSER}"}


def test_pginit_runs_once_the_server_is_healthy_and_sets_up_each_service_s_role() -> None:
    spec = service(INIT)
    assert spec["image"] == APP_IMAGE, "the services' image"
    assert str(spec.get("restart", "no")) == "no", "a one-shot must not be restarted"
    assert spec["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    command = command_of(spec)
    assert command[:3] == ["python", "-m", "tools.local.pginit"], command
    assert_superuser_url(command[3])
    options = dict(zip(command[4::2], command[5::2], strict=True))
    mounted = mounted_secrets(INIT)
    assert options["--password-file"] == mounted[f"{pginit.SECRET_PREFIX}{pginit.SUPERUSER}"]
    for role in pginit.roles():
        secret = f"{pginit.SECRET_PREFIX}{role}"
        assert mounted[secret] == f"{options['--secrets']}/{secret}", role
    assert set(mounted) == {
        f"{pginit.SECRET_PREFIX}{r}" for r in (pginit.SUPERUSER, *pginit.roles())
    }
    assert importlib.util.find_spec("psycopg") is not None
    assert not [
        volume
        for volume in service("postgres").get("volumes") or []
        if "/docker-entrypoint-initdb.d" in str(volume)
    ], "databases are pginit's to create, on every `up`, not only on an empty volume"


@pytest.mark.parametrize("name", sorted(PORTS))
def test_each_service_signs_in_to_its_own_database_as_its_own_role(name: str) -> None:
    env, mounted = environment(name), mounted_secrets(name)
    url = make_url(env[f"{name.upper()}_DATABASE_URL"])
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port or 5432) == ("postgres", 5432)
    assert url.username == name and url.password is None
    assert url.database == get(name).database
    assert pginit.roles()[name] == url.database, "pginit makes that role own that database"
    secret = f"{pginit.SECRET_PREFIX}{name}"
    assert env[f"{name.upper()}_DATABASE_PASSWORD_FILE"] == mounted[secret]
    others = {s for s in mounted if s.startswith(pginit.SECRET_PREFIX)} - {secret}
    assert not others, f"{name} mounts {others}"


def test_postgres_has_one_database_per_service_that_pginit_creates() -> None:
    created = set(pginit.databases())
    databases = {make_url(environment(n)[f"{n.upper()}_DATABASE_URL"]).database for n in PORTS}
    assert databases <= created, "every service's database is one pginit creates"
    assert len(databases) == len(PORTS), "each service has its own database"


# --- the registered services -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PORTS))
def test_service_runs_the_image_of_the_repo_and_waits_for_infra_and_its_database(
    name: str,
) -> None:
    spec = service(name)
    assert spec["image"] == APP_IMAGE
    depends_on = spec["depends_on"]
    assert isinstance(depends_on, dict), "the list form of depends_on has no condition"
    for dependency in INFRA:
        assert depends_on[dependency]["condition"] == "service_healthy", dependency
    assert depends_on[INIT]["condition"] == "service_completed_successfully"
    assert depends_on[KAFKA_INIT]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", sorted(PORTS))
def test_service_runs_by_its_registered_name_on_its_registered_port(name: str) -> None:
    assert_serves(command_of(service(name)), name)
    assert environment(name).get(f"{name.upper()}_PORT", str(PORTS[name])) == str(PORTS[name])
    assert published_ports(name) == [], "the proxy publishes it: `--scale` needs no host port"
    assert ("127.0.0.1", str(PORTS[name]), str(PORTS[name])) in published_ports(PROXY)


@pytest.mark.parametrize("name", sorted(PORTS))
def test_service_healthcheck_probes_ready(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    test = service(name)["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], "slim images have python, not curl"
    code = compile(test[3], f"{name}-healthcheck", "exec")
    requested: list[str] = []

    def answer(status: int) -> Any:
        def urlopen(url: str, timeout: float) -> Any:
            requested.append(url)
            if status >= 400:
                raise urllib.error.HTTPError(url, status, "Not ready", Message(), None)
            return SimpleNamespace(status=status)

        return urlopen

    monkeypatch.setattr(urllib.request, "urlopen", answer(200))
    with pytest.raises(SystemExit) as exit_ok:
        exec(code, {})
    assert exit_ok.value.code == 0
    monkeypatch.setattr(urllib.request, "urlopen", answer(503))
    with pytest.raises(urllib.error.HTTPError):  # an uncaught error: python exits 1
        exec(code, {})
    assert requested == [f"http://127.0.0.1:{PORTS[name]}/ready"] * 2


def seconds(duration: str) -> float:
    """A compose duration such as "10s", "1m30s" or "600s", in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    total, number = 0.0, ""
    for char in duration:
        if char.isdigit() or char == ".":
            number += char
        else:
            total, number = total + float(number) * units[char], ""
    assert not number, f"no unit in {duration!r}"
    return total


@pytest.mark.parametrize("name", [*sorted(PORTS), EXPLORER])
def test_a_slow_start_is_not_unhealthy_before_ten_minutes(name: str) -> None:
    """`up --wait` stops at the first unhealthy container: one still starting on a loaded
    machine (minutes) must not be. The window delays nothing: the first passing probe counts."""
    check = service(name)["healthcheck"]
    assert seconds(check["start_period"]) >= 600
    assert seconds(check["timeout"]) > 3, "more than the probe's own request timeout"
    assert seconds(check["interval"]) <= 5, "healthy soon after it is ready"


@pytest.mark.parametrize("name", sorted(PORTS))
def test_service_environment_is_read_by_its_settings(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_class(name)
    known = env_names(settings)
    env = {k: v for k, v in environment(name).items() if not k.startswith("OTEL_")}
    assert "KAFKA_BOOTSTRAP_SERVERS" in env
    assert f"{name.upper()}_DATABASE_URL" in env
    unknown = sorted(set(env) - set(known))
    assert not unknown, f"{settings.__name__} reads none of {unknown}"
    assert known[f"{name.upper()}_DATABASE_URL"] == "database_url"
    # And they take effect: the settings built from this environment hold these values.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    loaded = settings()
    for key, value in env.items():
        assert str(getattr(loaded, known[key])) == value, key
    assert loaded.port == PORTS[name]


@pytest.mark.parametrize("name", sorted(PORTS))
def test_every_service_sends_its_spans_to_jaeger_over_otlp(name: str) -> None:
    """The standard OpenTelemetry variables, read by the OpenTelemetry SDK (not the
    service's settings): they build an OTLP/HTTP exporter aimed at the jaeger container."""
    env = {k: v for k, v in environment(name).items() if k.startswith("OTEL_")}
    (exporter,) = span_exporters(env)
    assert isinstance(exporter, OTLPSpanExporter)
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"


@pytest.mark.parametrize("name", sorted(PORTS))
def test_every_service_samples_as_make_up_does_unless_told_otherwise(name: str) -> None:
    """`${VAR:-default}`: the user's exported value, else the local stack's SAMPLING."""
    env = environment(name)
    defaults = {key: re.fullmatch(r"\$\{(\w+):-([^}]*)\}", env[key]) for key in SAMPLING}
    assert all(defaults.values()), env
    assert {key: (m.group(1), m.group(2)) for key, m in defaults.items() if m} == {
        key: (key, value) for key, value in SAMPLING.items()
    }


def test_the_explorer_links_sampled_traces_to_jaegers_ui() -> None:
    address = environment(EXPLORER)["EXPLORER_TRACE_URL"]
    assert address == "http://127.0.0.1:16686/trace/{trace_id}"
    assert ExplorerSettings(trace_url=address).trace_url == address


def test_jaeger_serves_its_ui_on_loopback_and_is_healthy_when_it_answers() -> None:
    assert service("jaeger")["image"].startswith("jaegertracing/jaeger:2.")
    assert published_ports("jaeger") == [("127.0.0.1", "16686", "16686")]
    assert "16686" in " ".join(service("jaeger")["healthcheck"]["test"])


# --- the proxy in front of the services -------------------------------------------------


def test_the_proxy_config_is_generated_from_the_registry() -> None:
    volumes = service(PROXY)["volumes"]
    source, target, mode = volumes[0].split(":")
    assert (target, mode) == ("/usr/local/etc/haproxy/haproxy.cfg", "ro")
    mounted = (ROOT / source).resolve()
    assert mounted == haproxy.COMPOSE_CONFIG
    assert mounted.read_text() == haproxy.compose_config(PORTS), (
        "stale: python -m tools.local.haproxy compose"
    )


def test_the_proxy_finds_every_container_of_each_service_and_checks_ready() -> None:
    config = haproxy.COMPOSE_CONFIG.read_text()
    assert "nameserver dns 127.0.0.11:53" in config, "Docker's embedded DNS"
    for name, port in PORTS.items():
        assert f"frontend {name}\n    bind :{port}\n" in config
        assert f"    default_backend {name}\n" in config
        assert re.search(
            rf"server-template {name}- 1-\d+ {name}:{port} check resolvers docker", config
        )
    assert config.count("option httpchk GET /ready") == len(PORTS)
    assert service(PROXY)["image"].startswith("haproxy:2.")
    assert {name: spec["condition"] for name, spec in service(PROXY)["depends_on"].items()} == (
        dict.fromkeys(PORTS, "service_healthy")
    )
    for port in PORTS.values():
        assert str(port) in healthcheck_text(PROXY)


def test_the_proxy_config_is_valid_for_haproxy() -> None:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed")
    done = subprocess.run(
        ["haproxy", "-c", "-f", str(haproxy.COMPOSE_CONFIG)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def proxy_address() -> str:
    """The proxy's fixed address on the default network."""
    address = service(PROXY)["networks"]["default"]["ipv4_address"]
    assert isinstance(address, str)
    return address


def test_the_proxy_has_a_fixed_address_docker_never_hands_to_another_container() -> None:
    (pool,) = compose()["networks"]["default"]["ipam"]["config"]
    subnet, dynamic = ipaddress.ip_network(pool["subnet"]), ipaddress.ip_network(pool["ip_range"])
    address = ipaddress.ip_address(proxy_address())
    assert address in subnet
    assert dynamic.subnet_of(subnet)  # type: ignore[arg-type]
    assert address not in dynamic, "a container started before the proxy could take it"
    assert address not in (subnet.network_address, subnet.network_address + 1), "the gateway"
    for name, spec in compose()["services"].items():
        if name != PROXY:
            assert "networks" not in spec, (
                f"{name} must be on the default network, no fixed address"
            )


@pytest.mark.parametrize("name", sorted(PORTS))
def test_services_trust_forwarded_for_from_the_proxy_alone(name: str) -> None:
    settings = settings_class(name)(forwarded_allow_ips=environment(name)["FORWARDED_ALLOW_IPS"])
    assert [str(n) for n in settings.trusted_proxies] == [f"{proxy_address()}/32"]
    assert published_ports(name) == []


def test_the_proxy_overwrites_forwarded_for_with_the_real_client() -> None:
    config = haproxy.COMPOSE_CONFIG.read_text()
    assert "option forwardfor" not in config, "it appends to whatever the client sent"
    assert config.count("http-request set-header X-Forwarded-For %[src]") == len(PORTS)


@pytest.mark.parametrize("name", sorted(PORTS))
def test_services_have_time_to_drain_before_docker_kills_them(name: str) -> None:
    grace = str(service(name)["stop_grace_period"])
    assert grace.endswith("s") and int(grace[:-1]) >= 20


# --- authentication: the token URL and the operator's password --------------------------

SECRETS_DIR = "/run/secrets"


def mounted_secrets(name: str) -> dict[str, str]:
    """The compose secrets a service mounts: secret name -> path inside the container."""
    mounted = {}
    for entry in service(name).get("secrets") or []:
        if isinstance(entry, str):
            source = target = entry
        else:
            source = entry["source"]
            target = entry.get("target") or source
        mounted[source] = target if target.startswith("/") else f"{SECRETS_DIR}/{target}"
    return mounted


@pytest.mark.parametrize("name", sorted(PORTS))
def test_swagger_of_every_service_gets_its_token_from_the_user_service(name: str) -> None:
    """The browser runs Swagger UI on the host, so the token URL is the user service's
    published address, not a container name."""
    env = environment(name)
    assert env_names(settings_class(name))["AUTH_TOKEN_URL"] == "token_url"
    url = urllib.parse.urlsplit(env["AUTH_TOKEN_URL"])
    assert (url.scheme, url.hostname, url.port, url.path) == (
        "http",
        "127.0.0.1",
        PORTS["user"],
        "/token",
    )
    assert ("127.0.0.1", str(PORTS["user"]), str(PORTS["user"])) in published_ports(PROXY)
    user_api = importlib.import_module("services.user.api")
    assert any(
        getattr(route, "path", None) == url.path and "POST" in getattr(route, "methods", ())
        for route in user_api.router.routes
    ), "the user service answers POST /token"


def test_the_user_service_reads_the_operator_password_from_a_compose_secret() -> None:
    path = environment("user")["USER_OPERATOR_PASSWORD_FILE"]
    assert env_names(settings_class("user"))["USER_OPERATOR_PASSWORD_FILE"] == (
        "operator_password_file"
    )
    [secret] = [name for name, mounted in mounted_secrets("user").items() if mounted == path]
    declared = compose()["secrets"][secret]
    assert declared == {"environment": "SHOP_OPERATOR_PASSWORD"}, (
        "compose writes the secret itself (readable by the container's user), from what"
        " `make up` hands it"
    )


def test_no_other_service_mounts_the_operator_password() -> None:
    for name in compose()["services"]:
        if name != "user":
            assert "operator_password" not in mounted_secrets(name), name


@pytest.mark.parametrize("name", sorted(PORTS))
def test_no_service_gets_a_password_in_its_environment(name: str) -> None:
    for key, value in environment(name).items():
        if "PASSWORD" in key:
            assert key.endswith("_FILE") and value.startswith(SECRETS_DIR + "/"), key


def test_the_operator_password_stays_out_of_the_image() -> None:
    assert not in_image(".run/operator-password")
    assert not in_image(".run/kafka-credentials/admin")


def test_make_up_writes_the_operator_password_before_docker_compose_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = importlib.import_module("tools.local.stack")
    run_dir = tmp_path / ".run"
    monkeypatch.setattr(stack, "RUN_DIR", run_dir)
    monkeypatch.setattr(stack, "docker_engine", lambda: True)
    seen: list[tuple[list[str], str]] = []

    def call(command: list[str], env: dict[str, str]) -> int:
        password_file = run_dir / "operator-password"
        written = password_file.read_text().strip() if password_file.exists() else ""
        assert env.get("SHOP_OPERATOR_PASSWORD") == written, "compose gets the same password"
        seen.append((command, written))
        return 0

    monkeypatch.setattr(stack.subprocess, "call", call)

    assert stack.main(["up"]) == 0
    assert stack.main(["up"]) == 0

    [(first_command, first), (_, second)] = seen
    assert first_command[:2] == ["docker", "compose"] and first_command[-3:] == [
        "up",
        "-d",
        "--wait",
    ]
    assert len(first.strip()) >= 24, "a password was written before compose started"
    assert second == first, "a second `up` keeps the password the operator already has"


# --- Dockerfile and .dockerignore ------------------------------------------------------


def test_dockerfile_base_image_matches_the_supported_python() -> None:
    """python:3.11-slim unless the PYTHON_IMAGE build argument names a stand-in."""
    base = base_image(dockerfile_instructions())
    assert base == "python:3.11-slim"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains(base.split(":")[1].split("-")[0])


def test_dockerfile_installs_the_lock_and_copies_the_code() -> None:
    stage = final_stage()
    runs = " ".join(arguments for keyword, arguments in stage if keyword == "RUN")
    assert re.search(r"pip install .*--require-hashes.* -r requirements\.lock", runs), runs
    copied = {arguments.split()[0].rstrip("/") for keyword, arguments in stage if keyword == "COPY"}
    assert {"requirements.lock", "shared", "services", "tools"} <= copied


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [arguments for keyword, arguments in final_stage() if keyword == "USER"]
    assert users, "no USER: the container would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_dockerfile_default_command_serves_a_registered_service_by_name() -> None:
    stage = final_stage()
    assert not [keyword for keyword, _ in stage if keyword == "ENTRYPOINT"], "CMD alone is simpler"
    commands = [arguments for keyword, arguments in stage if keyword == "CMD"]
    assert commands, "no CMD"
    command = json.loads(commands[-1])  # exec form, so python is PID 1 and gets SIGTERM
    assert len(command) > 3 and command[3] in PORTS, command
    assert_serves(command, command[3])
    for each in PORTS:
        assert service(each).get("command"), f"{each} relies on the image's default CMD"


def test_dockerfile_exposes_the_registry_ports() -> None:
    exposed = {
        int(port.split("/")[0])
        for keyword, arguments in final_stage()
        if keyword == "EXPOSE"
        for port in arguments.split()
    }
    assert exposed == set(PORTS.values())


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception, regex) of each .dockerignore line, in order, as Docker reads them:
    `*` and `?` stay within a path segment, `**` spans any number of them."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        glob = line.removeprefix("!").strip().strip("/")
        regex = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", glob):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                part, re.escape(part)
            )
        patterns.append((exception, re.compile(regex)))
    return patterns


def in_image(path: str) -> bool:
    """Whether the build context (so the image) gets this file: the last line that matches
    it or one of its folders decides, as in Docker."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    included = True
    for exception, pattern in dockerignore_patterns():
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            included = exception
    return included


def repo_files(*folders: str) -> list[str]:
    return [
        str(path.relative_to(ROOT))
        for folder in folders
        for path in sorted((ROOT / folder).rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    ]


def tools_compose_runs() -> set[str]:
    """The tools.* modules that compose runs in the services' image (`python -m tools...`)
    and every tools.* module they import, directly or not."""
    todo = [
        command[2]
        for spec in compose()["services"].values()
        if (command := command_of(spec))[:2] == ["python", "-m"] and command[2].startswith("tools")
    ]
    assert todo, "compose runs no tool in the image"
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module_file(module)
        assert path is not None, f"no file for {module}"
        if path.name == "__init__.py" and (path.parent / "__main__.py").is_file():
            todo.append(f"{module}.__main__")
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
                names += [f"{node.module}.{alias.name}" for alias in node.names]
            todo += [n for n in names if n.split(".")[0] == "tools" and module_file(n)]
    return seen


def module_file(module: str) -> Path | None:
    """The file of a repo module (a package's __init__.py), or None (a name in a module)."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_dockerignore_lets_in_the_runtime_lock_and_the_code() -> None:
    for path in ["requirements.lock", *repo_files("shared", "services")]:
        assert in_image(path), f"{path} is left out of the image"


def test_dockerignore_lets_in_every_tool_compose_runs_with_what_it_imports() -> None:
    """The explorer, kafka-init's and pginit's tools run in the services' image: each module
    they reach, and each package's files (the explorer's static page), must be in it."""
    modules = tools_compose_runs()
    assert {"tools.ops.explorer", "tools.local.kafka_security", "tools.local.pginit"} <= modules
    for module in modules:
        path = module_file(module)
        assert path is not None
        assert in_image(str(path.relative_to(ROOT))), f"{module} is left out of the image"
        for parent in path.relative_to(ROOT).parents:
            if str(parent) != ".":
                assert in_image(f"{parent}/__init__.py"), f"{parent} is no package in the image"
    for path in repo_files("tools/ops/explorer"):
        assert in_image(path), f"{path} is left out of the image"


def test_dockerignore_keeps_out_local_state_tests_and_the_dev_tools() -> None:
    for path in [
        ".git/HEAD",
        ".venv/bin/python",
        ".run/operator-password",
        ".run/data/order.db",
        "requirements-dev.lock",
        "services/order/__pycache__/api.cpython-311.pyc",
        "shared/runtime/app.pyc",
        *repo_files("tests", "docs", "deploy", "tools/bench", "tools/dev"),
        *repo_files("tools/local/kafka-broker"),
        "tools/local/stack.py",
        "tools/local/docker.py",
        "tools/local/images.py",
        "tools/local/postgres.sh",
        "tools/ops/demo.py",
        "tools/ops/tail.py",
        "compose.yaml",
        "Dockerfile",
        "README.md",
    ]:
        assert not in_image(path), f"{path} goes into the image"


def test_dockerignore_reading_follows_docker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The matcher above, on the cases that matter: the last matching line wins, a folder's
    line covers what is in it, `*` stays in one segment, `**` spans several."""
    ignore = tmp_path / ".dockerignore"
    ignore.write_text("*\n!keep/\n**/__pycache__\n!top.txt\nkeep/secret*\n")
    monkeypatch.setattr(sys.modules[__name__], "DOCKERIGNORE", ignore)
    assert in_image("keep/a/b.py") and in_image("top.txt")
    assert not in_image("other/top.txt") and not in_image("keep/a/__pycache__/b.pyc")
    assert not in_image("keep/secret.txt") and in_image("keep/a/secret.txt")
    assert not in_image("x.py")


# --- the one image of the services and the jobs ------------------------------------------


def test_every_service_and_job_of_the_repo_runs_one_image_built_once() -> None:
    """Seven `build: .` made seven copies of one image: one `image:` name for all, and one
    service that builds it from the repo's Dockerfile."""
    services = compose()["services"]
    assert {name for name, spec in services.items() if spec.get("image") == APP_IMAGE} == set(
        APP_CONTAINERS
    )
    builders = [name for name, spec in services.items() if "build" in spec]
    assert builders == [SERVICES[0].name], builders
    build = services[builders[0]]["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    assert (COMPOSE_FILE.parent / context).resolve() == ROOT
    assert (ROOT / "Dockerfile").is_file()


def lock_pins(path: Path) -> dict[str, str]:
    """{name: version} of a pip requirements file; asserts each pin carries its hashes."""
    pins = {}
    for requirement in re.split(r"\n(?=\S)", path.read_text()):
        if requirement.startswith("#") or not requirement.strip():
            continue
        name, version = requirement.split(maxsplit=1)[0].split("==")
        assert "--hash=sha256:" in requirement, f"{path.name}: {name} has no hash"
        pins[re.sub(r"[-_.]+", "-", name.split("[")[0].lower())] = version
    return pins


def requirement_names(requirements: list[str]) -> set[str]:
    return {
        re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower())
        for r in requirements
    }


def test_the_image_lock_has_the_runtime_dependencies_only_all_hashed() -> None:
    """requirements.lock (the image) and requirements-dev.lock (the virtualenv) pin the same
    versions; the image's lock has every runtime dependency and no dev tool."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, dev = lock_pins(ROOT / "requirements.lock"), lock_pins(ROOT / "requirements-dev.lock")
    assert requirement_names(project["dependencies"]) <= set(runtime)
    dev_tools = requirement_names(project["optional-dependencies"]["dev"])
    assert dev_tools <= set(dev)
    pulled_in = {  # a dev tool that a runtime dependency needs too is fine
        name
        for name in dev_tools & set(runtime)
        if re.search(
            rf"^{name}==.*\n(?:\s+.*\n)*?\s+#\s+via",
            (ROOT / "requirements.lock").read_text(),
            re.M | re.I,
        )
    }
    assert not (dev_tools & set(runtime)) - pulled_in, "dev tools in the image's lock"
    assert {name: dev[name] for name in runtime} == runtime, "the two locks disagree"


# --- docker compose itself, when installed ---------------------------------------------


def test_docker_compose_accepts_the_file() -> None:
    """`docker compose config` only parses: it needs the compose plugin, not an engine."""
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI")
    try:
        version = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("docker compose does not answer")
    if version.returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    done = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
