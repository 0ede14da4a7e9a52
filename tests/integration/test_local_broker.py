"""The local Kafka broker launcher (tools/local/kafka.py) against a real broker process.

Uses its own LocalBroker on free ports in a temporary home, never the shared one on 9092.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from tests.conftest import free_port
from tools.local.kafka import ROOT, LocalBroker
from tools.local.process import port_open

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    port, controller_port = free_port(), free_port()
    b = LocalBroker(
        tmp_path_factory.mktemp("kafka"), port=port, controller_port=controller_port, heap_mb=256
    )
    b.start(timeout=90)
    yield b
    b.kill()


def _wait_until_gone(b: LocalBroker, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while port_open("127.0.0.1", b.port) or port_open("127.0.0.1", b.controller_port):
        assert time.monotonic() < deadline, "broker ports still open"
        time.sleep(0.05)


def _read_one(bootstrap: str, topic: str, partition: int, timeout: float) -> Message:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"t-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, partition, 0)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None and err.code() != KafkaError._PARTITION_EOF:
                raise AssertionError(f"consume failed: {err}")
            if err is None:
                return msg
        raise AssertionError(f"no message on {topic}[{partition}] within {timeout}s")
    finally:
        consumer.close()


def _status(b: LocalBroker) -> int:
    cmd = [
        sys.executable,
        "-m",
        "tools.local.kafka",
        "status",
        "--home",
        str(b.home),
        "--port",
        str(b.port),
        "--controller-port",
        str(b.controller_port),
    ]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=30).returncode


def test_start_is_idempotent(broker: LocalBroker) -> None:
    broker.start()
    first = broker.pid()
    assert first is not None and broker.is_running()

    broker.start()

    assert broker.pid() == first
    assert (broker.home / "broker.pid").read_text().strip() == str(first)


def test_kill_then_start_recovers_acknowledged_message(broker: LocalBroker) -> None:
    broker.start()
    topic = f"crash-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(30)
    producer = Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
        }
    )
    reports: list[tuple[KafkaError | None, int | None]] = []
    producer.produce(
        topic,
        key=b"order-1",
        value=b"survives kill -9",
        headers=[("event-type", b"OrderPlaced")],
        on_delivery=lambda err, msg: reports.append((err, msg.partition())),
    )
    assert producer.flush(30) == 0
    assert len(reports) == 1 and reports[0][0] is None
    partition = reports[0][1]
    assert partition is not None
    old_pid = broker.pid()

    broker.kill()
    assert broker.pid() is None and not broker.is_running()
    assert not port_open("127.0.0.1", broker.port)

    broker.start(timeout=90)
    assert broker.is_running() and broker.pid() != old_pid
    msg = _read_one(broker.bootstrap, topic, partition, timeout=30)
    assert (msg.key(), msg.value()) == (b"order-1", b"survives kill -9")
    assert msg.headers() == [("event-type", b"OrderPlaced")]


def test_stop_frees_the_port(broker: LocalBroker) -> None:
    broker.start()
    assert _status(broker) == 0

    broker.stop()

    assert broker.pid() is None and not broker.is_running()
    assert not (broker.home / "broker.pid").exists()
    _wait_until_gone(broker)
    assert _status(broker) == 3


def test_start_refuses_a_port_taken_by_another_process(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        controller_port = free_port()
        b = LocalBroker(tmp_path / "kafka", port=taken, controller_port=controller_port)
        with pytest.raises(RuntimeError, match="taken"):
            b.start(timeout=10)
    assert b.pid() is None
