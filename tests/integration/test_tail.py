"""`python -m tools.ops.tail` against a real broker: one order's saga, another order, a
malformed record and a dead letter on a stack of its own (a unique topic prefix)."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient

from shared.clock import utcnow
from shared.messaging.deadletter import DEAD_LETTERS, DeadLetter, Reason, dead_letter
from shared.messaging.envelope import Envelope, KafkaHeaders, dump_json
from shared.messaging.producer import EventProducer
from shared.messaging.topics import ensure_topics
from tests.helpers import unique
from tools.ops.tail import main, stack_topics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


START = utcnow() - timedelta(hours=1)
"""When the saga happened: before the records produced as they are, stamped now."""


def saga_event(type_: str, key: str, correlation: str, cause: str, seconds: float) -> Envelope:
    return Envelope(
        type=type_,
        source="/tests",
        key=key,
        data=dump_json({"key": key}),
        time=START + timedelta(seconds=seconds),
        correlation_id=correlation,
        causation_id=cause,
        traceparent=f"00-{TRACE}-00f067aa0ba902b7-01",
    )


@dataclass
class Placed:
    """A published event where it landed: a record as `dead_letter` takes one."""

    event: Envelope
    topic_: str
    partition_: int
    offset_: int

    def headers(self) -> KafkaHeaders:
        return self.event.headers()

    def key(self) -> bytes:
        return self.event.key.encode()

    def value(self) -> bytes:
        return self.event.data

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    @property
    def where(self) -> str:
        return f"{self.topic_}[{self.partition_}]@{self.offset_}"


@dataclass
class Stack:
    bootstrap: str
    prefix: str
    producer: EventProducer
    order: str = field(default_factory=lambda: unique("order"))
    other: str = field(default_factory=lambda: unique("order"))
    product: str = field(default_factory=lambda: unique("product"))

    def publish(self, topic: str, event: Envelope) -> Placed:
        """Publish `event`; return it where it landed."""
        delivery = self.producer.publish(self.prefix + topic, event)
        assert delivery.partition is not None and delivery.offset is not None
        return Placed(event, self.prefix + topic, delivery.partition, delivery.offset)

    def run(self, *args: str) -> int:
        return main(["--topic-prefix", self.prefix, "--bootstrap", self.bootstrap, *args])


@pytest.fixture
def stack(kafka_bootstrap: str) -> Iterator[Stack]:
    prefix = unique("tail") + "-"
    ensure_topics(kafka_bootstrap, stack_topics(prefix))
    producer = EventProducer(kafka_bootstrap)
    try:
        yield Stack(kafka_bootstrap, prefix, producer)
    finally:
        producer.close()


@pytest.fixture
def places(stack: Stack) -> dict[str, str]:
    """One order's saga (published out of time order), another order, a malformed record
    keyed by the order and the dead letter of the order's confirmation: where each is."""
    order, other = stack.order, stack.other
    created = saga_event("order-created", order, order, "request-1", seconds=1)
    reserved = saga_event("stock-reserved", order, order, created.id, seconds=2)
    changed = saga_event("stock-changed", stack.product, order, created.id, seconds=2.5)
    confirmed = saga_event("order-confirmed", order, order, reserved.id, seconds=3)
    where = {
        "order-confirmed": stack.publish("orders", confirmed),
        "stock-changed": stack.publish("stock-changes", changed),
        "stock-reserved": stack.publish("stock", reserved),
        "order-created": stack.publish("orders", created),
        "other": stack.publish("orders", saga_event("order-created", other, other, "r", 0)),
    }
    stack.producer.produce_raw(
        stack.prefix + "orders", b"not json", key=order.encode(), headers=created.headers()
    )
    dead_letter(
        stack.producer,
        stack.prefix + DEAD_LETTERS,
        where["order-confirmed"],
        "user",
        DeadLetter(Reason.HANDLER_FAILED, "RuntimeError: mail server down"),
    )
    return {name: placed.where for name, placed in where.items()}


def output(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_prints_every_retained_record_of_the_stack_by_time_and_exits(
    stack: Stack, places: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack.run() == 0

    lines = output(capsys)
    times = [line.split()[0] for line in lines]
    assert times == sorted(times)
    assert [line.split()[1:4] for line in lines[:5]] == [
        [places["other"], "order-created", stack.other],
        [places["order-created"], "order-created", stack.order],
        [places["stock-reserved"], "stock-reserved", stack.order],
        [places["stock-changed"], "stock-changed", stack.product],
        [places["order-confirmed"], "order-confirmed", stack.order],
    ]
    undecodable, parked = sorted(lines[5:], key=lambda line: "dead letter" in line)
    assert undecodable.split()[1].startswith(f"{stack.prefix}orders[")
    assert undecodable.split()[2:4] == ["UNDECODABLE", stack.order]
    assert "undecodable: value is not JSON: " in undecodable
    assert parked.split()[1].startswith(f"{stack.prefix}dead-letters[")
    assert parked.split()[2:4] == ["order-confirmed", stack.order]
    assert parked.endswith(
        f"dead letter: handler-failed by user from {places['order-confirmed']}: "
        "RuntimeError: mail server down"
    )
    assert len(lines) == 7


def test_order_prints_only_that_orders_story(
    stack: Stack, places: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack.run("--order", stack.order) == 0

    lines = output(capsys)
    saga = [line.split()[2] for line in lines if "UNDECODABLE" not in line]
    assert saga == [
        "order-created",
        "stock-reserved",
        "stock-changed",  # keyed by product, correlated with the order
        "order-confirmed",
        "order-confirmed",  # its dead letter, parked after it
    ]
    assert sum("undecodable: value is not JSON" in line for line in lines) == 1
    assert not any(stack.other in line for line in lines)


def test_a_topic_with_or_without_the_prefix_in_json_lines(
    stack: Stack, places: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack.run("--topic", "stock", "--topic", f"{stack.prefix}stock-changes", "--json") == 0

    records = [json.loads(line) for line in output(capsys)]
    assert [(r["type"], r["key"], r["trace_id"]) for r in records] == [
        ("stock-reserved", stack.order, TRACE),
        ("stock-changed", stack.product, TRACE),
    ]
    assert all(r["correlation_id"] == stack.order for r in records)


def test_a_missing_topic_is_an_error_and_nothing_is_ever_committed(
    stack: Stack, places: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack.run("--topic", "nowhere", "--timeout", "10") == 1
    assert "no topic" in capsys.readouterr().err
    assert stack.run() == 0

    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    groups = admin.list_consumer_groups(request_timeout=10).result().valid
    tails = [group.group_id for group in groups if group.group_id.startswith("tail-")]
    for group in tails:  # the tail assigns partitions: its group never exists on the broker
        request = ConsumerGroupTopicPartitions(group)
        offsets = admin.list_consumer_group_offsets([request])[group].result()
        assert not [p for p in offsets.topic_partitions if p.topic.startswith(stack.prefix)]


def test_follow_prints_the_retained_story_then_new_events_until_ctrl_c(
    stack: Stack, places: dict[str, str]
) -> None:
    command = [sys.executable, "-m", "tools.ops.tail", "--follow", "--order", stack.order]
    command += ["--topic-prefix", stack.prefix, "--bootstrap", stack.bootstrap]
    child = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a test run started in the background (`cmd &` in a script)
        # ignores SIGINT, and its children would inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=pump, args=(child, lines), daemon=True).start()
    try:
        seen = take(lines, until=lambda got: len(got) == 6)  # the story so far
        assert [line.split()[2] for line in seen].count("order-confirmed") == 2
        cancelled = saga_event("order-cancelled", stack.order, stack.order, "request-2", 4)
        stack.publish("orders", saga_event("order-cancelled", stack.other, stack.other, "r", 4))
        where = stack.publish("orders", cancelled)

        (line,) = take(lines, until=lambda got: len(got) == 1)

        assert line.split()[1:4] == [where.where, "order-cancelled", stack.order]
    finally:
        child.send_signal(signal.SIGINT)
        code = child.wait(timeout=30)
    assert code == 0
    assert "Traceback" not in (child.stderr.read() if child.stderr else "")


def pump(child: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    for line in child.stdout or []:
        lines.put(line)


def take(
    lines: queue.Queue[str], until: Callable[[list[str]], bool], timeout: float = 30
) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while not until(got):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {got} within {timeout}s"
        try:
            got.append(lines.get(timeout=remaining).rstrip("\n"))
        except queue.Empty:
            continue
    return got
