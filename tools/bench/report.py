"""The bench's arithmetic and its text report: pure functions, no I/O but `write_json`.

Percentiles interpolate linearly between closest ranks (numpy's default), so p50 of
[1, 2, 3, 4] is 2.5. Rates count events whose time falls in a half-open window
[start, end). Ratios are None when the denominator is missing or zero.

The headline is CPU per completed order (`cpu_headline`); `evaluate_targets` reads each
target off a result as met, not met or not measured."""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from services.registry import names

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
    """CPU-seconds per process inside [start, end), from CPU% samples. Each sample covers
    the time since the previous sample of its process (`interval`, the sampler's period,
    for a process's first): a busy machine stretches the sampler's rounds well beyond its
    period, and counting each round as one period would undercount."""
    total: dict[str, float] = defaultdict(float)
    previous: dict[str, float] = {}
    for t, name, percent, _ in samples:
        covered = t - previous[name] if name in previous else interval
        previous[name] = t
        if start < t <= end:
            total[name] += percent / 100 * covered
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
    head = next((frame for frame in frames[:2] if frame.startswith("thread (")), "")
    name = head.partition("): ")[2]
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
        if head := next((frame for frame in frames[:2] if frame.startswith("thread (")), None):
            threads[role].add(head.partition(")")[0])
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


def cpu_self_summary(speedscope: Mapping[str, Any], top: int = 15) -> dict[str, Any]:
    """A py-spy speedscope profile (threads on CPU only) as the share of its samples each
    function spent itself (the leaf), overall and per thread name. Times the service's CPU
    per order, a share is that function's CPU per order."""
    frames = speedscope["shared"]["frames"]
    labels = [_speedscope_label(frame) for frame in frames]
    own: Counter[str] = Counter()
    per_thread: Counter[str] = Counter()
    for prof in speedscope["profiles"]:
        thread = role_of([f"thread (0): {_thread_name(prof.get('name', ''))}"])
        for stack in prof["samples"]:
            if stack:
                own[labels[stack[-1]]] += 1
                per_thread[thread] += 1
    total = sum(own.values())
    return {
        "samples": total,
        "leaf": [(name, n / total) for name, n in own.most_common(top)] if total else [],
        "threads": [(name, n / total) for name, n in per_thread.most_common()] if total else [],
    }


def _thread_name(name: str) -> str:
    """py-spy names a speedscope profile 'Process 12 Thread 34 "consumer-orders"'."""
    return name.split('"')[1] if name.count('"') >= 2 else name


def _speedscope_label(frame: Mapping[str, Any]) -> str:
    path = str(frame.get("file") or "")
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif stdlib := re.search(r"/lib/python3\.\d+/", path):
        path = path[stdlib.end() :]
    else:
        for marker in PROJECT:
            if f"/{marker}" in path:
                path = marker + path.split(f"/{marker}", 1)[1]
                break
    return f"{frame.get('name', '?')} ({path})" if path else str(frame.get("name", "?"))


SERVICES = tuple(names())
BROKER = "kafka"
DATABASE = "postgres"
LOAD_GENERATORS = ("wrk", "bench")
PHASE_WORKER_ORDERS = "worker: order-created"
PHASE_RAW_DECODE = "raw consume + decode (envelope, pydantic)"

MET, NOT_MET, NOT_MEASURED = "met", "not met", "not measured"


def _broker(per_process: Mapping[str, float]) -> float | None:
    """The broker's CPU: the single broker's, or the sum over a cluster's nodes."""
    nodes = [ms for name, ms in per_process.items() if name == BROKER or name.startswith("kafka-")]
    return sum(nodes) if nodes else None


def cpu_headline(e2e: Mapping[str, Any] | None) -> dict[str, Any]:
    """CPU ms per completed order of a run: the services' sum, the broker's, the database
    server's (PostgreSQL runs), and each process's (None where not measured; the total is
    None unless every service was)."""
    processes = (e2e or {}).get("processes", {})
    per_process = {
        name: proc["cpu_ms_per_order"]
        for name, proc in processes.items()
        if proc.get("cpu_ms_per_order") is not None
    }
    services = tuple((e2e or {}).get("services") or SERVICES)
    measured = [per_process.get(name) for name in services]
    return {
        "services_total": None if None in measured else sum(m or 0.0 for m in measured),
        "broker": _broker(per_process),
        "database": per_process.get(DATABASE),
        "per_process": per_process,
        "services": list(services),
        "orders": sum((e2e or {}).get("outcomes", {}).values()) if e2e else None,
    }


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, Mapping) or data.get(key) is None:
            return None
        data = data[key]
    return data


def _phase_rate(consumer: Mapping[str, Any] | None, name: str) -> float | None:
    for phase in (consumer or {}).get("phases", []):
        if phase["name"] == name:
            return phase.get("events_per_s")
    return None


def _sum_runs(runs: Sequence[Mapping[str, Any] | None], key: str) -> tuple[int | None, str]:
    labelled = zip(("unpaced", "paced"), runs, strict=True)
    values = [(label, run.get(key)) for label, run in labelled if run]
    measured = [(label, v) for label, v in values if v is not None]
    if not measured:
        return None, ""
    return sum(v for _, v in measured), ", ".join(f"{label} {v}" for label, v in measured)


def target(
    name: str, op: str, limit: float, unit: str, value: float | None, detail: str = "",
    valid: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """One target: met when `value op limit` holds (and the measurement was `valid`)."""
    if value is None:
        status = NOT_MEASURED
    elif not valid:
        status = NOT_MET
    else:
        status = MET if (value <= limit if op == "<=" else value >= limit) else NOT_MET
    return {"name": name, "op": op, "limit": limit, "unit": unit, "value": value,
            "status": status, "detail": detail}  # fmt: skip


STACK_TARGETS: dict[str, tuple[float, float, float]] = {
    "default": (2.0, 1.5, 500),
    "single": (2.0, 1.0, 700),
    "postgres": (2.5, 1.5, 350),
}
"""Per stack (`make bench`, `make bench-single`, `make bench-postgres`): services' and
brokers' CPU ms per completed order at most, completed orders/s at least."""


def evaluate_targets(result: Mapping[str, Any], stack: str = "default") -> list[dict[str, Any]]:
    """The targets of `stack` (STACK_TARGETS) and those every stack shares, each with its
    value from `result` and met / not met / not measured. The CPU and throughput targets
    read the unpaced run; errors, lost and doubled orders add up both runs; RSS is the
    largest of any service process in either."""
    services_ms, brokers_ms, orders_per_s = STACK_TARGETS[stack]
    e2e, paced = result.get("e2e"), result.get("paced")
    runs = [e2e, paced]
    cpu = cpu_headline(e2e) if e2e else {}
    errors, errors_detail = _sum_runs(runs, "errors")
    lost, lost_detail = _sum_runs(runs, "lost")
    doubled, doubled_detail = _sum_runs(runs, "doubled")
    consumer = result.get("consumer")
    applied = _phase_rate(consumer, PHASE_WORKER_ORDERS)
    raw = _phase_rate(consumer, PHASE_RAW_DECODE)
    relay = result.get("relay") or {}
    relay_ok = bool(relay.get("verified"))
    services = tuple((e2e or paced or {}).get("services") or SERVICES)
    rss = {
        name: max(_get(run, "processes", name, "rss_peak_mib") or 0.0 for run in runs if run)
        for name in services
        if any(_get(run, "processes", name, "rss_peak_mib") is not None for run in runs if run)
    }
    paced_rate = _get(paced, "load", "rate")
    return [
        target("services CPU per completed order", "<=", services_ms, "ms",
               cpu.get("services_total"), "+".join(services)),
        target("broker CPU per completed order", "<=", brokers_ms, "ms", cpu.get("broker"),
               BROKER),
        target("completed orders/s, steady window", ">=", orders_per_s, "/s",
               _get(e2e, "completed_per_s"), "unpaced run"),
        target("errors (non-202 + socket errors)", "<=", 0, "", errors, errors_detail),
        target("lost orders (accepted, no outcome)", "<=", 0, "", lost, lost_detail),
        target("doubled orders (2+ outcome records)", "<=", 0, "", doubled, doubled_detail),
        target("p99 request->outcome at half rate", "<=", 100, "ms",
               _get(paced, "latency_ms", "p99"),
               f"paced to {paced_rate:.0f}/s" if paced_rate else ""),
        target("inventory consumer, order-created/s", ">=", 6000, "/s", applied,
               "consumer bench"),
        target("inventory consumer / raw consume+decode", ">=", 0.2, "ratio",
               ratio(applied, raw), f"raw {raw:.0f}/s" if raw else ""),
        target("outbox relay drain, events/s", ">=", 20000, "/s", relay.get("relay_per_s"),
               relay.get("problem") or (f"raw producer {relay['raw_per_s']:.0f}/s"
                                        if relay.get("raw_per_s") else ""),
               valid=relay_ok),
        target("peak RSS per service process", "<=", 150, "MiB",
               max(rss.values()) if rss else None,
               ", ".join(f"{name} {mib:.0f}" for name, mib in rss.items())),
    ]  # fmt: skip


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ratio":
        return f"{value * 100:.1f}%"
    if unit in ("ms",):
        return f"{value:.2f} ms"
    if unit == "MiB":
        return f"{value:.0f} MiB"
    if unit == "/s":
        return f"{value:,.0f}/s"
    return f"{value:g}"


def _limit(entry: Mapping[str, Any]) -> str:
    limit, unit = entry["limit"], entry["unit"]
    shown = f"{limit * 100:g}%" if unit == "ratio" else f"{limit:,g}" + (f" {unit}" if unit else "")
    return f"{entry['op']} {shown.replace(' /s', '/s')}"


def render_headline(result: Mapping[str, Any]) -> list[str]:
    """CPU per completed order (with its targets), then the table of every target."""
    out: list[str] = []
    cpu = result.get("cpu_ms_per_order")
    targets = {t["name"]: t for t in result.get("targets", [])}
    if result.get("stack"):
        out.append(describe_stack(result["stack"], result.get("settings") or {}))
    if cpu:
        out.append(
            f"CPU per completed order ({cpu.get('orders') or 0} orders, unpaced run, "
            "load start to last outcome)"
        )
        for label, key, name in (
            ("services total (" + "+".join(cpu["services"]) + ")", "services_total",
             "services CPU per completed order"),
            ("broker (kafka)", "broker", "broker CPU per completed order"),
        ):  # fmt: skip
            entry = targets.get(name)
            beside = f"   target {_limit(entry)}: {entry['status']}" if entry else ""
            out.append(f"  {label:<46} {_value(cpu.get(key), 'ms'):>10}{beside}")
        per_process = cpu.get("per_process", {})
        for name in [*cpu["services"], BROKER, DATABASE, *LOAD_GENERATORS, "others"]:
            if name in per_process:
                note = {"wrk": "  (load generator)", "bench": "  (this bench)",
                        DATABASE: "  (database server, not in the services total)",
                        "others": "  (other work on the machine)"}.get(name, "")  # fmt: skip
                out.append(f"    {name:<44} {_value(per_process[name], 'ms'):>10}{note}")
    if targets:
        out.append("targets")
        for entry in targets.values():
            detail = f"  ({entry['detail']})" if entry.get("detail") else ""
            out.append(
                f"  {entry['name']:<46} {_value(entry['value'], entry['unit']):>10}  "
                f"{_limit(entry):<12} {entry['status']}{detail}"
            )
    return out


def _ms(value: float | int | None) -> str:
    return "-" if value is None else f"{value:8.1f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:9.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:5.1f}%"


def describe_stack(stack: str, settings: Mapping[str, Any]) -> str:
    """One line: which stack, its brokers and database, and how its spans were exported."""
    exporter = settings.get("OTEL_TRACES_EXPORTER") or "none"
    sampler = settings.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on"
    ratio = settings.get("OTEL_TRACES_SAMPLER_ARG")
    spans = "no span export" if exporter == "none" else f"spans to {exporter}, {sampler}"
    if ratio and exporter != "none":
        spans += f" {ratio}"
    parts = [f"{settings['brokers']} broker(s)"] if "brokers" in settings else []
    if settings.get("database"):
        parts.append(str(settings["database"]))
    return f"stack: {stack} ({', '.join([*parts, spans])})"


def render(result: Mapping[str, Any]) -> str:
    """The human summary printed at the end of a run: the headline and targets first."""
    out = render_headline(result)
    for key, title in (("e2e", "end to end"), ("paced", "end to end at half the rate")):
        if result.get(key):
            out.extend(_render_e2e(title, result[key]))
        elif result.get(f"{key}_error"):
            out.append(f"{title}: failed: {result[f'{key}_error']}")
    _render_rest(result, out)
    return "\n".join(out)


def _render_e2e(title: str, e2e: Mapping[str, Any]) -> list[str]:
    if not e2e:
        return []
    load, wrk = e2e["load"], e2e["wrk"]
    out = [
        f"{title}: {load['duration_s']:.0f}s, {load['connections']} connections, "
        f"{load['threads']} wrk thread(s)"
        + (f", paced to <= {load['rate']:.0f}/s" if load.get("rate") else ", unpaced")
        + f"; steady window {e2e['window_s']:.1f}s",
        f"  completed orders/s   {_rate(e2e['completed_per_s'])}  in the steady window; "
        f"{e2e['completed_per_s_overall'] or 0:.1f}/s from load start to the last outcome",
        f"  backlog at load end  {e2e['backlog_at_load_end']:9d}  accepted, no outcome yet",
        f"  accepted requests/s  {_rate(e2e['accepted_per_s'])}  (202s seen on Kafka)",
        f"  wrk requests/s       {_rate(wrk['requests_per_s'])}  "
        f"(202/s {wrk['accepted_per_s']:.1f}; non-202 {wrk['non_202']}, "
        f"socket errors {wrk['socket_errors']})",
        f"  outcomes             {e2e['outcomes']}",
    ]
    out += _render_latency(e2e)
    out.append(
        f"  errors {e2e.get('errors', '-')}, lost {e2e.get('lost', e2e['unfinished'])}, "
        f"doubled {e2e.get('doubled', '-')}  (drain {e2e['drain_s']:.1f}s)"
    )
    out.append(
        f"  kafka records/s      {_rate(e2e['kafka_records_per_s'])}  "
        f"({e2e['records_per_order']:.2f} per order)"
        if e2e.get("records_per_order")
        else f"  kafka records/s      {_rate(e2e.get('kafka_records_per_s'))}"
    )
    return out + _render_processes(e2e["processes"])


def _render_latency(e2e: Mapping[str, Any]) -> list[str]:
    lat, http = e2e["latency_ms"], e2e["wrk"]["latency_us"]
    out = [
        "  latency (ms)             p50      p95      p99      max",
        "  request->outcome    "
        + " ".join(_ms(lat[k]) for k in ("p50", "p95", "p99", "max"))
        + f"   (n={lat['count']})",
    ]
    for number, (stage, values) in enumerate(e2e.get("stages_ms", {}).items(), 1):
        out.append(
            f"    stage {number}         "
            + " ".join(_ms(values[k]) for k in ("p50", "p95", "p99", "max"))
            + f"   {stage}"
        )
    wrk = " ".join(_ms(http[k] / 1000) for k in ("p50", "p95", "p99", "max"))
    out.append("  HTTP (wrk)          " + wrk)
    return out


def _render_processes(processes: Mapping[str, Any]) -> list[str]:
    out = ["  process        CPU% mean   CPU% max   peak RSS MiB   CPU ms/order (load + drain)"]
    for name, proc in processes.items():
        per_order = proc.get("cpu_ms_per_order")
        out.append(
            f"  {name:<14}{proc['cpu_mean']:9.0f}  {proc['cpu_max']:9.0f}  "
            f"{proc['rss_peak_mib']:12.0f}   " + ("" if per_order is None else f"{per_order:10.2f}")
        )
    return out


def _render_rest(result: Mapping[str, Any], out: list[str]) -> None:
    for key in ("consumer", "relay", "limits"):
        if result.get(f"{key}_error"):
            out.append(f"{key}: failed: {result[f'{key}_error']}")
    if result.get("limits"):
        out += _render_limits(result["limits"])
    if result.get("ratios"):
        out.append("ours against the ceilings")
        for name, value in result["ratios"].items():
            out.append(f"  {name:<44} {_pct(value)}")
    if consumer := result.get("consumer"):
        out.append(f"consumer: inventory's ConsumerWorker, {consumer['events']} events per kind")
        for phase in consumer["phases"]:
            out.append(
                f"  {phase['name']:<46} {_rate(phase['events_per_s'])} events/s  "
                f"({phase['us_per_event']:.0f} us/event, {phase['events']} events)"
            )
    if result.get("relay"):
        out += _render_relay(result["relay"])
    per_process = _get(result, "cpu_ms_per_order", "per_process") or {}
    for service, prof in (result.get("profiles") or {}).items():
        out += _render_profile(service, prof, per_process.get(service))


def _render_limits(limits: Mapping[str, Any]) -> list[str]:
    out = ["ceilings"]
    for name, http in limits.get("http", {}).items():
        lat = http["latency_us"]
        out.append(
            f"  HTTP {name:<16} {_rate(http['requests_per_s'])} req/s  "
            f"p50 {lat['p50'] / 1000:.1f} ms  p99 {lat['p99'] / 1000:.1f} ms"
        )
    if kafka := limits.get("kafka"):
        out.append(
            f"  Kafka produce+consume {_rate(kafka['roundtrip_per_s'])} msg/s  "
            f"(produce alone {kafka['produce_per_s']:.0f} msg/s, {kafka['messages']} msgs)"
        )
    return out


def _render_relay(relay: Mapping[str, Any]) -> list[str]:
    return [
        f"outbox relay: {relay['rows']} rows on {relay['backend']}, "
        f"OutboxRelay.relay_once() until none pending, against a raw producer loop",
        f"  OutboxRelay          {_rate(relay['relay_per_s'])} events/s  "
        f"({relay['relay_s']:.2f}s, {relay['batches']} batches)",
        f"  raw producer         {_rate(relay['raw_per_s'])} events/s  "
        f"({relay['raw_s']:.2f}s); relay/raw {_pct(relay['ratio'])}",
        f"  check: relay topic holds {relay['relay_topic_records']}, "
        f"unsent rows {relay['unsent_after']}"
        + (f"; {relay['problem']}" if relay.get("problem") else ": all there"),
    ]


def _render_profile(
    service: str, prof: Mapping[str, Any], service_ms: float | None = None
) -> list[str]:
    if "roles" not in prof:
        return [f"profile {service}: {prof.get('error')}"]
    out = [f"profile {service}: {prof['samples']} samples (wall clock, per thread)"]
    for role, info in prof["roles"].items():
        out.append(f"  {role} ({info['threads']} thread(s), {info['samples']} samples)")
        for kind, share in list(info["categories"].items())[:6]:
            out.append(f"    {share * 100:5.1f}%  {kind}")
    out.append("  not idle, by deepest frame of ours:")
    for function, share in prof["ours"][:10]:
        out.append(f"    {share * 100:5.1f}%  {function}")
    cpu = prof.get("cpu_self") or {}
    if cpu.get("leaf"):
        ms = f" of {service_ms:.2f} ms/order" if service_ms else ""
        out.append(f"  CPU self time ({cpu['samples']} samples on CPU{ms}), by thread:")
        for thread, share in cpu["threads"][:6]:
            out.append(f"    {share * 100:5.1f}%  {_share_ms(share, service_ms)}{thread}")
        out.append("  CPU self time by function:")
        for function, share in cpu["leaf"][:12]:
            out.append(f"    {share * 100:5.1f}%  {_share_ms(share, service_ms)}{function}")
    return out


def _share_ms(share: float, service_ms: float | None) -> str:
    return f"{share * service_ms:5.2f} ms/order  " if service_ms else ""


def write_json(result: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False, default=str) + "\n")
