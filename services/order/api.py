from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import ORJSONResponse

from services.order import chain, handlers
from services.order.events import Line
from services.order.schemas import OrderEventOut, OrderIn, OrderOut
from shared.runtime import ids
from shared.runtime.app import get_runtime
from shared.runtime.auth import AUTH_ERRORS, Caller
from shared.runtime.errors import BODY_ERRORS, Error, Responses, ValidationErrors, errors
from shared.runtime.limits import LIMIT_ERRORS, client_address, enforce
from shared.runtime.service import ServiceRuntime

router = APIRouter(tags=["orders"])
Runtime = Annotated[ServiceRuntime, Depends(get_runtime)]
UNKNOWN_ORDER = {**AUTH_ERRORS, **errors({404: "Unknown order (or another user's)"})}
PLACE_ORDER_ERRORS: Responses = {
    **BODY_ERRORS,
    **errors({400: "Request body unreadable (not UTF-8), or an invalid Idempotency-Key"}),
    **AUTH_ERRORS,
    **LIMIT_ERRORS,
    **errors({409: "Idempotency-Key already used with another request"}),
    422: {
        "model": Error | ValidationErrors,
        "description": "Invalid request or unknown product",
    },
}


async def idempotency_key(
    idempotency_key: Annotated[
        str | None,
        Header(
            description="Makes a retry safe: the same key and body return the first"
            " response. 1 to 255 printable ASCII characters, no spaces; one key space per"
            " user."
        ),
    ] = None,
) -> str | None:
    """The request's Idempotency-Key, checked (400 if it is not one)."""
    try:
        return ids.idempotency_key(idempotency_key)
    except ids.InvalidIdempotencyKey as exc:
        raise HTTPException(400, str(exc)) from None


@router.post("/orders", status_code=202, response_model=OrderOut, responses=PLACE_ORDER_ERRORS)
async def place_order(
    body: OrderIn,
    caller: Caller,
    request: Request,
    runtime: Runtime,
    key: Annotated[str | None, Depends(idempotency_key)],
) -> ORJSONResponse:
    """Accept an order of the signed-in user: it is PENDING until inventory answers. Orders
    that arrive together are committed together, and each is answered after that commit."""
    enforce((runtime.per_address, client_address(request)), (runtime.per_subject, caller.subject))
    lines = [Line(product_id=item.product_id, quantity=item.quantity) for item in body.items]
    request = handlers.OrderRequest(caller.subject, tuple(lines), key)
    placed = await runtime.writes.submit_each(handlers.place_orders, request)
    return ORJSONResponse(OrderOut.model_validate(placed).model_dump(mode="json"), status_code=202)


@router.get("/orders", response_model=list[OrderOut], responses=AUTH_ERRORS)
def list_orders(
    caller: Caller,
    runtime: Runtime,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[OrderOut]:
    """The signed-in user's orders, newest first."""
    with runtime.uow.read() as unit:
        found = handlers.list_orders(unit, caller.subject, limit)
        return [OrderOut.model_validate(o) for o in found]


@router.get("/orders/{order_id}", response_model=OrderOut, responses=UNKNOWN_ORDER)
def get_order(order_id: str, caller: Caller, runtime: Runtime) -> OrderOut:
    with runtime.uow.read() as unit:
        return OrderOut.model_validate(handlers.get_order(unit, order_id, caller.subject))


@router.post(
    "/orders/{order_id}/cancel",
    response_model=OrderOut,
    responses={**UNKNOWN_ORDER, **errors({409: "A rejected order cannot be cancelled"})},
)
def cancel_order(order_id: str, caller: Caller, runtime: Runtime) -> OrderOut:
    with runtime.uow() as unit:
        return OrderOut.model_validate(handlers.cancel_order(unit, order_id, caller.subject))


@router.get(
    "/orders/{order_id}/events", response_model=list[OrderEventOut], responses=UNKNOWN_ORDER
)
def order_events(order_id: str, caller: Caller, runtime: Runtime) -> list[OrderEventOut]:
    """The order's events, each after its cause, with their topic, partition and offset."""
    with runtime.uow.read() as unit:
        found = chain.order_events(unit, order_id, caller.subject)
        return [OrderEventOut.model_validate(e) for e in found]
