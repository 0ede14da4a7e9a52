"""The layers hold: every import of every module, read from its source (lazy imports
inside functions included), follows the arrows the README draws.

    shared/*.py (clock, errors)  <-  shared/storage  <-  shared/messaging  <-  shared/runtime
    shared  <-  services/<name>  (each service alone; none imports another, nor tools)
    tools: anything"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

LAYERS = ("shared.storage", "shared.messaging", "shared.runtime")
"""shared/'s packages, each depending only on the ones before it."""


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in the file at `path`, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # `from shared import messaging` names a package too
                yield node.lineno, f"{target}.{alias.name}"


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer_of(module: str) -> int | None:
    """The index of the shared/ package `module` is in; -1 for shared's own modules
    below every package (shared.clock, shared.errors)."""
    for index, layer in enumerate(LAYERS):
        if within(module, layer):
            return index
    if within(module, "shared") and module != "shared":
        return -1
    return None


def service_of(module: str, root: Path) -> str | None:
    """The service package (`services.order`) `module` is in, if any."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "services" and (root / "services" / parts[1]).is_dir():
        return ".".join(parts[:2])
    return None


def back_arrows(path: Path, root: Path = ROOT) -> list[str]:
    """Every import of the module at `path` that breaks a layer rule, as
    "file:line: module imports target (why)", once per import statement."""
    module = module_name(path, root)
    found: dict[int, str] = {}
    for line, target in imported(path, root):
        if line in found:
            continue

        def broken(why: str, target: str = target, line: int = line) -> None:
            found[line] = f"{path.relative_to(root)}:{line}: {module} imports {target} ({why})"

        if within(module, "shared"):
            if within(target, "services") or within(target, "tools"):
                broken("shared/ imports no service and no tool")
                continue
            mine, theirs = layer_of(module), layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                broken(f"{LAYERS[mine] if mine >= 0 else 'shared'} is below {LAYERS[theirs]}")
        elif within(module, "services"):
            if within(target, "tools"):
                broken("services never import tools")
            own, other = service_of(module, root), service_of(target, root)
            if own is not None and other is not None and other != own:
                broken("no service imports another; they meet through topics and HTTP")
    return list(found.values())


def sources(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def test_every_module_of_shared_and_services_keeps_to_its_layer() -> None:
    modules = sources("shared", "services")
    assert len(modules) > 80, "the walk found the sources"

    broken = [arrow for path in modules for arrow in back_arrows(path)]

    assert broken == [], "\n".join(broken)


@pytest.mark.parametrize(
    ("module", "source", "why"),
    [
        ("shared/storage/x.py", "from shared.messaging.envelope import Envelope", "is below"),
        ("shared/storage/x.py", "from shared.runtime import http", "is below"),
        ("shared/messaging/x.py", "import shared.runtime.metrics", "is below"),
        ("shared/messaging/x.py", "from ..runtime.auth import Principal", "is below"),
        ("shared/clock.py", "from shared.storage import db", "is below"),
        ("shared/errors.py", "from shared import messaging", "is below"),
        ("shared/runtime/x.py", "from services.order import handlers", "no service"),
        ("shared/runtime/x.py", "from tools import stack", "no tool"),
        ("shared/messaging/x.py", "def f():\n    import services.registry", "no service"),
        ("services/order/x.py", "from services.inventory.events import StockChanged", "another"),
        ("services/user/x.py", "from tools.bench import load", "never import tools"),
    ],
)
def test_a_back_arrow_is_found(module: str, source: str, why: str, tmp_path: Path) -> None:
    """The rules catch each kind of back-arrow, lazy and relative imports included."""
    path = tmp_path / module
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source + "\n")
    (tmp_path / "services" / "order").mkdir(parents=True, exist_ok=True)
    (tmp_path / "services" / "inventory").mkdir(parents=True, exist_ok=True)

    [arrow] = back_arrows(path, tmp_path)

    assert why in arrow


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("shared/runtime/x.py", "from shared.messaging import tracing\nfrom shared import clock"),
        ("shared/messaging/x.py", "from shared.storage.db import insert"),
        (
            "shared/storage/x.py",
            "from shared.clock import utcnow\nfrom shared.errors import NotFound",
        ),
        ("services/order/x.py", "from services.order import events\nfrom services import registry"),
        ("services/order/x.py", "from shared.runtime.auth import Caller"),
        ("tools/x.py", "from services.order.main import SPEC"),
    ],
)
def test_an_arrow_along_the_layers_passes(module: str, source: str, tmp_path: Path) -> None:
    path = tmp_path / module
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source + "\n")
    (tmp_path / "services" / "order").mkdir(parents=True, exist_ok=True)

    assert back_arrows(path, tmp_path) == []


EDGE = ("api.py", "main.py", "schemas.py")
"""A service's HTTP edge: its routes, its app, its HTTP bodies."""
HTTP = ("fastapi", "starlette", "shared.runtime.http", "shared.runtime.errors")
"""What speaks HTTP (shared.runtime.auth's dependencies and limits' 429 are for routes)."""


def rule_modules() -> list[Path]:
    """Every module of every service but its HTTP edge: handlers, consumers, events,
    models and the rest."""
    return [
        path
        for path in sources("services")
        if service_of(module_name(path, ROOT), ROOT) is not None
        and path.name not in EDGE
        and "migrations" not in path.parts
    ]


def test_the_rules_speak_no_http() -> None:
    """Handlers take and return domain values: no FastAPI, Starlette, HTTP schema or
    HTTP plumbing; status codes and challenges belong to api.py and shared/runtime/."""
    modules = rule_modules()
    assert {path.name for path in modules} >= {"handlers.py", "consumers.py", "tokens.py"}
    spoken = []
    for path in modules:
        lines = set()
        for line, target in imported(path, ROOT):
            http = any(within(target, http) for http in HTTP) or target.endswith(".schemas")
            if http and line not in lines:
                lines.add(line)
                spoken.append(f"{path.relative_to(ROOT)}:{line}: imports {target}")
        text = path.read_text()
        for word in ("WWW-Authenticate", "status_code", "Retry-After", "HTTPException"):
            if word in text:
                spoken.append(f"{path.relative_to(ROOT)}: says {word}")

    assert spoken == [], "\n".join(spoken)
