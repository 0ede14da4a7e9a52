"""Prometheus and Grafana read as data: no engine, no binaries. Prometheus scrapes every
registered service, Grafana is provisioned with it and the saga's dashboard, and every
PromQL expression of the dashboard names metrics (and labels) the services expose."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.core import Metric

from services.registry import SERVICES, load
from shared.runtime.service import ServiceRuntime
from tests.conftest import free_port
from tests.unit.test_compose import COMPOSE_FILE, ROOT, compose, healthcheck_text, service
from tools.local import stack

pytestmark = pytest.mark.unit

PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PORTS = {service.name: service.port for service in SERVICES}
ALWAYS = {"job", "instance", "le"}
"""Labels every series has (Prometheus adds job and instance) or histograms have."""


def mounts(name: str) -> dict[str, Path]:
    """A compose service's bind mounts: path in the container -> file in the repo."""
    found = {}
    for volume in service(name).get("volumes") or []:
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            found[target] = (COMPOSE_FILE.parent / source).resolve()
    return found


def in_container(name: str, path: str) -> Path:
    """The repo file that a container sees at `path`, through its bind mounts."""
    for target, source in mounts(name).items():
        if path == target or path.startswith(target + "/"):
            return source / path[len(target) :].lstrip("/")
    raise AssertionError(f"{name} mounts nothing at {path}")


def scrape_targets(config: dict[str, Any]) -> list[str]:
    """host:port of every /metrics target: static ones, and DNS names with their port."""
    return [
        target
        for job in config["scrape_configs"]
        if job.get("metrics_path", "/metrics") == "/metrics"
        for target in [
            *(t for static in job.get("static_configs", []) for t in static["targets"]),
            *(f"{n}:{dns['port']}" for dns in job.get("dns_sd_configs", []) for n in dns["names"]),
        ]
    ]


# --- Prometheus ------------------------------------------------------------------------


def test_prometheus_in_compose_reads_the_config_of_the_repo() -> None:
    command = service("prometheus")["command"]
    [flag] = [arg for arg in command if arg.startswith("--config.file=")]
    assert in_container("prometheus", flag.split("=", 1)[1]) == PROMETHEUS_CONFIG
    assert "/-/ready" in healthcheck_text("prometheus")


def test_prometheus_scrapes_every_registered_service_at_its_container_and_port() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert set(config["global"]) <= {"scrape_interval", "evaluation_interval", "scrape_timeout"}
    for job in config["scrape_configs"]:
        assert set(job) <= {"job_name", "metrics_path", "dns_sd_configs", "scrape_interval"}
        assert re.fullmatch(r"\d+[smh]", job.get("scrape_interval", "5s"))
    assert sorted(scrape_targets(config)) == sorted(f"{s.name}:{s.port}" for s in SERVICES)
    for name in PORTS:
        assert name in compose()["services"], f"Prometheus scrapes {name}, which compose lacks"


def test_prometheus_finds_every_replica_of_a_service_through_docker_dns() -> None:
    """A static `order:8001` is one target, whichever container the name resolves to: with
    `--scale order=2` one replica would go unscraped. An A-record lookup per scrape round
    makes each container a target of its own."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    lookups = [dns for job in config["scrape_configs"] for dns in job["dns_sd_configs"]]
    assert {dns.get("type") for dns in lookups} == {"A"}
    assert sorted(name for dns in lookups for name in dns["names"]) == sorted(PORTS)
    for dns in lookups:
        [name] = dns["names"]
        assert dns["port"] == PORTS[name]
        assert re.fullmatch(r"\d+s", dns.get("refresh_interval", "30s"))


def test_every_service_serves_the_path_prometheus_scrapes() -> None:
    for registered in SERVICES:
        app = load(registered.app)()
        assert "/metrics" in {getattr(route, "path", None) for route in app.routes}


def test_stack_up_writes_a_prometheus_config_for_the_local_services(tmp_path: Path) -> None:
    ports = {name: free_port() for name in PORTS}
    services = {name: stack.ServiceProcess(name, port, tmp_path) for name, port in ports.items()}

    stack.write_prometheus_config(tmp_path / "prometheus.yml", services)

    config = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    assert sorted(scrape_targets(config)) == sorted(f"127.0.0.1:{p}" for p in ports.values())


# --- Grafana ---------------------------------------------------------------------------


@cache
def datasource() -> dict[str, Any]:
    folder = in_container("grafana", "/etc/grafana/provisioning") / "datasources"
    [config] = [yaml.safe_load(path.read_text()) for path in folder.glob("*.yml")]
    [source] = config["datasources"]
    return dict(source)


def test_grafana_is_open_to_anonymous_viewers_and_waits_for_prometheus() -> None:
    env = service("grafana")["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert service("grafana")["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert "/api/health" in healthcheck_text("grafana")
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert in_container("grafana", home) in DASHBOARDS


def test_grafana_datasource_is_the_prometheus_of_compose() -> None:
    source = datasource()
    assert source["type"] == "prometheus" and source["access"] == "proxy"
    host, port = source["url"].removeprefix("http://").split(":")
    assert host == "prometheus"
    assert f"127.0.0.1:{port}:{port}" in service("prometheus")["ports"]


def test_grafana_provisions_the_dashboards_folder_it_mounts() -> None:
    folder = in_container("grafana", "/etc/grafana/provisioning") / "dashboards"
    [config] = [yaml.safe_load(path.read_text()) for path in folder.glob("*.yml")]
    [provider] = config["providers"]
    assert provider["type"] == "file"
    assert in_container("grafana", provider["options"]["path"]) == GRAFANA / "dashboards"
    assert DASHBOARDS, "no dashboard to provision"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_dashboard_is_well_formed(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in dashboard["panels"]:
        where = panel["gridPos"]
        assert where["x"] + where["w"] <= 24 and where["h"] > 0, panel["title"]
        assert panel["datasource"]["uid"] == datasource()["uid"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]


def test_the_saga_dashboard_shows_what_an_operator_asks() -> None:
    text = (GRAFANA / "dashboards" / "saga.json").read_text()
    for metric in (
        'events_published_total{service="order",type="order-created"}',  # orders/s
        "order-confirmed|order-rejected",  # outcomes
        "consumer_lag_records",
        "outbox_unsent_events",
        "outbox_oldest_unsent_age_seconds",
        "outbox_parked_events",
        "outbox_parked_total",
        "events_dead_lettered_total",
        "histogram_quantile(0.99",
    ):
        assert metric.replace('"', '\\"') in text, metric


# --- every expression names what the services expose -----------------------------------

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or"}
KEYWORDS |= {"unless", "bool", "offset", "inf", "nan"}


def sample_names(family: Metric) -> set[str]:
    suffixes = {
        "counter": ["_total", "_created"],
        "histogram": ["_bucket", "_count", "_sum", "_created"],
        "gauge": [""],
    }[family.type]
    return {family.name + suffix for suffix in suffixes}


@cache
def exposed(tmp: str) -> dict[str, set[str]]:
    """Every sample name the registered services expose -> its label names, from the
    metric families of each service's runtime (built, not started)."""
    found: dict[str, set[str]] = {}
    for registered in SERVICES:
        spec = load(f"{registered.package}.main:SPEC")
        settings = load(registered.settings)(database_url=f"sqlite:///{tmp}/{registered.name}.db")
        runtime = ServiceRuntime(spec, settings)
        for family in runtime.instruments.describe():
            labels = set(getattr(family, "_labelnames", ())) or label_names(runtime, family)
            for name in sample_names(family):
                found.setdefault(name, set()).update(labels)
        runtime.engine.dispose()
    return found


def label_names(runtime: ServiceRuntime, family: Metric) -> set[str]:
    for instrument in runtime.instruments.instruments:
        if instrument.describe()[0].name == family.name:
            return set(instrument._labelnames)
    return set()


def metrics_in(expr: str) -> dict[str, set[str]]:
    """The metric names a PromQL expression reads -> the labels its matchers name."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings say nothing about names
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    found: dict[str, set[str]] = {}
    for match in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?", expr):
        name, matchers, call = match.groups()
        if call or name in KEYWORDS:
            continue
        found[name] = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers or ""))
    return found


def grouped_by(expr: str) -> set[str]:
    return {
        label.strip()
        for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
        for label in clause.split(",")
        if label.strip()
    }


def expressions() -> list[tuple[str, str]]:
    return [
        (f"{path.name}: {panel['title']}", target["expr"])
        for path in DASHBOARDS
        for panel in json.loads(path.read_text())["panels"]
        for target in panel["targets"]
    ]


@pytest.mark.parametrize(("panel", "expr"), expressions(), ids=[p for p, _ in expressions()])
def test_every_dashboard_expression_reads_metrics_and_labels_the_services_expose(
    panel: str, expr: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    known = exposed(str(tmp_path_factory.getbasetemp()))
    read = metrics_in(expr)
    assert read, f"{panel}: no metric in {expr!r}"
    for name, matched in read.items():
        assert name in known, f"{panel}: no service exposes {name}"
        assert matched <= known[name] | ALWAYS, f"{panel}: {name} has no label {matched}"
    labels = set().union(*(known[name] for name in read)) | ALWAYS
    assert grouped_by(expr) <= labels, f"{panel}: groups by a label none of {set(read)} has"


def test_the_expression_parser_finds_names_and_labels() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (service, le) (rate(http_request_duration_seconds_bucket"
        '{service="order", route=~"/orders.*"}[5m]))) / on (service) up'
    )
    assert metrics_in(expr) == {
        "http_request_duration_seconds_bucket": {"service", "route"},
        "up": set(),
    }
    assert grouped_by(expr) == {"service", "le"}
