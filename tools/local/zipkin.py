"""A real Zipkin server on this machine, to receive and show the services' traces.

    python -m tools.local.zipkin {fetch,start,stop,status} [--port N] [--home DIR]

Zipkin's one executable jar comes from Maven Central (fetched once into .run/zipkin, like
Kafka's jars); it keeps traces in memory and serves its UI and API on port 9411. The
services send spans to it when `OTEL_TRACES_EXPORTER=zipkin` (`make up` sets that)."""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tools.local.kafka import RUN_DIR, java
from tools.local.process import (
    SERVER_COMMANDS,
    ManagedProcess,
    RunsAProcess,
    port_open,
    server_command,
)

ARTIFACT = "io.zipkin:zipkin-server:3.5.1:jar:exec"
JAR = "zipkin-server-3.5.1-exec.jar"
JARS = RUN_DIR / "zipkin"
"""Where the jar is kept: one copy for every server (`make up`'s and the tests')."""


class LocalZipkin(RunsAProcess):
    """One Zipkin server process with its own home directory (pid file, log)."""

    def __init__(self, home: Path = RUN_DIR / "zipkin", port: int = 9411) -> None:
        self.home = Path(home).resolve()
        self.port = port
        self.process = ManagedProcess(
            "Zipkin", self.home / "zipkin.pid", self.home / "zipkin.log", marker=(str(JARS / JAR),)
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def trace_url(self) -> str:
        """Where its UI shows one trace: a template of `{trace_id}` (`EXPLORER_TRACE_URL`)."""
        return f"{self.url}/zipkin/traces/{{trace_id}}"

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
            command = [java(), "-Xms64m", "-Xmx384m", "-XX:+UseSerialGC", "-jar", str(jar)]
            self.process.start(command, env=env, cwd=self.home)
        self.process.wait_until(self.ready, timeout)

    def stop(self, timeout: float = 20) -> None:
        self.process.stop(timeout, ports=[self.port])

    def kill(self) -> None:
        self.process.kill(ports=[self.port])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.local.zipkin", description=__doc__)
    parser.add_argument("command", choices=["fetch", *SERVER_COMMANDS])
    parser.add_argument("--port", type=int, default=9411)
    parser.add_argument("--home", type=Path, default=RUN_DIR / "zipkin")
    args = parser.parse_args(argv)
    zipkin = LocalZipkin(args.home, args.port)
    if args.command == "fetch":
        print(zipkin.fetch())
        return 0
    return server_command(args.command, zipkin, f"zipkin at {zipkin.url}")


if __name__ == "__main__":
    sys.exit(main())
