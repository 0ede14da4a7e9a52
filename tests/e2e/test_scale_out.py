"""Two instances of every service behind HAProxy, on PostgreSQL: a rolling restart of every
instance under continuous load fails no request, loses no order and applies nothing twice."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from confluent_kafka.admin import AdminClient
from sqlalchemy import create_engine, text

from shared.messaging.fetch import consumer_config
from tests.conftest import free_port, service_databases
from tests.e2e.chaos import Catalogue, LoadResult, check_invariants, make_catalogue
from tests.helpers import eventually, unique
from tools.local.stack import PORTS, Layout, ServiceProcess, Stack
from tools.ops.client import ShopClient

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres]

INSTANCES = 2
SESSION_TIMEOUT = consumer_config("", "")["session.timeout.ms"] / 1000
"""After this long the broker would rebalance a member that vanished without leaving."""


@dataclass
class Scaled:
    stack: Stack
    client: ShopClient
    operator: ShopClient
    databases: dict[str, str]
    prefix: str


@pytest.fixture
def scaled(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Scaled]:
    """Every service twice behind HAProxy, each sharing its PostgreSQL database."""
    with service_databases("postgres", tmp_path, list(PORTS)) as databases:
        prefix = unique("scale") + "-"
        env = {"TOPIC_PREFIX": prefix}
        for name, url in databases.items():
            env[f"{name.upper()}_DATABASE_URL"] = url
            env[f"{name.upper()}_CONSUMER_GROUP"] = f"{prefix}{name}"
        stack = Stack(
            run_dir=tmp_path,
            ports={name: free_port() for name in PORTS},
            env=env,
            kafka=kafka_bootstrap,
            layout=Layout(
                instances=dict.fromkeys(PORTS, INSTANCES),
                instance_ports={
                    f"{name}-{i}": free_port() for name in PORTS for i in range(1, INSTANCES + 1)
                },
            ),
        )
        try:
            stack.up(timeout=120)
            client = ShopClient(stack.urls)
            operator = client.as_operator(password_file=stack.operator_password_file)
            yield Scaled(stack, client, operator, databases, prefix)
            client.close()
        finally:
            stack.down()


@dataclass
class SteadyLoad:
    """Orders from several customers at a modest rate, and reads of every other service,
    through the proxy, never retried: every answer but the expected one is a failure."""

    urls: dict[str, str]
    catalogue: Catalogue
    result: LoadResult = field(default_factory=LoadResult)
    failures: list[str] = field(default_factory=list)
    requests: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def orders(self, worker: int, pause: float) -> None:
        rng = random.Random(worker)
        products = list(self.catalogue.stock)
        with httpx.Client(timeout=30) as http:
            n = 0
            while not self.stop.wait(pause):
                customer = self.catalogue.customers[(worker + n) % len(self.catalogue.customers)]
                lines = [
                    {"product_id": p, "quantity": rng.randint(1, 3)}
                    for p in rng.sample(products, rng.randint(1, 2))
                ]
                headers = {
                    "Authorization": f"Bearer {customer.token}",
                    "Idempotency-Key": f"scale-{worker}-{n}",
                }
                n += 1
                response = self._send(http, "POST", "order", "/orders", 202, headers, lines)
                if response is not None:
                    with self.result.lock:
                        self.result.orders[response.json()["id"]] = lines

    def reads(self, token: str, pause: float) -> None:
        product = next(iter(self.catalogue.stock))
        paths = [
            ("inventory", f"/stock/{product}"),
            ("product", f"/products/{product}"),
            ("user", "/users/me"),
            ("order", "/orders"),
        ]
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(timeout=30) as http:
            n = 0
            while not self.stop.wait(pause):
                service, path = paths[n % len(paths)]
                n += 1
                self._send(http, "GET", service, path, 200, headers)

    def _send(
        self,
        http: httpx.Client,
        method: str,
        service: str,
        path: str,
        expected: int,
        headers: dict[str, str],
        lines: list[dict[str, object]] | None = None,
    ) -> httpx.Response | None:
        body = {"json": {"items": lines}} if lines is not None else {}
        try:
            response = http.request(method, self.urls[service] + path, headers=headers, **body)
        except httpx.TransportError as exc:
            failure = f"{method} {service}{path}: {exc!r}"
            response = None
        else:
            failure = f"{method} {service}{path}: {response.status_code} {response.text[:200]}"
        with self.result.lock:
            self.requests += 1
            if response is None or response.status_code != expected:
                self.failures.append(failure)
                return None
        return response


def warm_up(load: SteadyLoad) -> None:
    """An order from every customer and of every product, placed until the order service
    has learnt them from their events (before that it answers 401 "unknown user" or 422
    "unknown product" and creates nothing); the orders count with the load's."""
    customers, products = load.catalogue.customers, list(load.catalogue.stock)
    for n in range(max(len(customers), len(products))):
        lines: list[dict[str, object]] = [
            {"product_id": products[n % len(products)], "quantity": 1}
        ]
        placed = customers[n % len(customers)].place_order_eventually(lines, timeout=60)
        with load.result.lock:
            load.result.orders[placed["id"]] = lines


def assignment(admin: AdminClient, group: str) -> list[int]:
    """How many partitions each member of `group` owns, as the group coordinator says.

    (Asked of the broker from here, not of an instance's /metrics.)"""
    futures = admin.describe_consumer_groups([group], request_timeout=10)
    described = futures[group].result(timeout=15)
    return sorted(len(m.assignment.topic_partitions) for m in described.members)


def unsent(database_url: str) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(
                connection.scalar(text("SELECT count(*) FROM outbox WHERE sent_at IS NULL")) or 0
            )
    finally:
        engine.dispose()


def stop_and_watch_handover(
    process: ServiceProcess, admin: AdminClient, group: str
) -> tuple[int, float]:
    """Stop `process` gracefully; return how many partitions the other member of its group
    then owns alone, and how long after the exit that took."""
    both = eventually(
        lambda: len(owned := assignment(admin, group)) == 2 and owned,
        timeout=30,
        message="both instances own partitions",
    )
    process.stop()  # SIGTERM, and wait until it exited
    exited = time.monotonic()
    # It left the group as it closed, so the other owns every partition well before the
    # broker would have noticed a member that vanished silently (its session timeout).
    eventually(
        lambda: assignment(admin, group) == [sum(both)],
        timeout=0.7 * SESSION_TIMEOUT,
        message="the partitions move to the other instance",
    )
    return sum(both), time.monotonic() - exited


def test_a_rolling_restart_of_every_instance_under_load_fails_no_request(scaled: Scaled):
    stack, operator = scaled.stack, scaled.operator
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    catalogue = make_catalogue(operator, ample=3, scarce=2, customers=6)
    load = SteadyLoad(stack.urls, catalogue)
    warm_up(load)
    workers = [
        threading.Thread(target=load.orders, args=(n, 0.1), daemon=True) for n in range(3)
    ] + [threading.Thread(target=load.reads, args=(catalogue.customers[0].token, 0.1))]
    for worker in workers:
        worker.start()
    restarts: list[str] = []
    handed_over, handover_seconds = 0, 0.0
    try:
        eventually(lambda: len(load.result.orders) >= 20, timeout=60, message="orders flow")
        for name in ("inventory", "order", "product", "user"):
            for process in stack.instances[name]:
                if process.id == "inventory-1":
                    handed_over, handover_seconds = stop_and_watch_handover(
                        process, admin, f"{scaled.prefix}inventory"
                    )
                else:
                    process.stop()  # SIGTERM, and wait until it exited
                assert process.pid() is None
                process.start()
                process.wait_ready(120)
                stack.wait_in_rotation(process)
                restarts.append(process.id)
        after = len(load.result.orders)
        eventually(
            lambda: len(load.result.orders) >= after + 20, timeout=60, message="orders flow on"
        )
    finally:
        load.stop.set()
        for worker in workers:
            worker.join(60)

    assert len(restarts) == INSTANCES * len(PORTS)
    assert handed_over > 0
    assert load.failures == [], f"{len(load.failures)} of {load.requests} failed"
    tallies = check_invariants(
        operator, stack.bootstrap, scaled.prefix, catalogue, load.result, timeout=120
    )
    assert tallies["confirmed"] > 0

    # A last burst, then every instance stops while its events are under way: each
    # instance's relay publishes what is left, so no outbox keeps an unsent row.
    ada = catalogue.customers[0]
    for _ in range(20):
        ada.place_order([{"product_id": next(iter(catalogue.stock)), "quantity": 1}])
    stack.down()
    left = {name: unsent(url) for name, url in scaled.databases.items()}
    assert left == dict.fromkeys(PORTS, 0)
    print(
        f"rolling restart: {load.requests} requests, {len(load.failures)} failed,"
        f" {tallies['orders']} orders ({tallies['confirmed']} confirmed,"
        f" {tallies['rejected']} rejected), {len(restarts)} restarts: {restarts},"
        f" {handed_over} partitions handed over in {handover_seconds:.1f}s"
    )
