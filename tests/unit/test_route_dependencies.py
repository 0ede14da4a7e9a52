"""Route dependencies that do no I/O are coroutines: FastAPI runs a plain `def` dependency
in its threadpool, a thread hop (and a GIL hand-over) on every request that uses it."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from services.registry import SERVICES, load

pytestmark = pytest.mark.unit

# Dependencies allowed in the threadpool: they read the database or hash a password.
MAY_BLOCK = {"SignInForm"}


def api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Every APIRoute, those of included routers too (FastAPI keeps those behind a route
    of their own)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (included := getattr(route, "original_router", None)) is not None:
            yield from api_routes(included.routes)


def dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for sub in dependant.dependencies:
        yield sub
        yield from dependencies(sub)


def runs_in_threadpool(call: Any) -> bool:
    """As FastAPI decides: a class, a plain function or a sync generator runs in its
    threadpool; a coroutine function (or an object whose `__call__` is one) does not."""
    if inspect.isclass(call):
        return True
    target = call if inspect.isroutine(call) else call.__call__
    return not (inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target))


@pytest.mark.parametrize("name", [service.name for service in SERVICES])
def test_no_route_hops_to_a_thread_for_a_dependency_that_does_no_io(name: str) -> None:
    [service] = [s for s in SERVICES if s.name == name]
    app = load(service.app)()
    hops = {
        f"{route.path} {sorted(route.methods)}: {getattr(d.call, '__name__', d.call)}"
        for route in api_routes(app.routes)
        for d in dependencies(route.dependant)
        if d.call is not None
        and runs_in_threadpool(d.call)
        and getattr(d.call, "__name__", "") not in MAY_BLOCK
    }
    assert not hops, f"dependencies FastAPI would run in its threadpool: {sorted(hops)}"
    assert any(route.path != "/health" for route in api_routes(app.routes))


def test_the_check_sees_a_plain_def_dependency() -> None:
    def plain() -> None: ...

    async def coroutine() -> None: ...

    assert runs_in_threadpool(plain)
    assert not runs_in_threadpool(coroutine)
