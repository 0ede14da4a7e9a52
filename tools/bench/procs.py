"""The processes under test: find the stack's pids, sample their CPU and memory.

Each name stands for a process tree (a uvicorn --workers parent and its workers): CPU% is
the tree's CPU time over each `interval` (100 = one core busy, summed over the tree, a
process born in the interval counted from its start); RSS is the largest resident set
of one process in the tree, as a per-process memory limit reads it. `system` is the whole
machine's busy CPU in the same unit (cores x 100), and `others` what neither the stack nor
the bench itself used: other work on the box that competes for the same cores."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import psutil

from tools.local.kafka import RUN_DIR
from tools.local.stack import Stack, local_stack

Sample = tuple[float, str, float, float]
"""(wall-clock time, process name, CPU%, RSS bytes)"""


class StackNotUp(RuntimeError):
    pass


def require_stack(run_dir: Path = RUN_DIR, stack: Stack | None = None) -> dict[str, int]:
    """Root pids of the broker (when the stack runs one) and the services, each up and
    ready, by name; raise StackNotUp naming what is missing."""
    stack = stack or local_stack(run_dir)
    states = stack.status()
    bad = {name: state for name, state in states.items() if not state.startswith("pid ")}
    bad |= {name: state for name, state in states.items() if "NOT READY" in state}
    if bad:
        listing = ", ".join(f"{name} {state}" for name, state in bad.items())
        raise StackNotUp(
            f"the stack is not up ({listing}): start it with `make up`, then run `make bench`"
        )
    pids: dict[str, int] = {}
    if stack.broker is not None and (pid := stack.broker.pid()) is not None:
        pids["kafka"] = pid
    for node_id, node in (stack.cluster.nodes if stack.cluster else {}).items():
        if (pid := node.pid()) is not None:
            pids[f"kafka-{node_id}"] = pid
    for name, service in stack.services.items():
        if (pid := service.pid()) is not None:
            pids[name] = pid
    return pids


def pid_files(run_dir: Path = RUN_DIR) -> dict[str, int]:
    """Every pid named in .run/pids/*.pid and the brokers' pid files (the single broker's
    as `kafka`, a cluster node's as `kafka-<id>`), live or not."""
    found = {}
    nodes = sorted((run_dir / "kafka").glob("node-*/broker.pid"))
    for path in [*sorted((run_dir / "pids").glob("*.pid")), run_dir / "kafka" / "broker.pid"]:
        try:
            found["kafka" if path.parent.name == "kafka" else path.stem] = int(path.read_text())
        except (OSError, ValueError):
            continue
    for path in nodes:
        try:
            found["kafka-" + path.parent.name.removeprefix("node-")] = int(path.read_text())
        except (OSError, ValueError):
            continue
    return found


SETTINGS = ("OTEL_TRACES_EXPORTER", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG")
"""What a report says the services ran with, read from their own environment."""


def settings(pids: Mapping[str, int]) -> dict[str, Any]:
    """How the stack behind `pids` runs: its brokers, and the span export and sampling the
    order service's process was started with (unset: none exported, every trace kept).
    A process that cannot be read leaves its settings out."""
    found: dict[str, Any] = {"brokers": len(brokers(pids))}
    try:
        environment = psutil.Process(pids["order"]).environ()
    except (KeyError, psutil.Error):
        return found
    for name in SETTINGS:
        found[name] = environment.get(name) or None
    found["database"] = (environment.get("ORDER_DATABASE_URL") or "sqlite").split(":", 1)[0]
    return found


def brokers(found: Mapping[str, int]) -> dict[str, int]:
    """The broker processes among `found`: `kafka` or `kafka-<id>`."""
    return {k: v for k, v in found.items() if k == "kafka" or k.startswith("kafka-")}


JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")
"""How the JVM's JIT compiler threads are named in /proc (15 characters at most)."""


def jit_ticks(pids: Iterable[int], proc: Path = Path("/proc")) -> tuple[int, int]:
    """(CPU clock ticks of the JIT compiler threads, of all threads) summed over the JVMs
    `pids`: a just-started broker's compilers stay busy for minutes of load."""
    jit = total = 0
    for pid in pids:
        try:
            tasks = list((proc / str(pid) / "task").iterdir())
        except OSError:  # gone, or not ours to read
            continue
        for task in tasks:
            try:
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                ticks = int(fields[11]) + int(fields[12])  # utime + stime
            except (OSError, IndexError, ValueError):  # the thread ended meanwhile
                continue
            total += ticks
            if name.startswith(JIT_THREADS):
                jit += ticks
    return jit, total


def jit_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The compilers' share of the JVMs' CPU between two `jit_ticks`."""
    spent = after[1] - before[1]
    return max(after[0] - before[0], 0) / spent if spent > 0 else 0.0


class _Tree:
    """A root process and its descendants (unless `tree` is false), with the CPU time
    each had when last seen."""

    def __init__(self, root: psutil.Process, tree: bool = True) -> None:
        self.root = root
        self.tree = tree
        self.seen: dict[int, tuple[psutil.Process, float]] = {}
        self.last = time.time()
        self.sample()

    def sample(self) -> tuple[float, float, float]:
        """(CPU seconds since the last call, wall seconds since then, largest RSS) over
        the tree; raises psutil.NoSuchProcess once the root is gone."""
        now = time.time()
        members = [self.root, *self._children()]
        spent, rss, alive = 0.0, 0.0, {}
        for process in members:
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    used = times.user + times.system
                    resident = float(process.memory_info().rss)
                    born = process.create_time()
            except psutil.Error:
                if process is self.root:
                    raise
                continue
            before = self.seen.get(process.pid)
            if before is not None and before[0] is process:
                spent += used - before[1]
            elif born > self.last:  # started since the last sample: all of it counts
                spent += used
            alive[process.pid] = (process, used)
            rss = max(rss, resident)
        elapsed = now - self.last
        self.seen, self.last = alive, now
        return max(spent, 0.0), elapsed, rss

    def _children(self) -> list[psutil.Process]:
        if not self.tree:
            return []
        try:
            found = self.root.children(recursive=True)
        except psutil.Error:
            return []
        # keep the Process objects already seen: their identity guards against pid reuse
        return [
            self.seen[p.pid][0] if p.pid in self.seen and self.seen[p.pid][0] == p else p
            for p in found
        ]


class Sampler:
    """Samples named process trees every `interval` s in a thread, until stopped.

    `on_sample` is called after each round with that round's samples (for progress)."""

    def __init__(
        self,
        pids: Mapping[str, int],
        interval: float = 0.5,
        on_sample: Callable[[list[Sample]], None] | None = None,
    ) -> None:
        self.interval = interval
        self.samples: list[Sample] = []
        self.latest: dict[str, float] = {}
        self._trees: dict[str, _Tree] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._on_sample = on_sample
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        for name, pid in pids.items():
            self.add(name, pid)
        self.add("bench", os.getpid(), tree=False)  # its children are sampled by name

    def add(self, name: str, pid: int, tree: bool = True) -> None:
        try:
            sampled = _Tree(psutil.Process(pid), tree)
        except psutil.Error:
            return
        with self._lock:
            self._trees[name] = sampled

    def remove(self, name: str) -> None:
        with self._lock:
            self._trees.pop(name, None)

    def start(self) -> Sampler:
        psutil.cpu_percent(None)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        cores = psutil.cpu_count() or 1
        while not self._stop.wait(self.interval):
            now = time.time()
            round_: list[Sample] = []
            with self._lock:
                trees = list(self._trees.items())
            for name, tree in trees:
                try:
                    spent, elapsed, rss = tree.sample()
                except psutil.Error:
                    self.remove(name)
                    continue
                round_.append((now, name, spent / max(elapsed, 1e-3) * 100, rss))
            system = psutil.cpu_percent(None) * cores
            ours = sum(cpu for _, _, cpu, _ in round_)
            round_.append((now, "system", system, psutil.virtual_memory().used))
            round_.append((now, "others", max(system - ours, 0.0), 0.0))
            self.samples.extend(round_)
            self.latest = {name: cpu for _, name, cpu, _ in round_}
            if self._on_sample:
                self._on_sample(round_)
