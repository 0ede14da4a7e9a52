"""Every service of the shop, listed once: its name, its port and its package.

The stack runner, the image (`python -m services NAME`), the PostgreSQL set-up
(`tools.local.pginit`), the migration tool and the compose test all read this list. A package
holds `main.py` with `create_app` and `config.py` with `<Name>Settings`.

Standard library only: `tools.local.pginit --psql` imports it before any virtualenv exists."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    package: str

    @property
    def app(self) -> str:
        """The uvicorn factory, as `uvicorn --factory` takes it."""
        return f"{self.package}.main:create_app"

    @property
    def settings(self) -> str:
        """The settings class, e.g. `services.order.config:OrderSettings`."""
        camel = "".join(part.capitalize() for part in self.name.split("_"))
        return f"{self.package}.config:{camel}Settings"

    @property
    def database(self) -> str:
        """Its database's name on a shared PostgreSQL server."""
        return self.name


SERVICES = (
    Service("order", 8001, "services.order"),
    Service("inventory", 8002, "services.inventory"),
    Service("product", 8003, "services.product"),
    Service("user", 8004, "services.user"),
)


def names() -> list[str]:
    return [service.name for service in SERVICES]


def get(name: str) -> Service:
    for service in SERVICES:
        if service.name == name:
            return service
    raise KeyError(f"no service {name!r}; registered: {', '.join(names())}")


def load(path: str) -> Any:
    """The object a `module:attribute` path names."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)
