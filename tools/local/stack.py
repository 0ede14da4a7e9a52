"""The whole stack on this machine: the Kafka cluster, the services of services/registry.py
and, for `up`, a Zipkin server that receives their traces.

    python -m tools.local.stack up | down | status | reset-kafka
    python -m tools.local.stack kill|stop|start NAME...   a service, an instance (order-2),
                                                          explorer, kafka or kafka-ID
    python -m tools.local.stack restart SERVICE|INSTANCE

(`--help` says what each command does: `COMMANDS` in the code.)

Kafka is a secured KRaft cluster of KAFKA_NODES nodes (default 3; 1 for a small
machine): tools/local/cluster.py. `up` creates the stack's topics, one SCRAM principal
per service and the ACLs (tools/local/kafka_security.py) as the admin, and hands each
service its own identity; `status` lists the brokers, each topic's cleanup policy and
retention as the brokers apply them (flagging one that differs from
shared/messaging/topics.py's `TOPICS`), and its partitions' leaders and in-sync
replicas. The nodes' data belongs to a cluster of one size: to change KAFKA_NODES, run
`down`, then `reset-kafka` (`make clean-kafka`), then `up` with the new size.

`SCALE="inventory=2 order=2"` runs that many instances of a service (order-1, order-2, ...)
on ports of their own, sharing its PostgreSQL database (`<NAME>_DATABASE_URL`) and its
consumer group, behind one HAProxy on the service's usual port (tools/local/haproxy.py);
`up` remembers it for the other commands until `down`. See docs/scale-out.md.

`up` also starts the event explorer (tools/ops/explorer, http://127.0.0.1:8090), a
read-only page over the stack's topics; `down` stops it.

With a Docker engine present, `up` and `down` hand over to `docker compose` instead
(`SCALE` becomes `--scale`): on compose.yaml's official images, or on the images `make
images` built here (compose.images.yaml) once they all are. `STACK=compose`,
`compose-local` or `processes` chooses; `up` remembers the choice for `down`.
Each instance runs as `python -m services NAME --port PORT --workers N` (it drains on
SIGTERM: shared/runtime/drain.py), its pid file in .run/pids and its log in .run/logs
(`order.log`, or `order-2.log` when scaled); its database defaults to SQLite under
.run/data (tools/local/service.py)."""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.registry import SERVICES
from shared.messaging import exporters
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
from tools.local.kafka import ROOT, RUN_DIR, LocalBroker
from tools.local.kafka_security import Topology, compose_env, principals, secure_stack
from tools.local.service import (
    ServiceProcess,
    describe_database,
    require_shared_databases,
)
from tools.local.zipkin import LocalZipkin
from tools.ops.explorer.config import DEFAULT_PORT as EXPLORER_PORT

PORTS = {service.name: service.port for service in SERVICES}
EXPLORER_MODULE = "tools.ops.explorer"
SCALE_FILE = "scale"
"""In the run directory: the `SCALE` that `up` was given, for the later commands."""
USER_KEYS = "user-keys"
"""In the run directory: the user service's key-set signing key and key-encryption key."""
USER_KEY_SETTINGS = ("USER_KEYSET_SIGNING_KEY_FILE", "USER_KEY_ENCRYPTION_KEY_FILE")
STACKS = ("compose", "compose-local", "processes")
"""How `up` runs the stack: compose on the official images, compose on the images built
here (compose.images.yaml), or local processes."""
STACK_FILE = "stack"
"""In the run directory: how `up` ran the stack, for `down`."""

Kafka = LocalBroker | LocalCluster | str
"""The stack's Kafka: a broker or a cluster it runs, or the bootstrap address of another."""


def docker_engine() -> bool:
    """True when a Docker engine answers (not only the CLI)."""
    if not shutil.which("docker"):
        return False
    result = subprocess.run(["docker", "info"], capture_output=True, timeout=20)
    return result.returncode == 0


def local_images_built() -> bool:
    """True when every image compose.images.yaml names is in the engine's storage."""
    from tools.local.images import select

    refs = [image.ref for image in select([]) if image.name not in ("base", "python")]
    done = subprocess.run(["docker", "image", "inspect", *refs], capture_output=True, timeout=60)
    return done.returncode == 0


def chosen_stack(run_dir: Path, command: str) -> str:
    """How `command` runs the stack: `STACK` if set; for `down`, what `up` ran; else
    compose when an engine answers (on the local images when they are all built), else
    local processes."""
    given = os.environ.get("STACK", "")
    if given and given not in STACKS:
        raise ValueError(f"STACK={given!r}: choose one of {', '.join(STACKS)}")
    remembered = run_dir / STACK_FILE
    if not given and command == "down" and remembered.is_file():
        given = remembered.read_text().strip()
    if given in STACKS:
        return given
    if not docker_engine():
        return "processes"
    return "compose-local" if local_images_built() else "compose"


@dataclass(frozen=True)
class Layout:
    """How each service runs: `instances` of it (1 when not named; see `parse_scale`),
    behind HAProxy when more than one, each with `workers` uvicorn processes (1 when not
    named); an instance's port from `instance_ports` by its name (`order-2`), else
    `instance_port`."""

    instances: Mapping[str, int] = field(default_factory=dict)
    workers: Mapping[str, int] = field(default_factory=dict)
    instance_ports: Mapping[str, int] = field(default_factory=dict)

    def processes(
        self, name: str, port: int, run_dir: Path, env: Mapping[str, str]
    ) -> list[ServiceProcess]:
        """The processes of service `name` (its usual `port`), each started with `env`."""
        count, workers = self.instances.get(name, 1), self.workers.get(name, 1)
        if count == 1:
            return [ServiceProcess(name, port, run_dir, env, workers)]
        return [
            ServiceProcess(
                name,
                self.instance_ports.get(f"{name}-{i}") or instance_port(port, i),
                run_dir,
                env,
                workers,
                instance=f"{name}-{i}",
            )
            for i in range(1, count + 1)
        ]


class Stack:
    """Kafka, and the services (all registered ones unless `ports` names others), each
    alone on its port or, as `layout` says, several instances behind HAProxy on that
    port. `kafka`: a broker of its own unless given (`Kafka`); on a `LocalCluster` each
    service signs in as its own principal. `traces`: run a local Zipkin and send the
    services' spans to it, unless the environment already chooses an exporter
    (`OTEL_TRACES_EXPORTER`). `explorer_port`: also run the event explorer there. The user
    service's keys are made under `run_dir/user-keys` on first use (`user_keys`): every
    service gets the trust anchor's public half, the user service alone the key files."""

    def __init__(
        self,
        run_dir: Path = RUN_DIR,
        ports: Mapping[str, int] = PORTS,
        env: Mapping[str, str] | None = None,
        kafka: Kafka | None = None,
        layout: Layout | None = None,
        traces: bool = False,
        explorer_port: int | None = None,
    ) -> None:
        kafka = LocalBroker() if kafka is None else kafka
        layout = layout or Layout()
        self.run_dir = run_dir
        self.broker = kafka if isinstance(kafka, LocalBroker) else None
        self.cluster = kafka if isinstance(kafka, LocalCluster) else None
        self.bootstrap = kafka if isinstance(kafka, str) else kafka.bootstrap
        self.services_env = {**os.environ, **(env or {})}
        self.topic_prefix = self.services_env.get("TOPIC_PREFIX", "")
        self.operator_password_file = run_dir / "operator-password"
        self.ports = dict(ports)
        shared_env = self._shared_env(env or {}, traces)
        self.instances = {
            name: layout.processes(name, port, run_dir, self._env(name, shared_env, layout))
            for name, port in ports.items()
        }
        self.services = {name: each[0] for name, each in self.instances.items()}
        """Each service's process, or the first of its instances."""
        scaled = [
            Backend(name, ports[name], {i.id: i.port for i in each})
            for name, each in self.instances.items()
            if len(each) > 1
        ]
        self.proxy = LocalProxy(scaled, run_dir) if scaled else None
        self.explorer = self._explorer(explorer_port, shared_env) if explorer_port else None

    def _shared_env(self, env: Mapping[str, str], traces: bool) -> dict[str, str]:
        """What every process gets: Kafka, the operator's password file, the trust
        anchor, what the caller gives, and the span export to a Zipkin of its own."""
        keys = user_keys(self.run_dir)
        self._user_env = {name: keys[name] for name in USER_KEY_SETTINGS}
        """Only the user service is given the paths of its private keys."""
        shared = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "USER_OPERATOR_PASSWORD_FILE": str(self.operator_password_file),
            "AUTH_KEYSET_PUBLIC_KEY": keys["AUTH_KEYSET_PUBLIC_KEY"],
            **env,
        }
        self.zipkin: LocalZipkin | None = None
        if traces and "OTEL_TRACES_EXPORTER" not in {**os.environ, **shared}:
            self.zipkin = LocalZipkin(self.run_dir / "zipkin")
            shared |= trace_defaults(self.zipkin)
        if traces:
            given = {**os.environ, **shared}
            shared |= {name: v for name, v in SAMPLING.items() if not given.get(name)}
        return shared

    def _env(self, name: str, shared: dict[str, str], layout: Layout) -> dict[str, str]:
        """What service `name`'s processes get. Alone it has no proxy in front: nothing
        to wait for before it stops, and no peer whose X-Forwarded-For it trusts; behind
        the proxy, the proxy's connections (and only those) come from PROXY_SOURCE. The
        user service gets its key files; on a cluster, each service its own principal and
        the consumer group its ACL names."""
        alone = layout.instances.get(name, 1) == 1
        if name == "user":
            shared = {**self._user_env, **shared}
        if self.cluster is not None:
            group = f"{name.upper()}_CONSUMER_GROUP"
            shared = {group: self.topic_prefix + name, **shared, **self.cluster.client_env(name)}
        return {
            **({"SHUTDOWN_GRACE_SECONDS": "0"} if alone else {}),
            **shared,
            "FORWARDED_ALLOW_IPS": "" if alone else PROXY_SOURCE,
        }

    def _explorer(self, port: int, shared: dict[str, str]) -> ServiceProcess:
        """The explorer's process: on a cluster it reads as the observer, and its button
        redrives as `redrive`; it links sampled traces to the stack's Zipkin."""
        env = dict(shared)
        if self.zipkin is not None:
            env.setdefault("EXPLORER_TRACE_URL", self.zipkin.trace_url)
        if self.cluster is not None:
            env |= self.cluster.client_env(OBSERVER)
            env["EXPLORER_REDRIVE_PASSWORD_FILE"] = str(self.cluster.password_file(REDRIVE))
        return ServiceProcess("explorer", port, self.run_dir, env, module=EXPLORER_MODULE)

    @property
    def urls(self) -> dict[str, str]:
        """Where clients reach each service: its process, or the proxy in front."""
        return {name: f"http://127.0.0.1:{port}" for name, port in self.ports.items()}

    @property
    def databases(self) -> dict[str, str]:
        """Each service's database URL, as its processes get it."""
        return {name: each[0].database for name, each in self.instances.items()}

    def up(self, names: Iterable[str] | None = None, timeout: float = 90) -> None:
        """Start what is not running. Before anything starts, refuse (ValueError) a
        sampler or span exporter the services would refuse (shared.messaging.exporters)."""
        for each in self.instances.values():
            exporters.check(each[0].environment())
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
        """The processes `name` means: a service's instances, one instance, the explorer;
        a ValueError naming the choices when it means none."""
        if name in self.instances:
            return self.instances[name]
        every = self.processes()
        if name not in every:
            raise ValueError(f"no service or instance {name!r}: {', '.join(every)}")
        return [every[name]]

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


def local_cluster(run_dir: Path = RUN_DIR) -> LocalCluster:
    """The cluster `make up` runs here: KAFKA_NODES secured nodes (3 unless it says 1)."""
    nodes = int(os.environ.get("KAFKA_NODES", "3"))
    return LocalCluster(run_dir / "kafka", nodes=nodes, run_dir=run_dir)


def local_stack(run_dir: Path = RUN_DIR, instances: Mapping[str, int] | None = None) -> Stack:
    """The stack `make up` runs here: the local cluster, the services (`instances` of
    each, behind HAProxy when more than one), the explorer and a Zipkin."""
    return Stack(
        run_dir,
        kafka=local_cluster(run_dir),
        layout=Layout(instances=instances or {}),
        traces=True,
        explorer_port=EXPLORER_PORT,
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


SAMPLING = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
"""How `make up` samples span export unless the environment says otherwise: a tenth of
the traces that start in the stack, and every trace whose caller's `traceparent` says
sampled. Only export is sampled: every event carries its `traceparent` all the same."""


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


OPERATOR_HINT = (
    "an operator token (for stock and products):\n"
    "  curl -s -X POST 127.0.0.1:8004/token -d username=operator@example.com \\\n"
    '       --data-urlencode "password=$(cat .run/operator-password)"'
)


# --- the command line: one function per command -------------------------------------------


def compose_up_or_down(command: str, scale: Mapping[str, int], local: bool = False) -> int:
    """`up` or `down` through `docker compose`, with every secret it needs in its
    environment (made here first) and `SCALE` as `--scale`; `local`: on the images
    built here (compose.images.yaml)."""
    password = operator_password(RUN_DIR / "operator-password") if command == "up" else ""
    scaled = [f"--scale={name}={count}" for name, count in scale.items()]
    extra = ["up", "-d", "--wait", *scaled] if command == "up" else ["down"]
    env = {
        **os.environ,
        "SHOP_OPERATOR_PASSWORD": password,
        **compose_env(RUN_DIR),
        **pginit.compose_env(RUN_DIR),
        **compose_user_keys(RUN_DIR),
    }
    if command == "up":
        # compose.yaml's defaults are SAMPLING's; refused here as the services would
        exporters.sampler({**SAMPLING, **{k: v for k, v in os.environ.items() if v}})
        for name in (n for n in PORTS if f"{n.upper()}_DATABASE_URL" in os.environ):
            print(
                f"{name.upper()}_DATABASE_URL is not used with Docker: compose runs"
                " each service on its own database in its PostgreSQL",
                file=sys.stderr,
            )
    compose = ["docker", "compose", "-f", str(ROOT / "compose.yaml")]
    if local:
        compose += ["-f", str(ROOT / "compose.images.yaml")]
    code = subprocess.call(compose + extra, env=env)
    if code == 0 and command == "up":
        print(f"  {'explorer':<10} http://127.0.0.1:{EXPLORER_PORT}")
        print(f"  {'traces':<10} http://127.0.0.1:16686  (Jaeger)")
        print("databases: compose's PostgreSQL on 127.0.0.1:5432, a database and a role")
        print("  per service; passwords in .run/postgres-credentials/ (superuser: shop)")
    return code


def up(scale: Mapping[str, int], names: list[str]) -> int:
    how = chosen_stack(RUN_DIR, "up")
    print(f"stack: {how} (STACK={'|'.join(STACKS)} chooses)", flush=True)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / STACK_FILE).write_text(how + "\n")
    if how != "processes":
        return compose_up_or_down("up", scale, local=how == "compose-local")
    stack = local_stack(RUN_DIR, instances=scale)
    began = time.monotonic()
    stack.up()
    scraping = RUN_DIR / "prometheus.yml"
    every = {p.id: p for each in stack.instances.values() for p in each}
    write_prometheus_config(scraping, every)  # each instance, not the proxy
    print(f"stack ready in {time.monotonic() - began:.1f}s")
    say_where(stack)
    print(f"metrics: each service's /metrics; prometheus --config.file={scraping}")
    return 0


def say_where(stack: Stack) -> None:
    """Where each part of a stack that is up is reached, and where it keeps its data."""
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


def down(scale: Mapping[str, int], names: list[str]) -> int:
    how = chosen_stack(RUN_DIR, "down")
    if how != "processes" and not docker_engine():
        print("no Docker engine answers: nothing of compose runs")
        (RUN_DIR / STACK_FILE).unlink(missing_ok=True)
        return 0
    if how != "processes":
        code = compose_up_or_down("down", scale, local=how == "compose-local")
        if code == 0:
            (RUN_DIR / STACK_FILE).unlink(missing_ok=True)
        return code
    local_stack(RUN_DIR, instances=scale).down()
    (RUN_DIR / STACK_FILE).unlink(missing_ok=True)
    (RUN_DIR / SCALE_FILE).unlink(missing_ok=True)
    print("stack stopped")
    return 0


def status(scale: Mapping[str, int], names: list[str]) -> int:
    stack = local_stack(RUN_DIR, instances=scale)
    states = stack.status()
    for name, state in states.items():
        print(f"  {name:<12} {state}")
    if stack.cluster is not None and any(s.startswith("pid") for s in states.values()):
        print(describe_cluster(stack.cluster.connection(ADMIN), stack.topic_prefix))
    return 0 if all(not s.startswith("down") for s in states.values()) else 3


def brokers(stack: Stack, name: str) -> list[LocalBroker]:
    """The brokers `name` means (`kafka`: all of them, `kafka-2`: one node), or []."""
    if stack.cluster is not None and (name == "kafka" or name.startswith("kafka-")):
        nodes = stack.cluster.nodes
        return list(nodes.values()) if name == "kafka" else [nodes[int(name[6:])]]
    return [stack.broker] if name == "kafka" and stack.broker is not None else []


def act(stack: Stack, name: str, action: str) -> None:
    """`action` (start, stop, kill, restart) on what `name` means. The cluster starts and
    stops as a whole (a node alone waits for a quorum); a service's process, started, is
    waited for until it is ready and in rotation."""
    if name == "kafka" and stack.cluster is not None and action in ("start", "stop"):
        getattr(stack.cluster, action)()
    elif action == "restart":
        stack.restart(name)
    elif kafka := brokers(stack, name):
        for broker in kafka:
            getattr(broker, action)()
    else:
        for process in stack.chosen(name):
            getattr(process, action)()
            if action == "start":
                process.wait_ready()
                stack.wait_in_rotation(process)


def on_names(action: str) -> Callable[[Mapping[str, int], list[str]], int]:
    """The command that does `action` to each process its names mean."""

    def run(scale: Mapping[str, int], names: list[str]) -> int:
        stack = local_stack(RUN_DIR, instances=scale)
        for name in names:
            act(stack, name, action)
        return 0

    return run


def reset_kafka(scale: Mapping[str, int], names: list[str]) -> int:
    try:
        removed = local_cluster(RUN_DIR).reset()
    except RuntimeError as exc:  # a node still runs
        print(exc, file=sys.stderr)
        return 2
    print(f"removed {', '.join(str(p) for p in removed) or 'nothing: no cluster data'}")
    return 0


@dataclass(frozen=True)
class Command:
    """One command of the stack's command line: what it does, and whether it takes
    names (services, instances such as `order-2`, `explorer`, `kafka` or `kafka-ID`)."""

    run: Callable[[Mapping[str, int], list[str]], int]
    help: str
    names: str = ""
    """What its names may be ('' when it takes none)."""


ANY = "SERVICE|INSTANCE|explorer|kafka|kafka-ID"
COMMANDS = {
    "up": Command(up, "start what is not running, wait until every /ready is 200"),
    "down": Command(down, "stop everything, free the ports"),
    "status": Command(
        status, "each process, ready or not; the brokers, topic settings and partitions"
    ),
    "kill": Command(on_names("kill"), "SIGKILL, as a crash would", ANY),
    "stop": Command(on_names("stop"), "SIGTERM: drain (a service), then stop", ANY),
    "start": Command(on_names("start"), "start, wait until ready and in rotation", ANY),
    "restart": Command(
        on_names("restart"),
        "stop, start, back in rotation, one instance at a time",
        "SERVICE|INSTANCE",
    ),
    "reset-kafka": Command(
        reset_kafka,
        "after `down`: remove the cluster's data and its size (for another KAFKA_NODES)",
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.local.stack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help)
        if command.names:
            sub.add_argument("names", nargs="+", metavar="NAME", help=command.names)
    args = parser.parse_args(argv)
    try:
        scale = remembered_scale(RUN_DIR, os.environ.get("SCALE"), args.command)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command].run(scale, getattr(args, "names", []))
    except ValueError as exc:  # a name that means nothing, a database URL it cannot read
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
