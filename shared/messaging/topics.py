"""Topic bootstrap: create declared topics at start-up when they are missing."""

from __future__ import annotations

import time
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

DEFAULT_PARTITIONS = 3


def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int = DEFAULT_PARTITIONS,
    replication_factor: int = 1,
    timeout: float = 30,
) -> None:
    """Create each topic unless it exists; "already exists" counts as success."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    wanted = sorted(set(names))
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [name for name in wanted if name not in existing]
    if not missing:
        return
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
