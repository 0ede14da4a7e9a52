"""The README's PostgreSQL path: `eval "$(bash tools/local/postgres.sh env)"`, then `make
up`. The stack reads the exported URLs and password files from its environment, as `make
up` does (tools/local/stack.py), here on free ports and the test broker; an order placed over
HTTP is then a row in the order service's PostgreSQL database, read as the order role."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from services.order.config import OrderSettings
from shared.storage.db import make_engine
from tests.conftest import LocalPostgres, free_port
from tests.helpers import unique
from tools.local.stack import PORTS, Stack, describe_database
from tools.ops.client import ShopClient

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres]


def test_make_up_with_exported_urls_keeps_the_orders_in_postgresql(
    local_postgres: LocalPostgres,
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exported = local_postgres.exports()
    for key, value in exported.items():  # what the README's eval does
        monkeypatch.setenv(key, value)
    prefix = unique("pg-stack") + "-"
    groups = {f"{name.upper()}_CONSUMER_GROUP": prefix + name for name in PORTS}
    stack = Stack(
        run_dir=tmp_path,
        ports={name: free_port() for name in PORTS},
        env={"TOPIC_PREFIX": prefix, **groups},
        kafka=kafka_bootstrap,
    )
    assert stack.databases == {n: exported[f"{n.upper()}_DATABASE_URL"] for n in PORTS}
    for name, each in stack.instances.items():
        said = describe_database(each[0])
        assert said.startswith(f"PostgreSQL postgresql+psycopg://{name}@127.0.0.1:")
        assert str(local_postgres.credentials / name) in said

    client = ShopClient(stack.urls)
    try:
        stack.up(timeout=120)
        operator = client.as_operator(password_file=stack.operator_password_file)
        product = operator.create_product("Brass gear", 1250)["id"]
        operator.set_stock_eventually(product, 3)
        ada = client.sign_up("Ada")
        placed = ada.place_order_eventually([{"product_id": product, "quantity": 2}])
        assert ada.wait_for_status(placed["id"])["status"] == "CONFIRMED"

        # no process holds a database password in its environment or command line
        passwords = [(local_postgres.credentials / n).read_text().strip() for n in PORTS]
        for process in stack.processes().values():
            pid = process.pid()
            assert pid is not None, process.id
            for where in ("environ", "cmdline"):
                held = Path(f"/proc/{pid}/{where}").read_bytes()
                assert not [p for p in passwords if p.encode() in held], (process.id, where)
    finally:
        client.close()
        stack.down()

    assert not (tmp_path / "data").exists(), "no service fell back to SQLite"
    as_order = OrderSettings(
        database_url=exported["ORDER_DATABASE_URL"],
        database_password_file=exported["ORDER_DATABASE_PASSWORD_FILE"],
    )
    engine = make_engine(as_order.database())
    try:
        with engine.connect() as connection:
            row = connection.execute(
                text("SELECT user_id, status FROM orders WHERE id = :id"), {"id": placed["id"]}
            ).one()
    finally:
        engine.dispose()
    assert tuple(row) == (ada.user_id, "CONFIRMED")
