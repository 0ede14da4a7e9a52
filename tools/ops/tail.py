"""Show the stack's events, decoded: one line per record, like `kcat -C` but readable.

    python -m tools.ops.tail [--topic T ...] [--order ID] [--since 15m] [--follow]
                         [--json] [--payload] [--color auto|always|never]
                         [--topic-prefix P] [--bootstrap HOST:PORT]
    python -m tools.ops.tail [--since T] [--until T] [--key K] [--id ID] [--type TYPE]
                         [--header NAME=VALUE] [--limit N] [--follow] ...

Reads every partition of the stack's topics (those the registered services publish, and
dead-letters) or of each `--topic`, from the oldest retained record (or `--since`).
Without `--follow` it prints what was there when it started, ordered by time, and exits;
with `--follow` it then prints new records as they arrive, until Ctrl-C. It joins no
consumer group and commits nothing. `--order ID` keeps one order's story (see `Story`);
docs/tail.md shows the columns.

With `--until`, `--key`, `--id`, `--type`, `--header` or `--limit` it searches instead
(tools.ops.search): it streams each partition from `--since` up to `--until` or the end
it had at the start, prints at most `--limit` records that match every option given, and
says on stderr how many records it read in each partition. A key search reads only the
key's partition of each topic."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from pydantic import AliasChoices, Field

from shared.messaging.deadletter import OUTBOX_SOURCE
from shared.runtime.settings import KafkaSettings
from tools.local.certs import OBSERVER
from tools.local.cluster import sign_in_locally
from tools.ops import search as search_module
from tools.ops import times
from tools.ops.records import (
    Row,
    TimedRecord,
    as_dict,
    decode,
    format_time,
    reader,
    stack_topics,
)
from tools.ops.search import Query, batches, failed, search

T = TypeVar("T")
UNDECODABLE = "UNDECODABLE"
DEFAULT_LIMIT = 100
"""Records a search prints at most unless `--limit` says otherwise."""
WIDEST = 48
"""A key or type longer than this is cut (with `…`) in text lines; `--json` keeps it."""


class Story:
    """The records of one order's story, for `--order ID`. An event belongs when

    1. its key is the order id (the order's events, inventory's answers, their dead
       letters), or
    2. its correlation id is the order id or that of an event of rule 1: what the saga
       did elsewhere, e.g. `stock-changed`, keyed by product (every event caused while
       handling an order's event inherits its correlation id), or
    3. its causation id is the id of an event that belongs, directly or through a chain.

    A record that cannot be decoded belongs when its key is the order id. `select` judges
    a set of records as a whole; `admit` judges them one by one as they arrive (when
    following), each against what was admitted before it."""

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id
        self.correlations = {order_id}
        self.ids: set[str] = set()

    def admit(self, row: Row) -> bool:
        event = row.event
        if event is None:
            return row.key == self.order_id
        if row.key == self.order_id:
            if event.correlation_id:
                self.correlations.add(event.correlation_id)
        elif event.correlation_id not in self.correlations and event.causation_id not in self.ids:
            return False
        self.ids.add(event.id)
        return True

    def select(self, rows: list[Row]) -> list[Row]:
        """The rows that belong, in the order given."""
        for row in rows:  # rule 1 before rule 2, whatever the order of the rows
            if row.event and row.key == self.order_id and row.event.correlation_id:
                self.correlations.add(row.event.correlation_id)
        chosen = [self.admit(row) for row in rows]
        effects: dict[str, list[int]] = {}
        for index, row in enumerate(rows):
            if row.event and row.event.causation_id and not chosen[index]:
                effects.setdefault(row.event.causation_id, []).append(index)
        causes = list(self.ids)  # what was admitted, now or before
        while causes:  # rule 3: an effect may come before its cause in time
            for index in effects.pop(causes.pop(), []):
                chosen[index] = True
                effect = rows[index].event
                assert effect is not None
                self.ids.add(effect.id)
                causes.append(effect.id)
        return [row for row, kept in zip(rows, chosen, strict=True) if kept]


@dataclass
class View:
    """Records into lines: the `--order` filter, the order and the format; no I/O."""

    order: str | None = None
    json: bool = False
    payload: bool = False
    colour: bool = False
    widths: dict[str, int] = field(default_factory=lambda: {"where": 0, "type": 0, "key": 0})
    story: Story | None = field(init=False)

    def __post_init__(self) -> None:
        self.story = Story(self.order) if self.order is not None else None

    def batch(self, records: Iterable[TimedRecord]) -> list[str]:
        """Lines for a set of records, by time (then topic, partition and offset)."""
        rows = sorted((decode(record) for record in records), key=Row.sort_key)
        if self.story is not None:
            rows = self.story.select(rows)
        for row in rows:
            self._fit(row)
        return [self.line(row) for row in rows]

    def live(self, record: TimedRecord) -> str | None:
        """The line for one record as it arrives, or None when `--order` leaves it out."""
        row = decode(record)
        if self.story is not None and not self.story.admit(row):
            return None
        return self.line(row)

    def line(self, row: Row) -> str:
        return self.as_json(row) if self.json else self.as_text(row)

    def as_text(self, row: Row) -> str:
        """Time, topic[partition]@offset, type, key, id ← causation id, trace id, then a
        dead letter's reason or why the record is undecodable, then the payload if asked.

        Columns are as wide as the widest value so far; a missing value prints as `-`."""
        cells = self._fit(row)
        event = row.event
        cause = event.causation_id if event else None
        colour = _RED if event is None else _YELLOW if row.dead_letter is not None else _BOLD
        parts = [
            self._paint(f"{format_time(row.time) if row.time else '-':<24}", _DIM),
            self._paint(cells["where"].ljust(self.widths["where"]), _CYAN),
            self._paint(cells["type"].ljust(self.widths["type"]), colour),
            cells["key"].ljust(self.widths["key"]),
            f"{_short(event.id if event else None)} ← {_short(cause)}",
            self._paint(f"{row.trace_id or '-':<32}", _DIM),
        ]
        if row.dead_letter is not None:
            parts.append(self._paint(_clean(_parked(row.dead_letter)), _YELLOW))
        elif row.error is not None:
            parts.append(self._paint(_clean(f"undecodable: {row.error}"), _RED))
        if self.payload and event is not None:
            parts.append(_clean(event.data.decode()))
        return "  ".join(parts).rstrip()

    @staticmethod
    def as_json(row: Row) -> str:
        """One JSON object with every field, null where the record has none."""
        return orjson.dumps(as_dict(row)).decode()

    def _fit(self, row: Row) -> dict[str, str]:
        cells = {
            "where": _clean(row.where),
            "type": _cut(_clean(row.event.type if row.event else UNDECODABLE)),
            "key": _cut(_clean(row.key)) or "-",
        }
        for name, text in cells.items():
            self.widths[name] = max(self.widths[name], len(text))
        return cells

    def _paint(self, text: str, colour: str) -> str:
        return f"{colour}{text}{_RESET}" if self.colour else text


_RESET, _DIM, _BOLD, _RED, _YELLOW, _CYAN = (f"\x1b[{code}m" for code in (0, 2, 1, 31, 33, 36))


def _short(value: str | None) -> str:
    return f"{_clean(value)[:8] if value else '-':<8}"


def _clean(text: str) -> str:
    """Printable on one line: control characters escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _cut(text: str) -> str:
    return text if len(text) <= WIDEST else text[: WIDEST - 1] + "…"


def _parked(letter: dict[str, str]) -> str:
    get = letter.get
    where = f"{get('topic', '?')}[{get('partition', '?')}]@{get('offset', '?')}"
    text = f"dead letter: {letter['reason']} by {get('consumer', '?')} from {where}"
    if get("source") == OUTBOX_SOURCE:  # a relay's notice: the row waits in its outbox
        where = where if "offset" in letter else f"{get('topic', '?')} (not published)"
        text = f"parked in its outbox: {letter['reason']} by {get('consumer', '?')} for {where}"
    if letter.get("error"):
        text += f": {letter['error']}"
    if "dropped" in letter:
        text += f" (parked without its {letter['dropped']})"
    return text


# Reading Kafka.


class TailSettings(KafkaSettings):
    no_color: str = Field("", validation_alias=AliasChoices("NO_COLOR"))
    """Set (to anything) to print without colours, as https://no-color.org asks."""


Place = tuple[str, int]


def plan(
    consumer: Consumer, topics: list[str], *, every: bool, since: datetime | None, timeout: float
) -> tuple[list[TopicPartition], dict[Place, int]]:
    """Where to start in each partition of `topics` (its oldest record, or the first from
    `since` on), and the end offsets of the partitions with records to read from there.

    A missing topic is an error when `every`, else left out (a stack not fully started)."""
    metadata = consumer.list_topics(timeout=timeout).topics
    present = [t for t in topics if t in metadata and metadata[t].error is None]
    missing = [t for t in topics if t not in present]
    if every and missing:
        raise LookupError(f"no topic {', '.join(map(repr, missing))} on the broker")
    if not present:
        raise LookupError(f"none of the stack's topics is on the broker: {', '.join(topics)}")
    starts = [
        TopicPartition(t, p, OFFSET_BEGINNING) for t in present for p in metadata[t].partitions
    ]
    if since is not None:
        millis = int(since.timestamp() * 1000)
        wanted = [TopicPartition(start.topic, start.partition, millis) for start in starts]
        starts = consumer.offsets_for_times(wanted, timeout=timeout)  # -1 (the end) if none
    ends = {}
    for start in starts:
        if start.error is not None:
            raise KafkaException(start.error)
        low, high = consumer.get_watermark_offsets(start, timeout=timeout, cached=False)
        first = low if start.offset == OFFSET_BEGINNING else max(low, start.offset)
        if start.offset != OFFSET_END and high > first:
            ends[start.topic, start.partition] = high
    return starts, ends


def retained(
    consumer: Consumer, ends: dict[Place, int], timeout: float, later: list[Message] | None
) -> Iterator[Message]:
    """The records before each partition's end offset. Records past it (produced since
    the start) go to `later` when given, else are dropped. Raises TimeoutError when
    nothing arrives for `timeout` seconds while records remain to be read."""
    left = set(ends)
    for batch in batches(consumer, left, timeout):
        for message in batch:
            place = (message.topic() or "", message.partition() or 0)
            offset, end = message.offset() or 0, ends.get(place, 0)
            if message.error() is not None:  # the end of a partition, at `offset`
                if offset >= end:
                    left.discard(place)
                continue
            if offset < end:
                yield message
            elif later is not None:
                later.append(message)
            if offset + 1 >= end:
                left.discard(place)


def arrivals(consumer: Consumer) -> Iterator[list[Message]]:
    """The records as they arrive, batch by batch, forever."""
    while True:
        yield [m for m in consumer.consume(1000, 0.5) if not failed(m) and m.error() is None]


def since(text: str) -> datetime:
    """`--since`: a duration back from now (`90s`, `15m`, `2h`, `1d`) or an RFC 3339 time."""
    if match := re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip()):
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
        return datetime.now(UTC) - timedelta(seconds=float(match[1]) * unit)
    try:
        return times.moment(text.strip(), future=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a duration (15m); {exc}") from None


def _checked(check: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from one of tools.ops.search's checks."""

    def parse(text: str) -> T:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = check.__name__
    return parse


def query_of(args: argparse.Namespace) -> Query | None:
    """The search the command line asks for, or None for a plain tail."""
    if (
        args.until is None
        and args.limit is None
        and not any((args.key, args.id, args.type, args.header))
    ):
        return None
    return Query(
        since=args.since,
        until=args.until,
        key=args.key,
        event_id=args.id,
        type=args.type,
        header=args.header,
        limit=args.limit or DEFAULT_LIMIT,
    )


def _write(lines: Iterable[str | None]) -> None:
    text = "".join(f"{line}\n" for line in lines if line is not None)
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()


def find(
    consumer: Consumer, view: View, topics: list[str], query: Query, args: argparse.Namespace
) -> None:
    """Print the records that match (tools.ops.search) and, on stderr, what was read to
    find them; with `--follow`, then every new record that matches."""
    found = search(consumer, topics, query, timeout=args.timeout, every=bool(args.topic))
    _write(view.batch(found.records))
    print(f"tail: {query.describe()}: {found.summary()}", file=sys.stderr, flush=True)
    if args.follow:
        consumer.assign([TopicPartition(t, p, end) for (t, p), (_, end) in found.ranges.items()])
        for batch in arrivals(consumer):
            _write(view.live(message) for message in batch if query.matches(message))


def tail(consumer: Consumer, view: View, topics: list[str], args: argparse.Namespace) -> None:
    """Print what `topics` retain (from `--since`), then, with `--follow`, what arrives;
    with a search's options, only what matches."""
    query = query_of(args)
    if query is not None:
        find(consumer, view, topics, query, args)
        return
    every = bool(args.topic)
    starts, ends = plan(consumer, topics, every=every, since=args.since, timeout=args.timeout)
    consumer.assign(starts)
    later: list[Message] = []
    _write(view.batch(retained(consumer, ends, args.timeout, later if args.follow else None)))
    if args.follow:
        _write(view.live(message) for message in later)
        for batch in arrivals(consumer):
            _write(view.live(message) for message in batch)


def main(argv: list[str] | None = None) -> int:
    sign_in_locally(OBSERVER)
    settings = TailSettings()
    command = parser(settings)
    args = command.parse_args(argv)
    searching = query_of(args) is not None
    if searching and args.order is not None:
        command.error(
            "--order reads a whole story: it takes no --key, --id, --type, --header,"
            " --until or --limit"
        )
    if args.until is not None and args.follow:
        command.error("--until ends the search: it takes no --follow")
    if args.since is not None and args.until is not None and args.until <= args.since:
        command.error("--until must be later than --since")
    kafka = replace(settings.kafka(), bootstrap=args.bootstrap)
    prefix = args.topic_prefix
    if args.topic:
        topics = [t if prefix and t.startswith(prefix) else prefix + t for t in args.topic]
    else:
        topics = stack_topics(prefix)
    colour = args.color == "always" or (
        args.color == "auto" and not settings.no_color and sys.stdout.isatty()
    )
    view = View(order=args.order, json=args.json, payload=args.payload, colour=colour)
    consumer = reader(kafka, prefix)
    try:
        tail(consumer, view, topics, args)
    except KeyboardInterrupt:
        return 0 if args.follow else 130
    except BrokenPipeError:  # e.g. `| head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (LookupError, TimeoutError) as exc:
        print(f"tail: {exc}", file=sys.stderr)
        return 1
    except KafkaException as exc:
        error = exc.args[0]
        reason = error.str() if isinstance(error, KafkaError) else str(exc)
        print(f"tail: cannot read from {args.bootstrap}: {reason}", file=sys.stderr)
        return 1
    finally:
        consumer.close()
    return 0


def parser(settings: KafkaSettings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.ops.tail", description=__doc__.splitlines()[0]
    )
    add = parser.add_argument
    add(
        "--topic",
        action="append",
        help="a topic to read, with or without the prefix; repeat for more (default: the "
        "stack's topics)",
    )
    add("--order", metavar="ID", help="only that order's story")
    add(
        "--since",
        type=since,
        metavar="WHEN",
        help="start at the records of the last 90s, 15m, 2h, 1d, or from an RFC 3339 time "
        "(default: the oldest retained)",
    )
    add(
        "--until",
        type=times.any_time,
        metavar="T",
        help="search up to (not including) the first record stamped at T, an RFC 3339 time",
    )
    add("--key", type=_checked(search_module.key_text), help="search: records with this key")
    add("--id", type=_checked(search_module.event_id_text), help="search: the event with this id")
    add("--type", type=_checked(search_module.event_type_text), help="search: events of this type")
    add(
        "--header",
        type=_checked(search_module.header_pair),
        metavar="NAME=VALUE",
        help="search: records with this header value (e.g. ce_source=/services/order)",
    )
    add(
        "--limit",
        type=_checked(search_module.limit_number),
        metavar="N",
        help=f"search: at most N records (1 to {search_module.MOST}; default {DEFAULT_LIMIT})",
    )
    add("--follow", "-f", action="store_true", help="then print new events until Ctrl-C")
    add("--json", action="store_true", help="one JSON object per line")
    add("--payload", action="store_true", help="end each line with the payload")
    add(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colours: auto means on a terminal, unless NO_COLOR is set (default: auto)",
    )
    add(
        "--topic-prefix",
        default=settings.topic_prefix,
        help="the stack's topic prefix (default: %(default)r, from TOPIC_PREFIX)",
    )
    add(
        "--bootstrap",
        default=settings.kafka_bootstrap_servers,
        help="Kafka bootstrap servers (default: %(default)s, from KAFKA_BOOTSTRAP_SERVERS)",
    )
    add(
        "--timeout",
        type=float,
        default=30.0,
        help="give up when the broker does not answer, or sends nothing while records "
        "remain to be read, for this many seconds (default: 30)",
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
