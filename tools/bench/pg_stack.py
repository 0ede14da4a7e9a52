"""A second stack of the registered services on PostgreSQL, for `python -m tools.bench
--backend postgres`: its own run directory (.run/bench-pg), each service's port plus 100
(8101-8104), fresh databases on the local PostgreSQL server (tools/local/postgres.sh,
started if need be), a fresh topic prefix and consumer groups on the given broker, and
`workers` uvicorn workers per service (each a consumer-group member with its own outbox
relay). Stopped, and its databases dropped, on the way out. The local server's processes
are sampled as `postgres`."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import AdminClient
from sqlalchemy import make_url, text

from services.registry import SERVICES
from shared.messaging.connection import Bootstrap, KafkaConnection, client_config
from shared.storage.db import make_engine
from tools.local.cluster import LocalCluster
from tools.local.stack import Layout, Stack
from tools.ops.client import DEFAULT_URLS, OPERATOR_PASSWORD_FILE

ROOT = Path(__file__).resolve().parents[2]
PORTS = {service.name: service.port + 100 for service in SERVICES}


@dataclass(frozen=True)
class Target:
    """The stack a run drives: which one (`stack`: default, single or postgres), service
    URLs, root pids to sample, its topic prefix, its own broker (`bootstrap`, else the one
    the bench was given), where its operator's password is."""

    backend: str
    urls: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_URLS))
    pids: Mapping[str, int] = field(default_factory=dict)
    topic_prefix: str = ""
    workers: int = 1
    operator_password_file: Path = OPERATOR_PASSWORD_FILE
    stack: str = "default"
    bootstrap: Bootstrap | None = None


def service_pids(stack: Stack) -> dict[str, int]:
    """The root pid of each service of `stack` that runs, by name."""
    return {name: pid for name, process in stack.services.items() if (pid := process.pid())}


def local_server_pid() -> int | None:
    """The postmaster of tools/local/postgres.sh's server (its backends are its children)."""
    try:
        return int((ROOT / ".run" / "postgres" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def local_server_url() -> str:
    """The superuser URL of tools/local/postgres.sh's server, started if it is not running."""
    script = ROOT / "tools" / "local" / "postgres.sh"
    subprocess.run(["bash", str(script), "start"], check=True, capture_output=True, text=True)
    return subprocess.run(
        ["bash", str(script), "url"], check=True, capture_output=True, text=True
    ).stdout.strip()


@contextlib.contextmanager
def databases(server_url: str, names: list[str]) -> Iterator[dict[str, str]]:
    """Create each database on the server of `server_url`; yield name -> URL; drop them."""
    server = make_url(server_url)
    admin = make_engine(server.render_as_string(hide_password=False)).execution_options(
        isolation_level="AUTOCOMMIT"
    )
    created: list[str] = []
    try:
        with admin.connect() as connection:
            for name in names:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
                created.append(name)
        yield {
            name: server.set(database=name).render_as_string(hide_password=False) for name in names
        }
    finally:
        with admin.connect() as connection:
            for name in created:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def postgres_stack(
    bootstrap: Bootstrap,
    *,
    workers: int = 2,
    server_url: str | None = None,
    kafka_pids: Mapping[str, int] | None = None,
    timeout: float = 180,
    say: Callable[[str], None] = print,
) -> Iterator[Target]:
    run = uuid.uuid4().hex[:8]
    prefix = f"bench-pg-{run}-"
    local = server_url is None
    server_url = server_url or local_server_url()
    database_pid = local_server_pid() if local else None
    names = {service: f"bench_pg_{run}_{service}" for service in PORTS}
    with databases(server_url, list(names.values())) as urls:
        env = {"TOPIC_PREFIX": prefix}
        for service, database in names.items():
            env[f"{service.upper()}_DATABASE_URL"] = urls[database]
            env[f"{service.upper()}_CONSUMER_GROUP"] = prefix + service
        # on this checkout's secured cluster, each service signs in as itself
        secured = isinstance(bootstrap, KafkaConnection) and bootstrap.sasl
        cluster = LocalCluster(nodes=int(os.environ.get("KAFKA_NODES", "3"))) if secured else None
        stack = Stack(
            run_dir=ROOT / ".run" / "bench-pg",
            ports=PORTS,
            env=env,
            kafka=cluster or str(bootstrap),
            layout=Layout(workers=dict.fromkeys(PORTS, workers)),
        )
        stack.down(kafka=False)  # a stack a previous run left behind
        say(
            f"PostgreSQL stack: {workers} worker(s) per service on ports "
            f"{min(PORTS.values())}-{max(PORTS.values())}, topic prefix {prefix}"
        )
        try:
            stack.up(timeout=timeout)
            pids = service_pids(stack) | dict(kafka_pids or {})
            if database_pid is not None:
                pids["postgres"] = database_pid
            yield Target(
                backend="postgresql",
                stack="postgres",
                urls={name: s.url for name, s in stack.services.items()},
                pids=pids,
                topic_prefix=prefix,
                workers=workers,
                operator_password_file=stack.operator_password_file,
            )
        finally:
            say("PostgreSQL stack: stopping, dropping its databases and topics")
            stack.down(kafka=False)
            delete_topics(bootstrap, prefix)


def delete_topics(bootstrap: Bootstrap, prefix: str) -> None:
    admin = AdminClient(client_config(bootstrap))
    with contextlib.suppress(Exception):
        topics = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix)]
        if topics:
            for future in admin.delete_topics(topics, operation_timeout=30).values():
                future.result(30)
