"""One PNG per run: request->outcome latency over time, throughput per second, and the
latency histogram."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_run(summary: dict[str, Any], series: dict[str, Any], path: Path) -> None:
    start = series["load_start"]
    orders = series["orders"]  # (created, outcome, outcome stamp, received)
    fig, (over_time, throughput, histogram) = plt.subplots(3, 1, figsize=(11, 11))
    for outcome, colour in (("CONFIRMED", "tab:blue"), ("REJECTED", "tab:red")):
        xs = [created - start for created, kind, _, _ in orders if kind == outcome]
        ys = [(stamp - created) * 1000 for created, kind, stamp, _ in orders if kind == outcome]
        over_time.scatter(xs, ys, s=2, alpha=0.4, color=colour, label=outcome.lower())
    for edge in series["window"]:
        over_time.axvline(edge - start, color="grey", linestyle=":", linewidth=1)
    over_time.axvline(series["load_end"] - start, color="black", linestyle="--", linewidth=1)
    over_time.set_xlabel("order created at (s since load start); dotted: steady window")
    over_time.set_ylabel("request -> outcome (ms)")
    over_time.set_yscale("log")
    over_time.legend(loc="upper left", markerscale=4)
    over_time.set_title(
        f"{summary['completed_per_s']:.0f} orders/s completed, "
        f"{summary['accepted_per_s']:.0f} accepted/s; "
        f"p50 {summary['latency_ms']['p50'] or 0:.0f} ms, "
        f"p99 {summary['latency_ms']['p99'] or 0:.0f} ms"
    )

    per_second = summary["per_second"]
    seconds = range(len(per_second["accepted"]))
    throughput.step(seconds, per_second["accepted"], where="post", label="accepted (202) / s")
    throughput.step(seconds, per_second["completed"], where="post", label="completed / s")
    throughput.axvline(series["load_end"] - start, color="black", linestyle="--", linewidth=1)
    throughput.set_xlabel("s since load start (dashed: load ends)")
    throughput.set_ylabel("orders / s")
    throughput.legend(loc="upper right")

    window = series["window"]
    latencies = [
        (stamp - created) * 1000
        for created, _, stamp, _ in orders
        if window[0] <= created < window[1]
    ]
    if latencies:
        histogram.hist(latencies, bins=80, color="tab:blue")
    histogram.set_xlabel("request -> outcome (ms), orders created in the steady window")
    histogram.set_ylabel("orders")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
