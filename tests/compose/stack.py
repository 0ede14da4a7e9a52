"""The compose stack the compose tier runs: compose.yaml on the images `make images` builds
(compose.images.yaml), under a project name and ports of its own (compose.test.yaml), its
secrets made in a folder of the test's like `make up` makes them under .run. One engine
holds one such stack at a time (its ports and subnet are fixed): a run holds the project's
lock (`exclusive`) while its stack is up, and a second run waits for it rather than tear it
down as an interrupted run's leftovers.

    python -m tests.compose.stack up|down|status RUN_DIR   the same by hand
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shared.messaging.connection import KafkaConnection
from tools.local import pginit
from tools.local.certs import ADMIN, ensure_password, ensure_tls
from tools.local.docker import plugin_dir
from tools.local.images import select
from tools.local.kafka_security import compose_env
from tools.local.stack import compose_user_keys, operator_password

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "shop-compose-test"
"""The compose project: its containers, network and volumes carry this name."""
FILES = (
    ROOT / "compose.yaml",
    ROOT / "compose.images.yaml",
    Path(__file__).resolve().parent / "compose.test.yaml",
)
SCALE = {"inventory": 2, "order": 2}
URLS = {
    "order": "http://127.0.0.1:18001",
    "inventory": "http://127.0.0.1:18002",
    "product": "http://127.0.0.1:18003",
    "user": "http://127.0.0.1:18004",
}
EXPLORER = "http://127.0.0.1:18090"
PROMETHEUS = "http://127.0.0.1:18091"
KAFKA = "127.0.0.1:18092,127.0.0.1:18093,127.0.0.1:18094"
PORTS = {"order": 8001, "inventory": 8002, "product": 8003, "user": 8004}
"""Each service's port inside its containers (what Prometheus scrapes)."""
LABEL = f"label=com.docker.compose.project={PROJECT}"


def lock_file() -> Path:
    """The project's lock, beside the docker CLI's own configuration (the user's, not a
    folder every user may write to)."""
    return plugin_dir().parent / f"{PROJECT}.lock"


@contextmanager
def exclusive(timeout: float = 1800, every: float = 2) -> Iterator[None]:
    """Hold the project's lock for the block: wait while another run holds it (up to
    `timeout` seconds, then TimeoutError naming that run)."""
    path = lock_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "a run"
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{holder} held the {PROJECT} stack for {timeout:.0f}s"
                    ) from None
                if not waited:
                    print(f"waiting for {holder} to take its {PROJECT} stack down", flush=True)
                    waited = True
                time.sleep(every)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"the run of pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def missing_images() -> list[str]:
    """The images of compose.images.yaml that are not in the engine's storage."""
    refs = [image.ref for image in select([]) if image.name not in ("base", "python")]
    missing = []
    for ref in refs:
        done = subprocess.run(["docker", "image", "inspect", ref], capture_output=True)
        if done.returncode != 0:
            missing.append(ref)
    return missing


@dataclass(frozen=True)
class ComposeStack:
    run_dir: Path
    """Where its secrets are made (owner-only files, as under `make up`'s .run)."""

    @property
    def operator_password_file(self) -> Path:
        return self.run_dir / "operator-password"

    def env(self) -> dict[str, str]:
        """compose's environment: every secret it hands to the containers."""
        return {
            **os.environ,
            "SHOP_OPERATOR_PASSWORD": operator_password(self.operator_password_file),
            **compose_env(self.run_dir),
            **pginit.compose_env(self.run_dir),
            **compose_user_keys(self.run_dir),
        }

    def compose(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        files = [arg for path in FILES for arg in ("-f", str(path))]
        command = ["docker", "compose", "-p", PROJECT, *files, *args]
        return subprocess.run(
            command, env=self.env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )

    def up(self, scale: Mapping[str, int] = SCALE, timeout: int = 900) -> None:
        """`docker compose up -d --wait`: returns once every container is healthy."""
        scaled = [f"--scale={name}={count}" for name, count in scale.items()]
        done = self.compose(
            "up", "-d", "--wait", f"--wait-timeout={timeout}", "--no-build", "--pull=never",
            *scaled, timeout=timeout + 60,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"compose up failed ({done.returncode}):\n{done.stderr[-3000:]}\n"
                + self.compose("ps", "-a").stdout
                + self.diagnose()
            )

    def diagnose(self) -> str:
        """Each container that is not healthy: its last health probes and log lines."""
        listing = subprocess.run(
            ["docker", "ps", "-a", "-q", "--filter", LABEL], capture_output=True, text=True
        )
        found = []
        for container in listing.stdout.split():
            inspect = subprocess.run(
                ["docker", "inspect", container], capture_output=True, text=True
            )
            if inspect.returncode != 0:
                continue
            info = json.loads(inspect.stdout)[0]
            state = info["State"]
            health = state.get("Health") or {}
            exited_ok = state["Status"] == "exited" and state["ExitCode"] == 0
            if health.get("Status") == "healthy" or (exited_ok and not health):
                continue
            probes = [
                f"  {probe['Start'][11:19]} exit {probe['ExitCode']}: {probe['Output'][-300:]}"
                for probe in health.get("Log", [])[-3:]
            ]
            logs = subprocess.run(
                ["docker", "logs", "--tail=25", container], capture_output=True, text=True
            )
            found.append(
                f"--- {info['Name'].lstrip('/')}: {state['Status']} {health.get('Status', '')}\n"
                + "\n".join(probes)
                + f"\n{(logs.stdout + logs.stderr)[-4000:]}"
            )
        return "\n".join(found)

    def down(self) -> None:
        """`docker compose down -v`: its containers, network and volumes removed."""
        done = self.compose("down", "-v", "--remove-orphans", "--timeout=10", timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"compose down failed:\n{done.stderr[-4000:]}")

    def containers(self, service: str) -> list[str]:
        """The ids of the running containers of `service`."""
        done = self.compose("ps", "-q", service)
        return done.stdout.split()

    def addresses(self, service: str) -> set[str]:
        """ADDRESS:PORT of each running container of `service` on the project's network."""
        found = set()
        for container in self.containers(service):
            inspect = subprocess.run(
                ["docker", "inspect", container], capture_output=True, text=True, check=True
            )
            networks = json.loads(inspect.stdout)[0]["NetworkSettings"]["Networks"]
            for network in networks.values():
                found.add(f"{network['IPAddress']}:{PORTS[service]}")
        return found

    def kafka(self) -> KafkaConnection:
        """The admin (a super user) on the brokers' EXTERNAL listeners, SASL_SSL."""
        return KafkaConnection(
            KAFKA,
            "SASL_SSL",
            username=ADMIN,
            password=ensure_password(self.run_dir / "kafka-credentials", ADMIN),
            ca_location=str(ensure_tls(self.run_dir / "kafka-tls").ca),
        )


def leftovers() -> dict[str, list[str]]:
    """What of the project is still in the engine: containers, networks, volumes."""
    found = {}
    for kind in ("container", "network", "volume"):
        listing = ["docker", kind, "ls", "-q", "--filter", LABEL]
        if kind == "container":
            listing.insert(3, "-a")
        done = subprocess.run(listing, capture_output=True, text=True, check=True)
        found[kind] = done.stdout.split()
    return found


def main(argv: list[str] | None = None) -> int:
    command, run_dir = (argv or sys.argv[1:])[:2]
    stack = ComposeStack(Path(run_dir))
    if command in ("up", "down"):
        with exclusive():
            if command == "up":
                stack.up()
            else:
                stack.down()
    print(stack.compose("ps", "-a").stdout)
    print(leftovers())
    return 0


if __name__ == "__main__":
    sys.exit(main())
