"""One table of topic settings (`shared.messaging.topics.TOPICS`) for every place topics are
made: the services at start-up, the local cluster and compose (`secure_stack`, which
compose's one-shot `kafka-init` runs) and the Kubernetes chart (`topic_spec`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from services.registry import SERVICES, load
from services.user.config import UserSettings
from services.user.main import SPEC as USER
from shared.messaging import topics
from shared.messaging.connection import KafkaConnection
from shared.messaging.events import Event
from shared.runtime import service as service_runtime
from tools.dev import k8s_values
from tools.local import kafka_security
from tools.local.cluster import describe_settings
from tools.local.kafka_security import Topology

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = Topology.of_registry()


def published() -> list[type[Event]]:
    return [event for service in SERVICES for event in load(f"{service.package}.events:PUBLISHES")]


def test_the_table_names_every_topic_of_the_stack_and_no_other() -> None:
    assert sorted(topics.TOPICS) == TOPOLOGY.topics


def test_state_topics_are_compacted_forever_and_event_topics_deleted_after_a_week() -> None:
    state = {name for name, policy in topics.TOPICS.items() if policy.state}
    assert state == {"products", "users", "stock-changes"}
    for name, policy in topics.TOPICS.items():
        config = policy.config()
        if policy.state:
            assert config["cleanup.policy"] == "compact", name
            assert config["retention.ms"] == -1, name
        else:
            assert config["cleanup.policy"] == "delete", name
            assert config["retention.ms"] == 7 * 24 * 3600 * 1000, name


def test_every_published_event_is_keyed_as_its_topic_says() -> None:
    """Compaction keeps the newest record per key: a state record keyed by anything but
    its entity's id would let one entity's record erase another's."""
    keyed: dict[str, set[str]] = {}
    for event in published():
        keyed.setdefault(event.topic, set()).add(event.key_field)
        assert event.key_field in topics.TOPICS[event.topic].keys, event.__name__
    for name, policy in topics.TOPICS.items():
        if policy.state:
            assert keyed[name] == set(policy.keys), name


def test_the_chart_carries_the_tables_settings_on_every_topic() -> None:
    path = ROOT / "deploy/k8s/event-driven-shop/files/registry.yaml"
    generated = {t["name"]: t for t in yaml.safe_load(path.read_text())["topics"]}
    assert sorted(generated) == sorted(topics.TOPICS)
    for name, policy in topics.TOPICS.items():
        config = generated[name]["config"]
        assert {key: config[key] for key in policy.config()} == policy.config(), name
        assert k8s_values.topic_spec(name)["config"] == config, name


@pytest.mark.parametrize("prefix", ["", "shop."])
def test_the_local_cluster_and_compose_create_and_align_with_the_tables_settings(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: dict[str, Any] = {}

    def ensure(_admin: object, names: list[str], *_: object, **kwargs: Any) -> None:
        made["names"], made["created"] = names, kwargs["configs"]

    def align(_admin: object, configs: dict[str, Any], *_: object) -> None:
        made["aligned"] = configs

    monkeypatch.setattr(kafka_security, "ensure_topics", ensure)
    monkeypatch.setattr(kafka_security, "align_configs", align)
    monkeypatch.setattr(kafka_security, "upsert_credentials", lambda *_: None)
    monkeypatch.setattr(kafka_security, "create_acls", lambda *_: None)
    kafka_security.secure_stack(KafkaConnection("127.0.0.1:1"), prefix, {}, TOPOLOGY)
    expected = {prefix + name: policy.config() for name, policy in topics.TOPICS.items()}
    assert sorted(made["names"]) == sorted(expected)
    assert made["created"] == expected
    assert made["aligned"] == expected


def test_compose_makes_its_topics_with_secure_stack() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    command = compose["services"]["kafka-init"]["command"]
    assert command[:3] == ["python", "-m", "tools.local.kafka_security"]
    assert "--prefix" not in command


class Created(Exception):
    """Stops a service's start once it asked for its topics."""


def test_a_service_creates_its_topics_with_the_tables_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: dict[str, Any] = {}

    def ensure(_kafka: object, names: list[str], **kwargs: Any) -> None:
        asked["names"], asked["configs"] = names, kwargs["configs"]
        raise Created

    monkeypatch.setattr(service_runtime, "ensure_topics", ensure)
    settings = UserSettings(
        database_url=f"sqlite:///{tmp_path}/user.db",
        kafka_bootstrap_servers="127.0.0.1:1",
        topic_prefix="t.",
    )
    runtime = service_runtime.ServiceRuntime(USER, settings)
    try:
        with pytest.raises(Created):
            runtime.start()
    finally:
        runtime.engine.dispose()
    assert sorted(asked["names"]) == ["t.dead-letters", "t.orders", "t.users"]
    for name in asked["names"]:
        assert asked["configs"][name] == topics.TOPICS[name.removeprefix("t.")].config()


def test_status_shows_each_topics_policy_and_retention_and_flags_a_drift() -> None:
    state, events = topics.TOPICS["products"], topics.TOPICS["orders"]
    applied = {key: str(value) for key, value in state.config().items()}
    assert describe_settings(applied, state) == "cleanup.policy compact, retention forever"
    applied = {key: str(value) for key, value in events.config().items()}
    assert describe_settings(applied, events) == "cleanup.policy delete, retention 7d"
    made_before = {"cleanup.policy": "delete", "retention.ms": "604800000", "segment.ms": "1"}
    assert describe_settings(made_before, state) == (
        "cleanup.policy delete, retention 7d  DIFFERS from TOPICS: wants "
        "cleanup.policy compact, retention.ms -1, segment.ms 604800000"
    )
    assert describe_settings({"retention.ms": "90000"}, None) == "cleanup.policy ?, retention 90s"
    assert describe_settings(None, state) == "settings unreadable"
