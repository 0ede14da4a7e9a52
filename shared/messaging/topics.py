"""The stack's topics: what each one keeps, and creating them at start-up when missing.

`TOPICS` is the one table of topic settings. A *state* topic carries the current value of
an entity, keyed by its id: it is compacted, so the newest record of every key is kept
forever and a consumer that reads it from the start learns every entity. An *event*
topic carries steps of a story that are needed only until every consumer has applied
them: its records are deleted after `EVENT_RETENTION`. The services (`ensure_topics`), the
local cluster and compose (`tools.local.kafka_security.secure_stack`) and the Kubernetes
chart (`tools.dev.k8s_values.topic_spec`) all take their settings from it.

Listing needs only DESCRIBE on a topic and a topic that exists is enough: a service on a
secured cluster (where the operator creates the topics and services hold no CREATE
right) starts without asking for anything more."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from shared.messaging.connection import Bootstrap, client_config
from shared.messaging.deadletter import DEAD_LETTERS

DEFAULT_PARTITIONS = 3
MAX_REPLICATION = 3

EVENT_RETENTION = timedelta(days=7)
"""How long an event topic keeps a record. A consumer's processed ids must outlive it plus
a segment's age (`<NAME>_PROCESSED_RETENTION_HOURS`, 30 days), or a replay could re-apply."""
SEGMENT_AGE = timedelta(days=7)
"""Kafka's default `log.roll.ms`: a segment is deleted, or compacted, only once closed."""


@dataclass(frozen=True)
class TopicPolicy:
    """What a topic's records are, what keys them, and so how long the broker keeps them."""

    state: bool
    """Compacted (the newest record per key, forever) rather than deleted by age."""
    keys: tuple[str, ...]
    """The fields of its events that are its record keys."""
    meaning: str

    @property
    def cleanup_policy(self) -> str:
        return "compact" if self.state else "delete"

    @property
    def retention(self) -> timedelta | None:
        """None: forever (the newest record per key)."""
        return None if self.state else EVENT_RETENTION

    def config(self) -> dict[str, str | int]:
        """The topic's configuration, as Kafka names it."""
        retention = self.retention
        return {
            "cleanup.policy": self.cleanup_policy,
            "retention.ms": -1 if retention is None else _millis(retention),
            "segment.ms": _millis(SEGMENT_AGE),
        }


def _millis(span: timedelta) -> int:
    return int(span.total_seconds() * 1000)


TOPICS: dict[str, TopicPolicy] = {
    "orders": TopicPolicy(
        False, ("order_id",), "each order's steps, read in order once by each consumer"
    ),
    "stock": TopicPolicy(False, ("order_id",), "inventory's answer to each order"),
    DEAD_LETTERS: TopicPolicy(
        False, (), "records a consumer could not apply; redriven while their source keeps them"
    ),
    "products": TopicPolicy(True, ("product_id",), "each product as it was created"),
    "users": TopicPolicy(
        True,
        ("user_id", "issuer"),
        "each registered user; the newest signing-keys set of each issuer, which "
        "supersedes every older one",
    ),
    "stock-changes": TopicPolicy(
        True,
        ("product_id",),
        "each product's whole availability with its version: the newest supersedes the rest",
    ),
}
"""Every topic of the stack, unprefixed (tests/unit/test_topic_settings.py holds it equal to
the topics the services publish and consume)."""


def topic_configs(prefix: str = "") -> dict[str, dict[str, str | int]]:
    """Each of the stack's topics by its prefixed name, with its configuration."""
    return {prefix + name: policy.config() for name, policy in TOPICS.items()}


def ensure_topics(
    bootstrap: Bootstrap,
    names: Iterable[str],
    partitions: int = DEFAULT_PARTITIONS,
    replication_factor: int | None = None,
    timeout: float = 30,
    configs: Mapping[str, Mapping[str, str | int]] | None = None,
) -> None:
    """Create each topic unless it exists; "already exists" counts as success.

    `replication_factor` defaults to the cluster's size up to three (`replication_for`);
    `configs` gives a topic, by its name, its configuration (`topic_configs`)."""
    configs = configs or {}
    admin = AdminClient(client_config(bootstrap))
    wanted = sorted(set(names))
    metadata = admin.list_topics(timeout=timeout)
    missing = [name for name in wanted if name not in metadata.topics]
    if not missing:
        return
    if replication_factor is None:
        replication_factor = replication_for(len(metadata.brokers))
    futures = admin.create_topics(
        [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=replication_factor,
                config={key: str(value) for key, value in configs.get(name, {}).items()},
            )
            for name in missing
        ],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    for future in futures.values():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    _await_metadata(admin, wanted, timeout)


def align_configs(
    bootstrap: Bootstrap, configs: Mapping[str, Mapping[str, str | int]], timeout: float = 30
) -> None:
    """Set each topic's configuration to `configs` (a topic made before it changed gets
    it too); other settings of the topic stay. Needs ALTER_CONFIGS: the admin's."""
    admin = AdminClient(client_config(bootstrap))
    resources = [
        ConfigResource(
            ConfigResource.Type.TOPIC,
            name,
            incremental_configs=[
                ConfigEntry(key, str(value), incremental_operation=AlterConfigOpType.SET)
                for key, value in config.items()
            ],
        )
        for name, config in configs.items()
    ]
    futures = admin.incremental_alter_configs(resources, request_timeout=timeout)
    for future in futures.values():
        future.result(timeout)


def replication_for(brokers: int) -> int:
    """Three copies of each partition where there are three brokers, else one per broker."""
    return max(1, min(MAX_REPLICATION, brokers))


def _await_metadata(admin: AdminClient, names: list[str], timeout: float) -> None:
    """Wait until the broker's metadata shows every topic with a leader for each partition.

    A consumer that subscribes before then is told the topic does not exist and, by
    default, looks again only at its next metadata refresh, minutes later."""
    deadline = time.monotonic() + timeout
    while True:
        topics = admin.list_topics(timeout=timeout).topics
        ready = all(
            name in topics
            and topics[name].error is None
            and topics[name].partitions
            and all(p.leader >= 0 for p in topics[name].partitions.values())
            for name in names
        )
        if ready:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not visible in metadata after {timeout}s: {names}")
        time.sleep(0.1)
