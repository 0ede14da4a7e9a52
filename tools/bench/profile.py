"""py-spy on the services (with their worker processes) while the load runs: per service a
CPU profile in speedscope's format (threads on CPU only: open it at speedscope.app, or read
its top self-time frames in the report) and the folded stacks of every thread, idle or not
(--idle: wall-clock time, so waiting for a lock or for Kafka shows), summarised by
report.profile_summary.

Both recordings run with --nonblocking (they read the process's memory without pausing
it), so two of them can watch one process at once and the service is barely slowed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.bench.report import cpu_self_summary, parse_folded, profile_summary


def py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed (it is in the dev dependencies)")
    return found


@dataclass
class Recording:
    service: str
    speedscope: Path
    folded: Path
    processes: list[subprocess.Popen[bytes]]


def start(
    pids: Mapping[str, int],
    services: list[str],
    duration: int,
    out_dir: Path,
    stamp: str,
    rate: int = 200,
) -> list[Recording]:
    exe = py_spy()
    out_dir.mkdir(parents=True, exist_ok=True)
    recordings = []
    for service in services:
        pid = pids[service]
        speedscope = out_dir / f"{service}-{stamp}.speedscope.json"
        folded = out_dir / f"{service}-{stamp}.folded"
        common = [exe, "record", "--pid", str(pid), "--duration", str(duration)]
        common += ["--rate", str(rate), "--nonblocking", "--threads", "--subprocesses"]
        processes = [
            subprocess.Popen(
                [*common, *idle, "--format", fmt, "-o", str(path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for fmt, path, idle in (
                ("speedscope", speedscope, []),
                ("raw", folded, ["--idle"]),
            )
        ]
        recordings.append(Recording(service, speedscope, folded, processes))
    return recordings


def finish(recordings: list[Recording], root: Path, timeout: float = 300) -> dict[str, Any]:
    """Wait for the recordings (all of them within `timeout` s: py-spy writes late when it
    fell behind on a busy machine); summarise each service's profiles."""
    summaries: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    for recording in recordings:
        for process in recording.processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if not recording.folded.is_file():
            summaries[recording.service] = {"error": "py-spy wrote no profile"}
            continue
        try:
            with recording.folded.open() as lines:
                summary = profile_summary(parse_folded(lines))
        except Exception as exc:  # a profile we cannot read must not lose the run
            summaries[recording.service] = {"error": f"unreadable profile: {exc!r}"}
            continue
        try:
            summary["cpu_self"] = cpu_self_summary(json.loads(recording.speedscope.read_text()))
            summary["speedscope"] = str(recording.speedscope.relative_to(root))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            summary["cpu_self"] = {"error": f"unreadable speedscope profile: {exc!r}"}
        summary["folded"] = str(recording.folded.relative_to(root))
        summaries[recording.service] = summary
    return summaries
