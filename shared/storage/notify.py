"""PostgreSQL's LISTEN/NOTIFY: a commit in one process wakes a thread in another.

A transaction that leaves work for a waiting thread (outbox rows for the relay) calls
`notify`; PostgreSQL delivers the notification when, and only if, the transaction commits.
A `Listener` holds a connection of its own that LISTENs, and calls back on each
notification from another engine: each carries its engine's `sender` token, and a
process wakes its own threads without a round trip through the server. SQLite needs
neither: one process writes a SQLite database and wakes its own threads, so there
`notify` does nothing and `listens` is false."""

from __future__ import annotations

import logging
import re
import secrets
import threading
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def channel(name: str) -> str:
    """A channel name, checked: it is written into `LISTEN` as an identifier."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a channel name: {name!r}")
    return name


def listens(engine: Engine) -> bool:
    """Whether commits on this engine's database can wake a `Listener`."""
    return engine.dialect.name == "postgresql"


_senders: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def sender(engine: Engine) -> str:
    """This engine's token, the payload of its notifications (one per pool: per process
    in a service)."""
    return _senders.setdefault(engine.pool, secrets.token_hex(8))


def notify(session: Session, name: str) -> None:
    """Notify `name` when the session's transaction commits (nothing if it rolls back;
    several notifications in one transaction arrive as one)."""
    engine = session.get_bind()
    if listens(engine):  # type: ignore[arg-type]
        session.execute(select(func.pg_notify(channel(name), sender(engine))))  # type: ignore[arg-type]


class Listener:
    """A thread that LISTENs on `name` over a connection of its own and calls `heard()`
    for each notification another engine sent (its own engine's commits are the caller's
    to hear of), and once after every (re)connect: what was notified while it was away is
    lost, so it must look. A lost connection is opened again after `retry` seconds."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        heard: Callable[[], None],
        *,
        retry: float = 1.0,
        tick: float = 0.25,
    ) -> None:
        self._engine = engine
        self._channel = channel(name)
        self._heard = heard
        self._retry = retry
        self._tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"listen-{name}", daemon=True)
        self.listening = threading.Event()
        """Set while LISTEN is in force (tests wait for it)."""

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as exc:  # the server restarted or dropped us: listen again
                log.warning("listening on %s: %s", self._channel, exc)
                self._stop.wait(self._retry)

    def _listen(self) -> None:
        pooled = self._engine.raw_connection()
        try:
            connection = pooled.driver_connection
            connection.rollback()  # type: ignore[union-attr]
            connection.autocommit = True  # type: ignore[union-attr]
            connection.execute(f'LISTEN "{self._channel}"')  # type: ignore[union-attr]
            self.listening.set()
            self._heard()
            ours = sender(self._engine)
            while not self._stop.is_set():
                for note in connection.notifies(timeout=self._tick):  # type: ignore[union-attr]
                    if note.payload != ours:
                        self._heard()
        finally:
            self.listening.clear()
            pooled.invalidate()  # never back to the pool while it LISTENs
