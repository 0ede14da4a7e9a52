"""A real Zipkin server on this machine, to receive and show the services' traces.

    python -m tools.local.zipkin {fetch,start,stop,status} [--port N] [--home DIR]

Zipkin's one executable jar comes from Maven Central (fetched once into .run/zipkin, like
Kafka's jars); it keeps traces in memory and serves its UI and API on port 9411. The
services send spans to it when `OTEL_TRACES_EXPORTER=zipkin` (`make up` sets that)."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tools.local.kafka import RUN_DIR, port_open

ARTIFACT = "io.zipkin:zipkin-server:3.5.1:jar:exec"
JAR = "zipkin-server-3.5.1-exec.jar"
JARS = RUN_DIR / "zipkin"
"""Where the jar is kept: one copy for every server (`make up`'s and the tests')."""


class LocalZipkin:
    """One Zipkin server process with its own home directory (pid file, log)."""

    def __init__(self, home: Path = RUN_DIR / "zipkin", port: int = 9411) -> None:
        self.home = Path(home).resolve()
        self.port = port
        self.pid_file = self.home / "zipkin.pid"
        self.log_file = self.home / "zipkin.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def spans_endpoint(self) -> str:
        """Where Zipkin's span exporters send (`OTEL_EXPORTER_ZIPKIN_ENDPOINT`)."""
        return f"{self.url}/api/v2/spans"

    def fetch(self) -> Path:
        """The server's jar, fetched with Maven on first use."""
        jar = JARS / JAR
        JARS.mkdir(parents=True, exist_ok=True)
        with open(JARS / ".fetch.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent callers wait for one fetch
            if jar.is_file():
                return jar
            cmd = ["mvn", "-B", "-q", "dependency:copy", f"-Dartifact={ARTIFACT}"]
            cmd += [f"-DoutputDirectory={JARS}"]
            done = subprocess.run(cmd, cwd=JARS, capture_output=True, text=True)
            if done.returncode != 0 or not jar.is_file():
                raise RuntimeError(
                    f"maven fetch of {ARTIFACT} failed ({done.returncode}):\n"
                    f"{done.stdout[-4000:]}{done.stderr[-4000:]}"
                )
        return jar

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return None
        return pid if JAR.encode() in cmdline and state not in ("Z", "X") else None

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, timeout: float = 90) -> None:
        """Start the server (no-op if it runs) and wait until its health check answers."""
        if self.pid() is None:
            if port_open("127.0.0.1", self.port):
                raise RuntimeError(f"port {self.port} is taken by a process that is not Zipkin")
            jar = self.fetch()
            self.home.mkdir(parents=True, exist_ok=True)
            # In memory, the newest MEM_MAX_SPANS spans: a bounded heap under any load.
            env = {
                **os.environ,
                "QUERY_PORT": str(self.port),
                "STORAGE_TYPE": "mem",
                "MEM_MAX_SPANS": "50000",
            }
            with open(self.log_file, "ab") as log:
                process = subprocess.Popen(
                    [_java(), "-Xms64m", "-Xmx384m", "-XX:+UseSerialGC", "-jar", str(jar)],
                    cwd=self.home,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.pid_file.write_text(f"{process.pid}\n")
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.pid() is None:
                raise RuntimeError(f"Zipkin exited; {self.log_file} ends with:\n{self._tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"Zipkin not ready after {timeout:.0f}s:\n{self._tail()}")
            time.sleep(0.2)

    def stop(self, timeout: float = 20) -> None:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.pid() == pid and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.pid() == pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)

    def _tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    return str(Path(java_home) / "bin" / "java") if java_home else "java"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.local.zipkin", description=__doc__)
    parser.add_argument("command", choices=["fetch", "start", "stop", "status"])
    parser.add_argument("--port", type=int, default=9411)
    parser.add_argument("--home", type=Path, default=RUN_DIR / "zipkin")
    args = parser.parse_args(argv)
    zipkin = LocalZipkin(args.home, args.port)
    if args.command == "fetch":
        print(zipkin.fetch())
    elif args.command == "start":
        zipkin.start()
        print(f"zipkin ready at {zipkin.url} (pid {zipkin.pid()})")
    elif args.command == "stop":
        zipkin.stop()
    else:
        running = zipkin.pid() is not None and zipkin.ready()
        print(f"zipkin {'ready at ' + zipkin.url if running else 'down'}")
        return 0 if running else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
