"""Fixtures for the tiers. The broker is always real:

- `KAFKA_BOOTSTRAP_SERVERS` if set;
- else a testcontainers Kafka container on the local Kafka image (`make images`) when a
  Docker engine answers and the image is built (tests/containers.py);
- else the project's local KRaft broker (started if needed, stopped after if we started it).

PostgreSQL tests run on `TEST_DATABASE_URL` when it names a server; else, with an engine and
the local PostgreSQL image, on a testcontainers PostgresContainer; else they skip. Each test
database is created fresh and dropped after. TEST_BACKENDS=container (CI) insists on the
containers, TEST_BACKENDS=local refuses them. The test header names the backends of the run.

A container or local broker is started once per run: by the pytest-xdist controller before
its workers start (they inherit the address), or on first use in a run without workers;
whoever started it stops it at the end."""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from tests import containers
from tools.local.cluster import LocalCluster, NodePorts
from tools.local.kafka import JVM_FLAGS_VARIABLE, LocalBroker
from tools.local.stack import docker_engine

STARTED_FOR_WORKERS = "_TEST_KAFKA_STARTED_FOR_WORKERS"
"""Set by the pytest-xdist controller when it started the local broker its workers share."""


BACKEND_CHOICE = "TEST_BACKENDS"
"""What runs Kafka and PostgreSQL where the environment names neither: `auto` (unset: a
container when an engine answers and the image is built, else a local process), `container`
(CI: a container, or the run stops before any test) or `local` (never a container)."""
CHOICES = ("auto", "container", "local")


@dataclass
class Backends:
    """Where this run's Kafka and PostgreSQL come from: `given` (the environment names
    them), `container` (testcontainers on the local images) or `local` (a local process;
    for PostgreSQL, none: its tests skip)."""

    kafka: str
    postgres: str
    started: dict[str, containers.Running]
    """The containers this process started (it stops them at the end)."""

    @classmethod
    def choose(cls) -> Backends:
        """`given` where the environment names a server (pytest-xdist workers get the
        controller's), else as TEST_BACKENDS says; `pytest.UsageError` for a value it does
        not know, or for `container` where no engine answers or the image is missing."""
        wanted = os.environ.get(BACKEND_CHOICE, "") or "auto"
        if wanted not in CHOICES:
            raise pytest.UsageError(
                f"{BACKEND_CHOICE}={wanted[:40]!r}: one of {', '.join(CHOICES)}"
            )
        engine: bool | None = None

        def backend(what: str, variable: str) -> str:
            nonlocal engine
            if os.environ.get(variable):
                return "given"
            if wanted == "local":
                return "local"
            if engine is None:
                engine = docker_engine()
            ref = containers.image_ref(what)
            if engine and containers.image_present(ref):
                return "container"
            if wanted == "container":
                why = f"{ref} is not built (make images)" if engine else "no engine answers"
                raise pytest.UsageError(f"{BACKEND_CHOICE}=container, and {why}")
            return "local"

        return cls(
            backend("kafka", "KAFKA_BOOTSTRAP_SERVERS"),
            backend("postgres", "TEST_DATABASE_URL"),
            {},
        )

    def describe(self, what: str) -> str:
        backend = getattr(self, what)
        if what in self.started:
            running = self.started[what]
            url = make_url(running.address) if what == "postgres" else None
            where = f"{url.host}:{url.port}" if url else running.address
            return f"{running.what} on {where}"
        if what == "kafka":
            return {
                "given": f"KAFKA_BOOTSTRAP_SERVERS={os.environ.get('KAFKA_BOOTSTRAP_SERVERS')}",
                "container": "testcontainers " + containers.image_ref("kafka") + " (on first use)",
                "local": "the local KRaft broker (tools/local/kafka.py)",
            }[backend]
        return {
            "given": "TEST_DATABASE_URL",
            "container": "testcontainers PostgresContainer "
            + containers.image_ref("postgres")
            + " (on first use)",
            "local": "none (TEST_DATABASE_URL unset, no engine or image): postgres tests skip",
        }[backend]

    def kafka_container(self) -> str:
        """Start the Kafka container (once); its bootstrap address."""
        if "kafka" not in self.started:
            self.started["kafka"] = containers.start_kafka(free_port())
        return self.started["kafka"].address

    def postgres_container(self) -> str:
        """Start the PostgreSQL container (once); its superuser's URL."""
        if "postgres" not in self.started:
            self.started["postgres"] = containers.start_postgres()
        return self.started["postgres"].address

    def stop(self) -> None:
        for running in self.started.values():
            with suppress(Exception):
                running.stop()
        self.started.clear()


BACKENDS: Backends | None = None
"""This process's choice, made in pytest_configure (workers inherit the controller's
addresses, so they see both as `given`)."""


def backends() -> Backends:
    global BACKENDS
    if BACKENDS is None:
        BACKENDS = Backends.choose()
    return BACKENDS


TEST_JVM_FLAGS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.awt.headless=true"
"""The test brokers' JVM: the quick compiler alone and the serial collector. A broker that
starts, takes a few thousand records and stops spends half the CPU Kafka's own flags cost
(those tune a long-running broker; `make up` keeps them)."""


def pytest_configure(config: pytest.Config) -> None:
    """Every process of the run starts its brokers with TEST_JVM_FLAGS unless the
    environment chose.

    Under pytest-xdist, the controller starts the one broker and the one PostgreSQL every
    worker shares (workers inherit `KAFKA_BOOTSTRAP_SERVERS` and `TEST_DATABASE_URL`) and
    stops them at the end if it started them: no worker may stop a server another worker
    still uses. Not for the unit tier alone."""
    os.environ.setdefault(JVM_FLAGS_VARIABLE, TEST_JVM_FLAGS)
    if hasattr(config, "workerinput"):
        return
    chosen = backends()
    if not getattr(config.option, "numprocesses", None) or config.option.markexpr == "unit":
        return
    if chosen.kafka == "container":
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = chosen.kafka_container()
    elif chosen.kafka == "local":
        broker = LocalBroker()
        if not broker.is_running():
            broker.start()
            os.environ[STARTED_FOR_WORKERS] = "1"
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
    if chosen.postgres == "container":
        os.environ["TEST_DATABASE_URL"] = chosen.postgres_container()


def pytest_unconfigure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    if BACKENDS is not None:
        BACKENDS.stop()
    if os.environ.pop(STARTED_FOR_WORKERS, None):
        LocalBroker().stop()


SHARED_CLUSTER_FILES = frozenset(
    {"test_kafka_security.py", "test_secure_saga.py", "test_forged_keys.py", "test_broker_loss.py"}
)
"""The files whose tests use the secured three-node cluster: one pytest-xdist worker runs
them all, so one cluster starts, not one per worker."""


SHARED_STACK_FILES = frozenset(
    {"test_auth.py", "test_edge.py", "test_http_contract.py", "test_order_saga.py"}
)
"""The files whose tests all use the session's `running` stacks (tests/e2e/conftest.py):
one worker runs them, so the two stacks start once, not on every worker."""


def _scope(nodeid: str) -> str:
    """A test's unit of work for pytest-xdist: its file, or the group of files that share
    the secured cluster or the session's stacks."""
    path = nodeid.split("::", 1)[0]
    name = Path(path).name
    if name in SHARED_CLUSTER_FILES:
        return "secure-cluster"
    return "shared-stack" if name in SHARED_STACK_FILES else path


def _first(nodeid: str) -> int:
    """The longest units start first: the cluster's group, then e2e, integration, unit."""
    scope = _scope(nodeid)
    if scope in ("secure-cluster", "shared-stack"):
        return 0
    return {"e2e": 1, "integration": 2}.get(Path(scope).parent.name, 3)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """With `--dist loadscope` (`make test`): a whole file per worker (its module-scoped
    stack starts once there), the shared cluster's files on one, the longest first.
    Otherwise xdist's own scheduler (`make test-fast`: test by test)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid)

    config.option.loadscopereorder = False  # units in collection order: the longest first
    return ByFile(config, log)


def pytest_report_header(config: pytest.Config) -> list[str]:
    chosen = backends()
    return [f"kafka: {chosen.describe('kafka')}", f"postgresql: {chosen.describe('postgres')}"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that uses the secured cluster outside SHARED_CLUSTER_FILES would start a
    cluster of its own on each worker that runs it: refused. Under `--dist loadscope` the
    longest units come first, in every process alike: a worker runs the tests the
    controller names by their index in its own collection, so each must hold the same order."""
    strays = {
        item.path.name
        for item in items
        if "secure_cluster" in item.fixturenames and item.path.name not in SHARED_CLUSTER_FILES
    }
    if strays:
        raise pytest.UsageError(
            f"add {sorted(strays)} to SHARED_CLUSTER_FILES in tests/conftest.py"
        )
    if config.getvalue("dist") == "loadscope":
        items.sort(key=lambda item: _first(item.nodeid))


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    if address := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield address
        return
    if backends().kafka == "container":
        yield backends().kafka_container()  # stopped by pytest_unconfigure
        return
    broker = LocalBroker()
    was_running = broker.is_running()
    broker.start()
    yield broker.bootstrap
    if not was_running:
        broker.stop()


@pytest.fixture(scope="session")
def secure_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A three-node cluster of its own on free ports, secured like `make up`'s (SASL_SSL
    for clients, mutual TLS between brokers, ACLs), its certificates in a temporary
    folder; stopped after the session. Tests that use it are `slow`."""
    run_dir = tmp_path_factory.mktemp("secure-kafka")
    ports = [NodePorts(free_port(), free_port(), free_port()) for _ in range(3)]
    cluster = LocalCluster(run_dir / "kafka", nodes=3, ports=ports, run_dir=run_dir)
    try:
        cluster.start(timeout=180)
        yield cluster
    finally:
        cluster.stop()


GIVEN_PORTS: set[int] = set()
"""Every port `free_port` handed out in this session."""


def _worker() -> tuple[int, int]:
    """(this pytest-xdist worker's index, the number of workers); (0, 1) without xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")
    return int(name.removeprefix("gw") or 0), max(1, int(count))


def free_port() -> int:
    """A loopback port nothing listens on, and that no other caller in this session was
    given: two services of one test stack never get the same one, even when the system
    hands the same free port out twice (it does once the first is closed again). Under
    pytest-xdist each worker takes only the ports its index owns, so two workers never
    hand out the same port either: `port // 2` modulo the workers, since Linux gives
    `bind(("", 0))` even ports by preference (odd ones go to `connect`)."""
    index, count = _worker()
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port // 2 % count == index and port not in GIVEN_PORTS:
            GIVEN_PORTS.add(port)
            return port


ROOT = Path(__file__).resolve().parent.parent
POSTGRES_LOCAL = ROOT / "tools" / "local" / "postgres.sh"


@dataclass(frozen=True)
class LocalPostgres:
    """A server tools/local/postgres.sh runs: its port, data and password files."""

    port: int
    data: Path
    credentials: Path

    def script(self, command: str) -> str:
        """`tools/local/postgres.sh COMMAND` for this server; its standard output."""
        env = {
            **os.environ,
            "PG_PORT": str(self.port),
            "PG_DATA": str(self.data),
            "PG_CREDENTIALS": str(self.credentials),
        }
        done = subprocess.run(
            ["bash", str(POSTGRES_LOCAL), command], env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"postgres.sh {command}: {done.stderr}")
        return done.stdout

    def exports(self) -> dict[str, str]:
        """What `eval "$(tools/local/postgres.sh env)"` exports."""
        exports = {}
        for line in self.script("env").splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            exports[name] = shlex.split(value)[0]
        return exports

    @property
    def superuser_url(self) -> str:
        return self.script("url").strip()


def postgres_installed() -> bool:
    return bool(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or bool(shutil.which("initdb"))


@pytest.fixture(scope="session")
def local_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPostgres]:
    """A PostgreSQL of its own on a free port, set up by tools/local/postgres.sh as a
    developer's is: a role and a database per service, SCRAM over TCP, the passwords in
    files. Its data lives in a temporary directory the server's OS user can reach;
    stopped and removed after the session. Skips without PostgreSQL's binaries."""
    if not postgres_installed():
        pytest.skip("PostgreSQL is not installed (tools/local/postgres.sh install)")
    server = LocalPostgres(
        free_port(),
        Path(tempfile.gettempdir()) / f"shop-test-pg-{uuid.uuid4().hex[:8]}",
        tmp_path_factory.mktemp("pg-credentials"),
    )
    try:
        server.script("start")
        yield server
    finally:
        with suppress(RuntimeError):
            server.script("stop")
        shutil.rmtree(server.data, ignore_errors=True)


@contextmanager
def fresh_postgres(count: int) -> Iterator[list[str]]:
    """`count` new PostgreSQL databases, dropped afterwards (skips without a server)."""
    base = os.environ.get("TEST_DATABASE_URL")
    if not base and backends().postgres == "container":
        base = os.environ["TEST_DATABASE_URL"] = backends().postgres_container()
    if not base:
        pytest.skip("TEST_DATABASE_URL is not set")
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    names = [f"test_{uuid.uuid4().hex[:12]}" for _ in range(count)]
    with admin.connect() as connection:
        for name in names:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield [
            make_url(base).set(database=name).render_as_string(hide_password=False)
            for name in names
        ]
    finally:
        with admin.connect() as connection:
            for name in names:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def service_databases(backend: str, folder: Path, names: list[str]) -> Iterator[dict[str, str]]:
    """One database per service, as SQLite files in `folder` or on PostgreSQL."""
    if backend == "sqlite":
        yield {name: f"sqlite:///{folder}/{name}.db" for name in names}
        return
    with fresh_postgres(len(names)) as urls:
        yield dict(zip(names, urls, strict=True))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """One empty database, on SQLite and on PostgreSQL."""
    with service_databases(request.param, tmp_path, ["db"]) as urls:
        yield urls["db"]
