"""Topic bootstrap: create declared topics at start-up when they are missing."""

from __future__ import annotations

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
