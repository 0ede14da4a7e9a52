"""HAProxy in front of the services that run several instances (`SCALE`, tools/stack.py).

One frontend per scaled service on the service's usual address, one backend of its
instances: round robin, an active health check on `/ready` every 250 ms (a draining
instance answers 503, so it leaves rotation before it stops accepting), and a request whose
connection failed is sent to another instance (nothing was sent, so this is safe for a POST
too). Debian's `haproxy` package; logs to .run/logs/haproxy.log, the stats socket under
.run/haproxy/ tells which instances are in rotation."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.kafka_local import RUN_DIR, port_open

CHECK_INTERVAL_MS = 250
FALL = 2
"""Failed checks before an instance leaves rotation: a draining one leaves within
FALL x CHECK_INTERVAL_MS, well inside SHUTDOWN_GRACE_SECONDS (1 s)."""
RISE = 2


@dataclass(frozen=True)
class Backend:
    """A scaled service: where clients reach it and its instances (name → port)."""

    name: str
    port: int
    servers: Mapping[str, int]


def haproxy_config(backends: Sequence[Backend], stats_socket: Path) -> str:
    """The whole HAProxy configuration for `backends`, on 127.0.0.1."""
    lines = [
        "# Written by tools/stack.py for the scaled services; rewritten at every start.",
        "global",
        "    log stdout format raw local0 info",
        f"    stats socket {stats_socket} mode 600 level admin",
        "    maxconn 4096",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option dontlog-normal",  # errors and state changes only, not every request
        "    option forwardfor",  # X-Forwarded-For: uvicorn trusts it from loopback only
        # a new connection to the instance per request: a request never races an idle
        # keep-alive connection that the instance closes (its 5 s timeout, or its stop),
        # so every failure is a failed connect, which is safe to retry elsewhere
        "    option http-server-close",
        "    option redispatch 1",
        "    retries 3",
        "    retry-on conn-failure",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout check 2s",
        f"    default-server inter {CHECK_INTERVAL_MS}ms fall {FALL} rise {RISE}",
    ]
    for backend in backends:
        lines += [
            "",
            f"frontend {backend.name}",
            f"    bind 127.0.0.1:{backend.port}",
            f"    default_backend {backend.name}",
            "",
            f"backend {backend.name}",
            "    balance roundrobin",
            "    option httpchk GET /ready",
            "    http-check expect status 200",
        ]
        lines += [
            f"    server {server} 127.0.0.1:{port} check"
            for server, port in backend.servers.items()
        ]
    return "\n".join(lines) + "\n"


def check_config(path: Path) -> str:
    """`haproxy -c -f path`: '' when valid, else what haproxy said."""
    done = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True)
    return "" if done.returncode == 0 else (done.stderr or done.stdout)


class LocalProxy:
    """One HAProxy process in the foreground of its own session, with a pid file."""

    def __init__(self, backends: Sequence[Backend], run_dir: Path = RUN_DIR) -> None:
        self.backends = list(backends)
        self.folder = run_dir / "haproxy"
        self.config_file = self.folder / "haproxy.cfg"
        self.stats_socket = self.folder / "stats.sock"
        self.pid_file = run_dir / "pids" / "haproxy.pid"
        self.log_file = run_dir / "logs" / "haproxy.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        return pid

    def start(self, timeout: float = 10) -> None:
        if self.pid() is not None:
            return
        if shutil.which("haproxy") is None:
            raise RuntimeError("haproxy is not installed (Debian: apt-get install haproxy)")
        for backend in self.backends:
            if port_open("127.0.0.1", backend.port):
                raise RuntimeError(f"port {backend.port} for {backend.name} is taken")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(haproxy_config(self.backends, self.stats_socket))
        if problem := check_config(self.config_file):
            raise RuntimeError(f"{self.config_file} is not valid:\n{problem}")
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                ["haproxy", "-db", "-f", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{process.pid}\n")
        deadline = time.monotonic() + timeout
        while not all(port_open("127.0.0.1", b.port) for b in self.backends):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start; see {self.log_file}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10) -> None:
        """A soft stop (SIGUSR1: finish the requests under way), then SIGKILL if needed."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)

    def servers(self) -> dict[str, str]:
        """Each instance's state as HAProxy sees it (`UP`, `DOWN`, ...), by instance name."""
        states: dict[str, str] = {}
        for line in self.command("show stat").splitlines():
            fields = line.split(",")
            if line.startswith("#") or len(fields) < 18 or fields[1] in ("FRONTEND", "BACKEND"):
                continue
            states[fields[1]] = fields[17]
        return states

    def in_rotation(self, server: str) -> bool:
        return self.servers().get(server, "").startswith("UP")

    def command(self, line: str) -> str:
        """One command on the stats socket, its answer ('' when haproxy is not running)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(3)
                sock.connect(str(self.stats_socket))
                sock.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError:
            return ""
        return b"".join(chunks).decode(errors="replace")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False
