from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from services.user import handlers
from services.user.schemas import NotificationOut, UserIn, UserOut
from shared.runtime.app import get_runtime
from shared.runtime.http import BODY_ERRORS, errors
from shared.runtime.service import ServiceRuntime

router = APIRouter(tags=["users"])
Runtime = Annotated[ServiceRuntime, Depends(get_runtime)]
UNKNOWN_USER = errors({404: "Unknown user"})


@router.post(
    "/users",
    status_code=201,
    response_model=UserOut,
    responses={**errors({409: "Email already registered"}), **BODY_ERRORS},
)
def register_user(body: UserIn, runtime: Runtime) -> UserOut:
    with runtime.uow() as unit:
        return UserOut.model_validate(handlers.register_user(unit, body))


@router.get("/users/{user_id}", response_model=UserOut, responses=UNKNOWN_USER)
def get_user(user_id: str, runtime: Runtime) -> UserOut:
    with runtime.uow.read() as unit:
        return UserOut.model_validate(handlers.get_user(unit, user_id))


@router.get(
    "/users/{user_id}/notifications",
    response_model=list[NotificationOut],
    responses=UNKNOWN_USER,
)
def list_notifications(user_id: str, runtime: Runtime) -> list[NotificationOut]:
    with runtime.uow.read() as unit:
        return [
            NotificationOut.model_validate(n) for n in handlers.list_notifications(unit, user_id)
        ]
