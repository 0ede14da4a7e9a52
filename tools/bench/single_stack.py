"""A stack of its own on one plaintext broker with no span export, for `python -m
tools.bench --backend single` (`make bench-single`): the last README row's stack, started
from nothing and stopped, with its data, on the way out. Its run directory is
.run/bench-single, its broker listens on 127.0.0.1:9192 (controller 9193), each service on
its port plus 200 (8201-8204), each on a fresh SQLite database. `make up`'s stack may run
beside it; the two share nothing but the machine's cores, and the services here are not
given the secured cluster's sign-in (`CLIENT_SETTINGS`), which the bench itself holds."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator

from services.registry import SERVICES
from tools.bench.pg_stack import ROOT, Target, service_pids
from tools.local.kafka import LocalBroker
from tools.local.stack import Stack

RUN_DIR = ROOT / ".run" / "bench-single"
PORTS = {service.name: service.port + 200 for service in SERVICES}
KAFKA_PORT = 9192
CLIENT_SETTINGS = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD_FILE",
    "KAFKA_SSL_CA_LOCATION",
)
"""How a process signs in to a cluster (tools.local.cluster's `client_env`)."""


@contextlib.contextmanager
def single_stack(*, timeout: float = 180, say: Callable[[str], None] = print) -> Iterator[Target]:
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    with _not_signed_in():
        broker = LocalBroker(RUN_DIR / "kafka", port=KAFKA_PORT, controller_port=KAFKA_PORT + 1)
        env = {"OTEL_TRACES_EXPORTER": "none", "TOPIC_PREFIX": ""}
        for service in PORTS:
            env[f"{service.upper()}_DATABASE_URL"] = f"sqlite:///{RUN_DIR}/data/{service}.db"
            env[f"{service.upper()}_CONSUMER_GROUP"] = service
        stack = Stack(run_dir=RUN_DIR, ports=PORTS, env=env, kafka=broker)
        say(
            f"single-node stack: one plaintext broker on {broker.bootstrap}, no span export, "
            f"services on ports {min(PORTS.values())}-{max(PORTS.values())}"
        )
        try:
            stack.up(timeout=timeout)
            pids = service_pids(stack)
            if (pid := broker.pid()) is not None:
                pids["kafka"] = pid
            yield Target(
                backend="sqlite",
                urls=stack.urls,
                pids=pids,
                bootstrap=broker.bootstrap,
                stack="single",
                operator_password_file=stack.operator_password_file,
            )
        finally:
            say("single-node stack: stopping, removing its data")
            stack.down()
            shutil.rmtree(RUN_DIR, ignore_errors=True)


@contextlib.contextmanager
def _not_signed_in() -> Iterator[None]:
    """Without CLIENT_SETTINGS in this process's environment, which the services inherit."""
    held = {name: os.environ.pop(name) for name in CLIENT_SETTINGS if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(held)
