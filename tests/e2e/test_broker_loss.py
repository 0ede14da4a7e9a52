"""Losing brokers of a secured three-node cluster under load. One at a time: no request
fails, nothing is lost or doubled, every order gets its outcome, /ready says degraded.
Two at once (below `min.insync.replicas`): publishes stop, /ready says down, orders are
still accepted and wait in the outbox until a broker is back (docs/broker-loss.md).

    pytest tests/e2e/test_broker_loss.py -s     also prints request → outcome per phase

`BROKER_LOSS_RATE` sets the load's orders per second (default 25, about half what this
stack completes on a two-core machine)."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka.admin import AdminClient

from shared.messaging.connection import KafkaConnection
from tests.conftest import service_databases
from tests.e2e.chaos import Catalogue, LoadResult, check_invariants, make_catalogue
from tests.e2e.conftest import RunningStack, start_stack
from tests.helpers import eventually, metric_total, read_topic
from tools.local.certs import ADMIN
from tools.local.cluster import ClusterNode, LocalCluster
from tools.local.stack import PORTS, ServiceProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RATE = float(os.environ.get("BROKER_LOSS_RATE", "25"))
OUTAGE = 5.0
"""Seconds of load with a broker down (and before the first kill)."""


@dataclass
class Shop:
    running: RunningStack
    cluster: LocalCluster
    catalogue: Catalogue
    ledger: LoadResult
    """Every order accepted in this module: the invariants are checked over all of them."""

    @property
    def admin(self) -> KafkaConnection:
        return self.cluster.connection(ADMIN)

    @property
    def services(self) -> dict[str, ServiceProcess]:
        return self.running.stack.services


@pytest.fixture(scope="module")
def shop_on_cluster(
    secure_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shop]:
    folder: Path = tmp_path_factory.mktemp("broker-loss")
    with service_databases("sqlite", folder, list(PORTS)) as databases:
        running = start_stack("", folder, "sqlite", databases, cluster=secure_cluster)
        try:
            catalogue = make_catalogue(running.operator)
            ledger = LoadResult()
            everything = [{"product_id": p, "quantity": 1} for p in catalogue.stock]
            for customer in catalogue.customers:  # the order service has learnt them all
                placed = customer.place_order_eventually(everything, timeout=60)
                ledger.orders[placed["id"]] = everything
            yield Shop(running, secure_cluster, catalogue, ledger)
        finally:
            running.client.close()
            running.stack.down(kafka=False)


@pytest.fixture
def shop(shop_on_cluster: Shop) -> Iterator[Shop]:
    """The stack, and after the test every broker running and in sync again, whatever
    happened: the cluster is the session's."""
    yield shop_on_cluster
    for node in shop_on_cluster.cluster.nodes.values():
        node.start(120)
    wait_in_sync(shop_on_cluster, timeout=120)


# -- the cluster, as its metadata says -----------------------------------------------------


def in_sync(shop: Shop) -> bool:
    """Every broker alive, and every partition led and with all its replicas in sync."""
    metadata = AdminClient(shop.admin.config()).list_topics(timeout=10)
    assert len(metadata.brokers) == len(shop.cluster.nodes), sorted(metadata.brokers)
    for name, topic in metadata.topics.items():
        for p in topic.partitions.values():
            assert p.leader >= 0 and set(p.isrs) == set(p.replicas), (name, p.id, p.isrs)
    return True


def wait_in_sync(shop: Shop, timeout: float = 90) -> None:
    eventually(lambda: in_sync(shop), timeout=timeout, interval=0.5, message="ISR full again")


def busiest_leader(shop: Shop, besides: set[int] | None = None) -> ClusterNode:
    """The node leading most partitions of the stack's topics (not one of `besides`)."""
    metadata = AdminClient(shop.admin.config()).list_topics(timeout=10)
    led = dict.fromkeys(set(shop.cluster.nodes) - (besides or set()), 0)
    for name, topic in metadata.topics.items():
        if name.startswith(shop.running.topic_prefix):
            for p in topic.partitions.values():
                if p.leader in led:
                    led[p.leader] += 1
    return shop.cluster.nodes[max(led, key=lambda node: led[node])]


def readiness(service: ServiceProcess) -> tuple[int, str, str]:
    """/ready's HTTP status, its `status` (ready, degraded or down) and Kafka's detail."""
    response = httpx.get(f"{service.url}/ready", timeout=5)
    body = response.json()
    return response.status_code, body["status"], (body.get("kafka") or {}).get("detail", "")


def wait_readiness(shop: Shop, expected: tuple[int, str], timeout: float = 30) -> set[str]:
    """Wait until every service's /ready answers `expected` (status code, status); return
    the other answers seen meanwhile."""
    seen: set[str] = set()

    def answers(service: ServiceProcess) -> bool:
        code, status, detail = readiness(service)
        if (code, status) != expected:
            seen.add(f"{service.name}: {code} {status} ({detail})")
        return (code, status) == expected

    for service in shop.services.values():
        eventually(
            lambda s=service: answers(s),
            timeout=timeout,
            interval=0.2,
            message=f"{service.name} /ready answers {expected}",
        )
    return seen


# -- a paced load that never retries -------------------------------------------------------


@dataclass
class Sent:
    began: float
    """Wall-clock time the request went out."""
    seconds: float
    order_id: str | None
    error: str | None
    """The status and body of an answer other than 202, or the transport error."""


@dataclass
class PacedLoad:
    """POST /orders at `rate` per second from `workers` threads, the customers taking
    turns; no retries: any answer but 202, or none, is a failed request."""

    url: str
    catalogue: Catalogue
    ledger: LoadResult
    rate: float = RATE
    workers: int = 12
    sent: list[Sent] = field(default_factory=list)
    late: float = 0.0
    """The most a request went out after its turn (the pacing fell behind)."""
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> PacedLoad:
        self._began = time.monotonic()
        self._threads = [
            threading.Thread(target=self._work, daemon=True) for _ in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Sent]:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        return self.sent

    def _work(self) -> None:
        products = list(self.catalogue.stock)
        with httpx.Client(timeout=10) as http:
            while True:
                with self._lock:
                    n, self._next = self._next, self._next + 1
                wait = self._began + n / self.rate - time.monotonic()
                if self._stop.wait(max(0.0, wait)):
                    return
                self.late = max(self.late, -wait)
                rng = random.Random(n)
                lines = [
                    {"product_id": p, "quantity": rng.randint(1, 3)}
                    for p in rng.sample(products, rng.randint(1, 3))
                ]
                customer = self.catalogue.customers[n % len(self.catalogue.customers)]
                self._send(http, customer.token or "", lines)

    def _send(self, http: httpx.Client, token: str, lines: list[dict[str, Any]]) -> None:
        began, clock = time.time(), time.perf_counter()
        order_id = error = None
        try:
            response = http.post(
                f"{self.url}/orders",
                json={"items": lines},
                headers={"Authorization": f"Bearer {token}"},
            )
            if response.status_code == 202:
                order_id = response.json()["id"]
            else:
                error = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            error = repr(exc)
        with self._lock:
            self.sent.append(Sent(began, time.perf_counter() - clock, order_id, error))
        if order_id is not None:
            with self.ledger.lock:
                self.ledger.orders[order_id] = lines


# -- what the customers saw ----------------------------------------------------------------


def outcome_times(shop: Shop, order_ids: set[str]) -> dict[str, float]:
    """Order id → wall-clock time its outcome was decided (the `ce_time` of its
    `order-confirmed` or `order-rejected`: written with the order's new status)."""
    wanted = {o.encode() for o in order_ids}

    def outcome(message: Any) -> bool:
        kind = dict(message.headers() or []).get("ce_type", b"")
        return kind in (b"order-confirmed", b"order-rejected")

    messages = read_topic(
        shop.admin,
        shop.running.topic("orders"),
        until=lambda got: wanted <= {m.key() for m in got if outcome(m)},
        timeout=120,
    )
    times: dict[str, float] = {}
    for message in messages:
        if outcome(message) and message.key() in wanted:
            decided = dict(message.headers() or [])["ce_time"].decode()
            order_id = orjson.loads(message.value())["order_id"]
            times[order_id] = datetime.fromisoformat(decided).timestamp()
    return times


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def report(sent: list[Sent], decided: dict[str, float], marks: list[tuple[float, str]]) -> str:
    """Per phase (`marks`: its start and name): orders placed, the POST's and the
    outcome's p50 / p99 / max in milliseconds. An order still in flight when a broker is
    killed counts in that outage."""
    placed = [s for s in sent if s.order_id is not None]
    phases: dict[str, list[Sent]] = {name: [] for _, name in marks}
    for s in placed:
        name = next((n for t, n in reversed(marks) if t <= s.began), marks[0][1])
        done = decided.get(s.order_id or "", float("inf"))
        hit = [n for t, n in marks if n.endswith(" down") and s.began < t <= done]
        phases[hit[0] if hit else name].append(s)
    lines = [
        f"{'phase':<16} {'orders':>6}  {'POST p50/p99 ms':>16}  {'outcome p50/p99/max ms':>22}"
    ]
    for name, phase in phases.items():
        post = [s.seconds * 1000 for s in phase]
        outcome = [(decided[s.order_id] - s.began) * 1000 for s in phase if s.order_id in decided]
        p50, p99 = percentile(post, 0.5), percentile(post, 0.99)
        o50, o99 = percentile(outcome, 0.5), percentile(outcome, 0.99)
        worst = max(outcome, default=float("nan"))
        lines.append(
            f"{name:<16} {len(phase):>6}  {p50:>7.0f} /{p99:>6.0f}"
            f"  {o50:>7.0f} /{o99:>6.0f} /{worst:>6.0f}"
        )
    return "\n".join(lines)


# -- the tests -----------------------------------------------------------------------------


def test_losing_one_broker_at_a_time_under_load_fails_no_request(shop: Shop) -> None:
    wait_in_sync(shop)
    wait_readiness(shop, (200, "ready"))
    marks = [(time.time(), "before")]
    load = PacedLoad(shop.services["order"].url, shop.catalogue, shop.ledger).start()
    killed: list[int] = []
    took: list[str] = []
    seen: set[str] = set()
    try:
        time.sleep(OUTAGE)  # load shaping: the load runs, nothing is waited for
        for _ in range(2):
            node = busiest_leader(shop, besides=set(killed))
            node.kill()
            began = time.monotonic()
            marks.append((time.time(), f"kafka-{node.node_id} down"))
            killed.append(node.node_id)
            meanwhile = wait_readiness(shop, (200, "degraded"))
            took.append(f"kafka-{node.node_id}: degraded after {time.monotonic() - began:.1f}s")
            seen |= meanwhile
            time.sleep(OUTAGE)  # load shaping: the outage lasts while the load runs
            began = time.monotonic()
            node.start(120)
            marks.append((time.time(), f"kafka-{node.node_id} back"))
            took.append(f"serving after {time.monotonic() - began:.1f}s")
            wait_in_sync(shop)
            wait_readiness(shop, (200, "ready"))
            took.append(f"in sync and ready after {time.monotonic() - began:.1f}s")
    finally:
        sent = load.stop()
    failed = [s for s in sent if s.error is not None]
    accepted = {s.order_id for s in sent if s.order_id is not None}
    tallies = check_invariants(
        shop.running.operator,
        shop.admin,
        shop.running.topic_prefix,
        shop.catalogue,
        shop.ledger,
        timeout=120,
    )
    decided = outcome_times(shop, accepted)
    table = report(sent, decided, marks)
    print(
        f"\nbroker loss at {load.rate:.0f} orders/s: {len(sent)} requests, {len(failed)} failed,"
        f" pacing at most {load.late * 1000:.0f} ms late; {', '.join(took)}; {tallies}\n" + table
    )
    assert not failed, failed[:5]
    assert len(killed) == 2 and len(set(killed)) == 2
    assert accepted and tallies["confirmed"] > 0


def test_below_min_insync_publishes_stop_and_the_outbox_holds_accepted_orders(
    shop: Shop,
) -> None:
    wait_in_sync(shop)
    survivor = busiest_leader(shop)
    victims = [node for node in shop.cluster.nodes.values() if node is not survivor]
    for node in victims:  # and with them the KRaft quorum: the metadata freezes
        node.kill()
    wait_readiness(shop, (503, "down"))

    customer = shop.catalogue.customers[0]
    ample = [p for p, amount in shop.catalogue.stock.items() if amount > 1000]
    held: list[str] = []
    for n in range(20):
        lines = [{"product_id": ample[n % len(ample)], "quantity": 1}]
        response = customer.place_order(lines)
        assert response.status_code == 202, "orders are accepted while publishes stop"
        held.append(response.json()["id"])
        with shop.ledger.lock:
            shop.ledger.orders[held[-1]] = lines
    order = shop.services["order"]
    unsent = metric_total(httpx.get(f"{order.url}/metrics").text, "outbox_unsent_events")
    assert unsent >= len(held), "the outbox holds every accepted order's event"
    assert {customer.order(o)["status"] for o in held} == {"PENDING"}

    victims[0].start(120)
    for order_id in held:
        final = customer.wait_for_status(order_id, timeout=120)
        assert final["status"] == "CONFIRMED", final
    wait_readiness(shop, (200, "degraded"), timeout=60)

    victims[1].start(120)
    wait_in_sync(shop)
    wait_readiness(shop, (200, "ready"))
    check_invariants(
        shop.running.operator,
        shop.admin,
        shop.running.topic_prefix,
        shop.catalogue,
        shop.ledger,
        timeout=120,
    )
