"""The whole stack on this machine: the Kafka cluster, the services of services/registry.py
and, for `up`, a Zipkin server that receives their traces.

    python -m tools.stack up        start what is not running, wait until every /ready is 200
    python -m tools.stack down      stop everything, free the ports
    python -m tools.stack status
    python -m tools.stack kill SERVICE|kafka|kafka-ID    SIGKILL, as a crash would
    python -m tools.stack start SERVICE|kafka|kafka-ID

Kafka is a secured KRaft cluster of KAFKA_NODES nodes (default 3; 1 for a small
machine): tools/kafka_cluster.py. `up` creates the stack's topics, one SCRAM principal
per service and the ACLs (tools/kafka_security.py) as the admin, and hands each service
its own identity; `status` lists the brokers and each topic's leaders and in-sync replicas.

`up` also starts the event explorer (tools/explorer, http://127.0.0.1:8090), a read-only
page over the stack's topics; `down` stops it.

With a Docker engine present, `up` and `down` hand over to `docker compose` instead.
Each service runs as `uvicorn <package>.main:create_app --factory`, with its pid file
in .run/pids and its log in .run/logs; its database defaults to SQLite under .run/data."""

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

from services.registry import SERVICES
from tools.certs import ADMIN, OBSERVER, REDRIVE
from tools.explorer.config import DEFAULT_PORT as EXPLORER_PORT
from tools.kafka_cluster import LocalCluster, describe_cluster
from tools.kafka_local import RUN_DIR, LocalBroker, port_open
from tools.kafka_security import Topology, compose_env, principals, secure_stack
from tools.zipkin_local import LocalZipkin

PORTS = {service.name: service.port for service in SERVICES}
APPS = {service.name: service.app for service in SERVICES}
EXPLORER_APP = "tools.explorer.app:create_app"


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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "pids" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "logs" / f"{self.name}.log"

    @property
    def metrics_dir(self) -> Path:
        """Where its workers keep their metrics, when it runs several (prometheus_client's
        multiprocess mode); emptied at every start."""
        return self.run_dir / "metrics" / self.name

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        return pid if _not_zombie(pid) else None

    def start(self) -> None:
        if self.pid() is not None:
            return
        if port_open("127.0.0.1", self.port):
            raise RuntimeError(f"port {self.port} for {self.name} is taken by another process")
        prefix = self.name.upper() + "_"
        env = {
            **os.environ,
            f"{prefix}DATABASE_URL": f"sqlite:///{self.run_dir}/data/{self.name}.db",
            **self.env,
            f"{prefix}PORT": str(self.port),
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if self.workers > 1:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            self.metrics_dir.mkdir(parents=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        command = [
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
            "--workers",
            str(self.workers),
        ]
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
        self.pid_file.write_text(f"{process.pid}\n")

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
                    f"{self.name} exited; {self.log_file} ends with:\n" + _tail(self.log_file)
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} not ready after {timeout:.0f}s:\n" + _tail(self.log_file)
                )
            time.sleep(0.2)

    def stop(self, timeout: float = 20) -> None:
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        self._signal(signal.SIGKILL, 10)

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
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
    unless `ports` names others). With a `cluster`, the stack runs on that secured cluster,
    each service signed in as its own principal."""

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
    ) -> None:
        """`workers`: uvicorn worker processes per service name (1 when not named).
        `traces`: run a local Zipkin and send the services' spans to it, unless the
        environment already chooses an exporter (`OTEL_TRACES_EXPORTER`).
        `explorer_port`: also run the event explorer there."""
        self.run_dir = run_dir
        self.cluster = cluster if bootstrap is None else None
        self.broker = broker if bootstrap is None and cluster is None else None
        if self.broker is None and self.cluster is None and bootstrap is None:
            self.broker = LocalBroker()
        self.bootstrap = bootstrap or (self.cluster or self.broker).bootstrap  # type: ignore[union-attr]
        self.services_env = {**os.environ, **(env or {})}
        self.topic_prefix = self.services_env.get("TOPIC_PREFIX", "")
        self.operator_password_file = run_dir / "operator-password"
        shared_env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "USER_OPERATOR_PASSWORD_FILE": str(self.operator_password_file),
            **(env or {}),
        }
        self.zipkin: LocalZipkin | None = None
        if traces and "OTEL_TRACES_EXPORTER" not in {**os.environ, **shared_env}:
            self.zipkin = LocalZipkin(run_dir / "zipkin")
            shared_env |= trace_defaults(self.zipkin)
        self.services = {
            name: ServiceProcess(
                name, port, run_dir, self._env(name, shared_env), (workers or {}).get(name, 1)
            )
            for name, port in ports.items()
        }
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
        """On a cluster: the service's own principal, and the consumer group its ACL names."""
        if self.cluster is None:
            return shared
        group = f"{name.upper()}_CONSUMER_GROUP"
        return {group: self.topic_prefix + name, **shared, **self.cluster.client_env(name)}

    def up(self, names: Iterable[str] | None = None, timeout: float = 90) -> None:
        operator_password(self.operator_password_file)
        if self.broker is not None:
            self.broker.start()
        if self.cluster is not None:
            self.cluster.start()
            self.secure()
        if self.zipkin is not None:
            self.zipkin.start()
        chosen = [self.services[n] for n in (names or self.services)]
        for service in chosen:
            service.start()
        for service in chosen:
            service.wait_ready(timeout)
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
        for service in self.services.values():
            service.stop()  # first: each sends its last spans as it stops
        (self.zipkin or LocalZipkin(self.run_dir / "zipkin")).stop()
        if self.broker is not None:
            self.broker.stop()
        if self.cluster is not None and kafka:
            self.cluster.stop()

    def processes(self) -> dict[str, ServiceProcess]:
        """The services and, when it runs with them, the explorer."""
        return {**self.services, **({"explorer": self.explorer} if self.explorer else {})}

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
        for name, service in self.processes().items():
            pid = service.pid()
            states[name] = (
                "down"
                if pid is None
                else (f"pid {pid}, " + ("ready" if service.ready() else "NOT READY"))
            )
        return states


def local_stack(run_dir: Path = RUN_DIR) -> Stack:
    """The stack `make up` runs here: KAFKA_NODES secured nodes (3 unless it says 1), the
    services, the explorer and a Zipkin."""
    nodes = int(os.environ.get("KAFKA_NODES", "3"))
    cluster = LocalCluster(run_dir / "kafka", nodes=nodes, run_dir=run_dir)
    return Stack(run_dir, traces=True, explorer_port=EXPLORER_PORT, cluster=cluster)


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
        "# Written by `python -m tools.stack up`: the services of this machine.\n"
        "global:\n  scrape_interval: 5s\n"
        f"scrape_configs:\n  - job_name: shop\n    static_configs:\n      - targets: [{targets}]\n"
    )


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
        prog="python -m tools.stack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["up", "down", "status", "kill", "start"])
    parser.add_argument("names", nargs="*", help="services (or kafka, explorer) for kill/start")
    args = parser.parse_args(argv)
    compose = [
        "docker",
        "compose",
        "-f",
        str(Path(__file__).resolve().parent.parent / "compose.yaml"),
    ]
    password = operator_password(RUN_DIR / "operator-password") if args.command == "up" else ""
    if args.command in ("up", "down") and docker_engine():
        extra = ["up", "-d", "--wait"] if args.command == "up" else ["down"]
        env = {**os.environ, "SHOP_OPERATOR_PASSWORD": password, **compose_env(RUN_DIR)}
        code = subprocess.call(compose + extra, env=env)
        if code == 0 and args.command == "up":
            print(f"  {'explorer':<10} http://127.0.0.1:{EXPLORER_PORT}")
            print(f"  {'traces':<10} http://127.0.0.1:16686  (Jaeger)")
        return code
    stack = local_stack()
    began = time.monotonic()
    if args.command == "up":
        stack.up()
        scraping = RUN_DIR / "prometheus.yml"
        write_prometheus_config(scraping, stack.services)
        print(f"stack ready in {time.monotonic() - began:.1f}s")
        print(f"  kafka      {stack.bootstrap}")
        if stack.cluster is not None:
            size = len(stack.cluster.nodes)
            print(f"             {size} node(s), SASL_SSL; to sign in as a read-only observer:")
            print('             eval "$(python -m tools.kafka_cluster env observer)"')
        for name, service in stack.services.items():
            print(f"  {name:<10} {service.url}  (docs: {service.url}/docs)")
        if stack.explorer is not None:
            print(f"  {'explorer':<10} {stack.explorer.url}")
        if stack.zipkin is not None:
            print(f"  {'traces':<10} {stack.zipkin.url}  (Zipkin)")
        print(OPERATOR_HINT)
        print(f"metrics: each service's /metrics; prometheus --config.file={scraping}")
    elif args.command == "down":
        stack.down()
        print("stack stopped")
    elif args.command == "status":
        states = stack.status()
        for name, state in states.items():
            print(f"  {name:<10} {state}")
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
            elif args.command == "kill":
                stack.processes()[name].kill()
            else:
                stack.processes()[name].start()
                stack.processes()[name].wait_ready()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
