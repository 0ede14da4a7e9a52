"""A service of the stack is ready only when the process it started answers: `/health`
names the service and a pid of its process tree. Once, two services of a test stack got
one port; the second failed to bind, and the stack judged it ready because the first
answered there. Here a small HTTP server in this test plays whatever answers on the port,
and a sleeping child plays the process the stack started."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tools.local.service import ServiceProcess

pytestmark = pytest.mark.unit


class Answers:
    """What the server on the port says: its `/health` body, its `/ready` status."""

    def __init__(self) -> None:
        self.health: Any = {}
        self.ready = 200


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def answers(port: int) -> Iterator[Answers]:
    said = Answers()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            status, body = (
                (200, json.dumps(said.health).encode())
                if self.path == "/health"
                else (said.ready, b"{}")
            )
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield said
    server.shutdown()
    server.server_close()


def started(service: ServiceProcess, code: str = "import time; time.sleep(60)") -> int:
    """A child whose command line is the service's (`python -m services NAME ... --port
    PORT`), recorded in its pid file as if the stack had started it; its pid."""
    command = [sys.executable, "-c", code, *service.command()[2:]]
    return service.process.start(command)


@pytest.fixture
def order(tmp_path: Path, port: int) -> Iterator[ServiceProcess]:
    service = ServiceProcess("order", port, tmp_path)
    yield service
    service.kill()


def test_the_started_process_answering_is_ready(order: ServiceProcess, answers: Answers) -> None:
    answers.health = {"status": "ok", "service": "order", "pid": started(order)}
    assert order.ready()
    order.wait_ready(timeout=10)
    answers.ready = 503
    assert not order.ready(), "its /ready still decides"


def test_another_process_on_the_port_is_never_judged_ready(
    order: ServiceProcess, answers: Answers
) -> None:
    """Another stack's order service (this test process) answers on the port."""
    started(order)
    answers.health = {"status": "ok", "service": "order", "pid": os.getpid()}
    assert not order.ready()
    with pytest.raises(TimeoutError, match="order not ready"):
        order.wait_ready(timeout=0.5)


@pytest.mark.parametrize(
    "health",
    [
        lambda pid: {"status": "ok"},
        lambda pid: {"status": "ok", "service": "product", "pid": pid},
        lambda pid: {"status": "ok", "service": "order"},
        lambda pid: {"status": "ok", "service": "order", "pid": str(pid)},
        lambda pid: {"status": "ok", "service": "order", "pid": True},
        lambda pid: {"status": "ok", "service": "order", "pid": 1},
        lambda pid: ["order", pid],
        lambda pid: "ok",
    ],
    ids=["no-name", "other-service", "no-pid", "pid-text", "pid-bool", "init", "list", "text"],
)
def test_a_health_answer_that_does_not_name_the_process_is_not_ready(
    order: ServiceProcess, answers: Answers, health: Callable[[int], Any]
) -> None:
    answers.health = health(started(order))
    assert not order.ready()


def test_a_service_that_died_while_another_answers_on_its_port_fails_at_once(
    order: ServiceProcess, answers: Answers
) -> None:
    """The flake: order could not bind the port product had; product answered."""
    answers.health = {"status": "ok", "service": "product", "pid": os.getpid()}
    started(order, "import sys; print('address already in use'); sys.exit(1)")
    with pytest.raises(RuntimeError, match="(?s)order exited.*address already in use"):
        order.wait_ready(timeout=30)


def test_a_worker_of_the_started_process_answers_for_it(
    order: ServiceProcess, answers: Answers
) -> None:
    """With several uvicorn workers a worker answers: a child of the process started."""
    code = (
        "import subprocess, sys, time; "
        "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(w.pid, flush=True); time.sleep(60)"
    )
    started(order, code)
    answers.health = {"status": "ok", "service": "order", "pid": worker_pid(order)}
    order.wait_ready(timeout=10)


def worker_pid(service: ServiceProcess, timeout: float = 30) -> int:
    """The pid the child wrote to its log: its worker's."""
    deadline = time.monotonic() + timeout
    while not (text := service.log_file.read_text() if service.log_file.exists() else ""):
        assert time.monotonic() < deadline, f"no worker pid in {service.log_file}"
        time.sleep(0.02)
    return int(text.split()[0])
