"""`python -m tools.ops.offsets` against a real broker, on topics of its own prefix: ten
records a minute apart on each partition of `orders` and `stock`, and a group that has
committed offset 7 on all six partitions."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from shared.clock import utcnow
from shared.messaging.topics import ensure_topics
from tests.helpers import eventually, unique
from tools.ops.offsets import main

pytestmark = pytest.mark.integration

RECORDS = 10
COMMITTED = 7
PARTITIONS = (0, 1, 2)


@dataclass(frozen=True)
class Group:
    bootstrap: str
    prefix: str
    group: str
    start: datetime
    """When each partition's first record was stamped; record i is i minutes later."""

    @property
    def orders(self) -> str:
        return self.prefix + "orders"

    @property
    def stock(self) -> str:
        return self.prefix + "stock"

    def consumer(self, **extra: object) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "latest",
                **extra,
            }
        )

    def committed(self) -> dict[tuple[str, int], int]:
        reader = self.consumer()
        try:
            places = [TopicPartition(t, p) for t in (self.orders, self.stock) for p in PARTITIONS]
            return {(tp.topic, tp.partition): tp.offset for tp in reader.committed(places, 30)}
        finally:
            reader.close()

    def first_read(self, topic: str) -> dict[int, tuple[int, int]]:
        """What a fresh member of the group reads first on each partition of `topic`:
        (offset, timestamp in ms)."""
        reader = self.consumer()
        reader.subscribe([topic])
        first: dict[int, tuple[int, int]] = {}
        deadline = time.monotonic() + 30
        try:
            while len(first) < len(PARTITIONS) and time.monotonic() < deadline:
                for message in reader.consume(100, 0.2):
                    if message.error() is None and message.partition() not in first:
                        first[message.partition() or 0] = (
                            message.offset() or 0,
                            message.timestamp()[1],
                        )
        finally:
            reader.close()
        return first

    def run(self, *args: str) -> int:
        return main(
            [self.group, *args, "--topic-prefix", self.prefix, "--bootstrap", self.bootstrap]
        )


@pytest.fixture
def group(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Group]:
    # Named, so the tool never signs in to a local cluster of this checkout instead.
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    prefix = unique("offsets") + "-"
    made = Group(kafka_bootstrap, prefix, unique("group"), utcnow() - timedelta(hours=1))
    ensure_topics(kafka_bootstrap, [made.orders, made.stock])
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    millis = int(made.start.timestamp() * 1000)
    for topic in (made.orders, made.stock):
        for partition in PARTITIONS:
            for i in range(RECORDS):
                stamp = millis + i * 60_000
                producer.produce(topic, b"{}", b"k", partition=partition, timestamp=stamp)
    assert producer.flush(30) == 0
    committer = made.consumer()
    places = [made.orders, made.stock]
    committer.commit(
        offsets=[TopicPartition(t, p, COMMITTED) for t in places for p in PARTITIONS],
        asynchronous=False,
    )
    committer.close()
    yield made


def everything_at(group: Group, offset: int) -> dict[tuple[str, int], int]:
    return {(t, p): offset for t in (group.orders, group.stock) for p in PARTITIONS}


def test_a_group_with_a_live_member_is_refused_with_the_member_named(
    group: Group, capsys: pytest.CaptureFixture[str]
) -> None:
    live = group.consumer(**{"client.id": "still-running"})
    live.subscribe([group.orders])
    try:
        eventually(lambda: live.consume(10, 0.2) is not None and live.assignment(), timeout=30)
        assert group.run("--to-earliest", "--execute") == 1
        said = capsys.readouterr().err
        assert f"group {group.group} has 1 live member(s)" in said
        member = live.memberid()
        assert member and member in said
        line = next(line for line in said.splitlines() if member in line)
        # the member's host as the broker sees it: 127.0.0.1 for a local broker, the bridge's
        # gateway for one in a container
        assert "still-running" in line and re.search(r" /\d+\.\d+\.\d+\.\d+ ", line), line
        assert f"{group.orders}[0]" in line
    finally:
        live.close()
    assert group.committed() == everything_at(group, COMMITTED)


def test_a_dry_run_prints_the_plan_and_moves_nothing(
    group: Group, capsys: pytest.CaptureFixture[str]
) -> None:
    assert group.run("--to-earliest") == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(group.prefix)]
    assert sorted(rows) == sorted(
        [t, str(p), str(COMMITTED), "0", str(RECORDS)]
        for t in (group.orders, group.stock)
        for p in PARTITIONS
    )
    assert "dry run: nothing changed" in out
    assert group.committed() == everything_at(group, COMMITTED)


def test_execute_moves_one_topic_to_a_time_and_a_fresh_member_reads_from_there(
    group: Group, capsys: pytest.CaptureFixture[str]
) -> None:
    when = group.start + timedelta(minutes=4, seconds=30)  # after record 4, before 5
    assert group.run("--to-datetime", when.isoformat(), "--topic", "orders", "--execute") == 0
    assert "moved group" in capsys.readouterr().out
    expected = everything_at(group, COMMITTED)
    expected.update({(group.orders, p): 5 for p in PARTITIONS})
    assert group.committed() == expected
    first = group.first_read(group.orders)
    assert {p: offset for p, (offset, _) in first.items()} == dict.fromkeys(PARTITIONS, 5)
    assert all(stamp >= when.timestamp() * 1000 for _, stamp in first.values())


@pytest.mark.parametrize(
    ("move", "offset", "note"),
    [
        (["--to-earliest"], 0, ""),
        (["--to-latest"], RECORDS, ""),
        (["--shift-by", "-2"], COMMITTED - 2, ""),
        (["--shift-by", "-1000"], 0, "is before the earliest record: clamped to the earliest"),
        (["--shift-by", "99"], RECORDS, "is past the end: clamped to the latest"),
    ],
)
def test_execute_moves_every_partition_and_a_fresh_member_reads_from_there(
    group: Group, capsys: pytest.CaptureFixture[str], move: list[str], offset: int, note: str
) -> None:
    assert group.run(*move, "--execute") == 0
    out = capsys.readouterr().out
    assert out.count(note) >= 2 * len(PARTITIONS)
    assert group.committed() == everything_at(group, offset)
    if offset < RECORDS:
        first = group.first_read(group.stock)
        assert {p: at for p, (at, _) in first.items()} == dict.fromkeys(PARTITIONS, offset)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["--topic", "users"],
            "reads no topic {prefix}users; it reads: {prefix}orders, {prefix}stock",
        ),
        (["--topic", "../orders"], "not a topic name"),
        (["--to-datetime", "2999-01-01T00:00:00Z"], "is in the future"),
        (["--to-datetime", "last tuesday"], "not an RFC 3339 time"),
        (["--shift-by", "9" * 30], "a shift is at most"),
    ],
)
def test_a_bad_request_is_refused_and_moves_nothing(
    group: Group, capsys: pytest.CaptureFixture[str], args: list[str], said: str
) -> None:
    if "--to-datetime" not in args and "--shift-by" not in args:
        args = ["--to-earliest", *args]
    try:
        status = group.run(*args, "--execute")
    except SystemExit as exc:  # argparse's refusal
        status = int(exc.code or 0)
    assert status == 2
    assert said.format(prefix=group.prefix) in capsys.readouterr().err
    assert group.committed() == everything_at(group, COMMITTED)


def test_a_group_that_does_not_exist_is_refused(
    group: Group, capsys: pytest.CaptureFixture[str]
) -> None:
    nobody = unique("nobody")
    assert main([nobody, "--to-earliest", "--execute", "--bootstrap", group.bootstrap]) == 2
    assert f"no consumer group {nobody} on the broker" in capsys.readouterr().err
