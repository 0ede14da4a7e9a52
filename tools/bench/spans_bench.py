"""What span export costs the services per order, apart from everything else:

    python -m tools.bench.spans_bench [--orders 5000] [--rounds 3]

In one process, the spans of one order's saga as the services make them (the request's
server span, the relay's `publish` span for order-created, stock-reserved and
order-confirmed, and the `process` span of each of them in inventory, order and user),
through `shared.messaging` as it runs in a service, `--orders` times, for each of: export
off (`OTEL_TRACES_EXPORTER=none`), every trace exported, and `make up`'s sampling (ratio
0.1). Spans go through the services' BatchSpanProcessor and Zipkin exporter to a sink
in a child process that keeps nothing, so the CPU counted (the process's, every thread's:
the exporter's too) is the services' side alone. A round runs the three once each; the
CPU is measured, never the wall clock, so it holds on a busy machine better than a rate."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry.trace import SpanKind
from pydantic import BaseModel

from shared.messaging import exporters, tracing
from shared.messaging import spans as messaging
from shared.messaging.envelope import Envelope
from tools.local.stack import SAMPLING

SINK = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
"""


class Order(BaseModel):
    order_id: str


class _Placed:
    partition, offset, error = 0, 1, None


def variants() -> dict[str, dict[str, str]]:
    zipkin = {"OTEL_TRACES_EXPORTER": "zipkin"}
    return {
        "export off": {"OTEL_TRACES_EXPORTER": "none"},
        "every trace": {**zipkin, **SAMPLING, "OTEL_TRACES_SAMPLER_ARG": "1"},
        f"ratio {SAMPLING['OTEL_TRACES_SAMPLER_ARG']}": {**zipkin, **SAMPLING},
    }


def relayed(event: Envelope) -> Envelope:
    """`event` as a consumer reads it after the relay sent it (with its publish span when
    spans are exported, as shared.messaging.outbox does)."""
    records = [("orders", event.key, event.data, event.headers())]
    if exporters.exporting():
        publishing = messaging.Publishing(records)  # type: ignore[arg-type]
        publishing.end([_Placed()])
        records = publishing.records  # type: ignore[assignment]
    headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in records[0][3]}
    return Envelope(
        type=event.type,
        source=event.source,
        key=event.key,
        data=event.data,
        id=event.id,
        traceparent=headers.get("traceparent"),
    ).at("orders", 0, 1)


def saga(n: int) -> None:
    """One order's spans: request, then three events each published and processed."""
    key = f"o-{n}"
    with tracing.span(
        "POST",
        cause=tracing.Cause(f"request-{n}"),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "POST", "url.path": "/orders"},
    ):
        event = tracing.new_event("order-created", key, Order(order_id=key), source="/o")
    for following in ("stock-reserved", "order-confirmed", None):
        consumed = relayed(event)
        with tracing.consuming(consumed):
            if following:
                event = tracing.new_event(following, key, Order(order_id=key), source="/s")


def cpu_per_order(environ: Mapping[str, str], orders: int) -> float:
    """ms of this process's CPU per order's spans, exported and flushed."""
    provider = exporters.tracer_provider("bench", environ)
    tracer = provider.get_tracer("shared")
    messaging.tracer = lambda: tracer  # type: ignore[assignment]
    tracing.tracer = lambda: tracer  # type: ignore[assignment]
    exporters._exporting = environ.get("OTEL_TRACES_EXPORTER") != "none"
    try:
        for n in range(500):  # warm
            saga(n)
        provider.force_flush(30_000)
        began = time.process_time()
        for n in range(orders):
            saga(n)
        provider.force_flush(60_000)
        return 1000 * (time.process_time() - began) / orders
    finally:
        provider.shutdown()


@contextmanager
def sink() -> Iterator[str]:
    """A span endpoint in a child process that answers 202 and keeps nothing."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    child = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/api/v2/spans"
    finally:
        child.terminate()
        child.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.spans_bench", description=__doc__)
    parser.add_argument("--orders", type=int, default=5000, help="orders per measurement (5000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three (3)")
    args = parser.parse_args(argv)
    # nothing dropped for a full queue: every span of the run is exported
    os.environ.setdefault("OTEL_BSP_MAX_QUEUE_SIZE", str(16 * args.orders))
    with sink() as endpoint:
        os.environ["OTEL_EXPORTER_ZIPKIN_ENDPOINT"] = endpoint  # the exporter reads it here
        measured: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for name, environ in variants().items():
                measured.setdefault(name, []).append(cpu_per_order(environ, args.orders))
    print(f"tracing CPU per order, {args.orders} orders x {args.rounds} rounds (ms):")
    for name, values in measured.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {name:<12} {min(values):.2f}-{max(values):.2f}  ({shown})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
