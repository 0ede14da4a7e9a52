"""Move a consumer group: its committed offsets to a time, the earliest or latest record,
or N records on.

    python -m tools.ops.offsets GROUP (--to-datetime T | --to-earliest | --to-latest |
                                      --shift-by N) [--topic T ...] [--execute]
                                      [--topic-prefix P] [--bootstrap HOST:PORT]

It prints the plan, each partition's offset from and to and the lag that leaves, and
changes nothing unless `--execute` is given, as Kafka's `kafka-consumer-groups
--reset-offsets` does. It moves every partition of the topics the group has committed
offsets on, or of each `--topic` (with or without the prefix) among them.

It refuses while the group has live members, naming each (member id, client id, host):
a running member goes on from its own position and commits over the new offsets. Stop
the group's service (`python -m tools.local.stack stop order`), move it, start it again:
it then reads from the new offsets. Moving a service's group back makes it read records
again, which its processed-events table makes harmless; moving it on skips records for
good. `--to-datetime` takes an RFC 3339 time with its zone (`2026-12-07T06:00:00Z`) and
moves to the first record stamped at or after it; `--shift-by` clamps to the earliest
and latest record and says so.

On `make up`'s cluster it signs in as the service whose group it is (a service may read,
and so move, only its own group), or else as the admin."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConsumerGroupDescription,
    OffsetSpec,
)

from services.registry import names
from shared.messaging.connection import Bootstrap, client_config
from shared.runtime.settings import KafkaSettings
from tools.local.certs import ADMIN
from tools.local.cluster import sign_in_locally
from tools.ops import times

TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
"""What Kafka accepts as a topic name."""
MAX_GROUP = 255
LARGEST_SHIFT = 2**63 - 1


class Refused(Exception):
    """The group cannot be moved now (live members, the broker said no); exit status 1."""

    status = 1


class Unknown(Refused):
    """The group or a topic is not what the command line says; exit status 2."""

    status = 2


@dataclass(frozen=True)
class Move:
    """Where to: `to` is `datetime`, `earliest`, `latest` or `shift`."""

    to: str
    when: datetime | None = None
    shift: int = 0

    def __str__(self) -> str:
        if self.to == "datetime" and self.when is not None:
            return f"to {self.when.isoformat()}"
        return f"by {self.shift:+d}" if self.to == "shift" else f"to the {self.to}"


@dataclass(frozen=True)
class Partition:
    """What the broker says of one partition: the group's committed offset (None: none),
    its earliest and end offsets and, for a move to a time, the first offset from then on
    (None: no record since)."""

    topic: str
    partition: int
    committed: int | None
    low: int
    high: int
    at_time: int | None = None


@dataclass(frozen=True)
class Step:
    topic: str
    partition: int
    current: int | None
    new: int
    lag: int
    note: str = ""


def _earliest(p: Partition, move: Move) -> tuple[int, str]:
    return p.low, ""


def _latest(p: Partition, move: Move) -> tuple[int, str]:
    return p.high, ""


def _datetime(p: Partition, move: Move) -> tuple[int, str]:
    if p.at_time is None:
        return p.high, "no record since then: the end"
    return p.at_time, ""


def _shift(p: Partition, move: Move) -> tuple[int, str]:
    base, note = p.committed, ""
    if base is None:
        base, note = p.low, "no committed offset: shifted from the earliest"
    wanted = base + move.shift
    if wanted < p.low:
        return p.low, f"{wanted} is before the earliest record: clamped to the earliest"
    if wanted > p.high:
        return p.high, f"{wanted} is past the end: clamped to the latest"
    return wanted, note


TARGETS: dict[str, Callable[[Partition, Move], tuple[int, str]]] = {
    "earliest": _earliest,
    "latest": _latest,
    "datetime": _datetime,
    "shift": _shift,
}


def plan(partitions: Sequence[Partition], move: Move) -> list[Step]:
    """Each partition's step: from its committed offset to where `move` says."""
    steps = []
    for p in sorted(partitions, key=lambda p: (p.topic, p.partition)):
        new, note = TARGETS[move.to](p, move)
        steps.append(Step(p.topic, p.partition, p.committed, new, p.high - new, note))
    return steps


def columns(rows: Sequence[Sequence[str]]) -> str:
    """Rows as left-aligned columns, the last one unpadded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]
        ).rstrip()
        for row in rows
    )


def table(steps: Sequence[Step]) -> str:
    return columns(
        [("TOPIC", "PARTITION", "FROM", "TO", "LAG", "")]
        + [
            (s.topic, str(s.partition), "-" if s.current is None else str(s.current))
            + (str(s.new), str(s.lag), s.note)
            for s in steps
        ]
    )


# Asking the broker.


def describe(admin: AdminClient, group: str, timeout: float) -> ConsumerGroupDescription:
    (future,) = admin.describe_consumer_groups([group], request_timeout=timeout).values()
    description: ConsumerGroupDescription = future.result(timeout)
    return description


def refuse_live(group: str, description: ConsumerGroupDescription) -> None:
    members = description.members
    if not members:
        return
    rows = [("MEMBER ID", "CLIENT ID", "HOST", "PARTITIONS")]
    for member in members:
        assigned = member.assignment.topic_partitions if member.assignment else []
        where = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in assigned) or "none"
        rows.append((member.member_id, member.client_id, member.host, where))
    raise Refused(
        f"group {group} has {len(members)} live member(s) ({description.state.name}); stop "
        "them first, or they commit their own positions over the new offsets:\n" + columns(rows)
    )


def committed(
    kafka: Bootstrap, admin: AdminClient, group: str, timeout: float
) -> dict[tuple[str, int], int]:
    """The group's committed offsets on every topic this principal may see, read by a
    consumer that carries the group's id and joins nothing. Not the admin client's
    ListConsumerGroupOffsets: a NOT_COORDINATOR answer to it crashes librdkafka (its
    issue #5040)."""
    metadata = admin.list_topics(timeout=timeout).topics
    places = [
        TopicPartition(name, partition)
        for name, topic in metadata.items()
        if not name.startswith("__") and topic.error is None
        for partition in topic.partitions
    ]
    if not places:
        return {}
    reader = Consumer(client_config(kafka, **{"group.id": group, "enable.auto.commit": False}))
    try:
        found = reader.committed(places, timeout=timeout)
    finally:
        reader.close()
    return {
        (tp.topic, tp.partition): tp.offset for tp in found if tp.error is None and tp.offset >= 0
    }


def offsets(
    admin: AdminClient, places: list[TopicPartition], spec: OffsetSpec, timeout: float
) -> dict[tuple[str, int], int]:
    futures = admin.list_offsets(dict.fromkeys(places, spec), request_timeout=timeout)
    return {(tp.topic, tp.partition): f.result(timeout).offset for tp, f in futures.items()}


def partitions(
    admin: AdminClient,
    group: str,
    held: dict[tuple[str, int], int],
    topics: list[str],
    move: Move,
    timeout: float,
) -> list[Partition]:
    """The partitions to move: every one of the topics the group `held` offsets on, or of
    `topics` among them."""
    read = sorted({topic for topic, _ in held})
    unread = [t for t in topics if t not in read]
    if unread:
        raise Unknown(
            f"group {group} reads no topic {', '.join(unread)}; it reads: {', '.join(read)}"
        )
    metadata = admin.list_topics(timeout=timeout).topics
    gone = [t for t in topics or read if t not in metadata]
    if gone:
        raise Unknown(f"topic {', '.join(gone)} of group {group} no longer exists")
    places = [TopicPartition(t, p) for t in topics or read for p in sorted(metadata[t].partitions)]
    low = offsets(admin, places, OffsetSpec.earliest(), timeout)
    high = offsets(admin, places, OffsetSpec.latest(), timeout)
    at: dict[tuple[str, int], int] = {}
    if move.when is not None:
        millis = int(move.when.timestamp() * 1000)
        at = offsets(admin, places, OffsetSpec.for_timestamp(millis), timeout)
    return [
        Partition(
            tp.topic,
            tp.partition,
            held.get((tp.topic, tp.partition)),
            low[tp.topic, tp.partition],
            high[tp.topic, tp.partition],
            at[tp.topic, tp.partition] if at.get((tp.topic, tp.partition), -1) >= 0 else None,
        )
        for tp in places
    ]


def apply(admin: AdminClient, group: str, steps: Sequence[Step], timeout: float) -> None:
    wanted = [TopicPartition(s.topic, s.partition, s.new) for s in steps]
    request = [ConsumerGroupTopicPartitions(group, wanted)]
    (future,) = admin.alter_consumer_group_offsets(request, request_timeout=timeout).values()
    failed = [tp for tp in future.result(timeout).topic_partitions if tp.error is not None]
    if any(tp.error.code() == KafkaError.UNKNOWN_MEMBER_ID for tp in failed):
        raise Refused(f"a member joined group {group} since it was checked: stop it, try again")
    if failed:
        raise Refused(
            "the broker refused "
            + ", ".join(f"{tp.topic}[{tp.partition}]: {tp.error.str()}" for tp in failed)
        )


def move_group(admin: AdminClient, args: argparse.Namespace, move: Move, kafka: Bootstrap) -> int:
    description = describe(admin, args.group, args.timeout)
    refuse_live(args.group, description)
    held = committed(kafka, admin, args.group, args.timeout)
    if not held and description.state == ConsumerGroupState.DEAD:
        raise Unknown(f"no consumer group {args.group} on the broker")
    if not held:
        raise Unknown(f"group {args.group} has committed no offset: there is nothing to move")
    steps = plan(partitions(admin, args.group, held, args.topics, move, args.timeout), move)
    print(f"group {args.group} ({description.state.name}), {move}:")
    print(table(steps))
    if not args.execute:
        print(f"\ndry run: nothing changed. Add --execute to move group {args.group}.")
        return 0
    apply(admin, args.group, steps, args.timeout)
    topics = len({s.topic for s in steps})
    print(f"\nmoved group {args.group}: {len(steps)} partition(s) of {topics} topic(s)")
    return 0


# Reading the command line: every value is checked here, before anything is asked.


def group_id(text: str) -> str:
    if not 0 < len(text) <= MAX_GROUP or not text.isprintable():
        raise argparse.ArgumentTypeError(
            f"a group id is 1 to {MAX_GROUP} printable characters: {text[:80]!r}"
        )
    return text


def topic_name(text: str) -> str:
    if not TOPIC_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"not a topic name (1 to 249 of A-Z a-z 0-9 . _ -): {text[:80]!r}"
        )
    return text


def shift(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of records: {text[:80]!r}") from None
    if abs(value) > LARGEST_SHIFT:
        raise argparse.ArgumentTypeError(f"a shift is at most {LARGEST_SHIFT} records either way")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"not a number of seconds up to 3600: {text[:80]!r}")
    return value


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.ops.offsets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("group", type=group_id, help="the consumer group (a service's is its name)")
    to = parser.add_mutually_exclusive_group(required=True)
    to.add_argument(
        "--to-datetime", type=times.past, metavar="T", help="the first record from T on"
    )
    to.add_argument("--to-earliest", action="store_true", help="the oldest record kept")
    to.add_argument("--to-latest", action="store_true", help="the end: skip every record")
    to.add_argument("--shift-by", type=shift, metavar="N", help="N records on (back if < 0)")
    add("--topic", type=topic_name, action="append", default=[], help="only this topic; repeat")
    add("--execute", action="store_true", help="apply the plan (default: only print it)")
    add("--topic-prefix", help="the stack's topic prefix (default: TOPIC_PREFIX)")
    add("--bootstrap", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS)")
    add("--timeout", type=seconds, default=30.0, help="seconds to wait for the broker")
    return parser


def chosen_move(args: argparse.Namespace) -> Move:
    if args.to_datetime is not None:
        return Move("datetime", when=args.to_datetime)
    if args.shift_by is not None:
        return Move("shift", shift=args.shift_by)
    return Move("earliest" if args.to_earliest else "latest")


def principal(group: str, prefix: str) -> str:
    """Who moves `group` on `make up`'s cluster: the service whose group it is (it may
    read its group and its topics, which is what moving it takes), else the admin."""
    service = group.removeprefix(prefix)
    return service if service in names() else ADMIN


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    prefix = KafkaSettings().topic_prefix if args.topic_prefix is None else args.topic_prefix
    sign_in_locally(principal(args.group, prefix))
    settings = KafkaSettings()
    args.topics = list(
        dict.fromkeys(t if prefix and t.startswith(prefix) else prefix + t for t in args.topic)
    )
    args.bootstrap = args.bootstrap or settings.kafka_bootstrap_servers
    kafka = dataclasses.replace(settings.kafka(), bootstrap=args.bootstrap)
    admin = AdminClient(client_config(kafka))
    try:
        return move_group(admin, args, chosen_move(args), kafka)
    except Refused as exc:
        print(f"offsets: {exc}", file=sys.stderr)
        return exc.status
    except KafkaException as exc:
        print(f"offsets: the broker at {args.bootstrap} answered: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
