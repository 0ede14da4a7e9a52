"""The explorer's web app: one static page, JSON snapshots and a Server-Sent Events stream.

    GET  /                     the page (static/index.html)
    GET  /api/snapshot         counters, recent orders, topics, groups, dead letters
    GET  /api/orders/{id}      one order's causal chain
    GET  /api/stream           `snapshot` events whenever something changed (at most 4/s)
    GET  /api/lag              each consumer group's lag over time (sampled every few seconds)
    GET  /api/search           records by time range, key, event id, type or header value
    POST /api/redrive          {"consumer": NAME}: the one write, the redrive by reference
    GET  /health, /ready

It reads only Kafka and serves on 127.0.0.1; it needs no token and holds no secret."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaException
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from shared.messaging.deadletter import DEAD_LETTERS
from shared.messaging.producer import DeliveryError, EventProducer
from shared.messaging.redrive import RedriveSummary, redrive
from tools.ops import search, times
from tools.ops.explorer.config import ExplorerSettings
from tools.ops.explorer.kafka import Observer
from tools.ops.explorer.model import ShopView
from tools.ops.records import as_dict, decode, reader, stack_topics

STATIC = Path(__file__).resolve().parent / "static"
PUSH_INTERVAL = 0.25
HEARTBEAT = 15.0


class RedriveRequest(BaseModel):
    consumer: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")


def create_app(settings: ExplorerSettings | None = None, observe: bool = True) -> FastAPI:
    """The app; `observe=False` leaves Kafka alone (tests feed `app.state.view`)."""
    settings = settings or ExplorerSettings()
    view = ShopView(
        settings.topic_prefix,
        max_orders=settings.max_orders,
        trace_url=settings.trace_url,
        lag_every=settings.lag_every,
        lag_points=settings.lag_points,
    )
    observer = Observer(view, settings.kafka(), settings.topic_prefix, tail=settings.tail)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if observe:
            observer.start()
        try:
            yield
        finally:
            app.state.stopping.set()
            if observe:
                await run_in_threadpool(observer.stop)

    app = FastAPI(title="Shop event explorer", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.view = view
    app.state.stopping = asyncio.Event()
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _page_routes(app, lambda: not observe or observer.connected.is_set())
    _api_routes(app, view, settings)
    return app


def _page_routes(app: FastAPI, connected: Callable[[], bool]) -> None:
    """The page, and the process's liveness and readiness (`connected` to Kafka)."""

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    @app.get("/health")
    def health() -> dict[str, Any]:
        """The process answers, naming itself and its pid (as the services do)."""
        return {"status": "ok", "service": "explorer", "pid": os.getpid()}

    @app.get("/ready")
    def ready() -> JSONResponse:
        ok = connected()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


def _api_routes(app: FastAPI, view: ShopView, settings: ExplorerSettings) -> None:
    """What the page reads (snapshots, one order, the stream) and its one write."""
    redrives = asyncio.Lock()

    @app.get("/api/snapshot")
    def snapshot() -> Response:
        return _json(view.snapshot())

    @app.get("/api/orders/{order_id}")
    def order(order_id: str) -> Response:
        found = view.order(order_id)
        if found is None:
            raise HTTPException(404, f"no events of order {order_id} seen")
        return _json(found)

    @app.get("/api/stream")
    async def stream(request: Request) -> StreamingResponse:
        return StreamingResponse(
            _snapshots(request, view, app.state.stopping),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    @app.get("/api/lag")
    def lag() -> Response:
        return _json(view.lag_history())

    searches = asyncio.Semaphore(SEARCHES)

    @app.get("/api/search")
    async def search_log(request: Request) -> Response:
        query, topics = search_form(request.query_params.multi_items(), settings.topic_prefix)
        if searches.locked():
            raise HTTPException(429, "searches under way: try again", {"retry-after": "1"})
        async with searches:
            try:
                found = await run_in_threadpool(_search, settings, topics, query)
            except LookupError as exc:
                raise HTTPException(404, str(exc)) from exc
            except TimeoutError as exc:
                raise HTTPException(504, f"search unfinished: {exc}") from exc
            except KafkaException as exc:
                raise HTTPException(502, f"search failed: {exc}") from exc
        answer = found.as_dict()
        for row in answer["partitions"]:
            row["topic"] = view.short(row["topic"])
        records = []
        for message in found.records:
            record = as_dict(decode(message))
            record["topic"] = view.short(record["topic"])
            records.append(record)
        return _json({"query": query.describe(), **answer, "records": records})

    @app.post("/api/redrive")
    async def redrive_consumer(body: RedriveRequest) -> dict[str, Any]:
        topic = settings.topic_prefix + DEAD_LETTERS
        async with redrives:
            try:
                summary = await run_in_threadpool(_redrive, settings, body.consumer)
            except (LookupError, TimeoutError, DeliveryError, KafkaException) as exc:
                raise HTTPException(502, f"redrive failed: {exc}") from exc
        return {
            "consumer": body.consumer,
            "topic": view.short(topic),
            "republished": summary.redriven,
            "skipped": dict(sorted(summary.skipped.items())),
        }


SEARCHES = 2
"""Searches run at once; another is answered 429."""
FORM = {
    "since": lambda text: times.moment(text, future=True),
    "until": lambda text: times.moment(text, future=True),
    "key": search.key_text,
    "id": search.event_id_text,
    "type": search.event_type_text,
    "header": search.header_pair,
    "topic": search.topic_text,
    "limit": search.limit_number,
}
"""The search form's fields and the check of each (tools.ops.search, tools.ops.times)."""
SEARCH_LIMIT = 50
"""Records a search answers at most unless its `limit` says otherwise."""


def search_form(params: Sequence[tuple[str, str]], prefix: str) -> tuple[search.Query, list[str]]:
    """The query and topics of a search's parameters, every one checked; 422 naming each
    field that is not what it should be (an unknown or repeated one, a value too long,
    malformed or with control characters), without echoing a flood."""
    problems: list[dict[str, str]] = []
    values: dict[str, Any] = {}
    for name, text in params:
        field = name[:32]
        if name not in FORM:
            problems.append({"field": field, "reason": "not a search field"})
        elif name in values:
            problems.append({"field": field, "reason": "given more than once"})
        elif text != "":
            try:
                values[name] = FORM[name](text)
            except ValueError as exc:
                problems.append({"field": field, "reason": str(exc)})
        if len(problems) >= len(FORM):
            break
    topics = stack_topics(prefix)
    if "topic" in values:
        topic = prefix + values["topic"]
        if topic not in topics:
            problems.append({"field": "topic", "reason": "not one of the stack's topics"})
        topics = [topic]
    since, until = values.get("since"), values.get("until")
    if since is not None and until is not None and until <= since:
        problems.append({"field": "until", "reason": "must be later than since"})
    if problems:
        raise HTTPException(422, problems)
    query = search.Query(
        since=since,
        until=until,
        key=values.get("key"),
        event_id=values.get("id"),
        type=values.get("type"),
        header=values.get("header"),
        limit=values.get("limit", SEARCH_LIMIT),
    )
    return query, topics


def _search(settings: ExplorerSettings, topics: list[str], query: search.Query) -> search.Found:
    consumer = reader(settings.kafka(), settings.topic_prefix)
    try:
        return search.search(consumer, topics, query, timeout=settings.search_timeout)
    finally:
        consumer.close()


def _redrive(settings: ExplorerSettings, consumer: str) -> RedriveSummary:
    kafka = settings.redrive_kafka()
    producer = EventProducer(kafka)
    try:
        return redrive(
            kafka, producer, topic_prefix=settings.topic_prefix, consumer=consumer, timeout=30
        )
    finally:
        producer.close()


async def _snapshots(
    request: Request, view: ShopView, stopping: asyncio.Event
) -> AsyncIterator[bytes]:
    """A snapshot now, then one whenever the view changed, at most every PUSH_INTERVAL;
    a comment line now and then keeps proxies and the browser from giving up."""
    yield b"retry: 1000\n\n"
    sent, quiet = -1, 0.0
    while not stopping.is_set() and not await request.is_disconnected():
        if view.version != sent:
            sent = view.version
            data = await run_in_threadpool(view.snapshot)
            yield b"event: snapshot\ndata: " + orjson.dumps(data) + b"\n\n"
            quiet = 0.0
        elif quiet >= HEARTBEAT:
            yield b": keep-alive\n\n"
            quiet = 0.0
        await asyncio.sleep(PUSH_INTERVAL)
        quiet += PUSH_INTERVAL


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")
