from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from services.inventory import handlers
from services.inventory.schemas import StockIn, StockOut
from shared.runtime.app import get_runtime
from shared.runtime.auth import OPERATOR_ERRORS, OperatorCaller
from shared.runtime.errors import BODY_ERRORS, errors
from shared.runtime.service import ServiceRuntime

router = APIRouter(tags=["stock"])
Runtime = Annotated[ServiceRuntime, Depends(get_runtime)]
UNKNOWN_PRODUCT = errors({404: "Inventory has not learned of this product yet"})


@router.put(
    "/stock/{product_id}",
    response_model=StockOut,
    responses={**UNKNOWN_PRODUCT, **OPERATOR_ERRORS, **BODY_ERRORS},
)
def set_stock(product_id: str, body: StockIn, _: OperatorCaller, runtime: Runtime) -> StockOut:
    """Set how many are available (operators only)."""
    with runtime.uow() as unit:
        return StockOut.model_validate(handlers.set_stock(unit, product_id, body.available))


@router.get("/stock/{product_id}", response_model=StockOut, responses=UNKNOWN_PRODUCT)
def get_stock(product_id: str, runtime: Runtime) -> StockOut:
    with runtime.uow.read() as unit:
        return StockOut.model_validate(handlers.get_stock(unit, product_id))
