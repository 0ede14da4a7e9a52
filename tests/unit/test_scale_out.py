"""Scale-out and graceful shutdown without a broker: SCALE, the HAProxy configuration, the
stack's instances, and a draining instance's /ready."""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from shared.runtime import http
from shared.runtime.drain import Drain
from shared.runtime.settings import ServiceSettings
from tools.local import haproxy
from tools.local.haproxy import Backend, check_config, haproxy_config
from tools.local.stack import (
    PORTS,
    Layout,
    Stack,
    instance_port,
    parse_scale,
    remembered_scale,
)

pytestmark = pytest.mark.unit

POSTGRES = {
    f"{name.upper()}_DATABASE_URL": f"postgresql+psycopg://shop:shop@db/{name}" for name in PORTS
}


# --- SCALE -----------------------------------------------------------------------------


def test_scale_names_instances_per_service() -> None:
    assert parse_scale("inventory=2 order=2") == {"inventory": 2, "order": 2}
    assert parse_scale(" order=3,user=1 ") == {"order": 3, "user": 1}
    assert parse_scale("") == {}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("warehouse=2", "no service 'warehouse'"),
        ("order=0", "at least 1"),
        ("order", "not NAME=COUNT"),
        ("order=two", "not NAME=COUNT"),
        ("order=-1", "not NAME=COUNT"),
    ],
)
def test_scale_refuses_unknown_services_and_counts_below_one(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_scale(text)


def test_up_remembers_the_scale_for_the_later_commands(tmp_path: Path) -> None:
    assert remembered_scale(tmp_path, "order=2", "up") == {"order": 2}
    assert remembered_scale(tmp_path, None, "status") == {"order": 2}
    assert remembered_scale(tmp_path, "inventory=2", "kill") == {"inventory": 2}
    assert remembered_scale(tmp_path, None, "down") == {"order": 2}


# --- the stack's instances -------------------------------------------------------------


def test_several_instances_need_postgresql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORDER_DATABASE_URL", raising=False)
    with pytest.raises(ValueError, match="ORDER_DATABASE_URL to PostgreSQL"):
        Stack(tmp_path, kafka="127.0.0.1:1", layout=Layout(instances={"order": 2})).up()
    sqlite = {"ORDER_DATABASE_URL": f"sqlite:///{tmp_path}/order.db"}
    with pytest.raises(ValueError, match="SQLite"):
        Stack(tmp_path, kafka="127.0.0.1:1", env=sqlite, layout=Layout(instances={"order": 2})).up()
    assert not (tmp_path / "pids").exists(), "nothing started"
    assert Stack(tmp_path, kafka="127.0.0.1:1", env=sqlite).proxy is None


def test_scaled_services_run_named_instances_behind_the_proxy(tmp_path: Path) -> None:
    stack = Stack(
        tmp_path,
        kafka="127.0.0.1:1",
        env=POSTGRES,
        layout=Layout(instances={"inventory": 2, "order": 3}),
    )
    assert list(stack.processes()) == [
        "order-1",
        "order-2",
        "order-3",
        "inventory-1",
        "inventory-2",
        "product",
        "user",
    ]
    order = stack.instances["order"]
    assert [p.port for p in order] == [18001, 18011, 18021]
    assert {p.name for p in order} == {"order"}, "each reads the service's settings"
    assert order[1].log_file == tmp_path / "logs" / "order-2.log"
    assert order[1].pid_file == tmp_path / "pids" / "order-2.pid"
    assert stack.services["product"].port == PORTS["product"]
    assert stack.urls == {name: f"http://127.0.0.1:{port}" for name, port in PORTS.items()}
    assert stack.proxy is not None
    assert [(b.name, b.port, dict(b.servers)) for b in stack.proxy.backends] == [
        ("order", 8001, {"order-1": 18001, "order-2": 18011, "order-3": 18021}),
        ("inventory", 8002, {"inventory-1": 18002, "inventory-2": 18012}),
    ]
    # a proxied instance drains before it stops; one alone has nothing to wait for
    assert "SHUTDOWN_GRACE_SECONDS" not in order[0].env
    assert stack.services["user"].env["SHUTDOWN_GRACE_SECONDS"] == "0"
    # a proxied instance trusts X-Forwarded-For from the proxy alone; one alone, from nobody
    assert {p.env["FORWARDED_ALLOW_IPS"] for p in order} == {haproxy.PROXY_SOURCE}
    assert stack.services["user"].env["FORWARDED_ALLOW_IPS"] == ""
    for process in stack.processes().values():  # serve: no proxy headers (test_headers)
        assert process.command()[1:3] == ["-m", "services"]
    assert [p.id for p in stack.chosen("order")] == ["order-1", "order-2", "order-3"]
    assert [p.id for p in stack.chosen("order-2")] == ["order-2"]


def test_instance_ports_are_derived_from_the_service_port() -> None:
    assert [instance_port(8002, i) for i in (1, 2, 3)] == [18002, 18012, 18022]
    with pytest.raises(ValueError, match="instance_ports"):
        instance_port(60_000, 1)


# --- HAProxy ---------------------------------------------------------------------------

BACKENDS = [
    Backend("order", 8001, {"order-1": 18001, "order-2": 18011}),
    Backend("inventory", 8002, {"inventory-1": 18002, "inventory-2": 18012}),
]


def sections(config: str) -> dict[str, list[str]]:
    """Each section's heading ('frontend order') → its lines, stripped."""
    found: dict[str, list[str]] = {}
    heading = ""
    for line in config.splitlines():
        if line and not line.startswith((" ", "#")):
            heading = line.strip()
            found[heading] = []
        elif line.strip() and heading:
            found[heading].append(line.strip())
    return found


def test_haproxy_config_has_a_frontend_and_a_checked_backend_per_scaled_service() -> None:
    config = sections(haproxy_config(BACKENDS, Path("/run/stats.sock")))
    for backend in BACKENDS:
        assert config[f"frontend {backend.name}"] == [
            f"bind 127.0.0.1:{backend.port}",
            "http-request set-header X-Forwarded-For %[src]",
            f"default_backend {backend.name}",
        ]
        lines = config[f"backend {backend.name}"]
        assert "option httpchk GET /ready" in lines
        assert "http-check expect status 200" in lines
        assert f"source {haproxy.PROXY_SOURCE}" in lines
        servers = [line.split() for line in lines if line.startswith("server ")]
        assert servers == [
            ["server", name, f"127.0.0.1:{port}", "check"] for name, port in backend.servers.items()
        ]
    defaults = config["defaults"]
    for line in (
        "mode http",
        "option redispatch 1",
        "retry-on conn-failure",
        "option http-server-close",
        "default-server inter 250ms fall 2 rise 2",
    ):
        assert line in defaults, line
    assert "stats socket /run/stats.sock mode 600 level admin" in config["global"]
    assert "option forwardfor" not in defaults, "it appends to what the client sent"


def test_the_proxy_connects_from_an_address_no_client_uses() -> None:
    """All of 127.0.0.0/8 is loopback: clients reach the instances from 127.0.0.1, the
    proxy from another address, the only one whose X-Forwarded-For they trust."""
    assert haproxy.PROXY_SOURCE != "127.0.0.1"
    assert haproxy.PROXY_SOURCE.startswith("127.")


def test_a_draining_instance_leaves_rotation_within_its_grace() -> None:
    """The proxy sees FALL failed checks before the instance stops accepting."""
    removal_ms = haproxy.FALL * haproxy.CHECK_INTERVAL_MS
    assert removal_ms < 1000 * ServiceSettings().shutdown_grace_seconds / 1.5


def test_haproxy_accepts_the_generated_config(tmp_path: Path) -> None:
    if shutil.which("haproxy") is None:
        if os.environ.get("CI"):
            pytest.fail("haproxy is not installed (.ci/run installs it)")
        pytest.skip("haproxy is not installed")
    path = tmp_path / "haproxy.cfg"
    path.write_text(haproxy_config(BACKENDS, tmp_path / "stats.sock"))
    assert check_config(path) == ""
    path.write_text(haproxy_config(BACKENDS, tmp_path / "stats.sock") + "    bogus yes\n")
    assert check_config(path) != ""


# --- draining --------------------------------------------------------------------------


def draining_app() -> FastAPI:
    app = FastAPI()
    http.install(app, max_body_bytes=1024)
    app.state.runtime = SimpleNamespace(readiness=lambda: {"database": True}, instruments=None)
    return app


def test_a_draining_instance_answers_503_on_ready_and_still_serves() -> None:
    app = draining_app()
    client = TestClient(app)
    assert client.get("/ready").status_code == 200
    drain = Drain(app.state, grace=60)
    drain.start()
    try:
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json() == {"ready": False, "status": "down", "checks": {"draining": False}}
        assert client.get("/health").status_code == 200
    finally:
        drain.cancel()  # else, its grace over, it would end this test run


def test_drain_passes_the_signal_on_after_its_grace_and_a_second_exits_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = SimpleNamespace(draining=False)
    drain = Drain(state, grace=0.05)
    passed = threading.Event()
    drain._replaced = {signal.SIGTERM: lambda sig, frame: passed.set()}
    drain.handle(signal.SIGTERM, None)
    assert state.draining is True
    assert passed.wait(10), "uvicorn's handler runs after the grace"

    exits: list[int] = []

    def exit_now(code: int) -> Any:
        exits.append(code)

    monkeypatch.setattr(os, "_exit", exit_now)
    drain.handle(signal.SIGTERM, None)
    assert exits == [128 + signal.SIGTERM]


def test_drain_installs_over_the_handlers_only_in_the_main_thread() -> None:
    before = signal.getsignal(signal.SIGTERM)
    installed: list[bool] = []
    thread = threading.Thread(
        target=lambda: installed.append(Drain(SimpleNamespace(), 0).install())
    )
    thread.start()
    thread.join()
    assert installed == [False]
    drain = Drain(SimpleNamespace(), 0)
    try:
        assert drain.install() is True
        assert signal.getsignal(signal.SIGTERM) == drain.handle
        assert drain._replaced[signal.SIGTERM] == before
    finally:
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGINT, drain._replaced[signal.SIGINT])


def test_make_up_with_scale_on_sqlite_refuses_clearly_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = importlib.import_module("tools.local.stack")
    monkeypatch.setattr(stack, "RUN_DIR", tmp_path)
    monkeypatch.setattr(stack, "docker_engine", lambda: False)
    monkeypatch.setenv("SCALE", "order=2")
    monkeypatch.delenv("ORDER_DATABASE_URL", raising=False)
    assert stack.main(["up"]) == 2
    assert "ORDER_DATABASE_URL to PostgreSQL" in capsys.readouterr().err
    assert not (tmp_path / "pids").exists()
    monkeypatch.setenv("SCALE", "order=0")
    assert stack.main(["status"]) == 2
    assert "at least 1" in capsys.readouterr().err


def test_with_docker_scale_becomes_compose_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = importlib.import_module("tools.local.stack")
    monkeypatch.setattr(stack, "RUN_DIR", tmp_path)
    monkeypatch.setattr(stack, "docker_engine", lambda: True)
    monkeypatch.setenv("SCALE", "inventory=2 order=3")
    commands: list[list[str]] = []
    monkeypatch.setattr(stack.subprocess, "call", lambda command, env: commands.append(command))
    stack.main(["up"])
    assert commands[0][-5:] == ["up", "-d", "--wait", "--scale=inventory=2", "--scale=order=3"]
