"""The whole stack on this machine: the Kafka cluster, the services of services/registry.py
and, for `up`, a Zipkin server that receives their traces.

    python -m tools.local.stack up        start what is not running, wait until every /ready is 200
    python -m tools.local.stack down      stop everything, free the ports
    python -m tools.local.stack status
    python -m tools.local.stack kill SERVICE|INSTANCE|kafka|kafka-ID   SIGKILL, as a crash would
    python -m tools.local.stack stop SERVICE|INSTANCE          SIGTERM: drain, then stop
    python -m tools.local.stack start SERVICE|INSTANCE|kafka|kafka-ID
    python -m tools.local.stack restart SERVICE|INSTANCE       stop, start, back in rotation

Kafka is a secured KRaft cluster of KAFKA_NODES nodes (default 3; 1 for a small
machine): tools/local/cluster.py. `up` creates the stack's topics, one SCRAM principal
per service and the ACLs (tools/local/kafka_security.py) as the admin, and hands each service
its own identity; `status` lists the brokers and each topic's leaders and in-sync replicas.

`SCALE="inventory=2 order=2"` runs that many instances of a service (order-1, order-2, ...)
on ports of their own, sharing its PostgreSQL database (`<NAME>_DATABASE_URL`) and its
consumer group, behind one HAProxy on the service's usual port (tools/local/haproxy.py);
`up` remembers it for the other commands until `down`. See docs/scale-out.md.

`up` also starts the event explorer (tools/ops/explorer, http://127.0.0.1:8090), a read-only
page over the stack's topics; `down` stops it.

With a Docker engine present, `up` and `down` hand over to `docker compose` instead
(`SCALE` becomes `--scale`).
Each instance runs as `uvicorn <package>.main:create_app --factory` (it drains on
SIGTERM: shared/runtime/drain.py), with the flags of `ServiceProcess.command` (request
heads bounded, `X-Forwarded-For` left to the app), its pid file in .run/pids and its log
in .run/logs (`order.log`, or `order-2.log` when scaled); its database defaults to SQLite
under .run/data."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import URL, make_url
from sqlalchemy.exc import ArgumentError

from services.registry import SERVICES
from tools.local import pginit
from tools.local.certs import (
    ADMIN,
    OBSERVER,
    REDRIVE,
    ensure_key_encryption_key,
    ensure_keyset_signing_key,
)
from tools.local.cluster import LocalCluster, describe_cluster
from tools.local.haproxy import PROXY_SOURCE, Backend, LocalProxy
from tools.local.kafka import RUN_DIR, LocalBroker, port_open
from tools.local.kafka_security import Topology, compose_env, principals, secure_stack
from tools.local.zipkin import LocalZipkin
from tools.ops.explorer.config import DEFAULT_PORT as EXPLORER_PORT

PORTS = {service.name: service.port for service in SERVICES}
APPS = {service.name: service.app for service in SERVICES}
EXPLORER_APP = "tools.ops.explorer.app:create_app"
HTTP_PROTOCOL = "shared.runtime.protocol:BoundedHttpToolsProtocol"
SCALE_FILE = "scale"
"""In the run directory: the `SCALE` that `up` was given, for the later commands."""
USER_KEYS = "user-keys"
"""In the run directory: the user service's key-set signing key and key-encryption key."""
USER_KEY_SETTINGS = ("USER_KEYSET_SIGNING_KEY_FILE", "USER_KEY_ENCRYPTION_KEY_FILE")


def docker_engine() -> bool:
    """True when a Docker engine answers (not only the CLI)."""
    if not shutil.which("docker"):
        return False
    result = subprocess.run(["docker", "info"], capture_output=True, timeout=20)
    return result.returncode == 0


@dataclass
class ServiceProcess:
    """One service as a background uvicorn process with a pid file and a log."""

    name: str
    port: int
    run_dir: Path = RUN_DIR
    env: Mapping[str, str] = field(default_factory=dict)
    workers: int = 1
    app: str = ""
    """The uvicorn app factory; defaults to the registered service's (else
    `services.<name>.main:create_app`)."""
    instance: str = ""
    """Its name among several instances of the service (`order-2`); '' when alone."""

    @property
    def id(self) -> str:
        """The instance's name, or the service's when it runs alone."""
        return self.instance or self.name

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "pids" / f"{self.id}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "logs" / f"{self.id}.log"

    @property
    def metrics_dir(self) -> Path:
        """Where its workers keep their metrics, when it runs several (prometheus_client's
        multiprocess mode); emptied at every start."""
        return self.run_dir / "metrics" / self.id

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        return pid if _not_zombie(pid) else None

    def environment(self) -> dict[str, str]:
        """What the process starts with: this process's environment (what the user
        exported), then what the stack sets for it; its database is SQLite under the run
        directory unless one of them names another (`<NAME>_DATABASE_URL`)."""
        prefix = self.name.upper() + "_"
        env = {**os.environ, **self.env}
        env[f"{prefix}DATABASE_URL"] = database_url(self.name, env, self.run_dir)
        env[f"{prefix}PORT"] = str(self.port)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return env

    @property
    def database(self) -> str:
        """The URL of its database, as the process gets it."""
        return self.environment()[f"{self.name.upper()}_DATABASE_URL"]

    def start(self) -> None:
        if self.pid() is not None:
            return
        if port_open("127.0.0.1", self.port):
            raise RuntimeError(f"port {self.port} for {self.id} is taken by another process")
        env = self.environment()
        if self.workers > 1:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            self.metrics_dir.mkdir(parents=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                self.command(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=Path(__file__).resolve().parents[2],
            )
        self.pid_file.write_text(f"{process.pid}\n")

    def command(self) -> list[str]:
        """uvicorn serving the app factory with the HTTP protocol that bounds request
        heads (shared.runtime.protocol); the app reads `X-Forwarded-For` itself, from the
        peers its settings trust (shared.runtime.proxy), so uvicorn's reading is off."""
        return [
            sys.executable,
            "-m",
            "uvicorn",
            self.app or APPS.get(self.name, f"services.{self.name}.main:create_app"),
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--no-access-log",
            "--no-proxy-headers",
            "--http",
            HTTP_PROTOCOL,
            "--workers",
            str(self.workers),
        ]

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/ready", timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.pid() is None:
                raise RuntimeError(
                    f"{self.id} exited; {self.log_file} ends with:\n" + _tail(self.log_file)
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.id} not ready after {timeout:.0f}s:\n" + _tail(self.log_file)
                )
            time.sleep(0.2)

    def stop(self, timeout: float = 40) -> None:
        """SIGTERM to the process alone (uvicorn's supervisor tells its workers): it
        drains, finishes its requests, commits, leaves its group and flushes; SIGKILL to
        its whole session after `timeout`."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        self._signal(signal.SIGKILL, 10)

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig) if sig == signal.SIGTERM else os.killpg(pid, sig)
            deadline = time.monotonic() + timeout
            while self.pid() == pid and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.pid() == pid:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                while self.pid() == pid:
                    time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        deadline = time.monotonic() + 10
        while port_open("127.0.0.1", self.port) and time.monotonic() < deadline:
            time.sleep(0.05)


class Stack:
    """The broker (unless an external one is given) and the services (all registered ones
    unless `ports` names others), each alone on its port or, when `instances` says so,
    several instances behind HAProxy on that port. With a `cluster`, the stack runs on
    that secured cluster, each service signed in as its own principal. The user
    service's keys are made under `run_dir/user-keys` on first use (`user_keys`): every
    service gets the trust anchor's public half, the user service alone the key files."""

    def __init__(
        self,
        run_dir: Path = RUN_DIR,
        ports: Mapping[str, int] = PORTS,
        env: Mapping[str, str] | None = None,
        broker: LocalBroker | None = None,
        bootstrap: str | None = None,
        workers: Mapping[str, int] | None = None,
        traces: bool = False,
        explorer_port: int | None = None,
        cluster: LocalCluster | None = None,
        instances: Mapping[str, int] | None = None,
        instance_ports: Mapping[str, int] | None = None,
    ) -> None:
        """`workers`: uvicorn worker processes per service name (1 when not named).
        `traces`: run a local Zipkin and send the services' spans to it, unless the
        environment already chooses an exporter (`OTEL_TRACES_EXPORTER`).
        `explorer_port`: also run the event explorer there.
        `instances`: instances per service name (1 when not named; see `parse_scale`);
        `instance_ports`: their ports by instance name (`order-2`), else `instance_port`."""
        self.run_dir = run_dir
        self.cluster = cluster if bootstrap is None else None
        self.broker = broker if bootstrap is None and cluster is None else None
        if self.broker is None and self.cluster is None and bootstrap is None:
            self.broker = LocalBroker()
        self.bootstrap = bootstrap or (self.cluster or self.broker).bootstrap  # type: ignore[union-attr]
        self.services_env = {**os.environ, **(env or {})}
        self.topic_prefix = self.services_env.get("TOPIC_PREFIX", "")
        self.operator_password_file = run_dir / "operator-password"
        keys = user_keys(run_dir)
        shared_env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "USER_OPERATOR_PASSWORD_FILE": str(self.operator_password_file),
            "AUTH_KEYSET_PUBLIC_KEY": keys["AUTH_KEYSET_PUBLIC_KEY"],
            **(env or {}),
        }
        self._user_env = {name: keys[name] for name in USER_KEY_SETTINGS}
        """Only the user service is given the paths of its private keys."""
        self.zipkin: LocalZipkin | None = None
        if traces and "OTEL_TRACES_EXPORTER" not in {**os.environ, **shared_env}:
            self.zipkin = LocalZipkin(run_dir / "zipkin")
            shared_env |= trace_defaults(self.zipkin)
        self.ports = dict(ports)
        counts = {name: (instances or {}).get(name, 1) for name in ports}
        self._shared_env = shared_env
        self.instances: dict[str, list[ServiceProcess]] = {}
        for name, port in ports.items():
            # a service alone has no proxy in front: nothing to wait for before it stops,
            # and no peer whose X-Forwarded-For it trusts; behind the proxy, the proxy's
            # connections (and only those) come from PROXY_SOURCE
            alone = counts[name] == 1
            each = {
                **({"SHUTDOWN_GRACE_SECONDS": "0"} if alone else {}),
                **self._env(name, shared_env),
                "FORWARDED_ALLOW_IPS": "" if alone else PROXY_SOURCE,
            }
            self.instances[name] = [
                ServiceProcess(name, port, run_dir, each, (workers or {}).get(name, 1))
            ]
            if counts[name] > 1:
                self.instances[name] = [
                    ServiceProcess(
                        name,
                        (instance_ports or {}).get(f"{name}-{i}") or instance_port(port, i),
                        run_dir,
                        each,
                        (workers or {}).get(name, 1),
                        instance=f"{name}-{i}",
                    )
                    for i in range(1, counts[name] + 1)
                ]
        self.services = {name: each[0] for name, each in self.instances.items()}
        """Each service's process, or the first of its instances."""
        scaled = [
            Backend(name, ports[name], {i.id: i.port for i in each})
            for name, each in self.instances.items()
            if len(each) > 1
        ]
        self.proxy = LocalProxy(scaled, run_dir) if scaled else None
        # its page holds a Server-Sent Events stream open: stop waiting for it after 2 s
        explorer_env = {**shared_env, "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN": "2"}
        if self.cluster is not None:  # it reads as the observer; its button redrives
            explorer_env |= self.cluster.client_env(OBSERVER)
            explorer_env["EXPLORER_REDRIVE_PASSWORD_FILE"] = str(
                self.cluster.password_file(REDRIVE)
            )
        self.explorer = (
            ServiceProcess("explorer", explorer_port, run_dir, explorer_env, app=EXPLORER_APP)
            if explorer_port
            else None
        )

    def _env(self, name: str, shared: dict[str, str]) -> dict[str, str]:
        """The user service's key files to the user service; on a cluster, the service's
        own principal and the consumer group its ACL names."""
        if name == "user":
            shared = {**self._user_env, **shared}
        if self.cluster is None:
            return shared
        group = f"{name.upper()}_CONSUMER_GROUP"
        return {group: self.topic_prefix + name, **shared, **self.cluster.client_env(name)}

    @property
    def urls(self) -> dict[str, str]:
        """Where clients reach each service: its process, or the proxy in front."""
        return {name: f"http://127.0.0.1:{port}" for name, port in self.ports.items()}

    @property
    def databases(self) -> dict[str, str]:
        """Each service's database URL, as its processes get it."""
        return {name: each[0].database for name, each in self.instances.items()}

    def up(self, names: Iterable[str] | None = None, timeout: float = 90) -> None:
        counts = {name: len(each) for name, each in self.instances.items()}
        require_shared_databases(counts, self.databases)
        operator_password(self.operator_password_file)
        if self.broker is not None:
            self.broker.start()
        if self.cluster is not None:
            self.cluster.start()
            self.secure()
        if self.zipkin is not None:
            self.zipkin.start()
        chosen = [p for n in (names or self.instances) for p in self.chosen(n)]
        for process in chosen:
            process.start()
        for process in chosen:
            process.wait_ready(timeout)
        if self.proxy is not None:
            self.proxy.start()
            for process in chosen:
                self.wait_in_rotation(process, timeout)
        if self.explorer is not None and names is None:
            self.explorer.start()
            self.explorer.wait_ready(timeout)

    def secure(self) -> None:
        """As the admin: the stack's topics, every principal's credential, the ACLs."""
        assert self.cluster is not None
        cluster, topology = self.cluster, Topology.of_registry()
        passwords = {name: cluster.password(name) for name in principals(topology)}
        partitions = int(self.services_env.get("TOPIC_PARTITIONS", "3"))
        admin = cluster.connection(ADMIN)
        secure_stack(admin, self.topic_prefix, passwords, topology, partitions)

    def down(self, kafka: bool = True) -> None:
        """Stop everything; `kafka=False` leaves a cluster running (a test's, shared)."""
        if self.explorer is not None:
            self.explorer.stop()
        if self.proxy is not None:
            self.proxy.stop()
        for each in self.instances.values():
            for process in each:
                process.stop()  # first: each sends its last spans as it stops
        (self.zipkin or LocalZipkin(self.run_dir / "zipkin")).stop()
        if self.broker is not None:
            self.broker.stop()
        if self.cluster is not None and kafka:
            self.cluster.stop()
            single = LocalBroker(self.cluster.home)  # the test suite's, if one was left
            if single.pid() is not None:
                single.stop()

    def chosen(self, name: str) -> list[ServiceProcess]:
        """The processes `name` means: a service's instances, one instance, the explorer."""
        if name in self.instances:
            return self.instances[name]
        return [self.processes()[name]]

    def restart(self, name: str, timeout: float = 90) -> None:
        """Stop gracefully and start again each process `name` means, one at a time, each
        back in rotation before the next stops (a rolling restart)."""
        for process in self.chosen(name):
            process.stop()
            process.start()
            process.wait_ready(timeout)
            self.wait_in_rotation(process, timeout)

    def wait_in_rotation(self, process: ServiceProcess, timeout: float = 30) -> None:
        """Until the proxy sends requests to `process` (at once when it has no proxy)."""
        if self.proxy is None or not process.instance:
            return
        deadline = time.monotonic() + timeout
        while not self.proxy.in_rotation(process.id):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{process.id} not in rotation: {self.proxy.servers()}")
            time.sleep(0.1)

    def processes(self) -> dict[str, ServiceProcess]:
        """Every process by its name (`order`, or `order-1`, `order-2` when scaled) and,
        when it runs with them, the explorer."""
        every = {p.id: p for each in self.instances.values() for p in each}
        return {**every, **({"explorer": self.explorer} if self.explorer else {})}

    def status(self) -> dict[str, str]:
        states = {}
        if self.broker is not None:
            states["kafka"] = f"pid {self.broker.pid()}" if self.broker.is_running() else "down"
        for node_id, node in (self.cluster.nodes if self.cluster else {}).items():
            up = f"pid {node.pid()}" if node.is_running() else "down"
            states[f"kafka-{node_id}"] = f"{up}, {node.bootstrap}"
        if self.zipkin is not None:
            pid = self.zipkin.pid()
            states["zipkin"] = "down" if pid is None else f"pid {pid}, {self.zipkin.url}"
        rotation = self.proxy.servers() if self.proxy is not None else {}
        for name, service in self.processes().items():
            pid = service.pid()
            states[name] = (
                "down"
                if pid is None
                else (f"pid {pid}, " + ("ready" if service.ready() else "NOT READY"))
            )
            if name in rotation:
                states[name] += f", {rotation[name]} in haproxy"
        if self.proxy is not None:
            pid = self.proxy.pid()
            ports = ", ".join(f"{b.name} :{b.port}" for b in self.proxy.backends)
            states["haproxy"] = "down" if pid is None else f"pid {pid}, {ports}"
        return states


def local_stack(run_dir: Path = RUN_DIR, instances: Mapping[str, int] | None = None) -> Stack:
    """The stack `make up` runs here: KAFKA_NODES secured nodes (3 unless it says 1), the
    services (`instances` of each, behind HAProxy when more than one), the explorer and a
    Zipkin."""
    nodes = int(os.environ.get("KAFKA_NODES", "3"))
    cluster = LocalCluster(run_dir / "kafka", nodes=nodes, run_dir=run_dir)
    return Stack(
        run_dir, traces=True, explorer_port=EXPLORER_PORT, cluster=cluster, instances=instances
    )


def instance_port(port: int, index: int) -> int:
    """Instance `index` (from 1) of the service on `port`: 8001 → 18001, 18011, 18021..."""
    chosen = port + 10_000 + 10 * (index - 1)
    if chosen > 65_535 or index > 10:
        raise ValueError(f"no derived port for instance {index} of :{port}; give instance_ports")
    return chosen


def parse_scale(text: str, known: Iterable[str] = PORTS) -> dict[str, int]:
    """`"inventory=2 order=2"` (spaces or commas) → {"inventory": 2, "order": 2}."""
    names = list(known)
    scale: dict[str, int] = {}
    for item in text.replace(",", " ").split():
        name, equals, count = item.partition("=")
        if not equals or not count.strip().isdigit():
            raise ValueError(f"SCALE: {item!r} is not NAME=COUNT")
        if name not in names:
            raise ValueError(f"SCALE: no service {name!r}; services: {', '.join(names)}")
        if int(count) < 1:
            raise ValueError(f"SCALE: {name} needs at least 1 instance, not {count}")
        scale[name] = int(count)
    return scale


def database_url(name: str, env: Mapping[str, str], run_dir: Path) -> str:
    """The database of service `name`: its `<NAME>_DATABASE_URL` in `env` when set, else
    an SQLite file under `run_dir`."""
    return env.get(f"{name.upper()}_DATABASE_URL") or f"sqlite:///{run_dir}/data/{name}.db"


def parse_database(name: str, url: str) -> URL:
    """`url` parsed, or a ValueError naming the variable (never its value: it may hold a
    password)."""
    variable = f"{name.upper()}_DATABASE_URL"
    try:
        parsed = make_url(url)
        parsed.get_backend_name()
        parsed.port  # noqa: B018 - a port that is no number fails here
    except (ArgumentError, ValueError):
        raise ValueError(f"{variable} is not a database URL") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(f"{variable} names neither SQLite nor PostgreSQL")
    return parsed


def require_shared_databases(counts: Mapping[str, int], databases: Mapping[str, str]) -> None:
    """Every database URL readable, and several instances of a service share its
    database: PostgreSQL, never SQLite."""
    for name, url in databases.items():
        parsed = parse_database(name, url)
        count = counts.get(name, 1)
        if count > 1 and parsed.get_backend_name() != "postgresql":
            raise ValueError(
                f"{count} instances of {name} share one database: set"
                f" {name.upper()}_DATABASE_URL to PostgreSQL (SQLite is one process's)"
            )


def describe_database(process: ServiceProcess) -> str:
    """Where a service keeps its data, for people: the URL with its password masked (or
    SQLite's file), and the file its password is read from."""
    env = process.environment()
    url = parse_database(process.name, env[f"{process.name.upper()}_DATABASE_URL"])
    if url.get_backend_name() == "sqlite":
        return f"SQLite {url.database}"
    shown = f"PostgreSQL {url.render_as_string(hide_password=True)}"
    if password_file := env.get(f"{process.name.upper()}_DATABASE_PASSWORD_FILE"):
        shown += f"  (password: {password_file})"
    return shown


def trace_defaults(zipkin: LocalZipkin) -> dict[str, str]:
    """The services' span export to the local Zipkin, sent within a second."""
    return {
        "OTEL_TRACES_EXPORTER": "zipkin",
        "OTEL_EXPORTER_ZIPKIN_ENDPOINT": zipkin.spans_endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "1000",
    }


def write_prometheus_config(path: Path, services: Mapping[str, ServiceProcess]) -> None:
    """A Prometheus configuration that scrapes every local service's /metrics:
    `prometheus --config.file=.run/prometheus.yml`."""
    targets = ", ".join(f'"127.0.0.1:{service.port}"' for service in services.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Written by `python -m tools.local.stack up`: the services of this machine.\n"
        "global:\n  scrape_interval: 5s\n"
        f"scrape_configs:\n  - job_name: shop\n    static_configs:\n      - targets: [{targets}]\n"
    )


def user_keys(run_dir: Path) -> dict[str, str]:
    """The user service's keys under `run_dir/user-keys`, made on first use (owner-only),
    as the settings that name them: the trust anchor's public half, which every service
    checks `signing-keys` sets with, and the files of the anchor's private half and of the
    key-encryption key, which only the user service reads."""
    folder = run_dir / USER_KEYS
    signing_key = folder / "keyset-signing-key.pem"
    anchor = ensure_keyset_signing_key(signing_key)
    encryption_key = ensure_key_encryption_key(folder / "key-encryption-key")
    return {
        "AUTH_KEYSET_PUBLIC_KEY": anchor,
        "USER_KEYSET_SIGNING_KEY_FILE": str(signing_key),
        "USER_KEY_ENCRYPTION_KEY_FILE": str(encryption_key),
    }


def compose_user_keys(run_dir: Path) -> dict[str, str]:
    """What compose's key secrets and the anchor are made of (SHOP_KEYSET_*,
    SHOP_KEY_ENCRYPTION_KEY), from the same files as `user_keys`."""
    keys = user_keys(run_dir)
    return {
        "SHOP_KEYSET_PUBLIC_KEY": keys["AUTH_KEYSET_PUBLIC_KEY"],
        "SHOP_KEYSET_SIGNING_KEY": Path(keys["USER_KEYSET_SIGNING_KEY_FILE"]).read_text(),
        "SHOP_KEY_ENCRYPTION_KEY": Path(keys["USER_KEY_ENCRYPTION_KEY_FILE"]).read_text(),
    }


def operator_password(path: Path) -> str:
    """The operator account's password: made on first use, readable by its owner only."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(24) + "\n")
    return path.read_text().strip()


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


OPERATOR_HINT = (
    "an operator token (for stock and products):\n"
    "  curl -s -X POST 127.0.0.1:8004/token -d username=operator@example.com \\\n"
    '       --data-urlencode "password=$(cat .run/operator-password)"'
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.local.stack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command", choices=["up", "down", "status", "kill", "stop", "start", "restart"]
    )
    parser.add_argument("names", nargs="*", help="services, instances (order-2), kafka or explorer")
    args = parser.parse_args(argv)
    compose = [
        "docker",
        "compose",
        "-f",
        str(Path(__file__).resolve().parents[2] / "compose.yaml"),
    ]
    try:
        scale = remembered_scale(RUN_DIR, os.environ.get("SCALE"), args.command)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    password = operator_password(RUN_DIR / "operator-password") if args.command == "up" else ""
    if args.command in ("up", "down") and docker_engine():
        scaled = [f"--scale={name}={count}" for name, count in scale.items()]
        extra = ["up", "-d", "--wait", *scaled] if args.command == "up" else ["down"]
        env = {
            **os.environ,
            "SHOP_OPERATOR_PASSWORD": password,
            **compose_env(RUN_DIR),
            **pginit.compose_env(RUN_DIR),
            **compose_user_keys(RUN_DIR),
        }
        if args.command == "up":
            for name in (n for n in PORTS if f"{n.upper()}_DATABASE_URL" in os.environ):
                print(
                    f"{name.upper()}_DATABASE_URL is not used with Docker: compose runs"
                    " each service on its own database in its PostgreSQL",
                    file=sys.stderr,
                )
        code = subprocess.call(compose + extra, env=env)
        if code == 0 and args.command == "up":
            print(f"  {'explorer':<10} http://127.0.0.1:{EXPLORER_PORT}")
            print(f"  {'traces':<10} http://127.0.0.1:16686  (Jaeger)")
            print("databases: compose's PostgreSQL on 127.0.0.1:5432, a database and a role")
            print("  per service; passwords in .run/postgres-credentials/ (superuser: shop)")
        return code
    stack = local_stack(RUN_DIR, instances=scale)
    began = time.monotonic()
    if args.command == "up":
        try:
            stack.up()
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
        scraping = RUN_DIR / "prometheus.yml"
        every = {p.id: p for each in stack.instances.values() for p in each}
        write_prometheus_config(scraping, every)  # each instance, not the proxy
        print(f"stack ready in {time.monotonic() - began:.1f}s")
        print(f"  kafka      {stack.bootstrap}")
        if stack.cluster is not None:
            size = len(stack.cluster.nodes)
            print(f"             {size} node(s), SASL_SSL; to sign in as a read-only observer:")
            print('             eval "$(python -m tools.local.cluster env observer)"')
        for name, url in stack.urls.items():
            behind = len(stack.instances[name])
            proxied = f", {behind} instances behind haproxy" if behind > 1 else ""
            print(f"  {name:<10} {url}  (docs: {url}/docs{proxied})")
        print("databases:")
        for name, each in stack.instances.items():
            print(f"  {name:<10} {describe_database(each[0])}")
        if stack.explorer is not None:
            print(f"  {'explorer':<10} {stack.explorer.url}")
        if stack.zipkin is not None:
            print(f"  {'traces':<10} {stack.zipkin.url}  (Zipkin)")
        print(OPERATOR_HINT)
        print(f"metrics: each service's /metrics; prometheus --config.file={scraping}")
    elif args.command == "down":
        stack.down()
        (RUN_DIR / SCALE_FILE).unlink(missing_ok=True)
        print("stack stopped")
    elif args.command == "status":
        states = stack.status()
        for name, state in states.items():
            print(f"  {name:<12} {state}")
        if stack.cluster is not None and any(s.startswith("pid") for s in states.values()):
            print(describe_cluster(stack.cluster.connection(ADMIN), stack.topic_prefix))
        return 0 if all(not s.startswith("down") for s in states.values()) else 3
    else:
        for name in args.names:
            if name.startswith("kafka") and stack.cluster is not None:
                nodes = stack.cluster.nodes
                if name == "kafka" and args.command == "start":
                    stack.cluster.start()  # together: a node alone waits for a quorum
                for node in nodes.values() if name == "kafka" else [nodes[int(name[6:])]]:
                    node.kill() if args.command == "kill" else node.start()
            elif name == "kafka" and stack.broker is not None:
                stack.broker.kill() if args.command == "kill" else stack.broker.start()
            elif args.command == "restart":
                stack.restart(name)
            else:
                for process in stack.chosen(name):
                    if args.command == "kill":
                        process.kill()
                    elif args.command == "stop":
                        process.stop()
                    else:
                        process.start()
                        process.wait_ready()
                        stack.wait_in_rotation(process)
    return 0


def remembered_scale(run_dir: Path, given: str | None, command: str) -> dict[str, int]:
    """The instances per service: `SCALE` as given to `up` (and remembered in the run
    directory), else what the last `up` was given."""
    remembered = run_dir / SCALE_FILE
    if given is None:
        given = remembered.read_text() if remembered.exists() else ""
    scale = parse_scale(given)
    if command == "up":
        remembered.parent.mkdir(parents=True, exist_ok=True)
        remembered.write_text(given.strip() + "\n")
    return scale


if __name__ == "__main__":
    raise SystemExit(main())
