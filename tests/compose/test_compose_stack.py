"""`make up` through compose, for real: the stack of compose.yaml on the images `make images`
builds, with `--scale inventory=2 order=2`, reached through HAProxy like a user reaches it.
Orders are confirmed and rejected, the explorer shows them, Prometheus scrapes every
replica, one container of each scaled service is killed mid-load and nothing is lost or
applied twice, and `docker compose down -v` leaves nothing of the project behind.

Runs when a Docker engine with the compose plugin answers and the local images are built
(`make images`); skips otherwise (`make engine images` provides both). `make test-compose`."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.compose.stack import (
    EXPLORER,
    PROMETHEUS,
    SCALE,
    URLS,
    ComposeStack,
    exclusive,
    leftovers,
    missing_images,
)
from tests.e2e.chaos import Catalogue, LoadResult, check_invariants, make_catalogue, run_load
from tests.helpers import eventually
from tools.local.docker import compose_version
from tools.local.stack import docker_engine
from tools.ops.client import ShopClient

pytestmark = [pytest.mark.compose, pytest.mark.slow, pytest.mark.timeout(2400)]

LOAD = 160
"""Orders of the load during which a container of each scaled service is killed."""
KILL_AFTER = 30
"""Orders accepted before the kills: the load is well under way, most of it still to come."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    if not docker_engine():
        pytest.skip("no Docker engine answers (make engine)")
    if compose_version() is None:
        pytest.skip("no compose plugin (make engine installs it)")
    if missing := missing_images():
        pytest.skip(f"images not built: {', '.join(missing)} (make images)")
    run_dir = tmp_path_factory.mktemp("compose")
    run_dir.chmod(0o700)
    running = ComposeStack(run_dir)
    with exclusive():  # another run's stack is not an interrupted run's leftovers
        running.down()  # what an interrupted run may have left
        try:
            running.up()
            yield running
        finally:
            running.down()


@pytest.fixture(scope="module")
def operator(stack: ComposeStack) -> Iterator[ShopClient]:
    client = ShopClient(URLS, patience=60)
    shop = client.as_operator(password_file=stack.operator_password_file)
    yield shop
    client.close()


@pytest.fixture(scope="module")
def placed() -> LoadResult:
    """Every order placed in this module: the invariants are checked over all of them."""
    return LoadResult()


NO_SERVER = "No server is available"
"""HAProxy's 503 when no container of the service passes /ready at that moment (a lone
replica whose Kafka check timed out on a loaded machine): the request reached no service."""


def setup_through_the_proxy(make: Callable[[], Catalogue], attempts: int = 5) -> Catalogue:
    """`make()` again after HAProxy's own 503 (nothing was sent to a service); any other
    error fails the test."""
    for attempt in range(1, attempts + 1):
        try:
            return make()
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 503 or NO_SERVER not in exc.response.text:
                raise
            if attempt == attempts:
                raise
            print(f"setup: HAProxy had no ready server ({exc.request.url}), again")
            time.sleep(2)
    raise AssertionError("unreachable")


def outcome(shop: ShopClient, order_id: str) -> str:
    return str(shop.wait_for_status(order_id, timeout=120)["status"])


def test_orders_through_haproxy_are_confirmed_and_rejected(
    operator: ShopClient, placed: LoadResult
) -> None:
    ample = operator.create_product("compose ample", 250)["id"]
    scarce = operator.create_product("compose scarce", 990)["id"]
    operator.set_stock_eventually(ample, 50, timeout=120)
    operator.set_stock_eventually(scarce, 1, timeout=120)
    customer = operator.sign_up("Compose")
    orders = {}
    for name, lines in {
        "fits": [{"product_id": ample, "quantity": 2}],
        "too many": [{"product_id": scarce, "quantity": 5}],
    }.items():
        order = customer.place_order_eventually(lines, timeout=120)
        orders[name] = order["id"]
        placed.orders[order["id"]] = lines
    assert outcome(customer, orders["fits"]) == "CONFIRMED"
    assert outcome(customer, orders["too many"]) == "REJECTED"
    stock = operator.stock(ample)
    assert (stock["available"], stock["reserved"]) == (48, 2)

    def shown(order_id: str, state: str) -> bool:
        response = httpx.get(f"{EXPLORER}/api/orders/{order_id}", timeout=10)
        if response.status_code != 200:
            return False
        chain: dict[str, Any] = response.json()
        types = [event["type"] for event in chain["chain"]]
        return chain["state"] == state and "order-created" in types

    eventually(lambda: shown(orders["fits"], "CONFIRMED"), timeout=60, message="explorer")
    eventually(lambda: shown(orders["too many"], "REJECTED"), timeout=60, message="explorer")
    recent = httpx.get(f"{EXPLORER}/api/snapshot", timeout=10).json()
    listed = {summary["id"] for summary in recent["orders"]}
    assert set(orders.values()) <= listed


def test_prometheus_scrapes_every_replica(stack: ComposeStack) -> None:
    expected = {address for service in URLS for address in stack.addresses(service)}
    assert len(expected) == len(URLS) + sum(count - 1 for count in SCALE.values())

    def every_replica_up() -> bool:
        response = httpx.get(f"{PROMETHEUS}/api/v1/targets", params={"state": "active"})
        targets = [t for t in response.json()["data"]["activeTargets"] if t["scrapePool"] == "shop"]
        up = {t["labels"]["instance"] for t in targets if t["health"] == "up"}
        return up == expected and len(targets) == len(expected)

    eventually(every_replica_up, timeout=60, message="Prometheus scrapes each container")


def test_a_killed_container_of_each_scaled_service_loses_and_doubles_nothing(
    stack: ComposeStack, operator: ShopClient, placed: LoadResult
) -> None:
    catalogue = setup_through_the_proxy(
        lambda: make_catalogue(operator, ample=3, scarce=2, customers=6)
    )
    victims = {service: stack.containers(service)[0] for service in SCALE}
    accepted = threading.Event()

    def progress(done: int) -> None:
        if done >= KILL_AFTER:
            accepted.set()

    finished: list[LoadResult | BaseException] = []

    def load() -> None:
        try:
            finished.append(run_load(URLS, catalogue, LOAD, threads=6, progress=progress))
        except BaseException as exc:  # handed to the test's thread
            finished.append(exc)
            accepted.set()

    worker = threading.Thread(target=load)
    worker.start()
    assert accepted.wait(600), "the load did not get going"
    for container in victims.values():  # one container by id: `compose kill` kills them all
        killed = subprocess.run(["docker", "kill", container], capture_output=True, text=True)
        assert killed.returncode == 0, killed.stderr
    worker.join(900)
    assert not worker.is_alive(), "the load did not finish"
    result = finished[0]
    if isinstance(result, BaseException):
        raise result
    assert len(result.orders) == LOAD, "every order was accepted in the end"
    merged = LoadResult(
        orders={**placed.orders, **result.orders},
        cancelled=result.cancelled,
        retries=result.retries,
    )
    tallies = check_invariants(operator, stack.kafka(), "", catalogue, merged, timeout=240)
    assert tallies["confirmed"] > 0 and tallies["rejected"] > 0, tallies
    print(f"after killing {', '.join(victims)}: {tallies}")


def test_compose_down_leaves_nothing(stack: ComposeStack) -> None:
    stack.down()
    assert leftovers() == {"container": [], "network": [], "volume": []}
