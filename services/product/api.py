from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from services.product import handlers
from services.product.schemas import ProductIn, ProductOut
from shared.runtime.app import get_runtime
from shared.runtime.auth import OPERATOR_ERRORS, OperatorCaller
from shared.runtime.errors import BODY_ERRORS, errors
from shared.runtime.service import ServiceRuntime

router = APIRouter(tags=["products"])
Runtime = Annotated[ServiceRuntime, Depends(get_runtime)]


@router.post(
    "/products",
    status_code=201,
    response_model=ProductOut,
    responses={**OPERATOR_ERRORS, **BODY_ERRORS},
)
def create_product(body: ProductIn, _: OperatorCaller, runtime: Runtime) -> ProductOut:
    """Add a product to the catalogue (operators only)."""
    with runtime.uow() as unit:
        return ProductOut.model_validate(handlers.create_product(unit, body.name, body.price_cents))


@router.get("/products", response_model=list[ProductOut])
def list_products(runtime: Runtime) -> list[ProductOut]:
    with runtime.uow.read() as unit:
        return [ProductOut.model_validate(p) for p in handlers.list_products(unit)]


@router.get(
    "/products/{product_id}",
    response_model=ProductOut,
    responses=errors({404: "Unknown product"}),
)
def get_product(product_id: str, runtime: Runtime) -> ProductOut:
    with runtime.uow.read() as unit:
        return ProductOut.model_validate(handlers.get_product(unit, product_id))
