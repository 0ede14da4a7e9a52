"""The end-to-end run: a catalogue through the REST API, wrk on POST /orders, and every
order's outcome read back from Kafka.

Errors are wrk's non-202 answers and socket errors; an order is lost when it was accepted
(202) and no outcome was seen by the end of the drain, and doubled when the `orders`
topic holds more than one outcome record for it.

Request->outcome latency, per order: from the `order-created` event's `ce_time`, which
the order service stamps inside the POST /orders handler (after the body is parsed,
before the transaction commits), to the Kafka timestamp of its `order-confirmed` or
`order-rejected` record (CreateTime: librdkafka stamps it when the order service's
outbox relay produces the outcome, after the outcome's transaction committed). It leaves
out the HTTP time before the handler runs and the final hop to a subscriber, so wrk's
HTTP latency is reported beside it, and `seen_latency_ms` measures to the moment this
bench's consumer received the outcome. All clocks are this one machine's."""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jwt
from confluent_kafka import Consumer, TopicPartition

from services.registry import names
from shared.messaging.connection import Bootstrap, client_config
from tools.bench.procs import Sampler
from tools.bench.report import (
    cpu_seconds,
    cpu_summary,
    per_second,
    rate,
    ratio,
    steady_window,
    summarize,
)
from tools.bench.wrk import OrderMix, run_wrk
from tools.ops.client import ShopClient

CREATED = "order-created"
ANSWERS = ("stock-reserved", "stock-shortage")
OUTCOMES = {"order-confirmed": "CONFIRMED", "order-rejected": "REJECTED"}
SERVICE_TOPICS = ("orders", "stock", "stock-changes", "products", "users", "dead-letters")
"""Every topic the four services publish to (see each services/*/main.py SPEC)."""


@dataclass(frozen=True)
class Catalogue:
    accounts: list[tuple[str, str]]
    """The customers' e-mails and passwords: the load is spread over them."""
    ample: list[str]
    scarce: list[str]


def setup_catalogue(
    shop: ShopClient,
    operator: ShopClient,
    *,
    users: int,
    products: int,
    scarce: int,
    ample_stock: int,
    scarce_stock: int,
    say: Callable[[str], None] = print,
    timeout: float = 60,
) -> Catalogue:
    """`users` customers; `products` products with ample stock and `scarce` with little,
    made by the operator. Returns once the order service has confirmed an order of every
    customer and for every product (stocked first, so the probes are confirmed; the
    scarce stock is set again after them)."""
    run = uuid.uuid4().hex[:8]
    accounts = [(f"bench-{run}-{n}@example.com", secrets.token_urlsafe(12)) for n in range(users)]
    customers = [shop.sign_up(f"Bench {run} #{n}", *account) for n, account in enumerate(accounts)]
    ids = [
        operator.create_product(f"bench {run} #{n}", 100 + n)["id"]
        for n in range(products + scarce)
    ]
    ample, few = ids[:products], ids[products:]
    say(f"  {users} users, {len(ids)} products; waiting until inventory and order know them")
    for product_id in ample:
        operator.set_stock_eventually(product_id, ample_stock, timeout)
    for product_id in few:
        operator.set_stock_eventually(product_id, scarce_stock + 1, timeout)
    chunks = list(_chunks(ids, 20))
    probes = []
    for n in range(max(users, len(chunks))):
        customer = customers[n % users]
        lines = _lines(chunks[n] if n < len(chunks) else ids[:1])
        probes.append((customer, customer.place_order_eventually(lines, timeout=timeout)["id"]))
    for customer, probe in probes:
        customer.wait_for_status(probe, timeout=timeout)
    for product_id in few:
        operator.set_stock(product_id, scarce_stock)
    return Catalogue(accounts, ample, few)


def bearer_tokens(shop: ShopClient, accounts: list[tuple[str, str]], lasting: float) -> list[str]:
    """A fresh token per account, each checked to stay valid `lasting` seconds: wrk cannot
    sign in again, and an expired token would be answered 401."""
    tokens = []
    for email, password in accounts:
        token = shop.sign_in(email, password).token
        assert token is not None
        claims = jwt.decode(token, options={"verify_signature": False})
        if claims["exp"] - time.time() < lasting:
            raise ValueError(
                f"access tokens live {claims['exp'] - claims['iat']} s, less than a load"
                f" of {lasting:.0f} s: shorten --duration"
            )
        tokens.append(token)
    return tokens


def _lines(products: list[str]) -> list[dict[str, Any]]:
    return [{"product_id": p, "quantity": 1} for p in products]


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class OutcomeCollector:
    """Reads `orders` and `stock` from their current ends in a thread: when each order was
    created, and when its order-created, inventory's answer and its outcome were
    produced. Assigns partitions itself (a unique group, no commits), so it reads from the
    moment start() returns. `prefix` is the stack's TOPIC_PREFIX."""

    def __init__(
        self, bootstrap: Bootstrap, topics: tuple[str, ...] = ("orders", "stock"), prefix: str = ""
    ) -> None:
        self.topics = tuple(prefix + topic for topic in topics)
        self._consumer = Consumer(
            client_config(
                bootstrap,
                **{
                    "group.id": f"bench-outcomes-{uuid.uuid4().hex[:12]}",
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": 50,
                },
            )
        )
        self.created: dict[str, float] = {}
        """order id -> ce_time of order-created (epoch seconds)"""
        self.published: dict[str, float] = {}
        """order id -> record timestamp of order-created (the order relay produced it)"""
        self.answered: dict[str, float] = {}
        """order id -> record timestamp of stock-reserved / stock-shortage (inventory's)"""
        self.outcomes: dict[str, tuple[str, float, float]] = {}
        """order id -> (CONFIRMED|REJECTED, record timestamp, time this bench received it)"""
        self.outcome_records: Counter[str] = Counter()
        """order id -> outcome records seen for it"""
        self.records = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-outcomes", daemon=True)

    def start(self) -> OutcomeCollector:
        metadata = self._consumer.list_topics(timeout=30).topics
        assignment = []
        for topic in self.topics:
            for partition in metadata[topic].partitions:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=30
                )
                assignment.append(TopicPartition(topic, partition, high))
        self._consumer.assign(assignment)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(1000, 0.2):
                if message.error() is not None:
                    continue
                received = time.time()
                self.records += 1
                headers = _text_headers(message.headers())
                kind = headers.get("ce_type", "")
                key = _text(message.key())
                stamp = message.timestamp()[1] / 1000
                if kind == CREATED and "ce_time" in headers:
                    self.published.setdefault(key, stamp)
                    created = datetime.fromisoformat(headers["ce_time"]).timestamp()
                    self.created.setdefault(key, created)
                elif kind in ANSWERS:
                    self.answered.setdefault(key, stamp)
                elif kind in OUTCOMES:
                    self.outcomes.setdefault(key, (OUTCOMES[kind], stamp, received))
                    self.outcome_records[key] += 1

    def stages(self, orders: Iterable[str]) -> dict[str, list[float]]:
        """Per stage, the milliseconds each of `orders` spent in it (when all seen)."""
        stages: dict[str, list[float]] = {
            "accepted -> order-created produced (order: commit, outbox relay)": [],
            "order-created -> stock answer produced (inventory: consume, reserve, relay)": [],
            "stock answer -> outcome produced (order: consume, confirm/reject, relay)": [],
        }
        first, second, third = stages.values()
        for order in orders:
            created, published = self.created.get(order), self.published.get(order)
            answered, outcome = self.answered.get(order), self.outcomes.get(order)
            if created is None or published is None or answered is None or outcome is None:
                continue
            first.append((published - created) * 1000)
            second.append((answered - published) * 1000)
            third.append((outcome[1] - answered) * 1000)
        return stages

    def doubled(self) -> list[str]:
        """Orders created in this run with more than one outcome record."""
        counts = self.outcome_records.copy()
        return sorted(order for order in list(self.created) if counts[order] > 1)

    def finished(self) -> dict[str, tuple[float, str, float, float]]:
        """order id -> (created, outcome, outcome timestamp, received) for orders whose
        creation and outcome were both seen."""
        created, outcomes = dict(self.created), dict(self.outcomes)
        return {order: (created[order], *outcomes[order]) for order in created if order in outcomes}


def _text(value: str | bytes | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def _text_headers(headers: Any) -> dict[str, str]:
    pairs = headers.items() if isinstance(headers, dict) else (headers or [])
    return {name: _text(value) for name, value in pairs if value is not None}


def kafka_records(
    bootstrap: Bootstrap, topics: Iterable[str] = SERVICE_TOPICS, prefix: str = ""
) -> int:
    """Records ever written to `topics` (each after `prefix`): the sum of their
    partitions' high watermarks."""
    consumer = Consumer(client_config(bootstrap, **{"group.id": "bench-watermarks"}))
    try:
        existing = consumer.list_topics(timeout=30).topics
        total = 0
        for topic in (prefix + name for name in topics):
            if topic not in existing:
                continue
            for partition in existing[topic].partitions:
                total += consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=30
                )[1]
        return total
    finally:
        consumer.close()


@dataclass(frozen=True)
class Load:
    """How hard and how long `run_e2e` drives the order service."""

    duration: float
    connections: int
    threads: int
    rate_limit: float | None
    scarce_share: float
    warmup: float
    drain_timeout: float


class Progress:
    """One line a second while the load runs and drains: what the collector saw since the
    last line, and the CPU of the processes that matter."""

    def __init__(
        self, collector: OutcomeCollector, sampler: Sampler, say: Callable[[str], None]
    ) -> None:
        self.collector, self.sampler, self.say = collector, sampler, say
        self.created = self.outcomes = 0

    def __call__(self, elapsed: float, label: str) -> None:
        created, outcomes = len(self.collector.created), len(self.collector.outcomes)
        recent = [
            (stamp - made) * 1000
            for made, _, stamp, _ in self.collector.finished().values()
            if stamp > time.time() - 1
        ]
        cpu = self.sampler.latest
        self.say(
            f"  [{elapsed:4.0f}s] {label} order-created {created - self.created:4d}/s"
            f"  outcomes {outcomes - self.outcomes:4d}/s  in flight {created - outcomes:5d}"
            f"  latency p50 {summarize(recent)['p50'] or 0:7.0f} ms"
            f"  CPU order {cpu.get('order', 0):3.0f}% inventory {cpu.get('inventory', 0):3.0f}%"
            f" kafka {cpu.get('kafka', 0):3.0f}% wrk {cpu.get('wrk', 0):3.0f}%"
            f" others {cpu.get('others', 0):3.0f}%"
        )
        self.created, self.outcomes = created, outcomes


def drain(
    collector: OutcomeCollector,
    expected: int,
    timeout: float,
    progress: Callable[[], None],
    say: Callable[[str], None],
) -> float:
    """Until every accepted order has its outcome, or `timeout` s, or 15 s without one
    more; the seconds it took."""
    began = time.monotonic()
    last_progress, last_count = began, 0
    while True:
        done = len(collector.finished())
        if done >= expected and len(collector.created) >= expected:
            break
        now = time.monotonic()
        if done != last_count:
            last_progress, last_count = now, done
        if now - began > timeout or now - last_progress > 15:
            say(f"  drain stopped: {expected - done} accepted orders without an outcome")
            break
        time.sleep(1)
        progress()
    return time.monotonic() - began


@dataclass
class Run:
    """What one end-to-end run saw: the load's wrk result and times, every order's
    creation and outcome (the collector's), and the records written meanwhile."""

    wrk: dict[str, Any]
    load_start: float
    load_end: float
    drain_s: float
    collector: OutcomeCollector
    records: int = 0
    finished: dict[str, tuple[float, str, float, float]] = field(default_factory=dict)
    """By order: (created, outcome, outcome's timestamp, received), once the collector
    stopped."""

    @property
    def expected(self) -> int:
        """The orders accepted (202): each should have an outcome."""
        return int(self.wrk["statuses"].get("202", 0))

    @property
    def last_outcome(self) -> float:
        return max((v[2] for v in self.finished.values()), default=self.load_end)


def run_e2e(
    *,
    bootstrap: Bootstrap,
    shop: ShopClient,
    catalogue: Catalogue,
    sampler: Sampler,
    load: Load,
    say: Callable[[str], None] = print,
    on_load_tick: Callable[[float], None] | None = None,
    topic_prefix: str = "",
    services: Iterable[str] = tuple(names()),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Drive the load, wait for the outcomes; return (summary, raw per-order series).
    The customers sign in first, so their tokens outlive the load."""
    tokens = bearer_tokens(shop, catalogue.accounts, lasting=load.duration + 60)
    mix = OrderMix(tokens, catalogue.ample, catalogue.scarce, load.scarce_share)
    records_before = kafka_records(bootstrap, prefix=topic_prefix)
    collector = OutcomeCollector(bootstrap, prefix=topic_prefix).start()
    try:
        run = drive(shop, mix, collector, sampler, load, say, on_load_tick)
    finally:
        collector.stop()
    run.finished = collector.finished()
    run.records = kafka_records(bootstrap, prefix=topic_prefix) - records_before
    window = steady_window(run.load_start, run.load_end, load.warmup)
    summary = {
        "load": {
            "duration_s": run.wrk["seconds"],
            "connections": load.connections,
            "threads": run.wrk["threads"],
            "rate": load.rate_limit,
            "scarce_share": load.scarce_share,
            "users": len(tokens),
            "products": len(catalogue.ample),
            "scarce_products": len(catalogue.scarce),
        },
        **throughput(run, window),
        **latencies(run, window),
        **correctness(run),
        "services": list(services),
        "processes": costs(run, sampler, window),
    }
    series = {
        "load_start": run.load_start,
        "load_end": run.load_end,
        "window": window,
        "orders": sorted(run.finished.values()),
    }
    return summary, series


def drive(
    shop: ShopClient,
    mix: OrderMix,
    collector: OutcomeCollector,
    sampler: Sampler,
    load: Load,
    say: Callable[[str], None],
    on_load_tick: Callable[[float], None] | None,
) -> Run:
    """wrk on POST /orders as `load` says, sampled as it runs, then the drain: until the
    collector saw an outcome for every accepted order (or gave up)."""
    progress = Progress(collector, sampler, say)

    def tick(elapsed: float) -> None:
        progress(elapsed, "load ")
        if on_load_tick:
            on_load_tick(elapsed)

    load_start = time.time()
    wrk = run_wrk(
        shop.urls["order"],
        mix,
        duration=load.duration,
        connections=load.connections,
        threads=load.threads,
        rate=load.rate_limit,
        on_tick=tick,
        on_start=lambda p: sampler.add("wrk", p.pid),
    )
    sampler.remove("wrk")
    expected = wrk["statuses"].get("202", 0)
    drain_s = drain(
        collector,
        expected,
        load.drain_timeout,
        lambda: progress(time.time() - load_start, "drain"),
        say,
    )
    return Run(wrk, load_start, load_start + wrk["seconds"], drain_s, collector)


def throughput(run: Run, window: tuple[float, float]) -> dict[str, Any]:
    """Orders and records per second: in the steady `window`, overall, second by second."""
    finished, load_start, load_end = run.finished, run.load_start, run.load_end
    seconds = int(max(run.last_outcome, load_end) - load_start) + 1
    return {
        "window_s": window[1] - window[0],
        "completed_per_s": rate((v[2] for v in finished.values()), *window),
        "completed_per_s_overall": ratio(len(finished), run.last_outcome - load_start),
        "backlog_at_load_end": sum(1 for v in finished.values() if v[0] < load_end <= v[2])
        + max(run.expected - len(finished), 0),
        "accepted_per_s": rate(run.collector.created.values(), *window),
        "drain_s": run.drain_s,
        "kafka_records": run.records,
        "kafka_records_per_s": run.records / (load_end - load_start + run.drain_s),
        "records_per_order": ratio(run.records, len(finished)),
        "wrk": run.wrk,
        "per_second": {
            "accepted": per_second(run.collector.created.values(), load_start, seconds),
            "completed": per_second((v[2] for v in finished.values()), load_start, seconds),
        },
    }


def latencies(run: Run, window: tuple[float, float]) -> dict[str, Any]:
    """Request to outcome of the orders created in the steady `window` (and of all), and
    the time each spent in each stage of the saga."""
    in_window = {k: v for k, v in run.finished.items() if window[0] <= v[0] < window[1]}
    latency = [(stamp - made) * 1000 for made, _, stamp, _ in in_window.values()]
    seen_latency = [(got - made) * 1000 for made, _, _, got in in_window.values()]
    everything = [(v[2] - v[0]) * 1000 for v in run.finished.values()]
    return {
        "latency_ms": summarize(latency),
        "seen_latency_ms": summarize(seen_latency),
        "latency_ms_all_orders": summarize(everything),
        "stages_ms": {
            stage: summarize(values) for stage, values in run.collector.stages(in_window).items()
        },
        "latency_definition": (
            "order-created ce_time (stamped in the POST /orders handler) to the outcome "
            "record's Kafka CreateTime (stamped when the order service's relay produces it)"
        ),
    }


def correctness(run: Run) -> dict[str, Any]:
    """Outcomes by kind; errors, orders lost (accepted, no outcome) and doubled."""
    outcomes = Counter(outcome for _, outcome, _, _ in run.finished.values())
    doubled = run.collector.doubled()
    missing = max(run.expected - len(run.finished), 0)
    return {
        "outcomes": dict(outcomes),
        "accepted": run.expected,
        "unfinished": missing,
        "errors": run.wrk["non_202"] + run.wrk["socket_errors"],
        "lost": missing,
        "doubled": len(doubled),
        "doubled_orders": doubled[:20],
    }


def costs(run: Run, sampler: Sampler, window: tuple[float, float]) -> dict[str, Any]:
    """Each process's CPU and memory in the steady `window`, and its CPU per order."""
    processes = cpu_summary(sampler.samples, *window)
    spent = cpu_seconds(sampler.samples, run.load_start, run.last_outcome, sampler.interval)
    for name, process in processes.items():
        if run.finished and name != "system":
            process["cpu_ms_per_order"] = spent.get(name, 0.0) * 1000 / len(run.finished)
    return processes
