"""`make up` runs each service on the database the user exported (`<NAME>_DATABASE_URL`),
SQLite under the run directory otherwise, and says which; no process is started for real."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tools.local.stack import PORTS, ServiceProcess

pytestmark = pytest.mark.unit

PASSWORD = "never-shown-9f3c1"
EXPORTED = "postgresql+psycopg://order@127.0.0.1:5433/order"


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, str]]:
    """The environment each process of the stack would be started with, by its name."""
    stack = importlib.import_module("tools.local.stack")
    service = importlib.import_module("tools.local.service")
    seen: dict[str, dict[str, str]] = {}
    pids = iter(range(4_000_000, 5_000_000))

    def popen(command: list[str], env: dict[str, str], **_: Any) -> SimpleNamespace:
        port = command[command.index("--port") + 1]
        name = next(n for n, p in {**PORTS, "explorer": 8090}.items() if str(p) == port)
        seen[name] = env
        return SimpleNamespace(pid=next(pids))

    monkeypatch.setattr(stack.subprocess, "Popen", popen)
    monkeypatch.setattr(service, "port_open", lambda host, port: False)
    monkeypatch.setattr(ServiceProcess, "pid", lambda self: None)
    return seen


def test_an_exported_database_url_reaches_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: dict[str, dict[str, str]]
) -> None:
    monkeypatch.setenv("ORDER_DATABASE_URL", EXPORTED)
    monkeypatch.delenv("INVENTORY_DATABASE_URL", raising=False)
    ServiceProcess("order", PORTS["order"], tmp_path).start()
    ServiceProcess("inventory", PORTS["inventory"], tmp_path).start()
    assert started["order"]["ORDER_DATABASE_URL"] == EXPORTED
    assert (
        started["inventory"]["INVENTORY_DATABASE_URL"] == f"sqlite:///{tmp_path}/data/inventory.db"
    )


def test_the_stack_s_own_setting_wins_over_the_exported_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: dict[str, dict[str, str]]
) -> None:
    """A test's stack gives each service a database of its own, whatever the shell says."""
    monkeypatch.setenv("ORDER_DATABASE_URL", EXPORTED)
    mine = f"sqlite:///{tmp_path}/mine.db"
    ServiceProcess("order", PORTS["order"], tmp_path, {"ORDER_DATABASE_URL": mine}).start()
    assert started["order"]["ORDER_DATABASE_URL"] == mine


@pytest.fixture
def make_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: dict[str, dict[str, str]]
) -> Any:
    """`python -m tools.local.stack up` in local process mode, with nothing really started."""
    stack = importlib.import_module("tools.local.stack")
    monkeypatch.setattr(stack, "RUN_DIR", tmp_path)
    monkeypatch.setattr(stack, "docker_engine", lambda: False)
    monkeypatch.setattr(stack.LocalCluster, "start", lambda self: None)
    monkeypatch.setattr(stack.Stack, "secure", lambda self: None)
    monkeypatch.setattr(stack.LocalZipkin, "start", lambda self: None)
    monkeypatch.setattr(stack.LocalProxy, "start", lambda self: None)
    monkeypatch.setattr(ServiceProcess, "wait_ready", lambda self, timeout=60: None)
    monkeypatch.setattr(stack.Stack, "wait_in_rotation", lambda self, p, timeout=30: None)
    monkeypatch.delenv("SCALE", raising=False)
    for name in PORTS:
        monkeypatch.delenv(f"{name.upper()}_DATABASE_URL", raising=False)
        monkeypatch.delenv(f"{name.upper()}_DATABASE_PASSWORD_FILE", raising=False)
    return stack.main


def test_make_up_runs_each_service_on_the_database_exported_for_it_and_says_which(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_up: Any,
    started: dict[str, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    password_file = tmp_path / "order-password"
    monkeypatch.setenv("ORDER_DATABASE_URL", EXPORTED)
    monkeypatch.setenv("ORDER_DATABASE_PASSWORD_FILE", str(password_file))
    inline = f"postgresql+psycopg://shop:{PASSWORD}@127.0.0.1:5433/product"
    monkeypatch.setenv("PRODUCT_DATABASE_URL", inline)

    assert make_up(["up"]) == 0

    assert started["order"]["ORDER_DATABASE_URL"] == EXPORTED
    assert started["order"]["ORDER_DATABASE_PASSWORD_FILE"] == str(password_file)
    assert started["product"]["PRODUCT_DATABASE_URL"] == inline
    sqlite = f"sqlite:///{tmp_path}/data/inventory.db"
    assert started["inventory"]["INVENTORY_DATABASE_URL"] == sqlite
    out = capsys.readouterr().out
    block = out.split("\ndatabases:\n", 1)[1].splitlines()
    lines = {line.split()[0]: line for line in block if line.startswith("  ")}
    assert list(lines)[: len(PORTS)] == list(PORTS), "one line per service"
    assert EXPORTED in lines["order"] and str(password_file) in lines["order"]
    assert "postgresql+psycopg://shop:***@127.0.0.1:5433/product" in lines["product"]
    assert f"{tmp_path}/data/inventory.db" in lines["inventory"]
    assert "SQLite" in lines["inventory"] and "SQLite" in lines["user"]
    assert PASSWORD not in out, "a password in a URL is masked"


def test_make_up_with_scale_uses_the_exported_postgresql_for_every_instance(
    monkeypatch: pytest.MonkeyPatch, make_up: Any, started: dict[str, dict[str, str]]
) -> None:
    monkeypatch.setenv("SCALE", "order=2")
    monkeypatch.setenv("ORDER_DATABASE_URL", EXPORTED)
    ports = {"18001": "order-1", "18011": "order-2"}
    seen: dict[str, str] = {}
    stack = importlib.import_module("tools.local.stack")

    def popen(command: list[str], env: dict[str, str], **_: Any) -> SimpleNamespace:
        port = command[command.index("--port") + 1]
        seen[ports.get(port, port)] = env["ORDER_DATABASE_URL"] if port in ports else ""
        return SimpleNamespace(pid=4_999_999)

    monkeypatch.setattr(stack.subprocess, "Popen", popen)
    assert make_up(["up"]) == 0
    assert seen["order-1"] == seen["order-2"] == EXPORTED, "not one SQLite file shared"


@pytest.mark.parametrize("url", ["not a url", "postgresql+psycopg://order@[::1:5433/order"])
def test_make_up_refuses_a_database_url_it_cannot_read_and_starts_nothing(
    url: str,
    monkeypatch: pytest.MonkeyPatch,
    make_up: Any,
    started: dict[str, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ORDER_DATABASE_URL", url)
    assert make_up(["up"]) == 2
    assert "ORDER_DATABASE_URL" in capsys.readouterr().err
    assert started == {}
