"""What the explorer knows: a bounded picture of the shop built only from Kafka records.

`ShopView` takes every record the observer reads and every offset it learns, and answers
with plain JSON-ready dicts. It holds the last `max_orders` orders (each with at most
`max_hops` events), the last `max_letters` dead letters and `max_undecodable` malformed
records, so memory stays flat however long it runs. Thread-safe: the observer writes,
the web app reads."""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.messaging import deadletter as dlq
from shared.messaging.envelope import (
    Envelope,
    HeaderValue,
    InvalidEnvelope,
    KafkaHeaders,
    KafkaRecord,
    format_time,
)
from shared.runtime import ids

ORDER_TOPICS = frozenset({"orders", "stock"})
"""Topics keyed by order id: every record on them belongs to the order its key names."""

STATES = {
    "order-cancelled": "CANCELLED",
    "order-rejected": "REJECTED",
    "order-confirmed": "CONFIRMED",
    "order-created": "PENDING",
}
"""The order's state after each of its own events, strongest first: a state follows from
which of them were seen, never from the order they were read in."""

REDRIVE_GROUP = "redrive-"


@dataclass(frozen=True, slots=True)
class Hop:
    """One event where it sits on Kafka."""

    id: str
    type: str
    source: str
    key: str
    topic: str
    partition: int
    offset: int
    time: datetime
    causation_id: str | None
    correlation_id: str | None
    trace_id: str | None = None
    """The trace of its `traceparent`, when that is well formed."""
    sampled: bool = False
    """Whether that `traceparent` says the trace is sampled (its flags' low bit)."""

    @property
    def service(self) -> str:
        """`/services/order` → `order`."""
        return self.source.rstrip("/").rsplit("/", 1)[-1] or self.source

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "service": self.service,
            "source": self.source,
            "key": self.key,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "where": self.where,
            "time": format_time(self.time),
            "causation_id": self.causation_id,
            "correlation_id": self.correlation_id,
            "trace_id": self.trace_id,
            "sampled": self.sampled,
        }


def trace_of(traceparent: str | None) -> tuple[str | None, bool]:
    """The trace id a W3C `traceparent` names and whether its flags say sampled; (None,
    False) for a missing or malformed one (shared.runtime.ids, as the services read it)."""
    valid = ids.traceparent(traceparent)
    if valid is None:
        return None, False
    _, trace_id, _, flags = valid.split("-")[:4]
    return trace_id, bool(int(flags, 16) & 0x01)


@dataclass(slots=True)
class Order:
    id: str
    hops: list[Hop] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    types: set[str] = field(default_factory=set)
    dropped: int = 0
    """Events left out once the order held `max_hops`."""

    @property
    def state(self) -> str:
        return next((state for kind, state in STATES.items() if kind in self.types), "UNKNOWN")

    @property
    def first(self) -> Hop:
        return min(self.hops, key=lambda hop: hop.time)

    @property
    def traced(self) -> Hop | None:
        """The hop whose trace is the order's: its `order-created`, else its first event
        with a trace."""
        created = next((h for h in self.hops if h.type == "order-created" and h.trace_id), None)
        with_trace = sorted((h for h in self.hops if h.trace_id), key=lambda hop: hop.time)
        return created or next(iter(with_trace), None)

    def summary(self, trace_url: str | None = None) -> dict[str, Any]:
        """The order at a glance; `trace` names its trace, with the address of the trace
        (`trace_url` with the id put in) only when the trace was sampled, since only
        sampled traces are exported."""
        created = next((h for h in self.hops if h.type == "order-created"), self.first)
        last = max(self.hops, key=lambda hop: hop.time)
        traced = self.traced
        trace = None
        if traced is not None and traced.trace_id is not None:
            link = trace_url.replace("{trace_id}", traced.trace_id) if trace_url else None
            trace = {
                "id": traced.trace_id,
                "sampled": traced.sampled,
                "url": link if traced.sampled else None,
            }
        return {
            "id": self.id,
            "state": self.state,
            "created": format_time(created.time),
            "updated": format_time(last.time),
            "events": len(self.hops) + self.dropped,
            "services": sorted({hop.service for hop in self.hops}),
            "trace": trace,
        }


Readers = dict[tuple[str, int], list[tuple[str, int]]]
"""(topic, partition) → (service, committed offset) of each service's group reading it."""


def chain(
    order: Order, readers: Readers | None = None, trace_url: str | None = None
) -> dict[str, Any]:
    """The order's events in time order, each with the index of its cause in the list
    (None when the cause is not an event of this order: an HTTP request, say), and the
    services whose consumer group has read past it (`read_by`) or not yet (`waiting`)."""
    hops = sorted(order.hops, key=lambda hop: (hop.time, hop.topic, hop.offset))
    index = {hop.id: position for position, hop in enumerate(hops)}
    events = []
    for hop in hops:
        cause = index.get(hop.causation_id or "")
        groups = (readers or {}).get((hop.topic, hop.partition), [])
        events.append(
            {
                **hop.as_dict(),
                "cause": cause,
                "read_by": sorted(s for s, committed in groups if committed > hop.offset),
                "waiting": sorted(s for s, committed in groups if committed <= hop.offset),
            }
        )
    lanes = sorted({hop.service for hop in hops})
    return {
        **order.summary(trace_url),
        "chain": events,
        "lanes": lanes,
        "dropped": order.dropped,
    }


def _pairs(headers: KafkaHeaders | dict[str, HeaderValue] | None) -> KafkaHeaders:
    return list(headers.items()) if isinstance(headers, dict) else list(headers or [])


def _text(value: HeaderValue) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def _preview(value: bytes | str | None, limit: int = 120) -> str:
    if value is None:
        return "(none)"
    data = value.encode() if isinstance(value, str) else value
    text = data[:limit].decode("utf-8", errors="backslashreplace")
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return shown + ("…" if len(data) > limit else "")


class LagHistory:
    """Each consumer group's total lag over time: a point every `every` seconds, the last
    `points` of them per group, at most `groups` groups (the one quiet longest is
    forgotten first), so memory stays bounded however long the explorer runs."""

    def __init__(self, *, every: float = 5.0, points: int = 360, groups: int = 64) -> None:
        self.every = every
        self.points = points
        self.most = groups
        self.series: dict[str, deque[tuple[float, int]]] = {}
        self._last = -float("inf")

    def sample(self, now: float, lags: dict[str, int]) -> bool:
        """Take the groups' lags at `now` (seconds since the epoch), unless the last
        sample is less than `every` seconds old. Whether it took them."""
        if now - self._last < self.every:
            return False
        self._last = now
        for group, lag in lags.items():
            series = self.series.get(group)
            if series is None:
                series = self.series[group] = deque(maxlen=self.points)
            series.append((now, lag))
        while len(self.series) > self.most:
            quiet = min(self.series, key=lambda g: self.series[g][-1][0])
            del self.series[quiet]
        return True

    def as_dict(self) -> dict[str, Any]:
        return {
            "every": self.every,
            "points": self.points,
            "groups": [
                {
                    "group": group,
                    "points": [[round(at, 3), lag] for at, lag in series],
                    "lag": series[-1][1],
                    "most": max(lag for _, lag in series),
                }
                for group, series in sorted(self.series.items())
            ],
        }


class ShopView:
    """The explorer's state. `version` grows with every change the page should see."""

    def __init__(
        self,
        prefix: str = "",
        *,
        max_orders: int = 200,
        max_hops: int = 64,
        max_letters: int = 200,
        max_undecodable: int = 200,
        trace_url: str | None = None,
        lag_every: float = 5.0,
        lag_points: int = 360,
    ) -> None:
        self.prefix = prefix
        self.trace_url = trace_url
        """Where a trace is shown: an address with `{trace_id}` in it (ExplorerSettings)."""
        self.max_orders = max_orders
        self.max_hops = max_hops
        self.dead_letter_topic = prefix + dlq.DEAD_LETTERS
        self.orders: OrderedDict[str, Order] = OrderedDict()
        self.letters: deque[dict[str, Any]] = deque(maxlen=max_letters)
        self.undecodable: deque[dict[str, Any]] = deque(maxlen=max_undecodable)
        self.counts: Counter[str] = Counter()
        """Orders by state (each order counted once, in its latest state, also after it
        is forgotten), dead letters, parked outbox rows and undecodable records."""
        self.topics: dict[str, dict[int, tuple[int, int]]] = {}
        """Topic → partition → (low, high) watermarks."""
        self.groups: dict[str, dict[str, Any]] = {}
        """Group → {"state", "offsets": {(topic, partition): committed}}."""
        self.lag = LagHistory(every=lag_every, points=lag_points)
        """Each group's lag over time, sampled as the offsets arrive."""
        self.records = 0
        self.version = 0
        self._lock = threading.Lock()

    def short(self, topic: str) -> str:
        """The topic's name without the stack's prefix."""
        return topic.removeprefix(self.prefix) if self.prefix else topic

    def _where(self, record: KafkaRecord) -> str:
        return f"{self.short(record.topic() or '?')}[{record.partition()}]@{record.offset()}"

    # -- writing (the observer) ---------------------------------------------------------

    def add(self, record: KafkaRecord) -> None:
        """Take one consumed record: an event, a dead letter or something undecodable."""
        with self._lock:
            self.records += 1
            self.version += 1
            try:
                if record.topic() == self.dead_letter_topic:
                    self._add_letter(record)
                else:
                    self._add_event(Envelope.from_message(record))
            except (InvalidEnvelope, ValueError, TypeError, AttributeError) as exc:
                self._add_undecodable(record, str(exc) or type(exc).__name__)

    def _add_event(self, envelope: Envelope) -> None:
        topic = self.short(envelope.topic or "")
        trace_id, sampled = trace_of(envelope.traceparent)
        hop = Hop(
            id=envelope.id,
            type=envelope.type,
            source=envelope.source,
            key=envelope.key,
            topic=topic,
            partition=envelope.partition or 0,
            offset=envelope.offset or 0,
            time=envelope.time,
            causation_id=envelope.causation_id,
            correlation_id=envelope.correlation_id,
            trace_id=trace_id,
            sampled=sampled,
        )
        if topic in ORDER_TOPICS and hop.key:
            order_id = hop.key
        elif hop.correlation_id in self.orders:
            order_id = hop.correlation_id
        else:
            return
        order = self.orders.get(order_id)
        if order is None:
            order = self.orders[order_id] = Order(order_id)
            self.counts["orders"] += 1
            self.counts[order.state] += 1
            while len(self.orders) > self.max_orders:
                self.orders.popitem(last=False)
        if hop.id in order.ids:
            return  # a redelivery or a redrive: the event is shown once
        order.ids.add(hop.id)
        before = order.state
        order.types.add(hop.type)
        self.counts[before] -= 1
        self.counts[order.state] += 1
        if len(order.hops) >= self.max_hops:
            order.dropped += 1
            return
        order.hops.append(hop)

    def _add_letter(self, record: KafkaRecord) -> None:
        """A consumer's dead letter, or an outbox relay's notice of a parked row (no value,
        and no place on Kafka when the row could not be published)."""
        headers = {name: _text(value) for name, value in _pairs(record.headers())}
        if dlq.H_REASON not in headers:
            raise InvalidEnvelope("dead letter without a dlq_reason header")
        outbox = headers.get(dlq.H_SOURCE) == dlq.OUTBOX_SOURCE
        self.counts["parked" if outbox else "dead_letters"] += 1
        topic = self.short(headers.get(dlq.H_TOPIC, "?"))
        if dlq.H_OFFSET in headers or not outbox:
            origin = (
                f"{topic}[{headers.get(dlq.H_PARTITION, '?')}]@{headers.get(dlq.H_OFFSET, '?')}"
            )
        else:
            origin = f"{topic} (not published)"
        consumer, event_id = headers.get(dlq.H_CONSUMER, ""), headers.get("ce_id", "")
        service = consumer.removesuffix("-outbox")
        self.letters.append(
            {
                "where": self._where(record),
                "partition": record.partition(),
                "offset": record.offset(),
                "reason": headers[dlq.H_REASON],
                "error": headers.get(dlq.H_ERROR, ""),
                "consumer": consumer,
                "origin": origin,
                "time": headers.get(dlq.H_TIME, ""),
                "type": headers.get("ce_type", ""),
                "event_id": event_id,
                "key": _preview(record.key(), 64),
                "dropped": headers.get(dlq.H_DROPPED, ""),
                "outbox": outbox,
                "retry": (
                    f"python -m tools.ops.outbox {service} retry {event_id}" if outbox else ""
                ),
            }
        )

    def _add_undecodable(self, record: KafkaRecord, reason: str) -> None:
        self.counts["undecodable"] += 1
        self.undecodable.append(
            {
                "where": self._where(record),
                "reason": reason,
                "key": _preview(record.key(), 64),
                "value": _preview(record.value()),
                "headers": sorted({name for name, _ in _pairs(record.headers())}),
            }
        )

    def set_offsets(
        self,
        topics: dict[str, dict[int, tuple[int, int]]],
        groups: dict[str, dict[str, Any]],
    ) -> None:
        """The latest watermarks per partition and committed offsets per group; each
        group's lag is sampled into `lag` (at most every `lag.every` seconds)."""
        with self._lock:
            if topics != self.topics or groups != self.groups:
                self.version += 1
            self.topics, self.groups = topics, groups
            self.lag.sample(time.time(), {row["group"]: row["lag"] for row in self._group_rows()})

    def lag_history(self) -> dict[str, Any]:
        with self._lock:
            return self.lag.as_dict()

    # -- reading (the web app) ----------------------------------------------------------

    def order(self, order_id: str) -> dict[str, Any] | None:
        with self._lock:
            order = self.orders.get(order_id)
            if order is None or not order.hops:
                return None
            return chain(order, self._readers(), self.trace_url)

    def _readers(self) -> Readers:
        """Each service's group (named `<prefix><service>`) by the partitions it reads;
        redrive groups read only dead letters and are left out."""
        readers: Readers = {}
        for group, info in self.groups.items():
            if group.startswith(REDRIVE_GROUP):
                continue
            service = group.removeprefix(self.prefix) if self.prefix else group
            for (topic, partition), committed in info["offsets"].items():
                readers.setdefault((self.short(topic), partition), []).append((service, committed))
        return readers

    def snapshot(self, orders: int = 100, letters: int = 50) -> dict[str, Any]:
        with self._lock:
            recent = [o.summary(self.trace_url) for o in reversed(self.orders.values()) if o.hops]
            recent.sort(key=lambda summary: summary["created"], reverse=True)
            topics = self._topic_rows()
            groups = self._group_rows()
            return {
                "version": self.version,
                "prefix": self.prefix,
                "records": self.records,
                "counters": {
                    "orders": self.counts["orders"],
                    "confirmed": self.counts["CONFIRMED"],
                    "rejected": self.counts["REJECTED"],
                    "cancelled": self.counts["CANCELLED"],
                    "in_flight": self.counts["PENDING"],
                    "dead_letters": self.counts["dead_letters"],
                    "parked": self.counts["parked"],
                    "undecodable": self.counts["undecodable"],
                    "lag": sum(g["lag"] for g in groups if not g["redrive"]),
                },
                "orders": recent[:orders],
                "topics": topics,
                "groups": groups,
                "dead_letters": [self._letter_row(row) for row in reversed(self.letters)][:letters],
                "undecodable": list(reversed(self.undecodable))[:letters],
            }

    def _topic_rows(self) -> list[dict[str, Any]]:
        rows = []
        for topic, partitions in sorted(self.topics.items()):
            rows.append(
                {
                    "topic": self.short(topic),
                    "partitions": [
                        {"partition": p, "low": low, "end": high}
                        for p, (low, high) in sorted(partitions.items())
                    ],
                    "records": sum(high - low for low, high in partitions.values()),
                    "end": sum(high for _, high in partitions.values()),
                }
            )
        return rows

    def _group_rows(self) -> list[dict[str, Any]]:
        rows = []
        for group, info in sorted(self.groups.items()):
            partitions, lag = [], 0
            for (topic, partition), committed in sorted(info["offsets"].items()):
                end = self.topics.get(topic, {}).get(partition, (0, committed))[1]
                behind = max(0, end - committed)
                lag += behind
                partitions.append(
                    {
                        "topic": self.short(topic),
                        "partition": partition,
                        "committed": committed,
                        "end": end,
                        "lag": behind,
                    }
                )
            rows.append(
                {
                    "group": group,
                    "state": info.get("state", ""),
                    "lag": lag,
                    "topics": sorted({p["topic"] for p in partitions}),
                    "partitions": partitions,
                    "redrive": group.startswith(REDRIVE_GROUP),
                }
            )
        return rows

    def _letter_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """A dead letter, with whether a redrive of its consumer has passed it (a parked
        outbox row is retried with `tools.ops.outbox`, never redriven)."""
        position = (self.dead_letter_topic, row["partition"])
        redriven = not row["outbox"] and any(
            self.groups.get(REDRIVE_GROUP + name, {}).get("offsets", {}).get(position, -1)
            > row["offset"]
            for name in (row["consumer"], "all")
        )
        return {**row, "redriven": redriven}
