"""Prometheus metrics without a broker: HTTP by route template, several processes summed
through one multiprocess directory, and the gauges read at scrape time."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel
from sqlalchemy import Engine, update

from shared.clock import utcnow
from shared.errors import NotFound
from shared.messaging.envelope import KafkaHeaders
from shared.messaging.events import Event
from shared.messaging.outbox import OutboxRelay
from shared.messaging.producer import Placed
from shared.messaging.unit_of_work import UnitOfWork
from shared.runtime import http
from shared.runtime.lag import LagCollector
from shared.runtime.metrics import UNMATCHED, OutboxCollector, ServiceMetrics
from shared.storage.db import make_sessions
from tests.conftest import free_port
from tests.schema import Base, Outbox
from tools.local import service, stack

pytestmark = pytest.mark.unit

SERVICE = "shop"


def sample(metrics: ServiceMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"service": SERVICE, **labels})


# --- HTTP ------------------------------------------------------------------------------


class Body(BaseModel):
    note: str


@pytest.fixture
def served() -> Iterator[tuple[TestClient, ServiceMetrics]]:
    app = FastAPI()
    http.install(app, max_body_bytes=64)

    @app.get("/orders/{order_id}")
    def get_order(order_id: str) -> dict[str, str]:
        if order_id == "missing":
            raise NotFound(f"order {order_id} not found")
        return {"id": order_id}

    @app.post("/orders/{order_id}/notes")
    def add_note(order_id: str, body: Body) -> dict[str, str]:
        return {"id": order_id, "note": body.note}

    metrics = ServiceMetrics(SERVICE)
    app.state.runtime = SimpleNamespace(instruments=metrics, metrics=metrics.registry)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, metrics


def test_requests_are_counted_by_route_template_and_status_never_by_raw_path(
    served: tuple[TestClient, ServiceMetrics],
) -> None:
    client, metrics = served
    for path in ("/orders/a", "/orders/b", "/orders/missing", "/nowhere/1", "/nowhere/2"):
        client.get(path)
    client.post("/orders/a/notes", json={"note": "x" * 100})  # 413 before routing
    client.post("/orders/a/notes", json={"note": "fine"})
    client.request("BREW", "/orders/a")

    def requests(method: str, route: str, status: str) -> float | None:
        return sample(metrics, "http_requests_total", method=method, route=route, status=status)

    assert requests("GET", "/orders/{order_id}", "200") == 2
    assert requests("GET", "/orders/{order_id}", "404") == 1
    assert requests("GET", UNMATCHED, "404") == 2
    assert requests("POST", "/orders/{order_id}/notes", "413") == 1
    assert requests("POST", "/orders/{order_id}/notes", "200") == 1
    assert requests("other", "/orders/{order_id}", "405") == 1
    routes = {
        s.labels["route"]
        for family in metrics.registry.collect()
        for s in family.samples
        if "route" in s.labels
    }
    assert routes == {"/orders/{order_id}", "/orders/{order_id}/notes", UNMATCHED}


def test_request_latency_is_a_histogram_per_route(
    served: tuple[TestClient, ServiceMetrics],
) -> None:
    client, metrics = served
    for order_id in ("a", "b", "missing"):
        client.get(f"/orders/{order_id}")

    labels = {"method": "GET", "route": "/orders/{order_id}"}
    name = "http_request_duration_seconds"
    assert sample(metrics, f"{name}_count", **labels) == 3
    assert (sample(metrics, f"{name}_sum", **labels) or 0) > 0
    buckets = [
        s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == f"{name}_bucket" and s.labels["route"] == "/orders/{order_id}"
    ]
    assert buckets == sorted(buckets) and buckets[-1] == 3


def test_metrics_endpoint_serves_the_registry_in_the_exposition_format(
    served: tuple[TestClient, ServiceMetrics],
) -> None:
    client, _ = served
    client.get("/orders/a")

    text = client.get("/metrics").text

    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families["http_requests"].type == "counter"
    assert families["http_request_duration_seconds"].type == "histogram"


def test_an_app_without_a_running_service_answers_without_counting() -> None:
    app = FastAPI()
    http.install(app, max_body_bytes=64)
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/metrics").content == b""


# --- several processes -----------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from shared.runtime.metrics import ServiceMetrics

    metrics = ServiceMetrics("shop", sys.argv[1])
    metrics.applied({"order-created": int(sys.argv[2])})
    metrics.request("GET", "/orders/{order_id}", 200, 0.003)
    metrics.assigned(int(sys.argv[3]))
    if sys.argv[4] == "exit":
        metrics.close()
    """
)


def write_as_a_process(folder: Path, applied: int, partitions: int, then: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WRITER, str(folder), str(applied), str(partitions), then],
        env={"PROMETHEUS_MULTIPROC_DIR": str(folder), "PATH": ""},
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_every_process_of_a_service_is_summed_by_whichever_answers_the_scrape(
    tmp_path: Path,
) -> None:
    write_as_a_process(tmp_path, applied=3, partitions=2, then="stay")
    write_as_a_process(tmp_path, applied=4, partitions=1, then="exit")

    scraped = ServiceMetrics(SERVICE, str(tmp_path))

    assert sample(scraped, "events_applied_total", type="order-created") == 7
    labels = {"method": "GET", "route": "/orders/{order_id}"}
    assert sample(scraped, "http_request_duration_seconds_count", **labels) == 2
    assert sample(scraped, "http_request_duration_seconds_bucket", le="0.005", **labels) == 2
    # the process that exited took its partitions with it; counters keep what it counted
    assert sample(scraped, "consumer_assigned_partitions") == 2


def test_a_service_of_several_workers_gets_an_emptied_multiprocess_directory_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[dict[str, str]] = []

    def popen(command: list[str], env: dict[str, str], **_: Any) -> Any:
        started.append(env)
        return SimpleNamespace(pid=2**22 + len(started))

    monkeypatch.setattr(service, "port_open", lambda host, port: False)
    monkeypatch.setattr(stack.subprocess, "Popen", popen)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "inherited"))
    several = stack.ServiceProcess("order", free_port(), tmp_path, workers=2)
    several.metrics_dir.mkdir(parents=True)
    (several.metrics_dir / "counter_123.db").write_bytes(b"a previous run")
    one = stack.ServiceProcess("inventory", free_port(), tmp_path)

    several.start()
    one.start()

    assert started[0]["PROMETHEUS_MULTIPROC_DIR"] == str(several.metrics_dir)
    assert list(several.metrics_dir.iterdir()) == []
    assert "PROMETHEUS_MULTIPROC_DIR" not in started[1], "one process counts in memory"


# --- read at scrape time ---------------------------------------------------------------


class Tick(Event, type="tick", topic="ticks", key="key"):
    key: str


class AckingProducer:
    """Acknowledges every record."""

    def send_records(
        self, records: Sequence[tuple[str, str, bytes, KafkaHeaders]], timeout: float = 60
    ) -> list[Placed]:
        placed = []
        for offset, _ in enumerate(records):
            slot = Placed()
            slot.done, slot.partition, slot.offset = True, 0, offset
            placed.append(slot)
        return placed


@pytest.fixture
def relay(sqlite_engine: Engine) -> Iterator[tuple[UnitOfWork, OutboxRelay, ServiceMetrics]]:
    Base.metadata.create_all(sqlite_engine)
    sessions = make_sessions(sqlite_engine)
    metrics = ServiceMetrics(SERVICE)
    relay = OutboxRelay(sessions, Outbox, AckingProducer(), observer=metrics)  # type: ignore[arg-type]
    metrics.watch(OutboxCollector(SERVICE, lambda: relay))
    yield UnitOfWork(sessions, Outbox, "/tests"), relay, metrics
    relay.stop()


def test_outbox_backlog_and_oldest_age_are_read_from_the_database_at_scrape_time(
    relay: tuple[UnitOfWork, OutboxRelay, ServiceMetrics],
) -> None:
    uow, outbox, metrics = relay
    assert sample(metrics, "outbox_unsent_events") == 0
    assert sample(metrics, "outbox_oldest_unsent_age_seconds") == 0
    with uow() as unit:
        for n in range(3):
            unit.outbox.emit(Tick(key=f"k{n}"))
    with uow() as unit:
        unit.session.execute(
            update(Outbox).where(Outbox.id == 1).values(created_at=utcnow() - timedelta(minutes=2))
        )

    assert sample(metrics, "outbox_unsent_events") == 3
    assert (sample(metrics, "outbox_oldest_unsent_age_seconds") or 0) >= 120

    assert outbox.relay_once() == 3

    assert sample(metrics, "outbox_unsent_events") == 0
    assert sample(metrics, "outbox_oldest_unsent_age_seconds") == 0
    assert sample(metrics, "events_published_total", topic="ticks", type="tick") == 3
    assert sample(metrics, "outbox_publish_latency_seconds_count") == 3
    assert sample(metrics, "outbox_publish_latency_seconds_bucket", le="60.0") == 2, (
        "the row written two minutes ago waited longer than a minute"
    )


def test_a_database_error_leaves_the_backlog_out_and_the_scrape_whole() -> None:
    class Broken:
        def unsent(self) -> tuple[int, Any, int]:
            raise OSError("disk I/O error")

    metrics = ServiceMetrics(SERVICE)
    metrics.watch(OutboxCollector(SERVICE, lambda: Broken()))
    metrics.request("GET", "/health", 200, 0.001)

    assert sample(metrics, "outbox_unsent_events") is None
    assert sample(metrics, "http_requests_total", method="GET", route="/health", status="200")


def test_lag_is_left_out_and_known_is_zero_when_the_broker_does_not_answer() -> None:
    metrics = ServiceMetrics(SERVICE)
    nowhere = f"127.0.0.1:{free_port()}"
    metrics.watch(LagCollector(SERVICE, nowhere, "g", ["orders"], timeout=0.3))

    families = {family.name: family for family in metrics.registry.collect()}

    assert families["consumer_lag_known"].samples[0].value == 0
    assert families["consumer_lag_records"].samples == []


def test_lag_answers_are_reused_for_a_moment() -> None:
    asked: list[float] = []

    class Counting(LagCollector):
        def _query(self, deadline: float) -> list[tuple[str, int, int]]:
            asked.append(deadline)
            return [("orders", 0, 5), ("orders", 1, 0)]

    metrics = ServiceMetrics(SERVICE)
    metrics.watch(Counting(SERVICE, "unused:9092", "inventory", ["orders"], ttl=3600))

    for _ in range(3):
        labels = {"group": "inventory", "topic": "orders", "partition": "0"}
        assert sample(metrics, "consumer_lag_records", **labels) == 5
    assert sample(metrics, "consumer_lag_known") == 1
    assert len(asked) == 1
