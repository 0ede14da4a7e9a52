"""The processes under test: find the stack's pids, sample their CPU and memory.

CPU% is psutil's per-process figure (100 = one core busy) sampled every `interval`
seconds; RSS is resident memory. `system` is the whole machine's busy CPU in the same
unit (cores x 100), and `others` what neither the stack nor the bench itself used: other
work on the box that competes for the same cores."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil

from tools.kafka_local import RUN_DIR
from tools.stack import Stack

Sample = tuple[float, str, float, float]
"""(wall-clock time, process name, CPU%, RSS bytes)"""


class StackNotUp(RuntimeError):
    pass


def require_stack(run_dir: Path = RUN_DIR) -> dict[str, int]:
    """Pids of the broker and the four services, each up and ready, by name; raise
    StackNotUp naming what is missing."""
    stack = Stack(run_dir=run_dir)
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
    for name, service in stack.services.items():
        if (pid := service.pid()) is not None:
            pids[name] = pid
    return pids


def pid_files(run_dir: Path = RUN_DIR) -> dict[str, int]:
    """Every pid named in .run/pids/*.pid and the broker's pid file, live or not."""
    found = {}
    for path in [*sorted((run_dir / "pids").glob("*.pid")), run_dir / "kafka" / "broker.pid"]:
        try:
            found["kafka" if path.parent.name == "kafka" else path.stem] = int(path.read_text())
        except (OSError, ValueError):
            continue
    return found


class Sampler:
    """Samples named processes every `interval` s in a thread, until stopped.

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
        self._procs: dict[str, psutil.Process] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._on_sample = on_sample
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        for name, pid in pids.items():
            self.add(name, pid)
        self.add("bench", os.getpid())

    def add(self, name: str, pid: int) -> None:
        try:
            process = psutil.Process(pid)
            process.cpu_percent(None)  # the first call only sets the baseline
        except psutil.Error:
            return
        with self._lock:
            self._procs[name] = process

    def remove(self, name: str) -> None:
        with self._lock:
            self._procs.pop(name, None)

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
                procs = list(self._procs.items())
            for name, process in procs:
                try:
                    with process.oneshot():
                        round_.append(
                            (now, name, process.cpu_percent(None), process.memory_info().rss)
                        )
                except psutil.Error:
                    self.remove(name)
            system = psutil.cpu_percent(None) * cores
            ours = sum(cpu for _, _, cpu, _ in round_)
            round_.append((now, "system", system, psutil.virtual_memory().used))
            round_.append((now, "others", max(system - ours, 0.0), 0.0))
            self.samples.extend(round_)
            self.latest = {name: cpu for _, name, cpu, _ in round_}
            if self._on_sample:
                self._on_sample(round_)
