"""Nothing lost, nothing doubled: SIGKILL under load, fault injection at the two dangerous
moments, a rebalance, and recovery from broker and database outages."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from tests.conftest import free_port, service_databases
from tests.e2e.chaos import check_invariants, make_catalogue, run_load
from tests.e2e.conftest import RunningStack, start_stack
from tests.helpers import eventually, unique
from tools.local.kafka import LocalBroker
from tools.local.stack import PORTS, ServiceProcess, Stack
from tools.ops.client import ShopClient

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FAULTS = {
    # inventory dies between its DB commit and its offset store, on its 100th event
    "inventory": {"FAULT_CRASH_AFTER_COMMITS": "100"},
    # order dies after committing events, as its relay is about to publish batch 25
    "order": {"FAULT_CRASH_BEFORE_PUBLISH": "25"},
}


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker of this test's own, so killing it disturbs no other test."""
    broker = LocalBroker(tmp_path / "kafka", port=free_port(), controller_port=free_port())
    broker.start()
    yield broker
    broker.stop()


def stack_on(broker: LocalBroker, folder: Path, faults: dict[str, dict[str, str]]) -> Stack:
    """The stack on `broker`, each service in `faults` served by tests.faults, armed."""
    prefix = unique("chaos") + "-"
    stack = Stack(
        run_dir=folder,
        ports={name: free_port() for name in PORTS},
        env={"TOPIC_PREFIX": prefix},
        kafka=broker,
    )
    for name, armed in faults.items():
        service = stack.services[name]
        service.env = {**service.env, **armed, "FAULT_SERVICE": name}
        service.app = "tests.faults:create_app"
    stack.up(timeout=120)
    return stack


class Watchdog(threading.Thread):
    """Restarts (with faults disarmed) any service that died by itself, and counts them."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.crashes: dict[str, int] = dict.fromkeys(stack.services, 0)
        self.paused = threading.Lock()
        self.stop = threading.Event()
        self.failures: list[str] = []
        """Restarts that failed (each is tried again), for the test's report."""

    def run(self) -> None:
        down: set[str] = set()
        while not self.stop.wait(0.2):
            with self.paused:
                for name, service in self.stack.services.items():
                    if service.pid() is None:
                        if name not in down:
                            self.crashes[name] += 1
                            down.add(name)
                        try:
                            restart(service)
                        except Exception as exc:  # try again on the next round
                            self.failures.append(f"{name}: {exc!r}")
                            continue
                    down.discard(name)


def restart(service: ServiceProcess) -> None:
    """Bring a service back with the project's own command, faults disarmed."""
    service.env = {k: v for k, v in service.env.items() if not k.startswith("FAULT_")}
    service.app = ""
    service.start()
    service.wait_ready(120)


def test_sigkill_of_inventory_order_and_broker_under_load_loses_and_doubles_nothing(
    own_broker: LocalBroker, tmp_path: Path
):
    stack = stack_on(own_broker, tmp_path, FAULTS)
    client = ShopClient({name: s.url for name, s in stack.services.items()})
    watchdog = Watchdog(stack)
    try:
        shop = client.as_operator(password_file=stack.operator_password_file)
        catalogue = make_catalogue(shop)
        watchdog.start()
        total = 600
        plan = [(150, "inventory"), (300, "order"), (450, "kafka")]
        killed: list[str] = []
        progress = {"done": 0}

        def chaos() -> None:
            for threshold, target in plan:
                while progress["done"] < threshold:
                    time.sleep(0.05)
                with watchdog.paused:  # our kill, not a crash: restart it ourselves
                    if target == "kafka":
                        own_broker.kill()
                        eventually(
                            lambda: not stack.services["order"].ready(),
                            timeout=30,
                            message="the order service notices the outage",
                        )
                        own_broker.start()
                    else:
                        stack.services[target].kill()
                        restart(stack.services[target])
                killed.append(target)

        chaos_thread = threading.Thread(target=chaos, daemon=True)
        chaos_thread.start()
        load = run_load(
            {n: s.url for n, s in stack.services.items()},
            catalogue,
            total,
            progress=lambda done: progress.__setitem__("done", done),
        )
        chaos_thread.join(120)
        assert killed == ["inventory", "order", "kafka"]
        tallies = check_invariants(
            shop, stack.bootstrap, stack.services["order"].env["TOPIC_PREFIX"], catalogue, load
        )
    finally:
        watchdog.stop.set()
        client.close()
        stack.down()
    assert watchdog.crashes["inventory"] == 1, "the after-commit fault fired once"
    assert watchdog.crashes["order"] == 1, "the before-publish fault fired once"
    assert tallies["orders"] == total
    assert tallies["confirmed"] > 0 and tallies["rejected"] > 0
    print(
        f"crash test: {tallies}, fault crashes {watchdog.crashes}, kills {killed},"
        f" failed restarts {watchdog.failures}"
    )


def test_a_rebalance_under_load_keeps_every_invariant(kafka_bootstrap: str, tmp_path: Path):
    with service_databases("postgres", tmp_path, list(PORTS)) as databases:
        running = start_stack(kafka_bootstrap, tmp_path, "postgres", databases)
        first = running.stack.services["inventory"]
        second = ServiceProcess("inventory", free_port(), tmp_path / "second", first.env)
        try:
            second.start()
            second.wait_ready()
            catalogue = make_catalogue(running.operator)
            stopped = threading.Event()

            def stop_second(done: int) -> None:
                if done >= 200 and not stopped.is_set():
                    stopped.set()
                    threading.Thread(target=second.stop, daemon=True).start()

            load = run_load(running.client.urls, catalogue, 500, progress=stop_second)
            tallies = check_invariants(
                running.client, kafka_bootstrap, running.topic_prefix, catalogue, load
            )
        finally:
            second.stop()
            running.client.close()
            running.stack.down()
    assert stopped.is_set() and tallies["orders"] == 500


def test_ready_reports_a_broker_outage_and_the_outbox_catches_up(
    own_broker: LocalBroker, tmp_path: Path
):
    stack = stack_on(own_broker, tmp_path, {})
    client = ShopClient({name: s.url for name, s in stack.services.items()})
    try:
        shop = client.as_operator(password_file=stack.operator_password_file)
        ada = shop.sign_up("Outage")
        product_id = shop.create_product("p", 1)["id"]
        shop.set_stock_eventually(product_id, 5)
        ada.place_order_eventually([{"product_id": product_id, "quantity": 1}])

        own_broker.kill()
        for service in stack.services.values():
            eventually(
                lambda s=service: not s.ready(),
                timeout=30,
                message=f"{service.name} /ready answers 503",
            )
        accepted = ada.place_order([{"product_id": product_id, "quantity": 2}])
        assert accepted.status_code == 202, "orders are accepted while the broker is away"

        own_broker.start()
        for service in stack.services.values():
            eventually(service.ready, timeout=60, message=f"{service.name} ready again")
        final = ada.wait_for_status(accepted.json()["id"], timeout=60)
        assert final["status"] == "CONFIRMED"
        assert shop.stock(product_id) == {"product_id": product_id, "available": 2, "reserved": 3}
    finally:
        client.close()
        stack.down()


def test_ready_reports_a_database_outage(running: RunningStack):
    if running.backend != "postgres":
        pytest.skip("a database can be taken away only on PostgreSQL")
    service = running.stack.services["product"]
    url = make_url(service.env["PRODUCT_DATABASE_URL"])
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        try:
            connection.execute(text(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS false'))
            connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db"),
                {"db": url.database},
            )
            eventually(lambda: not service.ready(), timeout=30, message="/ready answers 503")
            response = running.client.http.get(f"{service.url}/ready")
            assert response.json()["checks"]["database"] is False
        finally:
            connection.execute(text(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS true'))
    admin.dispose()
    eventually(service.ready, timeout=30, message="ready again")
    assert running.operator.create_product("after", 1)["id"]
