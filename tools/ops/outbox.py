"""List and retry the outbox rows a service's relay parked.

    python -m tools.ops.outbox SERVICE list
    python -m tools.ops.outbox SERVICE retry EVENT_ID [EVENT_ID ...]
    python -m tools.ops.outbox SERVICE retry --all

SERVICE is a registered service (services/registry.py); the database is the one the
service uses (`<NAME>_DATABASE_URL`), unless --database-url names another.

The relay parks a row the broker refuses for good (`unpublishable`: too large, say) and a
row it published but the service could not record (`unrecorded`: a value its own tables
cannot hold); the reason says which and why. Fix the cause, then retry: the relay
publishes the row, or, if it is on Kafka already, only records it, without publishing it
again. A row that still fails is parked again with its new reason."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from services.registry import get, load, names
from shared.messaging.deadletter import Reason
from shared.messaging.envelope import format_time
from shared.messaging.parking import parked, unpark
from shared.storage.db import OutboxMixin, make_engine, make_sessions, writing
from shared.storage.tables import shared_tables

COLUMNS = ("EVENT ID", "TYPE", "PARKED", "AT", "TOPIC", "REASON")


def outbox_model(service: str) -> type[OutboxMixin]:
    models = importlib.import_module(f"{get(service).package}.models")
    return shared_tables(models.Base).outbox


def database_url(service: str) -> str:
    url: str = load(get(service).settings)().database_url
    return url


def kind(row: OutboxMixin) -> str:
    """A row parked after it was published keeps `sent_at`: it only needs recording."""
    return Reason.UNRECORDED if row.sent_at is not None else Reason.UNPUBLISHABLE


def table(rows: Sequence[OutboxMixin]) -> str:
    lines = [COLUMNS] + [
        (
            row.event_id,
            row.event_type,
            kind(row),
            format_time(row.parked_at) if row.parked_at else "",
            row.topic,
            row.parked_reason or "",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False))
        + "  "
        + line[-1]
        for line in lines
    )


def list_parked(session: Session, model: type[OutboxMixin], args: argparse.Namespace) -> int:
    rows = parked(session, model)
    if not rows:
        print(f"no parked row in the outbox of {args.service}")
        return 0
    print(table(rows))
    print(
        f"\n{len(rows)} parked row(s); retry with: python -m tools.ops.outbox {args.service} retry"
    )
    return 0


def retry(session: Session, model: type[OutboxMixin], args: argparse.Namespace) -> int:
    if not args.all and not args.event_ids:
        print("outbox: name the event ids to retry, or --all", file=sys.stderr)
        return 2
    wanted = None if args.all else list(dict.fromkeys(args.event_ids))
    handed_back = unpark(session, model, wanted)
    for event_id in handed_back:
        print(f"retrying {event_id}")
    missing = [] if wanted is None else [e for e in wanted if e not in set(handed_back)]
    for event_id in missing:
        print(f"outbox: {event_id} is not a parked row of {args.service}", file=sys.stderr)
    print(f"{len(handed_back)} row(s) handed back to the relay of {args.service}")
    return 1 if missing else 0


COMMANDS: dict[str, Callable[[Session, type[OutboxMixin], argparse.Namespace], int]] = {
    "list": list_parked,
    "retry": retry,
}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.ops.outbox",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("service", choices=names())
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("event_ids", nargs="*", help="retry: the parked rows' event ids")
    parser.add_argument("--all", action="store_true", help="retry: every parked row")
    parser.add_argument("--database-url", help="default: the service's own, from its settings")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command != "retry" and (args.event_ids or args.all):
        print(f"outbox: {args.command} takes no event ids", file=sys.stderr)
        return 2
    engine = make_engine(args.database_url or database_url(args.service))
    try:
        with writing(engine), make_sessions(engine).begin() as session:
            return COMMANDS[args.command](session, outbox_model(args.service), args)
    except SQLAlchemyError as exc:
        print(f"outbox: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
