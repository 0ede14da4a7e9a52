"""One service of the local stack as a background process: `python -m services NAME` (the
one way to start a service) on its port, with its pid file in .run/pids, its log in
.run/logs (`order.log`, or `order-2.log` when scaled) and its database, SQLite under
.run/data unless `<NAME>_DATABASE_URL` names another."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import URL, make_url
from sqlalchemy.exc import ArgumentError

from tools.local.kafka import ROOT, RUN_DIR
from tools.local.process import ManagedProcess, RunsAProcess, port_open


@dataclass
class ServiceProcess(RunsAProcess):
    """One service (or the explorer) as a background process with a pid file and a log."""

    name: str
    port: int
    run_dir: Path = RUN_DIR
    env: Mapping[str, str] = field(default_factory=dict)
    workers: int = 1
    app: str = ""
    """An app factory outside the registry (`module:function`: the tests' and the
    benchmark's bare apps), which `python -m services` serves as it serves a service."""
    instance: str = ""
    """Its name among several instances of the service (`order-2`); '' when alone."""
    module: str = "services"
    """What `python -m` runs: `services` (the service's name or `app` after it), or a
    program of its own that takes `--host` and `--port` (the explorer)."""
    process: ManagedProcess = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.process = ManagedProcess(
            self.id,
            self.run_dir / "pids" / f"{self.id}.pid",
            self.run_dir / "logs" / f"{self.id}.log",
            marker=(self.module, "--port", str(self.port)),
        )

    @property
    def id(self) -> str:
        """The instance's name, or the service's when it runs alone."""
        return self.instance or self.name

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_dir(self) -> Path:
        """Where its workers keep their metrics, when it runs several (prometheus_client's
        multiprocess mode); emptied at every start."""
        return self.run_dir / "metrics" / self.id

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
        self.process.start(self.command(), env=env, cwd=ROOT)

    def _target(self) -> list[str]:
        return [self.app or self.name] if self.module == "services" else []

    def command(self) -> list[str]:
        """`python -m services NAME` on 127.0.0.1 and its port, with its workers (it
        serves with request heads bounded and `X-Forwarded-For` left to the app:
        shared.runtime.app.serve); the explorer's own program on its port."""
        workers = ["--workers", str(self.workers)] if self.module == "services" else []
        return [
            sys.executable,
            "-m",
            self.module,
            *self._target(),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *workers,
        ]

    def ready(self) -> bool:
        """`/ready` answers 200, and from this process: `/health` names this service and
        the pid of the process started or of one of its workers. Another process on the
        port (another stack's service, a stranger) is never taken for it."""
        try:
            health = httpx.get(f"{self.url}/health", timeout=3)
            body = health.json() if health.status_code == 200 else None
            if not self.answered_by(body):
                return False
            return httpx.get(f"{self.url}/ready", timeout=3).status_code == 200
        except (httpx.HTTPError, ValueError):
            return False

    def answered_by(self, health: object) -> bool:
        """Whether a `/health` body comes from this process: its service, its pid."""
        if not isinstance(health, dict) or health.get("service") != self.name:
            return False
        pid = health.get("pid")
        return isinstance(pid, int) and not isinstance(pid, bool) and self.process.owns(pid)

    def wait_ready(self, timeout: float = 60) -> None:
        self.process.wait_until(self.ready, timeout)

    def stop(self, timeout: float = 40) -> None:
        """SIGTERM to the process alone (uvicorn's supervisor tells its workers): it
        drains, finishes its requests, commits, leaves its group and flushes; SIGKILL to
        its whole session after `timeout`; then until its port is free."""
        self.process.stop(timeout, ports=[self.port])

    def kill(self) -> None:
        self.process.kill(ports=[self.port])


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
