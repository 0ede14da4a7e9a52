"""Rebuild a service's derived views from the log, with no side effects.

    python -m tools.replay SERVICE [--view NAME ...] [--to-datetime T] [--list]

SERVICE is a registered service (services/registry.py); its views are listed in
`services/<name>/views.py`, and docs/replay.md says which tables are derived and which are
the source of truth. The database is the service's (`<NAME>_DATABASE_URL`) unless
--database-url names another; Kafka and the topic prefix are the stack's.

The views are emptied and rebuilt in one transaction: readers see the old views until it
commits, the service keeps serving, and its consumer's writes to the same rows wait for
the commit (on SQLite every write of the service waits: stop the service first when the
history takes longer than its 30 s lock timeout to read). Nothing is published, nothing
written to the outbox, no consumer group's offsets move."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from services.registry import get, load, names
from shared.messaging.replay import Progress, ReplayError, View, replay
from shared.storage.db import make_engine
from tools.ops import times

MAX_TEXT = 64
SHOWN = 20
"""Refused events listed at most."""


def views_of(service: str) -> tuple[View, ...]:
    views: tuple[View, ...] = importlib.import_module(f"{get(service).package}.views").VIEWS
    return views


def parse_time(text: str) -> datetime:
    """`--to-datetime`: an RFC 3339 time with its zone, not in the future (tools.ops.times)."""
    return times.past(text)


def service_name(text: str) -> str:
    if text not in names():
        raise argparse.ArgumentTypeError(
            f"no service {text[:MAX_TEXT]!r}; registered: {', '.join(names())}"
        )
    return text


def chosen(views: Sequence[View], wanted: Sequence[str] | None) -> list[View]:
    if not wanted:
        return list(views)
    known = {view.name: view for view in views}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise LookupError(
            f"no view {unknown[0][:MAX_TEXT]!r}; this service has: {', '.join(known)}"
        )
    return [known[name] for name in dict.fromkeys(wanted)]


def checksums(engine: Engine, views: Sequence[View]) -> dict[str, str]:
    with Session(engine) as session:
        return {view.name: view.checksum(session) for view in views}


def show(progress: Progress) -> None:
    print(progress.line(), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.replay", description=__doc__.splitlines()[0]
    )
    parser.add_argument("service", type=service_name, help=f"one of {', '.join(names())}")
    parser.add_argument(
        "--view", action="append", metavar="NAME", help="a view to rebuild (default: all)"
    )
    parser.add_argument(
        "--to-datetime",
        type=parse_time,
        metavar="T",
        help="rebuild as of T (ISO 8601 with offset): the events before T, none after",
    )
    parser.add_argument("--list", action="store_true", help="list the views and exit")
    parser.add_argument("--database-url", help="another database (default: the service's)")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: the service's)")
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the broker (default: 30)"
    )
    args = parser.parse_args(argv)
    views = views_of(args.service)
    if args.list:
        for view in views:
            print(f"{view.name}: {', '.join(view.tables)} from {', '.join(view.topics)}")
            print(f"  {view.about}")
        return 0
    try:
        selected = chosen(views, args.view)
    except LookupError as exc:
        parser.error(str(exc))
    settings = load(get(args.service).settings)()
    kafka = settings.kafka()
    if args.bootstrap:
        kafka = dataclasses.replace(kafka, bootstrap=args.bootstrap)
    engine = make_engine(args.database_url or settings.database())
    topics = sorted({settings.topic(t) for view in selected for t in view.topics})
    until = args.to_datetime
    print(
        f"replaying {args.service}: {', '.join(v.name for v in selected)} from"
        f" {', '.join(topics)}, to {until.isoformat() if until else 'their current end'}"
    )
    print(
        f"{args.service} keeps running: the rebuild is one transaction; readers see the old"
        " views until it commits, and the service's writes to the same rows wait for it"
        + (" (on SQLite, all its writes)" if engine.dialect.name == "sqlite" else "")
    )
    if until is not None:
        print(
            "as of a time: the service's consumer will not apply the later events again, so"
            " the views stay at that time until a replay to the end (--database-url: a copy)"
        )
    try:
        before = checksums(engine, selected)
        progress = replay(
            selected,
            engine=engine,
            bootstrap=kafka,
            name=args.service,
            topic_prefix=settings.topic_prefix,
            until=until,
            timeout=args.timeout,
            on_progress=show,
        )
        after = checksums(engine, selected)
    except (ReplayError, SQLAlchemyError) as exc:
        print(f"replay failed, the views are as they were: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(
        f"done in {progress.elapsed:.1f}s: read {progress.read:,} records, applied"
        f" {progress.applied:,}, skipped {progress.skipped:,}; published nothing"
        f" ({progress.dropped:,} emitted events dropped)"
    )
    if progress.failed:
        print(f"{len(progress.failed):,} event(s) refused by a handler, left out (dead letters):")
        for where in progress.failed[:SHOWN]:
            print(f"  {where}")
        if len(progress.failed) > SHOWN:
            print(f"  ... and {len(progress.failed) - SHOWN:,} more")
    width = max(len(view.name) for view in selected)
    for view in selected:
        name = view.name
        same = "unchanged" if before[name] == after[name] else "changed"
        print(f"{name.ljust(width)}  before {before[name]}  after {after[name]}  {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
