"""Drive HTTP load with wrk and orders.lua; return wrk's own summary as a dict.

wrk is a closed loop: each connection sends its next request when the previous answer
arrives, so it finds the maximum throughput. With `rate`, each wrk thread books its
requests' starts threads/rate seconds apart on a clock of its own, and a connection whose
answer came early waits for its slot (orders.lua's delay()): the rate holds whatever the
answers' latency, up to what the connections can carry. A service slower than the rate
gets the closed loop; after a stall the schedule starts again from then, rather than
sending what it missed at once."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.bench.report import parse_wrk

SCRIPT = Path(__file__).with_name("orders.lua")


class WrkMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class OrderMix:
    """What orders.lua sends: products picked at random, a share of them scarce, each
    request signed with the next of `tokens` in turn (one bearer token per user, so the
    per-user rate limit is shared out)."""

    tokens: Sequence[str]
    ample: Sequence[str]
    scarce: Sequence[str] = field(default_factory=tuple)
    scarce_share: float = 0.0
    path: str = "/orders"


def lua_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def lua_data(mix: OrderMix, interval_ms: float = 0) -> str:
    """The data file orders.lua loads with dofile()."""

    def array(items: Sequence[str]) -> str:
        return "{" + ", ".join(lua_string(i) for i in items) + "}"

    return (
        "return {\n"
        f"  tokens = {array(mix.tokens)},\n"
        f"  ample = {array(mix.ample)},\n"
        f"  scarce = {array(mix.scarce)},\n"
        f"  scarce_share = {mix.scarce_share!r},\n"
        f"  interval_ms = {interval_ms!r},\n"
        f"  path = {lua_string(mix.path)},\n"
        "}\n"
    )


def pacing_interval_ms(rate: float | None, threads: int) -> float:
    """The time between two request starts of one wrk thread, so that `threads` threads
    send `rate` requests a second in all; 0 for no pacing."""
    if not rate:
        return 0.0
    return 1000.0 * threads / rate


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkMissing("wrk is not installed: `make bench` installs it (apt-get install wrk)")
    return path


def run_wrk(
    base_url: str,
    mix: OrderMix,
    *,
    duration: float,
    connections: int,
    threads: int,
    rate: float | None = None,
    timeout_s: float = 10,
    on_tick: Callable[[float], None] | None = None,
    on_start: Callable[[subprocess.Popen[str]], None] | None = None,
) -> dict[str, Any]:
    """Run wrk for `duration` seconds against base_url + mix.path; call on_tick(elapsed)
    about once a second while it runs. wrk is killed if it overstays by 30 s."""
    wrk = require_wrk()
    threads = max(1, min(threads, connections))
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        data = Path(tmp) / "orders-data.lua"
        data.write_text(lua_data(mix, pacing_interval_ms(rate, threads)))
        command = [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            f"--timeout={max(1, round(timeout_s))}s",
            "-s",
            str(SCRIPT),
            base_url + mix.path,
        ]
        began = time.monotonic()
        process = subprocess.Popen(
            command,
            env={**os.environ, "BENCH_ORDERS_DATA": str(data)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if on_start:
            on_start(process)
        deadline = began + duration + 30
        tick = began + 1
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise RuntimeError(f"wrk did not finish within {duration + 30:.0f}s")
            time.sleep(max(0.0, min(0.05, tick - time.monotonic())))
            if time.monotonic() >= tick:
                if on_tick:
                    on_tick(time.monotonic() - began)
                tick += 1
        stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"wrk exited with {process.returncode}: {stderr.strip()}")
    result = parse_wrk(stdout)
    result.update(connections=connections, threads=threads, rate=rate)
    return result
