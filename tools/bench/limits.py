"""The two ceilings the end-to-end numbers are read against.

- HTTP: wrk, with the same script, connections and threads, against `bare_app` served by
  one uvicorn process started with the services' flags (uvloop and httptools when
  installed, which uvicorn picks by itself) on a free loopback port.
- Kafka: one Python process produces `messages` small keyed records with the services'
  producer settings (idempotent, acks=all, lz4, linger 2 ms) to a fresh 3-partition
  topic while a consumer thread reads them back; the ceiling is messages over the time
  from the first produce to the last record consumed."""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from shared.messaging.connection import Bootstrap, client_config
from shared.messaging.producer import producer_config
from shared.messaging.topics import ensure_topics
from tools.bench.procs import Sampler
from tools.bench.report import cpu_summary
from tools.bench.wrk import OrderMix, run_wrk
from tools.local.stack import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def bare_server(timeout: float = 30) -> Any:
    """Serve bare_app on a free port for the duration of the block; yield (url, pid)."""
    with tempfile.TemporaryDirectory() as run_dir:
        server = ServiceProcess(
            "bare", free_port(), Path(run_dir), app="tools.bench.bare_app:create_app"
        )
        server.start()
        try:
            server.wait_ready(timeout)
            yield server.url, server.pid()
        finally:
            server.stop()


def http_ceiling(
    *,
    duration: float,
    connections: int,
    threads: int,
    sampler: Sampler,
    say: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """wrk against the async and the threadpool endpoint of bare_app, one after the other."""
    results = {}
    with bare_server() as (url, pid):
        sampler.add("bare-uvicorn", pid)
        for name, path in (
            ("bare async def", "/orders"),
            ("bare def (threadpool)", "/orders-sync"),
        ):
            mix = OrderMix(tokens=["t"], ample=["p"], path=path)

            def tick(elapsed: float, name: str = name) -> None:
                cpu = sampler.latest
                say(
                    f"  [{elapsed:4.0f}s] {name}: uvicorn CPU {cpu.get('bare-uvicorn', 0):.0f}%"
                    f"  wrk {cpu.get('wrk', 0):.0f}%"
                )

            began = time.time()
            result = run_wrk(
                url,
                mix,
                duration=duration,
                connections=connections,
                threads=threads,
                on_tick=tick,
                on_start=lambda p: sampler.add("wrk", p.pid),
            )
            sampler.remove("wrk")
            result["processes"] = {
                k: v
                for k, v in cpu_summary(sampler.samples, began + 1, time.time()).items()
                if k in ("bare-uvicorn", "wrk", "others")
            }
            results[name] = result
            say(f"  {name}: {result['requests_per_s']:.0f} req/s")
        sampler.remove("bare-uvicorn")
    return results


def kafka_ceiling(
    bootstrap: Bootstrap,
    *,
    messages: int = 200_000,
    value_size: int = 150,
    timeout: float = 180,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    topic = f"bench-raw-{uuid.uuid4().hex[:12]}"
    ensure_topics(bootstrap, [topic], partitions=3)
    admin = AdminClient(client_config(bootstrap))
    try:
        return _produce_and_consume(bootstrap, topic, messages, value_size, timeout, say)
    finally:
        with contextlib.suppress(Exception):
            for future in admin.delete_topics([topic], operation_timeout=30).values():
                future.result(30)


class _Reader(threading.Thread):
    """Consumes `topic` from the start of every partition until it counted `messages`
    records or is stopped; `last` is when it consumed its last batch."""

    def __init__(self, bootstrap: Bootstrap, topic: str, messages: int) -> None:
        super().__init__(name="bench-raw-consumer", daemon=True)
        self.consumer = Consumer(
            client_config(
                bootstrap,
                **{
                    "group.id": f"bench-raw-{uuid.uuid4().hex[:12]}",
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": 100,
                },
            )
        )
        partitions = self.consumer.list_topics(topic, timeout=30).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self.messages, self.consumed, self.last = messages, 0, 0.0
        self.stopped = threading.Event()

    def run(self) -> None:
        while self.consumed < self.messages and not self.stopped.is_set():
            for message in self.consumer.consume(1000, 0.5):
                if message.error() is None:
                    self.consumed += 1
            self.last = time.monotonic()

    def finish(self, timeout: float) -> None:
        self.join(timeout)
        self.stopped.set()
        self.join(5)
        self.consumer.close()


def _produce(
    bootstrap: Bootstrap, topic: str, value: bytes, messages: int, timeout: float
) -> list[KafkaError]:
    """`messages` records of `value` with distinct keys, with the services' producer
    settings, flushed; the delivery errors."""
    producer = Producer(producer_config(bootstrap, log_level=5))  # no info-level noise
    errors: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            errors.append(error)

    for key in (f"{i:032x}".encode() for i in range(messages)):
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(max(1.0, timeout))
    return errors


def _produce_and_consume(
    bootstrap: Bootstrap,
    topic: str,
    messages: int,
    value_size: int,
    timeout: float,
    say: Callable[[str], None],
) -> dict[str, Any]:
    reader = _Reader(bootstrap, topic, messages)
    value = (b'{"order_id":"' + b"x" * max(value_size - 16, 0) + b'"}')[:value_size]
    deadline = time.monotonic() + timeout
    began = time.monotonic()
    reader.start()
    errors = _produce(bootstrap, topic, value, messages, deadline - time.monotonic())
    produced = time.monotonic()
    say(f"  kafka: produced {messages} in {produced - began:.1f}s, consuming...")
    reader.finish(max(1.0, deadline - time.monotonic()))
    if reader.consumed < messages:
        raise RuntimeError(
            f"kafka ceiling: consumed {reader.consumed} of {messages} before timeout"
        )
    if errors:
        raise RuntimeError(f"kafka ceiling: {len(errors)} delivery errors, first {errors[0]}")
    return {
        "messages": messages,
        "value_bytes": len(value),
        "produce_s": produced - began,
        "produce_per_s": messages / (produced - began),
        "roundtrip_s": reader.last - began,
        "roundtrip_per_s": messages / (reader.last - began),
        "producer": "services' producer_config: idempotent, acks=all, lz4, linger.ms=2",
    }
