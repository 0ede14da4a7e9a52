"""Backfill: whether a consumer group has caught up with the history it found.

A service started later than the others (a new one, or one that was down) first applies
what its topics already hold. `CatchUp` notes where each partition of its topics ended
when it started, and answers whether the group's committed offsets have reached those
ends; `/ready` says not ready until they have, so nothing routes to a service whose
views are still behind. Once caught up it stays so: later lag is the lag metric's job."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from confluent_kafka import Consumer, KafkaException

from shared.messaging.connection import Bootstrap, client_config
from shared.messaging.positions import behind, watermarks

log = logging.getLogger(__name__)


class CatchUp:
    def __init__(
        self,
        bootstrap: Bootstrap,
        group_id: str,
        topics: Sequence[str],
        *,
        every: float = 1.0,
        timeout: float = 2.0,
    ) -> None:
        self._config = client_config(
            bootstrap, **{"group.id": group_id, "enable.auto.commit": False}
        )
        self._topics = list(topics)
        self._every = every
        self._timeout = timeout
        self._lock = threading.Lock()
        self._consumer: Consumer | None = None
        self.ends: dict[tuple[str, int], tuple[int, int]] | None = None
        """Each partition with records: its (earliest, end) offsets at start (None: not
        known yet)."""
        self.left: int | None = None
        """Records the group had still to apply at the last check."""
        self.done = False
        self._checked = 0.0

    def start(self) -> None:
        """Note where the topics end now (again at the first check if the broker fails)."""
        with self._lock:
            self._note_ends()

    def __call__(self) -> bool:
        """Caught up? Asks the broker at most once every `every` seconds."""
        if self.done:
            return True
        with self._lock:
            now = time.monotonic()
            if self.done or now - self._checked < self._every:
                return self.done
            self._checked = now
            try:
                if self.ends is None:
                    self._note_ends()
                self._check()
            except KafkaException as exc:
                log.info("catch-up check failed: %s", exc)
            if self.done:
                self.close_locked()
            return self.done

    def close(self) -> None:
        with self._lock:
            self.close_locked()

    def close_locked(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def _client(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(self._config)  # never subscribes: joins no group
        return self._consumer

    def _note_ends(self) -> None:
        marks = watermarks(self._client(), self._topics, self._timeout)
        self.ends = {place: (low, high) for place, (low, high) in marks.items() if high > low}

    def _check(self) -> None:
        ends = self.ends or {}
        left = sum(behind(self._client(), ends, self._timeout).values()) if ends else 0
        self.left = left
        self.done = left == 0
        if self.done and ends:
            log.info("caught up with the %d partition(s) it found at start", len(ends))
