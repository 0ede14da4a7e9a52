"""The inventory service's handlers against a real database, SQLite and PostgreSQL; no
broker, no server."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import event as sql_event
from sqlalchemy import make_url, select, text, update
from sqlalchemy.exc import IntegrityError

from services.inventory import api, handlers
from services.inventory.consumers import events
from services.inventory.events import (
    PUBLISHES,
    OrderCancelled,
    OrderCreated,
    OrderLine,
    ProductCreated,
    StockChanged,
    StockReleased,
    StockReserved,
    StockShortage,
)
from services.inventory.main import SPEC
from services.inventory.models import Base, OutboxMessage, Reservation, Stock
from shared.errors import NotFound
from shared.messaging.outbox import row_to_envelope
from shared.messaging.unit_of_work import Unit, UnitOfWork
from shared.runtime import http
from shared.runtime.auth import OPERATOR
from shared.runtime.keys import SigningKeys, learn_keys
from shared.storage.db import make_engine, make_sessions
from shared.storage.migrations import upgrade
from tests.conftest import service_databases
from tests.helpers import deliver
from tests.unit.signing import ISSUER, Signer, ring

pytestmark = pytest.mark.unit


def random_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def migrated(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """(backend, url) of inventory's schema, migrated once for the module."""
    folder = tmp_path_factory.mktemp("inventory")
    with service_databases(request.param, folder, ["inventory"]) as urls:
        engine = make_engine(urls["inventory"])
        upgrade(engine, SPEC.migrations)
        engine.dispose()
        yield request.param, urls["inventory"]


@pytest.fixture
def uow(migrated: tuple[str, str], tmp_path: Path) -> Iterator[UnitOfWork]:
    """Inventory's migrated schema, empty, on SQLite (a copy of the file) and on
    PostgreSQL (its tables truncated)."""
    backend, url = migrated
    if backend == "sqlite":
        copy = tmp_path / "inventory.db"
        shutil.copyfile(make_url(url).database or "", copy)
        url = f"sqlite:///{copy}"
    engine = make_engine(url)
    if backend == "postgres":
        tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
        with engine.begin() as connection:
            connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    yield UnitOfWork(make_sessions(engine), OutboxMessage, "/services/inventory")
    engine.dispose()


def emitted(uow: UnitOfWork, event_type: str | None = None) -> list[tuple[str, str, Any]]:
    """(topic, key, payload) of each event in the outbox, oldest first."""
    with uow() as unit:
        rows = unit.session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))
        envelopes = [(row.topic, row_to_envelope(row)) for row in rows]
    return [
        (topic, event.key, event.json())
        for topic, event in envelopes
        if event_type is None or event.type == event_type
    ]


def add_product(uow: UnitOfWork, available: int = 0) -> str:
    product_id = random_id()
    with uow() as unit:
        handlers.register_product(unit, [ProductCreated(product_id=product_id)])
    if available:
        with uow() as unit:
            handlers.set_stock(unit, product_id, available)
    return product_id


def order(*lines: tuple[str, int], order_id: str | None = None) -> OrderCreated:
    return OrderCreated(
        order_id=order_id or random_id(),
        items=[OrderLine(product_id=p, quantity=q) for p, q in lines],
    )


def place(uow: UnitOfWork, created: OrderCreated) -> None:
    with uow() as unit:
        handlers.reserve_stock(unit, [created])


def cancel(uow: UnitOfWork, order_id: str) -> None:
    with uow() as unit:
        handlers.release_stock(unit, OrderCancelled(order_id=order_id))


def stock(uow: UnitOfWork, product_id: str) -> tuple[int, int]:
    """(available, reserved)"""
    with uow() as unit:
        row = handlers.get_stock(unit, product_id)
        return row.available, row.reserved


def reservations(uow: UnitOfWork, order_id: str) -> dict[str, int]:
    with uow() as unit:
        rows = unit.session.scalars(select(Reservation).where(Reservation.order_id == order_id))
        return {r.product_id: r.quantity for r in rows}


def by_product(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(lines, key=lambda line: str(line["product_id"]))


def stock_events(uow: UnitOfWork, order_id: str) -> list[tuple[str, Any]]:
    """(event type, payload) of what was emitted on `stock` for one order."""
    with uow() as unit:
        rows = unit.session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.topic == "stock", OutboxMessage.key == order_id)
            .order_by(OutboxMessage.id)
        )
        return [(row.event_type, row_to_envelope(row).json()) for row in rows]


# Products


def test_product_created_opens_an_empty_stock_row_once(uow: UnitOfWork) -> None:
    product_id = add_product(uow)
    with uow() as unit:
        handlers.set_stock(unit, product_id, 4)
    with uow() as unit:
        handlers.register_product(unit, [ProductCreated(product_id=product_id)])

    assert stock(uow, product_id) == (4, 0)
    with uow() as unit:
        assert handlers.get_stock(unit, product_id).version == 1
    assert len(emitted(uow, "stock-changed")) == 1


# Reserving


def test_order_reserves_every_line_and_emits_stock_reserved(uow: UnitOfWork) -> None:
    lamp, desk = add_product(uow, 5), add_product(uow, 2)
    created = order((lamp, 3), (desk, 2))

    place(uow, created)

    assert stock(uow, lamp) == (2, 3)
    assert stock(uow, desk) == (0, 2)
    assert reservations(uow, created.order_id) == {lamp: 3, desk: 2}
    [(event_type, payload)] = stock_events(uow, created.order_id)
    assert event_type == "stock-reserved"
    assert payload["order_id"] == created.order_id
    assert by_product(payload["items"]) == by_product(
        [{"product_id": lamp, "quantity": 3}, {"product_id": desk, "quantity": 2}]
    )
    changes = {key: payload for topic, key, payload in emitted(uow, "stock-changed")}
    assert changes[lamp] == {"product_id": lamp, "available": 2, "version": 2}
    assert changes[desk] == {"product_id": desk, "available": 0, "version": 2}


def test_one_short_line_reserves_nothing_and_names_requested_and_available(
    uow: UnitOfWork,
) -> None:
    lamp, desk = add_product(uow, 5), add_product(uow, 1)
    unknown = random_id()
    created = order((lamp, 2), (desk, 3), (unknown, 1))
    changes_before = len(emitted(uow, "stock-changed"))

    place(uow, created)

    assert stock(uow, lamp) == (5, 0)
    assert stock(uow, desk) == (1, 0)
    assert reservations(uow, created.order_id) == {}
    assert len(emitted(uow, "stock-changed")) == changes_before
    [(event_type, payload)] = stock_events(uow, created.order_id)
    assert event_type == "stock-shortage"
    assert by_product(payload["shortages"]) == by_product(
        [
            {"product_id": desk, "requested": 3, "available": 1},
            {"product_id": unknown, "requested": 1, "available": 0},
        ]
    )


def test_reserved_plus_available_is_unchanged_and_reserved_matches_reservations(
    uow: UnitOfWork,
) -> None:
    lamp = add_product(uow, 10)
    orders = [order((lamp, q)) for q in (3, 4, 5)]  # the third is short

    for created in orders:
        place(uow, created)
    cancel(uow, orders[0].order_id)

    available, reserved = stock(uow, lamp)
    assert available + reserved == 10
    assert reserved == sum(reservations(uow, o.order_id).get(lamp, 0) for o in orders) == 4


def test_duplicate_lines_of_one_product_are_summed(uow: UnitOfWork) -> None:
    lamp = add_product(uow, 5)
    fits, too_many = order((lamp, 2), (lamp, 3)), order((lamp, 1), (lamp, 1))

    place(uow, fits)
    place(uow, too_many)

    assert stock(uow, lamp) == (0, 5)
    assert reservations(uow, fits.order_id) == {lamp: 5}
    assert stock_events(uow, fits.order_id) == [
        (
            "stock-reserved",
            {"order_id": fits.order_id, "items": [{"product_id": lamp, "quantity": 5}]},
        )
    ]
    assert stock_events(uow, too_many.order_id) == [
        (
            "stock-shortage",
            {
                "order_id": too_many.order_id,
                "shortages": [{"product_id": lamp, "requested": 2, "available": 0}],
            },
        )
    ]


def test_an_order_created_twice_reserves_once(uow: UnitOfWork) -> None:
    lamp = add_product(uow, 5)
    created = order((lamp, 2))

    place(uow, created)
    place(uow, created)

    assert stock(uow, lamp) == (3, 2)
    assert [t for t, _ in stock_events(uow, created.order_id)] == ["stock-reserved"]


def test_two_orders_racing_for_the_last_item_reserve_it_once(uow: UnitOfWork) -> None:
    lamp = add_product(uow, 1)
    racers = [order((lamp, 1)) for _ in range(4)]
    barrier = threading.Barrier(len(racers))
    errors: list[BaseException] = []

    def race(created: OrderCreated) -> None:
        try:
            barrier.wait()
            place(uow, created)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=race, args=(created,)) for created in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert errors == []
    assert stock(uow, lamp) == (0, 1)
    outcomes = sorted(stock_events(uow, o.order_id)[0][0] for o in racers)
    assert outcomes == ["stock-reserved"] + ["stock-shortage"] * 3


def test_stock_cannot_go_negative_in_the_database(uow: UnitOfWork) -> None:
    lamp = add_product(uow)
    for column in (Stock.available, Stock.reserved):
        with pytest.raises(IntegrityError), uow() as unit:
            unit.session.execute(update(Stock).where(Stock.product_id == lamp).values({column: -1}))


def test_an_order_line_must_ask_for_at_least_one_item() -> None:
    with pytest.raises(ValidationError):
        order((random_id(), 0))


# Cancelling


def test_cancel_releases_what_the_order_holds_and_emits_stock_released(uow: UnitOfWork) -> None:
    lamp, desk = add_product(uow, 5), add_product(uow, 2)
    created = order((lamp, 3), (desk, 2))
    place(uow, created)

    cancel(uow, created.order_id)

    assert stock(uow, lamp) == (5, 0)
    assert stock(uow, desk) == (2, 0)
    assert reservations(uow, created.order_id) == {}
    [_, (event_type, payload)] = stock_events(uow, created.order_id)
    assert event_type == "stock-released"
    assert by_product(payload["items"]) == by_product(
        [{"product_id": lamp, "quantity": 3}, {"product_id": desk, "quantity": 2}]
    )
    changes = [p for _, key, p in emitted(uow, "stock-changed") if key == lamp]
    assert changes[-1] == {"product_id": lamp, "available": 5, "version": 3}


def test_cancel_of_an_order_holding_nothing_emits_nothing(uow: UnitOfWork) -> None:
    lamp = add_product(uow, 1)
    short = order((lamp, 2))
    place(uow, short)
    before = emitted(uow)

    cancel(uow, short.order_id)
    cancel(uow, random_id())  # never seen here

    assert emitted(uow) == before
    assert stock(uow, lamp) == (1, 0)


def test_a_second_cancel_releases_nothing_more(uow: UnitOfWork) -> None:
    lamp = add_product(uow, 5)
    created = order((lamp, 2))
    place(uow, created)
    cancel(uow, created.order_id)
    before = emitted(uow)

    cancel(uow, created.order_id)

    assert emitted(uow) == before
    assert stock(uow, lamp) == (5, 0)


def test_order_created_after_its_cancel_reserves_nothing_and_emits_nothing(
    uow: UnitOfWork,
) -> None:
    lamp = add_product(uow, 5)
    created = order((lamp, 2))
    before = emitted(uow)

    cancel(uow, created.order_id)
    place(uow, created)  # e.g. redriven from the dead-letter topic

    assert stock(uow, lamp) == (5, 0)
    assert reservations(uow, created.order_id) == {}
    assert emitted(uow) == before


def statements_of(uow: UnitOfWork, do: Callable[[Unit], object]) -> list[str]:
    """The first word of each SQL statement `do(unit)` runs, in its own transaction."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement.split()[0])

    with uow() as unit:
        engine = unit.session.connection().engine  # the transaction has begun
        sql_event.listen(engine, "before_cursor_execute", note)
        try:
            do(unit)
        finally:
            sql_event.remove(engine, "before_cursor_execute", note)
    return seen


def test_every_stock_change_takes_the_one_set_based_path(uow: UnitOfWork) -> None:
    """Reserving a run, releasing an order and setting stock each lock the stock rows
    with one SELECT and write them back with one UPDATE (a row per product)."""
    lamp, desk = add_product(uow, 10), add_product(uow, 10)
    run = [order((lamp, 1), (desk, 2)) for _ in range(4)] + [order((lamp, 99))]

    reserving = statements_of(uow, lambda unit: handlers.reserve_stock(unit, run))
    releasing = statements_of(
        uow, lambda unit: handlers.release_stock(unit, OrderCancelled(order_id=run[0].order_id))
    )
    setting = statements_of(uow, lambda unit: handlers.set_stock(unit, lamp, 20))

    # claim the run, lock, mark the short one, hold the lines, write both products
    assert reserving == ["INSERT", "SELECT", "UPDATE", "INSERT", "UPDATE"]
    # claim (a tombstone if unseen), lock the order, read what it holds, lock, write,
    # drop its reservations, mark it released
    assert releasing == ["INSERT", "SELECT", "SELECT", "SELECT", "UPDATE", "DELETE", "UPDATE"]
    assert setting == ["SELECT", "UPDATE"]
    assert stock(uow, lamp) == (20, 3) and stock(uow, desk) == (4, 6)
    versions = [p["version"] for _, key, p in emitted(uow, "stock-changed") if key == lamp]
    assert versions == [1, 5, 6, 7], "set, a run of four, a release, a set: one each"


# Setting stock


def test_set_stock_emits_stock_changed_with_increasing_versions(uow: UnitOfWork) -> None:
    lamp = add_product(uow)

    for available in (7, 3, 3):
        with uow() as unit:
            handlers.set_stock(unit, lamp, available)

    assert emitted(uow, "stock-changed") == [
        ("stock-changes", lamp, {"product_id": lamp, "available": a, "version": v})
        for a, v in ((7, 1), (3, 2), (3, 3))
    ]


def test_set_stock_leaves_what_is_reserved_reserved(uow: UnitOfWork) -> None:
    lamp = add_product(uow, 5)
    place(uow, order((lamp, 2)))

    with uow() as unit:
        handlers.set_stock(unit, lamp, 10)

    assert stock(uow, lamp) == (10, 2)


def test_unknown_product_is_not_found_and_carries_its_id(uow: UnitOfWork) -> None:
    unknown = random_id()
    calls: list[Callable[[Unit], object]] = [
        lambda unit: handlers.set_stock(unit, unknown, 1),
        lambda unit: handlers.get_stock(unit, unknown),
    ]
    for call in calls:
        with pytest.raises(NotFound) as raised, uow() as unit:
            call(unit)
        assert isinstance(raised.value, handlers.StockNotFound)
        assert raised.value.product_id == unknown
    assert emitted(uow) == []


# Entrypoints


SIGNER = Signer()


@pytest.fixture
def app(uow: UnitOfWork) -> FastAPI:
    app = FastAPI()
    http.install(app, max_body_bytes=64 * 1024)
    app.include_router(api.router)
    keys, _ = ring(SIGNER.trusted())
    app.state.runtime = SimpleNamespace(
        uow=uow, keys=keys, settings=SimpleNamespace(auth_issuer=ISSUER)
    )
    return app


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    """A client signed in as an operator."""
    token = SIGNER.token("staff-1", scopes=frozenset({OPERATOR}))
    return TestClient(app, headers={"Authorization": f"Bearer {token}"})


def test_put_stock_sets_available_and_get_reads_it(client: TestClient, uow: UnitOfWork) -> None:
    lamp = add_product(uow)

    put = client.put(f"/stock/{lamp}", json={"available": 6})
    got = client.get(f"/stock/{lamp}")

    assert put.status_code == got.status_code == 200
    assert got.json() == {"product_id": lamp, "available": 6, "reserved": 0}


def test_stock_of_an_unknown_product_is_404_with_a_clear_message(client: TestClient) -> None:
    unknown = random_id()

    for response in (
        client.get(f"/stock/{unknown}"),
        client.put(f"/stock/{unknown}", json={"available": 1}),
    ):
        assert response.status_code == 404
        assert unknown in response.json()["detail"]
        assert "not learned" in response.json()["detail"]


@pytest.mark.parametrize(
    "body", [{"available": -1}, {"available": 1, "reserved": 0}, {}, {"available": "many"}]
)
def test_put_stock_rejects_bad_bodies(client: TestClient, uow: UnitOfWork, body: Any) -> None:
    lamp = add_product(uow, 2)

    assert client.put(f"/stock/{lamp}", json=body).status_code == 422
    assert stock(uow, lamp) == (2, 0)


def test_setting_stock_needs_an_operator_but_reading_it_does_not(
    app: FastAPI, uow: UnitOfWork
) -> None:
    lamp = add_product(uow, 2)
    customer = {"Authorization": f"Bearer {SIGNER.token('user-1')}"}

    anonymous = TestClient(app).put(f"/stock/{lamp}", json={"available": 9})
    refused = TestClient(app, headers=customer).put(f"/stock/{lamp}", json={"available": 9})

    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert refused.status_code == 403
    assert stock(uow, lamp) == (2, 0)
    assert emitted(uow, "stock-changed")[1:] == [], "only the first set_stock emitted"
    read = TestClient(app).get(f"/stock/{lamp}")
    assert (read.status_code, read.json()["available"]) == (200, 2)


def test_router_handles_inventory_events_and_skips_the_other_order_events() -> None:
    assert set(events.routes) == {
        "product-created",
        "order-created",
        "order-cancelled",
        "signing-keys",
    }
    assert {t: r.model for t, r in events.routes.items()} == {
        "product-created": ProductCreated,
        "order-created": OrderCreated,
        "order-cancelled": OrderCancelled,
        "signing-keys": SigningKeys,
    }
    assert events.routes["signing-keys"].handler is learn_keys
    assert events.routes["order-created"].handler is handlers.reserve_stock
    assert events.routes["order-created"].batch, "one reservation run per fetched batch"
    assert events.routes["product-created"].batch, "one insert per fetched batch"
    assert not events.routes["order-cancelled"].batch
    assert not events.routes["signing-keys"].batch
    assert SPEC.subscribes == events.topics == ["orders", "products", "users"]
    assert SPEC.owns == ["stock", "stock-changes"]
    # order-confirmed and order-rejected arrive on `orders`, which order owns: skipped
    assert not set(SPEC.subscribes) & set(SPEC.owns)


def test_inventory_publishes_its_events_on_its_own_topics_keyed_as_documented() -> None:
    assert {(e.event_type, e.topic, e.key_field) for e in PUBLISHES} == {
        ("stock-reserved", "stock", "order_id"),
        ("stock-shortage", "stock", "order_id"),
        ("stock-released", "stock", "order_id"),
        ("stock-changed", "stock-changes", "product_id"),
    }
    assert set(PUBLISHES) == {StockReserved, StockShortage, StockReleased, StockChanged}


def test_inventory_reads_only_the_fields_it_needs_of_what_others_publish() -> None:
    product = ProductCreated.model_validate_json(
        b'{"product_id": "p-1", "name": "Lamp", "price_cents": 1999, "version": 2}'
    )
    order = OrderCreated.model_validate_json(
        b'{"order_id": "o-1", "user_id": "u-1", "items": [{"product_id": "p-1", "quantity": 2}]}'
    )

    assert product.model_dump() == {"product_id": "p-1", "version": 2}
    assert order.model_dump() == {
        "order_id": "o-1",
        "items": [{"product_id": "p-1", "quantity": 2}],
    }


def test_a_run_of_orders_delivered_through_the_router_reserves_each_in_turn(
    uow: UnitOfWork,
) -> None:
    lamp = add_product(uow, 3)
    first, second, third = order((lamp, 2)), order((lamp, 2)), order((lamp, 1))

    with uow() as unit:
        delivered = deliver(events, unit, first, second, third)

    assert stock(uow, lamp) == (0, 3)
    assert [stock_events(uow, o.order_id)[0][0] for o in (first, second, third)] == [
        "stock-reserved",
        "stock-shortage",
        "stock-reserved",
    ]
    with uow() as unit:
        rows = unit.session.scalars(
            select(OutboxMessage).where(OutboxMessage.topic == "stock").order_by(OutboxMessage.id)
        )
        causes = [row_to_envelope(row).causation_id for row in rows]
    assert causes == [event.id for event in delivered], "each answer caused by its order"
