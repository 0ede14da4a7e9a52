"""The product service's handlers against a real SQLite database; no broker, no server."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select

from services.product import api, handlers
from services.product.consumers import events
from services.product.events import PUBLISHES, ProductCreated, StockChanged
from services.product.main import SPEC
from services.product.models import OutboxMessage, Product
from services.product.schemas import ProductIn, ProductOut
from shared.errors import NotFound
from shared.messaging.envelope import Envelope
from shared.messaging.outbox import row_to_envelope
from shared.messaging.unit_of_work import UnitOfWork
from shared.runtime import http
from shared.runtime.auth import OPERATOR
from shared.runtime.keys import SigningKeys, learn_keys
from shared.runtime.service import ServiceSpec
from tests.helpers import deliver
from tests.unit.signing import ISSUER, Signer, ring

pytestmark = pytest.mark.unit


@pytest.fixture
def uow(service_uow: Callable[[ServiceSpec], UnitOfWork]) -> UnitOfWork:
    return service_uow(SPEC)


def emitted(uow: UnitOfWork) -> list[tuple[str, Envelope]]:
    with uow() as unit:
        rows = unit.session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))
        return [(row.topic, row_to_envelope(row)) for row in rows]


def create(uow: UnitOfWork, name: str = "Lamp", price_cents: int = 1999) -> str:
    with uow() as unit:
        return handlers.create_product(unit, name, price_cents).id


def read(uow: UnitOfWork, product_id: str) -> tuple[bool, int]:
    """(in_stock, stock_version)"""
    with uow() as unit:
        product = handlers.get_product(unit, product_id)
        return product.in_stock, product.stock_version


def change(uow: UnitOfWork, product_id: str, available: int, version: int) -> None:
    with uow() as unit:
        handlers.apply_stock_changed(
            unit, [StockChanged(product_id=product_id, available=available, version=version)]
        )


# Creating


def test_create_emits_product_created_keyed_by_the_product_id(uow: UnitOfWork) -> None:
    product_id = create(uow, "Lamp", 1999)

    [(topic, event)] = emitted(uow)
    assert (topic, event.type, event.source) == ("products", "product-created", "/services/product")
    assert event.key == product_id
    assert event.json() == {
        "product_id": product_id,
        "name": "Lamp",
        "price_cents": 1999,
        "version": 1,
    }
    assert uuid.UUID(product_id)


def test_a_new_product_reads_back_out_of_stock(uow: UnitOfWork) -> None:
    product_id = create(uow, "Lamp", 0)

    with uow() as unit:
        out = ProductOut.model_validate(handlers.get_product(unit, product_id))
    assert out == ProductOut(id=product_id, name="Lamp", price_cents=0, in_stock=False)
    assert read(uow, product_id) == (False, 0)


def test_products_are_listed_in_creation_order(uow: UnitOfWork) -> None:
    ids = [create(uow, name) for name in ("Lamp", "Desk", "Chair")]

    with uow() as unit:
        assert [p.id for p in handlers.list_products(unit)] == ids


def test_an_unknown_product_is_not_found_and_carries_its_id(uow: UnitOfWork) -> None:
    ghost = str(uuid.uuid4())

    with pytest.raises(handlers.ProductNotFound) as caught, uow() as unit:
        handlers.get_product(unit, ghost)

    assert isinstance(caught.value, NotFound)
    assert caught.value.product_id == ghost


@pytest.mark.parametrize(
    "body",
    [
        {"name": "", "price_cents": 1},
        {"name": "Lamp", "price_cents": -1},
        {"name": "Lamp"},
        {"name": "Lamp", "price_cents": 1, "in_stock": True},
    ],
)
def test_a_product_needs_a_name_and_a_price_and_nothing_else(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ProductIn.model_validate(body)


# Availability from inventory


CHANGES = [(4, 1), (0, 2), (3, 3)]
"""(available, version): the last one in stock."""


@pytest.mark.parametrize("arrival", list(itertools.permutations(CHANGES)))
@pytest.mark.parametrize("newest_available", [3, 0], ids=["in-stock", "sold-out"])
def test_stock_changed_applies_only_newer_versions_whatever_the_arrival_order(
    uow: UnitOfWork, arrival: tuple[tuple[int, int], ...], newest_available: int
) -> None:
    product_id = create(uow)
    changes = {version: available for available, version in arrival}
    changes[3] = newest_available

    for version in (version for _, version in arrival):
        change(uow, product_id, changes[version], version)

    assert read(uow, product_id) == (newest_available > 0, 3)


def test_a_stale_stock_changed_does_not_undo_a_newer_one(uow: UnitOfWork) -> None:
    product_id = create(uow)
    change(uow, product_id, 5, 2)

    change(uow, product_id, 0, 1)
    change(uow, product_id, 0, 2)  # the same version again, e.g. re-emitted

    assert read(uow, product_id) == (True, 2)


def test_stock_changed_for_an_unknown_product_changes_nothing(uow: UnitOfWork) -> None:
    product_id = create(uow)

    change(uow, str(uuid.uuid4()), 5, 1)

    assert read(uow, product_id) == (False, 0)
    with uow() as unit:
        assert len(handlers.list_products(unit)) == 1


def test_stock_changed_emits_nothing(uow: UnitOfWork) -> None:
    product_id = create(uow)
    before = emitted(uow)

    change(uow, product_id, 5, 1)

    assert emitted(uow) == before


def test_the_consumer_handles_stock_changed_and_learns_signing_keys() -> None:
    assert {t: r.model for t, r in events.routes.items()} == {
        "stock-changed": StockChanged,
        "signing-keys": SigningKeys,
    }
    assert events.routes["stock-changed"].handler is handlers.apply_stock_changed
    assert events.routes["stock-changed"].batch, "one statement for a run of changes"
    assert events.routes["signing-keys"].handler is learn_keys
    assert SPEC.subscribes == events.topics == ["stock-changes", "users"]
    assert SPEC.owns == ["products"]
    assert PUBLISHES == (ProductCreated,)
    assert (ProductCreated.event_type, ProductCreated.topic, ProductCreated.key_field) == (
        "product-created",
        "products",
        "product_id",
    )
    assert Product.__tablename__ == "products"


def test_a_run_of_changes_delivered_through_the_router_keeps_the_newest_version(
    uow: UnitOfWork,
) -> None:
    lamp, desk = create(uow), create(uow)

    with uow() as unit:
        deliver(
            events,
            unit,
            StockChanged(product_id=lamp, available=0, version=2),
            StockChanged(product_id=desk, available=4, version=1),
            StockChanged(product_id=lamp, available=6, version=1),  # older: dropped
        )

    assert read(uow, lamp) == (False, 2)
    assert read(uow, desk) == (True, 1)


# Entrypoints


def test_only_an_operator_adds_products_and_anyone_reads_them(uow: UnitOfWork) -> None:
    signer = Signer()
    app = FastAPI()
    http.install(app, max_body_bytes=64 * 1024)
    app.include_router(api.router)
    keys, _ = ring(signer.trusted())
    app.state.runtime = SimpleNamespace(
        uow=uow, keys=keys, settings=SimpleNamespace(auth_issuer=ISSUER)
    )
    body = {"name": "Lamp", "price_cents": 1999}

    def as_(token: str | None) -> TestClient:
        return TestClient(app, headers={"Authorization": f"Bearer {token}"} if token else {})

    anonymous = as_(None).post("/products", json=body)
    customer = as_(signer.token("user-1")).post("/products", json=body)
    operator = as_(signer.token("staff-1", scopes=frozenset({OPERATOR}))).post(
        "/products", json=body
    )

    assert (anonymous.status_code, anonymous.headers["WWW-Authenticate"]) == (401, "Bearer")
    assert customer.status_code == 403
    assert operator.status_code == 201
    assert [event.key for _, event in emitted(uow)] == [operator.json()["id"]]
    listed = as_(None).get("/products")
    assert (listed.status_code, [p["id"] for p in listed.json()]) == (200, [operator.json()["id"]])
