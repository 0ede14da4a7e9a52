"""The test suite's Kafka and PostgreSQL in containers (testcontainers), on the images
`make images` builds (tools/local/images.py): a registry need not be reachable.

Kafka runs the local Kafka image (Kafka's own KafkaDockerWrapper reads the KAFKA_*
environment, as in the official image) as one KRaft node configured like the local broker
of tools/local/kafka.py; PostgreSQL runs in testcontainers' PostgresContainer on the local
PostgreSQL image. Each publishes its port on 127.0.0.1 only. testcontainers' reaper (Ryuk)
is an image of its own that cannot be pulled here, so it is off: whoever starts a container
stops it (tests/conftest.py); what a killed run left is removed before the next one starts a
container, or by `python -m tests.containers clean` (every container carries the LABEL,
whose value is the pid of the run that started it)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from tools.local.images import select

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

LABEL = "org.event-driven-shop.tests"
"""Every container started here carries it (the value: the pid of the run that started it)."""
CLUSTER_ID = "tT5hLq1vQ9Cw1lRw4a2gMg"


def image_ref(name: str) -> str:
    """The ref of the local image `name` (tools/local/images.py)."""
    return next(image.ref for image in select([name]) if image.name == name)


def image_present(ref: str) -> bool:
    done = subprocess.run(["docker", "image", "inspect", ref], capture_output=True, timeout=30)
    return done.returncode == 0


@dataclass
class Running:
    """A started container: what it is, where it answers, and how to stop it."""

    what: str
    """For the test header: the image it runs."""
    address: str
    """Kafka's bootstrap address, or PostgreSQL's superuser URL."""
    container: Any

    def stop(self) -> None:
        self.container.stop()


def kafka_env(port: int) -> dict[str, str]:
    """One node, broker and controller, PLAINTEXT on 127.0.0.1:`port` (the host's side),
    with the settings of the local broker (tools/local/kafka.py SERVER_PROPERTIES)."""
    return {
        "KAFKA_NODE_ID": "1",
        "CLUSTER_ID": CLUSTER_ID,
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENERS": "PLAINTEXT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_NUM_PARTITIONS": "3",
        "KAFKA_DEFAULT_REPLICATION_FACTOR": "1",
        "KAFKA_MIN_INSYNC_REPLICAS": "1",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
        "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "1",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_NUM_PARTITIONS": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_LOG_CLEANER_DEDUPE_BUFFER_SIZE": "2097152",
        "KAFKA_NUM_NETWORK_THREADS": "2",
        "KAFKA_NUM_IO_THREADS": "2",
        "KAFKA_HEAP_OPTS": "-Xmx512m -Xms256m",
    }


def _answers(bootstrap: str) -> bool:
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000, "log_level": 3})
    try:
        admin.list_topics(timeout=2)
    except KafkaException:
        return False
    return True


def start_kafka(port: int, timeout: float = 180) -> Running:
    """The local Kafka image on 127.0.0.1:`port`; returns once it answers."""
    from testcontainers.core.container import DockerContainer

    clean()
    ref = image_ref("kafka")
    container = DockerContainer(ref)
    container.ports["9092"] = ("127.0.0.1", port)  # docker-py's (interface, port) binding
    for name, value in kafka_env(port).items():
        container.with_env(name, value)
    container.with_kwargs(labels={LABEL: str(os.getpid())})
    container.start()
    bootstrap = f"127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while not _answers(bootstrap):
        container.get_wrapped_container().reload()
        state = container.get_wrapped_container().status
        if state != "running" or time.monotonic() > deadline:
            logs = container.get_wrapped_container().logs(tail=40).decode(errors="replace")
            container.stop()
            raise RuntimeError(f"the Kafka container ({ref}) did not answer ({state}):\n{logs}")
        time.sleep(0.5)
    return Running(f"testcontainers {ref}", bootstrap, container)


def start_postgres() -> Running:
    """testcontainers' PostgresContainer on the local PostgreSQL image, its port on
    127.0.0.1; `address` is the superuser's URL (psycopg), as TEST_DATABASE_URL takes it."""
    from testcontainers.postgres import PostgresContainer

    clean()
    ref = image_ref("postgres")
    container = PostgresContainer(
        ref, username="shop", password=secrets.token_urlsafe(16), dbname="postgres",
        driver="psycopg",
    )  # fmt: skip
    container.ports["5432"] = ("127.0.0.1", None)  # a free port, on loopback only
    container.with_kwargs(labels={LABEL: str(os.getpid())})
    container.start()
    url = container.get_connection_url(host="127.0.0.1")
    return Running(f"testcontainers PostgresContainer {ref}", url, container)


def clean() -> list[str]:
    """Remove every container a test run started here whose run is gone."""
    listing = ["docker", "ps", "-a", "--filter", f"label={LABEL}"]
    done = subprocess.run(
        [*listing, "--format", f'{{{{.ID}}}} {{{{.Label "{LABEL}"}}}}'],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    removed = []
    for line in done.stdout.splitlines():
        container, _, pid = line.partition(" ")
        if pid.isdigit() and os.path.exists(f"/proc/{pid}"):
            continue
        subprocess.run(["docker", "rm", "-f", "-v", container], capture_output=True, check=True)
        removed.append(container)
    return removed


if __name__ == "__main__":
    if sys.argv[1:] != ["clean"]:
        sys.exit("usage: python -m tests.containers clean")
    print(f"removed {len(clean())} container(s)")
