"""Topic bootstrap: create declared topics at start-up when they are missing.

Listing needs only DESCRIBE on a topic and a topic that exists is enough: a service on a
secured cluster (where the operator creates the topics and services hold no CREATE
right) starts without asking for anything more."""

from __future__ import annotations

import time
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from shared.messaging.connection import Bootstrap, client_config

DEFAULT_PARTITIONS = 3
MAX_REPLICATION = 3


def ensure_topics(
    bootstrap: Bootstrap,
    names: Iterable[str],
    partitions: int = DEFAULT_PARTITIONS,
    replication_factor: int | None = None,
    timeout: float = 30,
) -> None:
    """Create each topic unless it exists; "already exists" counts as success.

    `replication_factor` defaults to the cluster's size up to three (`replication_for`)."""
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
            NewTopic(name, num_partitions=partitions, replication_factor=replication_factor)
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
