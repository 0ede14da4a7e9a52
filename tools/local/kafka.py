"""A real single-node Apache Kafka broker (KRaft, broker+controller) run from Maven jars.

    python -m tools.local.kafka {fetch,start,stop,kill,status} [--port N] [--controller-port N]
                                [--home DIR]

The jars come from tools/local/kafka-broker/pom.xml (fetched once into .run/kafka/libs);
each broker keeps its config, pid file, log and data under its own home directory (default
.run/kafka).
tools/local/cluster.py builds a secured multi-node cluster from the same `LocalBroker`.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from shared.messaging.connection import Bootstrap, client_config, connection
from tools.local.process import (
    SERVER_COMMANDS,
    ManagedProcess,
    RunsAProcess,
    port_open,
    server_command,
)

ROOT = Path(__file__).resolve().parents[2]
RUN_DIR = ROOT / ".run"
POM = ROOT / "tools" / "local" / "kafka-broker" / "pom.xml"
LOG4J_CONFIG = ROOT / "tools" / "local" / "kafka-broker" / "log4j2.properties"
LIBS_DIR = RUN_DIR / "kafka" / "libs"
# The flags of Kafka's bin/kafka-run-class.sh; the heap is set per broker.
JVM_FLAGS = (
    "-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35"
    " -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true"
).split()
JVM_FLAGS_VARIABLE = "KAFKA_JVM_PERFORMANCE_OPTS"
"""Replaces JVM_FLAGS when set, as it does in Kafka's own scripts (the test suite sets it:
brokers that start often and carry little load start on half the CPU)."""
# One node that is both broker and controller (KRaft), sized for a small machine.
SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data_dir}
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
# A missing topic is an explicit error, never silently created.
auto.create.topics.enable=false
offsets.topic.num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
"""
SMALL_MACHINE = """\
group.initial.rebalance.delay.ms=0
# The 128 MiB default is allocated at start-up and breaks small heaps.
log.cleaner.dedupe.buffer.size=2097152
num.network.threads=2
num.io.threads=2
# After kill -9 the old registration blocks a restart until its session expires (default
# 9 s); a short session lets a crashed broker come back within a few seconds.
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=4000
"""
"""What every local broker sets, alone or in a cluster: sized for a small machine, and
back within seconds after a crash."""
SERVER_PROPERTIES += SMALL_MACHINE


def ensure_jars() -> Path:
    """Copy the broker's runtime classpath into .run/kafka/libs (once per pom version)."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    stamp = LIBS_DIR / ".pom-sha256"
    LIBS_DIR.parent.mkdir(parents=True, exist_ok=True)
    with open(LIBS_DIR.parent / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent callers wait for one fetch
        if stamp.is_file() and stamp.read_text().strip() == digest:
            return LIBS_DIR
        shutil.rmtree(LIBS_DIR, ignore_errors=True)  # never mix jar versions
        cmd = ["mvn", "-B", "-q", "-f", str(POM), "dependency:copy-dependencies"]
        cmd += ["-DincludeScope=runtime", f"-DoutputDirectory={LIBS_DIR}"]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0 or not any(LIBS_DIR.glob("kafka_2.13-*.jar")):
            raise RuntimeError(
                f"maven fetch failed ({done.returncode}):\n"
                f"{done.stdout[-4000:]}{done.stderr[-4000:]}"
            )
        stamp.write_text(digest + "\n")
    return LIBS_DIR


def wait_for_broker(bootstrap: Bootstrap, timeout: float) -> None:
    """Poll until the broker at `bootstrap` answers a metadata request with a broker list."""
    deadline = time.monotonic() + timeout
    address = connection(bootstrap).bootstrap.split(",")[0]
    host, _, port = address.rpartition(":")
    while not port_open(host, int(port)):  # cheap pre-check; avoids librdkafka connect noise
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no Kafka broker listening on {address} after {timeout:.0f}s")
        time.sleep(0.1)
    admin = AdminClient(client_config(bootstrap))
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"Kafka broker at {address} not ready after {timeout:.0f}s")
        try:
            if admin.list_topics(timeout=max(0.5, min(2.0, remaining))).brokers:
                return
        except KafkaException:
            pass
        time.sleep(0.1)


def jvm_flags() -> list[str]:
    """`KAFKA_JVM_PERFORMANCE_OPTS` split into options, else Kafka's defaults. Each word must
    be a JVM option ("-..."): a class name or path given here would change what runs."""
    value = os.environ.get(JVM_FLAGS_VARIABLE, "").strip()
    if not value:
        return list(JVM_FLAGS)
    flags = value.split()
    strays = [flag for flag in flags if not flag.startswith("-") or not flag.isprintable()]
    if strays or len(value) > 2_000:
        raise ValueError(f"{JVM_FLAGS_VARIABLE} holds words that are not JVM options: {strays}")
    return flags


def java() -> str:
    """The java of `JAVA_HOME`, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    return str(Path(java_home) / "bin" / "java") if java_home else "java"


def new_cluster_id() -> str:
    """A KRaft cluster id: a random UUID in unpadded base64url that, as Kafka's own
    `Uuid.randomUuid` ensures, does not start with "-" (kafka-storage's option parser would
    take `-t -xyz` for a missing value and another option)."""
    while True:
        raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not raw.startswith("-"):
            return raw


class LocalBroker(RunsAProcess):
    """One local Kafka broker process with its own home directory (config, data, log, pid)."""

    def __init__(
        self,
        home: Path = RUN_DIR / "kafka",
        port: int = 9092,
        controller_port: int = 9093,
        heap_mb: int = 512,
    ) -> None:
        self.home = Path(home).resolve()
        self.port = port
        self.controller_port = controller_port
        self.heap_mb = heap_mb
        self.data_dir = self.home / "data"
        self.config_file = self.home / "server.properties"
        self.process = ManagedProcess(
            "Kafka broker",
            self.home / "broker.pid",
            self.home / "broker.log",
            marker=("kafka.Kafka", str(self.config_file)),
            log_lines=60,
        )
        """Its java process: believed only while that runs Kafka on this home's config."""

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def probe(self) -> Bootstrap:
        """How start() asks this broker whether it serves (a secured node signs in)."""
        return self.bootstrap

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port, self.controller_port)

    def is_running(self) -> bool:
        return self.pid() is not None and port_open("127.0.0.1", self.port)

    def log_tail(self, lines: int = 60) -> str:
        return self.process.tail(lines)

    def _java_cmd(self, libs: Path, *args: str) -> list[str]:
        heap = [f"-Xms{self.heap_mb}m", f"-Xmx{self.heap_mb}m"]
        props = [f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", f"-Dkafka.logs.dir={self.home}"]
        return [java(), *heap, *jvm_flags(), *props, "-cp", f"{libs}/*", *args]

    def _properties(self) -> str:
        return SERVER_PROPERTIES.format(
            port=self.port, controller_port=self.controller_port, data_dir=self.data_dir
        )

    def _format_args(self, config: Path) -> list[str]:
        return ["format", "-t", self._cluster_id(), "-c", str(config), "--standalone"]

    def _write_config(self) -> Path:
        self.config_file.write_text(self._properties())
        return self.config_file

    def _cluster_id(self) -> str:
        path = self.home / "cluster-id"
        if not path.is_file():
            path.write_text(new_cluster_id() + "\n")
        return path.read_text().strip()

    def start(self, timeout: float = 60) -> None:
        """Start the broker (no-op if it already runs) and wait until it serves metadata."""
        if not self.launch():
            wait_for_broker(self.probe, timeout)  # running, or still starting up
            return
        self.wait_started(timeout)

    def launch(self) -> bool:
        """Start the process without waiting for it; False if it already runs. (Nodes of
        a cluster launch together: none serves before a quorum of controllers is up.)"""
        if self.pid() is not None:
            return False
        self.pid_file.unlink(missing_ok=True)  # stale
        for port in self.ports:
            if port_open("127.0.0.1", port):
                raise RuntimeError(f"port {port} is taken by a process that is not this broker")
        libs = ensure_jars()
        self.home.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        if not (self.data_dir / "meta.properties").is_file():
            args = [*self._format_args(config), "--ignore-formatted"]
            cmd = self._java_cmd(libs, "kafka.tools.StorageTool", *args)
            fmt = subprocess.run(cmd, capture_output=True, text=True)
            if fmt.returncode != 0:
                raise RuntimeError(f"kafka storage format failed:\n{fmt.stdout}{fmt.stderr}")
        if self.log_file.is_file() and self.log_file.stat().st_size > 20_000_000:
            self.log_file.replace(self.log_file.with_suffix(".log.1"))  # keep one old log
        command = self._java_cmd(libs, "kafka.Kafka", str(config))
        self.process.start(command, cwd=self.home, banner="tools.local.kafka: starting broker")
        return True

    def wait_started(self, timeout: float = 60) -> None:
        """Wait until the process launch() started serves metadata; raise if it exits."""
        self.process.wait_until(self._serves, timeout, every=0)

    def _serves(self) -> bool:
        try:
            wait_for_broker(self.probe, 1.0)
        except TimeoutError:
            return False
        return True

    def stop(self, timeout: float = 30) -> None:
        """Clean shutdown (SIGTERM); SIGKILL if it has not exited after `timeout` seconds."""
        self.process.stop(timeout, ports=self.ports)

    def kill(self) -> None:
        """SIGKILL at once, like a crash; the next start() recovers the same data dir."""
        self.process.kill(ports=self.ports)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.local.kafka",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["fetch", *SERVER_COMMANDS])
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--controller-port", type=int, default=9093)
    parser.add_argument("--home", type=Path, default=RUN_DIR / "kafka")
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args(argv)
    if args.command == "fetch":
        began = time.monotonic()
        print(f"jars in {ensure_jars()} ({time.monotonic() - began:.1f}s)")
        return 0
    broker = LocalBroker(args.home, args.port, args.controller_port)
    where = f"kafka broker at {broker.bootstrap}"
    return server_command(args.command, broker, where, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
