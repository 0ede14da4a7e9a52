"""Leaving gracefully: what a service does between SIGTERM and its exit.

The app's lifespan installs `Drain` over uvicorn's own signal handlers, so every way of
serving it (`python -m services NAME`, the uvicorn CLI, several workers) behaves alike.
On the first SIGTERM (or SIGINT) the instance drains: `/ready` answers 503 at once (its
`draining` check fails), so a load balancer's health check takes it out of rotation; it
keeps serving for `shutdown_grace_seconds`, so requests already routed to it are
answered; then uvicorn's own handler runs: it stops accepting, finishes the requests in
flight and runs the lifespan's shutdown (writer, consumer: commit and leave the group,
relay: publish what is left, producer: flush). A second signal exits at once, as safely
as a crash (nothing is applied twice, nothing committed is lost)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
Handler = Callable[[int, FrameType | None], Any] | int | None


class Drain:
    """Signal handlers that drain `state` (an app's) for `grace` seconds, then hand the
    signal to the handler they replaced."""

    def __init__(self, state: Any, grace: float) -> None:
        self.state = state
        self.grace = grace
        self.started = threading.Event()
        self._replaced: dict[int, Handler] = {}
        self._timer: threading.Timer | None = None

    def install(self) -> bool:
        """Take over SIGTERM and SIGINT (only the main thread can); False if not."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for sig in SIGNALS:
            self._replaced[sig] = signal.signal(sig, self.handle)
        return True

    def start(self, sig: int = signal.SIGTERM) -> None:
        """Answer 503 on /ready from now on; pass `sig` on after the grace."""
        self.state.draining = True
        self.started.set()
        log.info("signal %d: draining for %.1fs, then stopping", sig, self.grace)
        self._timer = threading.Timer(self.grace, self._pass_on, (sig,))
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        """Keep the signal from being passed on (a drain started by hand, in a test)."""
        if self._timer is not None:
            self._timer.cancel()

    def handle(self, sig: int, frame: FrameType | None) -> None:
        if self.started.is_set():
            log.warning("second signal %d: exiting now", sig)
            os._exit(128 + sig)
        self.start(sig)

    def _pass_on(self, sig: int) -> None:
        replaced = self._replaced.get(sig)
        if callable(replaced):
            replaced(sig, None)
        else:  # no server handled signals before us: nothing else to wait for
            os._exit(128 + sig)
