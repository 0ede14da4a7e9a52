from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import ORJSONResponse

from services.order import handlers
from services.order.schemas import OrderEventOut, OrderIn, OrderOut
from shared.runtime.app import get_runtime
from shared.runtime.http import BODY_ERRORS, Error, Responses, ValidationErrors, errors
from shared.runtime.service import ServiceRuntime

router = APIRouter(tags=["orders"])
Runtime = Annotated[ServiceRuntime, Depends(get_runtime)]
UNKNOWN_ORDER = errors({404: "Unknown order"})
PLACE_ORDER_ERRORS: Responses = {
    **BODY_ERRORS,
    **errors({409: "Idempotency-Key already used with another request"}),
    422: {
        "model": Error | ValidationErrors,
        "description": "Invalid request, unknown user or product",
    },
}


@router.post("/orders", status_code=202, response_model=OrderOut, responses=PLACE_ORDER_ERRORS)
async def place_order(
    body: OrderIn,
    runtime: Runtime,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> ORJSONResponse:
    """Accept an order: it is PENDING until inventory answers. Orders that arrive together
    are committed together, and each is answered after that commit."""
    response = await runtime.writes.submit(
        lambda unit: handlers.place_order(unit, body, idempotency_key)
    )
    return ORJSONResponse(response, status_code=202)


@router.get("/orders", response_model=list[OrderOut])
def list_orders(
    runtime: Runtime,
    user_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[OrderOut]:
    with runtime.uow.read() as unit:
        return [OrderOut.model_validate(o) for o in handlers.list_orders(unit, user_id, limit)]


@router.get("/orders/{order_id}", response_model=OrderOut, responses=UNKNOWN_ORDER)
def get_order(order_id: str, runtime: Runtime) -> OrderOut:
    with runtime.uow.read() as unit:
        return OrderOut.model_validate(handlers.get_order(unit, order_id))


@router.post(
    "/orders/{order_id}/cancel",
    response_model=OrderOut,
    responses={**UNKNOWN_ORDER, **errors({409: "A rejected order cannot be cancelled"})},
)
def cancel_order(order_id: str, runtime: Runtime) -> OrderOut:
    with runtime.uow() as unit:
        return OrderOut.model_validate(handlers.cancel_order(unit, order_id))


@router.get(
    "/orders/{order_id}/events", response_model=list[OrderEventOut], responses=UNKNOWN_ORDER
)
def order_events(order_id: str, runtime: Runtime) -> list[OrderEventOut]:
    """The order's events, each after its cause, with their topic, partition and offset."""
    with runtime.uow.read() as unit:
        return [OrderEventOut.model_validate(e) for e in handlers.order_events(unit, order_id)]
