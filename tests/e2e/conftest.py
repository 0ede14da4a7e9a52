"""The four services as real processes, on their own topics, ports and databases, against
the real broker: once on SQLite, once on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import free_port, service_databases
from tests.helpers import unique
from tools.local.cluster import LocalCluster
from tools.local.stack import PORTS, Stack
from tools.ops.client import ShopClient


@dataclass
class RunningStack:
    stack: Stack
    client: ShopClient
    """Signed in as nobody: `client.sign_up()` makes a customer."""
    operator: ShopClient
    """Signed in as the operator: creates products, sets stock."""
    topic_prefix: str
    backend: str

    def topic(self, name: str) -> str:
        return self.topic_prefix + name


def start_stack(
    kafka_bootstrap: str,
    folder,
    backend: str,
    databases: dict[str, str],
    extra_env: dict[str, str] | None = None,
    explorer: bool = False,
    cluster: LocalCluster | None = None,
) -> RunningStack:
    """The services on free ports and a unique topic prefix (and, with `explorer`, the
    event explorer on a free port too), on `kafka_bootstrap`, or (given a `cluster`) on
    that secured cluster with each service signed in as its own principal;
    `stack.down(kafka=False)` leaves it up."""
    prefix = unique("e2e") + "-"
    env = {"TOPIC_PREFIX": prefix, **(extra_env or {})}
    for name, url in databases.items():
        env[f"{name.upper()}_DATABASE_URL"] = url
        env[f"{name.upper()}_CONSUMER_GROUP"] = f"{prefix}{name}"
    ports = {name: free_port() for name in PORTS}
    stack = Stack(
        run_dir=folder,
        ports=ports,
        env=env,
        kafka=cluster or kafka_bootstrap,
        explorer_port=free_port() if explorer else None,
    )
    stack.up(timeout=120)
    client = ShopClient({name: service.url for name, service in stack.services.items()})
    try:
        operator = client.as_operator(password_file=stack.operator_password_file)
    except BaseException:
        stack.down(kafka=False)
        raise
    return RunningStack(stack, client, operator, prefix, backend)


@pytest.fixture(
    scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def running(
    request: pytest.FixtureRequest, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    folder = tmp_path_factory.mktemp(f"stack-{request.param}")
    with service_databases(request.param, folder, list(PORTS)) as databases:
        running = start_stack(kafka_bootstrap, folder, request.param, databases)
        try:
            yield running
        finally:
            running.client.close()
            running.stack.down()


@pytest.fixture
def shop(running: RunningStack) -> ShopClient:
    """The shop's operator: makes the catalogue; `shop.sign_up()` makes a customer."""
    return running.operator
