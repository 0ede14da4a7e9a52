"""Fault injection for the crash tests, kept out of the services' code.

`python -m services tests.faults:create_app --port PORT` serves the service named by
`FAULT_SERVICE` with faults armed from the environment (0 or unset = off):

- `FAULT_CRASH_AFTER_COMMITS=N`: the process exits abruptly after its consumer's N-th
  commit, before that event's offset is stored;
- `FAULT_CRASH_BEFORE_PUBLISH=N`: it exits abruptly as its outbox relay is about to
  publish its N-th batch, after the events were committed;
- `FAULT_HOLD_CONSUMER_WHILE=PATH`: its consumer holds every fetched batch, unapplied and
  uncommitted, for as long as the file PATH exists."""

from __future__ import annotations

import importlib
import itertools
import logging
import os
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from shared.messaging.consumer import ConsumerWorker
from shared.messaging.outbox import OutboxRelay

log = logging.getLogger(__name__)


def crash_on_call(n: int) -> Callable[[], None]:
    """A function that kills the process, like SIGKILL, on its n-th call (never if n <= 0)."""
    calls = itertools.count(1)

    def crash() -> None:
        if next(calls) == n:
            log.error("fault injection: exiting abruptly")
            os._exit(137)

    return crash


def crash_after_commits(n: int) -> None:
    """Arm `ConsumerWorker` in this process to die after its n-th committed event."""
    crash, settle = crash_on_call(n), ConsumerWorker._settle

    def settle_then_crash(self: ConsumerWorker, *args: Any) -> None:
        settle(self, *args)
        crash()

    ConsumerWorker._settle = settle_then_crash  # type: ignore[method-assign]


def crash_before_publish(n: int) -> None:
    """Arm `OutboxRelay` in this process to die as it is about to publish its n-th batch."""
    crash, publish = crash_on_call(n), OutboxRelay._publish

    def crash_then_publish(self: OutboxRelay, rows: Any) -> Any:
        crash()
        return publish(self, rows)

    OutboxRelay._publish = crash_then_publish  # type: ignore[method-assign]


def hold_consumer_while(path: str) -> None:
    """Arm `ConsumerWorker` in this process to hold each batch while `path` exists."""
    if not path:
        return
    process = ConsumerWorker.process_batch

    def hold_then_process(self: ConsumerWorker, consumer: Any, batch: Any) -> None:
        while os.path.exists(path) and not self._stop.wait(0.05):
            pass
        process(self, consumer, batch)

    ConsumerWorker.process_batch = hold_then_process  # type: ignore[method-assign]


def create_app() -> FastAPI:
    crash_after_commits(int(os.environ.get("FAULT_CRASH_AFTER_COMMITS") or 0))
    crash_before_publish(int(os.environ.get("FAULT_CRASH_BEFORE_PUBLISH") or 0))
    hold_consumer_while(os.environ.get("FAULT_HOLD_CONSUMER_WHILE") or "")
    main = importlib.import_module(f"services.{os.environ['FAULT_SERVICE']}.main")
    app: FastAPI = main.create_app()
    return app
