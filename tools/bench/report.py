"""The bench's arithmetic and its text report: pure functions, no I/O but `write_json`.

Percentiles interpolate linearly between closest ranks (numpy's default), so p50 of
[1, 2, 3, 4] is 2.5. Rates count events whose time falls in a half-open window
[start, end). Ratios are None when the denominator is missing or zero."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

WRK_MARKER = "BENCH_WRK_JSON "
"""The line prefix under which the wrk script's done() prints its JSON summary."""

QUANTILES = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`, interpolating between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean, p50, p95, p99, min and max of `values` (None for each when empty)."""
    if not values:
        return dict.fromkeys(("mean", "min", "p50", "p95", "p99", "max"), None) | {"count": 0}
    summary: dict[str, float | int | None] = {
        "count": len(values),
        "mean": sum(values) / len(values),
        "min": min(values),
    }
    for name, q in QUANTILES:
        summary[name] = percentile(values, q)
    summary["max"] = max(values)
    return summary


def rate(times: Iterable[float], start: float, end: float) -> float:
    """Events per second whose time lies in [start, end)."""
    if end <= start:
        raise ValueError("empty window")
    return sum(1 for t in times if start <= t < end) / (end - start)


def per_second(times: Iterable[float], start: float, seconds: int) -> list[int]:
    """How many of `times` fall in each whole second after `start` (later ones dropped)."""
    counts = [0] * max(seconds, 0)
    for t in times:
        index = math.floor(t - start)
        if 0 <= index < len(counts):
            counts[index] += 1
    return counts


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def steady_window(load_start: float, load_end: float, warmup: float) -> tuple[float, float]:
    """The part of the load after warm-up; the whole load if warm-up would eat it all."""
    start = load_start + warmup
    if start >= load_end:
        return load_start, load_end
    return start, load_end


def parse_wrk(stdout: str) -> dict[str, Any]:
    """The JSON summary that the wrk script's done() printed, with rates added.

    Latencies stay in microseconds as wrk reports them; `requests_per_s` counts every
    completed request, `accepted_per_s` only the 202s."""
    for line in stdout.splitlines():
        if line.startswith(WRK_MARKER):
            data: dict[str, Any] = json.loads(line[len(WRK_MARKER) :])
            break
    else:
        raise ValueError("wrk printed no summary (did the Lua script's done() run?)")
    seconds = data["duration_us"] / 1e6
    statuses = {str(k): int(v) for k, v in data.get("statuses", {}).items()}
    data["statuses"] = statuses
    data["seconds"] = seconds
    data["requests_per_s"] = data["requests"] / seconds if seconds else 0.0
    data["accepted_per_s"] = statuses.get("202", 0) / seconds if seconds else 0.0
    errors = data.get("errors", {})
    data["non_202"] = sum(n for code, n in statuses.items() if code != "202")
    data["socket_errors"] = sum(
        int(errors.get(k, 0)) for k in ("connect", "read", "write", "timeout")
    )
    return data


def cpu_summary(
    samples: Sequence[tuple[float, str, float, float]], start: float, end: float
) -> dict[str, dict[str, float]]:
    """Per process, from (time, name, cpu%, rss bytes) samples: mean and max CPU% (100 =
    one core) inside [start, end), and peak RSS in MiB over every sample."""
    cpu: dict[str, list[float]] = defaultdict(list)
    rss: dict[str, float] = defaultdict(float)
    for t, name, percent, resident in samples:
        if start <= t < end:
            cpu[name].append(percent)
        rss[name] = max(rss[name], resident)
    result = {}
    for name in sorted(rss):
        values = cpu.get(name, [])
        result[name] = {
            "cpu_mean": sum(values) / len(values) if values else 0.0,
            "cpu_max": max(values) if values else 0.0,
            "rss_peak_mib": rss[name] / 2**20,
        }
    return result


def cpu_seconds(
    samples: Sequence[tuple[float, str, float, float]], start: float, end: float, interval: float
) -> dict[str, float]:
    """CPU-seconds per process inside [start, end), from CPU% samples taken every
    `interval` seconds (each sample covers the interval before it)."""
    total: dict[str, float] = defaultdict(float)
    for t, name, percent, _ in samples:
        if start < t <= end:
            total[name] += percent / 100 * interval
    return dict(total)


# py-spy's raw (folded) output with --threads: "thread (tid): name;frame;...;leaf count",
# root first, each frame "function (file:line)".


def parse_folded(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    stacks = []
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        frames, _, count = line.rpartition(" ")
        try:
            stacks.append((frames.split(";"), int(count)))
        except ValueError:
            continue
    return stacks


THREAD_ROLES = (
    ("consumer-", "consumer"),
    ("outbox-relay", "outbox relay"),
    ("AnyIO worker", "HTTP handlers (threadpool)"),
    ("MainThread", "event loop"),
    ("housekeeping", "housekeeping"),
)

IDLE = "idle: waiting for work"
PROJECT = ("shared/", "services/", "tools/")


def role_of(frames: Sequence[str]) -> str:
    """The thread's role, from py-spy's 'thread (tid): name' root frame."""
    head = frames[0] if frames else ""
    name = head.partition("): ")[2] if head.startswith("thread (") else ""
    for prefix, role in THREAD_ROLES:
        if name.startswith(prefix):
            return role
    return name or "other"


def _function(frame: str) -> str:
    """'place_order (services/order/api.py:32)' -> 'place_order (services/order/api.py)'."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({path})" if path else name


def category(frames: Sequence[str]) -> str:
    """What a sampled thread was doing, from its stack (root first)."""
    python = [f for f in frames if not f.startswith(("thread (", "process "))]
    if not python:
        return "other"
    leaf = _function(python[-1])
    name = leaf.partition(" (")[0]
    if name == "DefaultDialect.do_execute":
        if any("_begin_impl" in f for f in python):
            return "sqlite: BEGIN IMMEDIATE (waiting for the write lock)"
        return "sqlite: executing statements"
    if name == "DefaultDialect.do_commit":
        return "sqlite: COMMIT"
    if name in ("Condition.wait", "Event.wait", "Queue.get", "WorkerThread.run") or (
        name == "_run" and "housekeeping" in leaf
    ):
        return IDLE
    if name == "Runner.run":
        return "event loop: uvloop (C: epoll, sockets)"
    if name in ("ConsumerWorker._run", "_next_batch") and "shared/consumer.py" in leaf:
        return "kafka: Consumer.consume() (waiting for records)"
    if name == "EventProducer.send":
        return "kafka: produce + flush (waiting for acks)"
    for marker, label in (
        ("sqlalchemy/", "python: SQLAlchemy"),
        ("pydantic", "python: pydantic"),
        ("fastapi/", "python: FastAPI/Starlette"),
        ("starlette/", "python: FastAPI/Starlette"),
        ("opentelemetry/", "python: OpenTelemetry"),
        ("anyio/", "python: anyio (threadpool hand-off)"),
        ("asyncio/", "python: asyncio"),
        ("uvicorn/", "python: uvicorn"),
        ("confluent_kafka", "kafka: client"),
    ):
        if marker in leaf:
            return label
    if any(marker in leaf for marker in PROJECT):
        return "python: our code"
    return "python: other (stdlib, json, uuid, ...)"


def profile_summary(stacks: Sequence[tuple[list[str], int]], top: int = 15) -> dict[str, Any]:
    """Per thread role: threads seen, samples, and the share of each category; then, over
    samples not idle, where in our code (the deepest frame in shared/, services/ or
    tools/) and in which leaf function the time goes. Taken with py-spy --idle, samples
    are wall-clock time per thread."""
    threads: dict[str, set[str]] = defaultdict(set)
    by_role: dict[str, Counter[str]] = defaultdict(Counter)
    ours: Counter[str] = Counter()
    own: Counter[str] = Counter()
    busy = 0
    for frames, count in stacks:
        role = role_of(frames)
        if frames and frames[0].startswith("thread ("):
            threads[role].add(frames[0].partition(")")[0])
        kind = category(frames)
        by_role[role][kind] += count
        if kind == IDLE or kind.startswith(("event loop", "kafka: Consumer.consume")):
            continue
        python = [f for f in frames if not f.startswith(("thread (", "process "))]
        if not python:
            continue
        busy += count
        project = [f for f in python if any(marker in f for marker in PROJECT)]
        ours[_function(project[-1]) if project else "(no frame of ours)"] += count
        own[_function(python[-1])] += count
    total = sum(count for _, count in stacks)
    roles = {}
    for role, kinds in sorted(by_role.items(), key=lambda item: -sum(item[1].values())):
        samples = sum(kinds.values())
        roles[role] = {
            "threads": len(threads[role]),
            "samples": samples,
            "categories": {kind: n / samples for kind, n in kinds.most_common()},
        }

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, n / busy) for name, n in counter.most_common(top)] if busy else []

    return {"samples": total, "busy_samples": busy, "roles": roles,
            "ours": shares(ours), "leaf": shares(own)}  # fmt: skip


def _ms(value: float | int | None) -> str:
    return "-" if value is None else f"{value:8.1f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:9.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:5.1f}%"


def render(result: Mapping[str, Any]) -> str:
    """The human summary printed at the end of a run."""
    out: list[str] = []
    e2e = result.get("e2e")
    if e2e:
        load = e2e["load"]
        out.append(
            f"end to end: {load['duration_s']:.0f}s, {load['connections']} connections, "
            f"{load['threads']} wrk thread(s)"
            + (f", paced to <= {load['rate']}/s" if load.get("rate") else ", unpaced")
            + f"; steady window {e2e['window_s']:.1f}s"
        )
        out.append(
            f"  completed orders/s   {_rate(e2e['completed_per_s'])}  in the steady window; "
            f"{e2e['completed_per_s_overall'] or 0:.1f}/s from load start to the last outcome"
        )
        out.append(
            f"  backlog at load end  {e2e['backlog_at_load_end']:9d}  accepted, no outcome yet"
        )
        out.append(f"  accepted requests/s  {_rate(e2e['accepted_per_s'])}  (202s seen on Kafka)")
        wrk = e2e["wrk"]
        out.append(
            f"  wrk requests/s       {_rate(wrk['requests_per_s'])}  "
            f"(202/s {wrk['accepted_per_s']:.1f}; non-202 {wrk['non_202']}, "
            f"socket errors {wrk['socket_errors']})"
        )
        out.append(f"  outcomes             {e2e['outcomes']}")
        lat = e2e["latency_ms"]
        http = wrk["latency_us"]
        out.append("  latency (ms)             p50      p95      p99      max")
        out.append(
            "  request->outcome    "
            + " ".join(_ms(lat[k]) for k in ("p50", "p95", "p99", "max"))
            + f"   (n={lat['count']})"
        )
        for number, (stage, values) in enumerate(e2e.get("stages_ms", {}).items(), 1):
            out.append(
                f"    stage {number}         "
                + " ".join(_ms(values[k]) for k in ("p50", "p95", "p99", "max"))
                + f"   {stage}"
            )
        out.append(
            "  HTTP (wrk)          "
            + " ".join(_ms(http[k] / 1000) for k in ("p50", "p95", "p99", "max"))
        )
        out.append(f"  unfinished orders    {e2e['unfinished']}  (drain {e2e['drain_s']:.1f}s)")
        out.append(
            f"  kafka records/s      {_rate(e2e['kafka_records_per_s'])}  "
            f"({e2e['records_per_order']:.2f} per order)"
            if e2e.get("records_per_order")
            else f"  kafka records/s      {_rate(e2e.get('kafka_records_per_s'))}"
        )
        out.append(
            "  process        CPU% mean   CPU% max   peak RSS MiB   CPU ms/order (load + drain)"
        )
        for name, proc in e2e["processes"].items():
            per_order = proc.get("cpu_ms_per_order")
            out.append(
                f"  {name:<14}{proc['cpu_mean']:9.0f}  {proc['cpu_max']:9.0f}  "
                f"{proc['rss_peak_mib']:12.0f}   "
                + ("" if per_order is None else f"{per_order:10.1f}")
            )
    limits = result.get("limits")
    if limits:
        out.append("ceilings")
        for name, http in limits.get("http", {}).items():
            lat = http["latency_us"]
            out.append(
                f"  HTTP {name:<16} {_rate(http['requests_per_s'])} req/s  "
                f"p50 {lat['p50'] / 1000:.1f} ms  p99 {lat['p99'] / 1000:.1f} ms"
            )
        kafka = limits.get("kafka")
        if kafka:
            out.append(
                f"  Kafka produce+consume {_rate(kafka['roundtrip_per_s'])} msg/s  "
                f"(produce alone {kafka['produce_per_s']:.0f} msg/s, {kafka['messages']} msgs)"
            )
    ratios = result.get("ratios")
    if ratios:
        out.append("ours against the ceilings")
        for name, value in ratios.items():
            out.append(f"  {name:<44} {_pct(value)}")
    consumer = result.get("consumer")
    if consumer:
        out.append(f"consumer: inventory's ConsumerWorker, {consumer['events']} events per phase")
        for phase in consumer["phases"]:
            out.append(
                f"  {phase['name']:<34} {_rate(phase['events_per_s'])} events/s  "
                f"({phase['us_per_event']:.0f} us/event)"
            )
    profiles = result.get("profiles")
    if profiles:
        for service, prof in profiles.items():
            if "roles" not in prof:
                out.append(f"profile {service}: {prof.get('error')}")
                continue
            out.append(f"profile {service}: {prof['samples']} samples (wall clock, per thread)")
            for role, info in prof["roles"].items():
                out.append(f"  {role} ({info['threads']} thread(s), {info['samples']} samples)")
                for kind, share in list(info["categories"].items())[:6]:
                    out.append(f"    {share * 100:5.1f}%  {kind}")
            out.append("  not idle, by deepest frame of ours:")
            for function, share in prof["ours"][:10]:
                out.append(f"    {share * 100:5.1f}%  {function}")
    return "\n".join(out)


def write_json(result: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False, default=str) + "\n")
