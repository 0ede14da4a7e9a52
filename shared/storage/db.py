"""Engines and the tables every service shares the shape of: outbox and processed events.

Each service declares its own `Base` and mixes these in, so every service owns its
tables in its own database."""

from __future__ import annotations

import threading
import weakref
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Engine,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    create_engine,
    event,
    make_url,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, ExceptionContext
from sqlalchemy.orm import Mapped, Session, declared_attr, mapped_column, sessionmaker

from shared.clock import utcnow


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware one")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a bigint identity.
BigId = BigInteger().with_variant(Integer, "sqlite")


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine for SQLite (WAL, write transactions that lock up front) or PostgreSQL.

    Its errors never carry the values a statement was given (`hide_parameters`), nor, on
    PostgreSQL, the server's DETAIL, which repeats a violating key or the whole failing
    row: e-mails and password hashes stay out of exceptions and logs. The detail stays
    on `exc.orig.diag` for code that needs it."""
    parsed = make_url(url)
    kwargs = {
        "json_serializer": _json_text,
        "json_deserializer": orjson.loads,
        "hide_parameters": True,
        **kwargs,
    }
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10, **kwargs)
        event.listen(engine, "handle_error", _without_detail)
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy emit BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A writer takes the write lock at BEGIN: a deferred transaction that later writes
        # can fail with "database is locked" instead of waiting its turn. Readers (see
        # `reader`) begin deferred and read beside the writer, as WAL allows.
        if connection.get_execution_options().get(_READ_ONLY):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _without_detail(context: ExceptionContext) -> None:
    """Keep only the server's primary message (what failed, which constraint) in the
    error's text; its DETAIL and the values in it stay on `diag`."""
    original = context.original_exception
    diag = getattr(original, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if not primary or getattr(diag, "message_detail", None) is None:
        return
    original.args = (primary,)
    wrapped = context.sqlalchemy_exception
    if wrapped is not None:
        kind = type(original)
        wrapped.args = (f"({kind.__module__}.{kind.__name__}) {primary}",)


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


_READ_ONLY = "shop_read_only"


def reader(engine: Engine) -> Engine:
    """The same engine and pool, for transactions that only read: on SQLite they do not
    take the write lock."""
    return engine.execution_options(**{_READ_ONLY: True})


_write_locks: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()


def writing(engine: Engine) -> AbstractContextManager[object]:
    """Around a write transaction. On SQLite, the process's writers queue here, in Python,
    for the one write lock the database has, instead of in SQLite's busy handler, which
    sleeps and retries and lets a busy HTTP side starve the consumer. Elsewhere a no-op."""
    if engine.dialect.name != "sqlite":
        return nullcontext()
    return _write_locks.setdefault(engine.pool, threading.RLock())


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


class OutboxMixin:
    """Events waiting to be published, written in the same transaction as the change.

    The relay publishes rows that are neither sent nor parked. A row it cannot publish
    (the broker refuses the record for good) or cannot record (the `on_published` hook
    fails on its values) is parked: `parked_at` and `parked_reason` say when and why, and
    it waits for `python -m tools.ops.outbox SERVICE retry`. A row parked after publishing
    keeps `sent_at`, `partition` and `offset`: it is on Kafka, and a retry only records it."""

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    topic: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str] = mapped_column(String(128))
    headers: Mapped[list[list[str]]] = mapped_column(JSON)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
    partition: Mapped[int | None] = mapped_column(Integer, default=None)
    offset: Mapped[int | None] = mapped_column(BigInteger, default=None)
    parked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
    parked_reason: Mapped[str | None] = mapped_column(Text, default=None)

    @classmethod
    def waiting_channel(cls) -> str:
        """What a commit that leaves rows for the relay notifies (shared.storage.notify)."""
        return f"{cls.__tablename__}_waiting"  # type: ignore[attr-defined]

    @declared_attr.directive
    @classmethod
    def __table_args__(cls) -> tuple[Any, ...]:
        name = cls.__tablename__  # type: ignore[attr-defined]
        # Parked rows are few: a partial index finds them without a scan, and cannot
        # tempt a planner away from (sent_at, id) for the relay's `parked_at IS NULL`.
        parked = text("parked_at IS NOT NULL")
        return (
            Index(f"ix_{name}_sent_at_id", "sent_at", "id"),
            Index(f"ix_{name}_parked", "id", sqlite_where=parked, postgresql_where=parked),
        )


class ProcessedEventMixin:
    """One row per event a consumer has applied; the primary key rejects a redelivery."""

    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(128))
    processed_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)


class TrustedKeyMixin:
    """A public key the service accepts tokens from (shared.runtime.keys)."""

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    not_after: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
    """None while the key signs; once retired, when its last token expires."""


class TrustedKeySetMixin:
    """Per issuer: the anchors its `signing-keys` sets must be signed with, and the version
    of the newest set trusted (shared.runtime.keys)."""

    issuer: Mapped[str] = mapped_column(String(255), primary_key=True)
    anchors: Mapped[list[str]] = mapped_column(JSON, default=list)
    """Base64url Ed25519 public keys, written at every start from the configuration."""
    version: Mapped[int | None] = mapped_column(BigInteger, default=None)
    """The version of the set trusted now (or issued last, in the issuer's own service)."""


def insert(session: Session, table: Any) -> Any:
    """A dialect INSERT with `on_conflict_do_nothing` / `on_conflict_do_update`."""
    dialect: Any = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(table)
