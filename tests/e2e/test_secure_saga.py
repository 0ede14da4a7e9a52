"""The order saga on a secured three-node cluster: every service signs in over SASL_SSL as
its own principal, holds only the rights the ACL plan gives it, and the order is
confirmed as on the plaintext broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from tests.conftest import service_databases
from tests.e2e.conftest import RunningStack, start_stack
from tools.local.certs import ADMIN
from tools.local.cluster import LocalCluster, describe_cluster
from tools.local.stack import PORTS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def secure_stack(
    secure_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    folder: Path = tmp_path_factory.mktemp("secure-stack")
    with service_databases("sqlite", folder, list(PORTS)) as databases:
        running = start_stack("", folder, "sqlite", databases, cluster=secure_cluster)
        try:
            yield running
        finally:
            running.client.close()
            running.stack.down(kafka=False)


def test_each_service_signs_in_as_its_own_principal(secure_stack: RunningStack) -> None:
    for name, service in secure_stack.stack.services.items():
        assert service.env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert service.env["KAFKA_SASL_USERNAME"] == name
        assert Path(service.env["KAFKA_SASL_PASSWORD_FILE"]).stat().st_mode & 0o077 == 0
        assert not any("PASSWORD" in key and not key.endswith("_FILE") for key in service.env)


def test_an_order_is_confirmed_over_sasl_ssl(secure_stack: RunningStack) -> None:
    shop = secure_stack.operator
    ada = secure_stack.client.sign_up("Ada")
    product_id = shop.create_product("widget", 250)["id"]
    shop.set_stock_eventually(product_id, 5, timeout=60)
    items = [{"product_id": product_id, "quantity": 2}]
    placed = ada.place_order_eventually(items, timeout=60)
    confirmed = ada.wait_for_status(placed["id"], timeout=60)
    assert confirmed["status"] == "CONFIRMED", confirmed
    assert shop.stock(product_id)["reserved"] == 2


def test_the_stacks_topics_are_replicated_three_times(
    secure_stack: RunningStack, secure_cluster: LocalCluster
) -> None:
    metadata = AdminClient(secure_cluster.connection(ADMIN).config()).list_topics(timeout=30)
    mine = [name for name in metadata.topics if name.startswith(secure_stack.topic_prefix)]
    assert mine
    for name in mine:
        for partition in metadata.topics[name].partitions.values():
            assert len(partition.replicas) == 3 and len(partition.isrs) >= 2, (name, partition)


def test_status_lists_each_broker_and_every_partitions_leader_and_isr(
    secure_stack: RunningStack, secure_cluster: LocalCluster
) -> None:
    states = secure_stack.stack.status()
    for node_id, node in secure_cluster.nodes.items():
        assert states[f"kafka-{node_id}"] == f"pid {node.pid()}, {node.bootstrap}"
    prefix = secure_stack.topic_prefix
    report = describe_cluster(secure_cluster.connection(ADMIN), prefix)
    brokers = [line for line in report.splitlines() if line.startswith("  broker ")]
    assert len(brokers) == 3, report
    orders = [line for line in report.splitlines() if line.startswith(f"  {prefix}orders[")]
    assert len(orders) == 3 and all(" leader " in line and " isr [" in line for line in orders)
