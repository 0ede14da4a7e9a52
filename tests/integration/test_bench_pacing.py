"""The bench's paced run sends the rate it is given, whatever the answers' latency: wrk
with orders.lua against a loopback server that answers every request 100 ms late."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import free_port
from tools.bench.wrk import OrderMix, run_wrk

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed"),
]

LATENCY = 0.1


class SlowOrders(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(LATENCY)
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def slow_server() -> Iterator[str]:
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), SlowOrders)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_paced_run_keeps_its_rate_when_answers_take_a_while(slow_server: str) -> None:
    """10 connections at 50/s for 4 s: about 200 requests. Pausing 10/50 s after each
    answer instead, as the bench once did, sends 10 / (0.2 + 0.1) = 33/s, about 133; not
    pacing at all, 10 / 0.1 = 100/s, about 400."""
    mix = OrderMix(tokens=["t"], ample=["p"])

    result = run_wrk(slow_server, mix, duration=4, connections=10, threads=1, rate=50)

    assert result["statuses"] == {"202": result["requests"]}
    assert 170 <= result["requests"] <= 230, result
