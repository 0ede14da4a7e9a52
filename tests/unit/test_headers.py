"""Request heads have a size (shared.runtime.headers, shared.runtime.protocol): 431 for
header fields over 16 KiB, 414 for a target over 8 KiB, from the app whatever serves it,
and from the protocol the services run while the head is still arriving, so a served
process never buffers a huge header."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
from fastapi.testclient import TestClient

import services.__main__ as services_main
from shared.runtime.headers import MAX_HEADER_BYTES, MAX_URL_BYTES
from shared.runtime.protocol import BoundedHttpToolsProtocol
from tests.conftest import free_port
from tests.unit.served_app import plain_app
from tools.local.service import ServiceProcess

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_header_fields_over_the_limit_are_431_from_the_app() -> None:
    client = TestClient(plain_app())

    fits = client.get("/echo", headers={"x-pad": "a" * (MAX_HEADER_BYTES - 2_000)})
    too_large = client.get("/echo", headers={"x-pad": "a" * MAX_HEADER_BYTES})
    many = client.get("/echo", headers=[(f"x-pad-{n}", "a" * 1_000) for n in range(20)])

    assert fits.status_code == 200
    for answer in (too_large, many):
        assert answer.status_code == 431
        assert answer.json() == {"detail": "request header fields are larger than 16384 bytes"}
        assert answer.headers["connection"] == "close"


def test_a_target_over_the_limit_is_414_from_the_app() -> None:
    client = TestClient(plain_app())

    answer = client.get("/echo", params={"q": "a" * MAX_URL_BYTES})

    assert answer.status_code == 414
    assert answer.json() == {"detail": "request target is longer than 8192 bytes"}
    assert client.get("/echo", params={"q": "a" * 4_000}).status_code == 200


# --- a served process: uvicorn with the services' protocol -------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, psutil.Process]]:
    """uvicorn serving `plain_app` as the stack serves a service (its command line)."""
    port = free_port()
    command = ServiceProcess("plain", port, app="tests.unit.served_app:plain_app").command()
    log = tmp_path_factory.mktemp("served") / "uvicorn.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120  # a busy machine starts Python slowly
        while not _accepts(port):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield port, psutil.Process(process.pid)
    finally:
        process.terminate()
        process.wait(10)


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def exchange(port: int, head: bytes, chunks: Iterator[bytes] | None = None) -> bytes:
    """Send `head` (then `chunks`, while the server takes them) on a new connection; what
    the server answered before it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(head)
            for chunk in chunks or ():
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it answered and closed before it had it all: what we test
        answer = b""
        try:
            while part := sock.recv(65536):
                answer += part
        except ConnectionResetError:
            pass
    return answer


def status_and_body(answer: bytes) -> tuple[int, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(body)


def test_a_one_megabyte_header_is_431_from_a_served_process(served: tuple[int, Any]) -> None:
    port, _ = served
    head = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"

    status, body = status_and_body(exchange(port, head))

    assert status == 431
    assert body == {"detail": "request header fields are larger than 16384 bytes"}


def test_many_headers_and_a_long_target_are_refused_by_a_served_process(
    served: tuple[int, Any],
) -> None:
    port, _ = served
    many = b"".join(b"X-Pad-%d: %s\r\n" % (n, b"a" * 4_000) for n in range(10))
    long_target = b"/echo?q=" + b"a" * 20_000

    assert (
        status_and_body(exchange(port, b"GET /echo HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n"))[0]
        == 431
    )
    assert (
        status_and_body(exchange(port, b"GET " + long_target + b" HTTP/1.1\r\nHost: x\r\n\r\n"))[0]
        == 414
    )
    fine = exchange(port, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_and_body(fine) == (200, "ok")


def test_a_header_that_never_ends_is_refused_before_the_server_holds_much_of_it(
    served: tuple[int, psutil.Process],
) -> None:
    """50 MB of one header field, sent as fast as the server reads it: refused once
    past the limit, not buffered whole (as uvicorn's own httptools protocol does)."""
    port, process = served
    before = process.memory_info().rss
    head = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: "
    chunks = (b"a" * 65_536 for _ in range(50_000_000 // 65_536))

    status, _ = status_and_body(exchange(port, head, chunks))

    assert status == 431
    grown = (process.memory_info().rss - before) / 2**20
    assert grown < 10, f"the server grew by {grown:.1f} MiB"


@pytest.fixture
def uvicorn_run(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What `python -m services` hands uvicorn.run, and the environment it runs in (the
    service's variables restored after the test)."""
    import uvicorn

    monkeypatch.setenv("ORDER_HOST", "127.0.0.1")
    monkeypatch.setenv("ORDER_PORT", "8001")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    ran: dict[str, Any] = {}

    def run(app: str, **options: Any) -> None:
        ran.update(options, app=app, env=dict(os.environ))

    monkeypatch.setattr(uvicorn, "run", run)
    return ran


def test_the_stack_serves_each_service_with_python_m_services() -> None:
    command = ServiceProcess("order", 8123, workers=2).command()
    assert command[:4] == [sys.executable, "-m", "services", "order"]
    assert command[command.index("--port") + 1] == "8123"
    assert command[command.index("--workers") + 1] == "2"


def test_python_m_services_runs_the_bounded_protocol_without_proxy_headers(
    uvicorn_run: dict[str, Any],
) -> None:
    """Every worker builds the app from the environment: the factory by its import
    string, the address exported for it, the workers' metrics in one folder."""
    services_main.main(["order", "--port", "8123", "--workers", "2"])

    assert uvicorn_run["app"] == "services.order.main:create_app"
    assert uvicorn_run["factory"] is True
    assert uvicorn_run["http"] is BoundedHttpToolsProtocol
    assert uvicorn_run["proxy_headers"] is False
    assert (uvicorn_run["host"], uvicorn_run["port"], uvicorn_run["workers"]) == (
        "127.0.0.1",
        8123,
        2,
    )
    env = uvicorn_run["env"]
    assert (env["ORDER_HOST"], env["ORDER_PORT"]) == ("127.0.0.1", "8123")
    folder = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    assert not folder.exists(), "the workers' temporary metrics folder is removed after"
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_python_m_services_serves_an_app_outside_the_registry_the_same_way(
    uvicorn_run: dict[str, Any],
) -> None:
    services_main.main(["tests.unit.served_app:plain_app", "--port", "8124"])

    assert uvicorn_run["app"] == "tests.unit.served_app:plain_app"
    assert (uvicorn_run["host"], uvicorn_run["port"], uvicorn_run["workers"]) == (
        "127.0.0.1",
        8124,
        1,
    )
    assert uvicorn_run["http"] is BoundedHttpToolsProtocol
    assert "PROMETHEUS_MULTIPROC_DIR" not in uvicorn_run["env"], "one worker counts in memory"


@pytest.mark.parametrize(
    "argv",
    [
        ["nothing"],
        ["order", "--port", "0"],
        ["order", "--port", "65536"],
        ["order", "--port", "eighty"],
        ["order", "--workers", "0"],
        ["tests.unit.served_app:plain_app"],
    ],
)
def test_python_m_services_refuses_what_it_cannot_serve(
    argv: list[str], uvicorn_run: dict[str, Any]
) -> None:
    with pytest.raises(SystemExit):
        services_main.main(argv)
    assert uvicorn_run == {}
