"""The explorer's search and lag graph in a real browser (Debian's chromium, driven by
Playwright, as tests/e2e/test_explorer.py does), against `python -m tools.ops.explorer`
on topics of its own: the page seeks by time, finds a record by key and by event id,
refuses a malformed field, and draws each group's lag over time as it changes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from playwright.sync_api import Browser, Page, expect, sync_playwright

from shared.clock import utcnow
from shared.messaging.envelope import Envelope, dump_json
from shared.messaging.producer import producer_config
from shared.messaging.topics import ensure_topics
from tests.conftest import free_port
from tests.e2e.test_explorer import chromium
from tests.helpers import eventually, unique
from tools.ops.search import key_partition

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30_000
START = (utcnow() - timedelta(hours=3)).replace(microsecond=0)
RECORDS = 60
"""One record a minute from START: order-0 .. order-59, alternately created and confirmed."""


@dataclass(frozen=True)
class Sent:
    event: Envelope
    partition: int
    offset: int
    stamp: datetime


@dataclass
class Explorer:
    url: str
    bootstrap: str
    prefix: str
    topic: str
    group: str
    sent: list[Sent]

    def commit(self, offsets: dict[int, int]) -> None:
        """The group's committed offsets, as a consumer that stopped there leaves them."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "enable.auto.commit": False,
            }
        )
        try:
            consumer.commit(
                offsets=[TopicPartition(self.topic, p, o) for p, o in offsets.items()],
                asynchronous=False,
            )
        finally:
            consumer.close()

    def ends(self) -> dict[int, int]:
        ends: dict[int, int] = {}
        for sent in self.sent:
            ends[sent.partition] = max(ends.get(sent.partition, 0), sent.offset + 1)
        return ends


@pytest.fixture(scope="module")
def explorer(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Explorer]:
    prefix = unique("explore") + "-"
    topic = prefix + "orders"
    ensure_topics(kafka_bootstrap, [topic], partitions=3)
    producer = Producer(producer_config(kafka_bootstrap))
    sent: list[Sent] = []
    for n in range(RECORDS):
        when = START + timedelta(minutes=n)
        envelope = Envelope(
            type="order-created" if n % 2 == 0 else "order-confirmed",
            source="/services/order",
            key=f"order-{n}",
            data=dump_json({"order_id": f"order-{n}"}),
            time=when,
        )

        def placed(
            error: object, message: object, envelope: Envelope = envelope, when: datetime = when
        ) -> None:
            assert error is None, error
            sent.append(Sent(envelope, message.partition(), message.offset(), when))  # type: ignore[attr-defined]

        producer.produce(
            topic,
            envelope.data,
            envelope.key.encode(),
            headers=envelope.headers(),
            timestamp=int(when.timestamp() * 1000),
            on_delivery=placed,
        )
    assert producer.flush(30) == 0 and len(sent) == RECORDS
    port = free_port()
    log = tmp_path_factory.mktemp("explorer") / "explorer.log"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "EXPLORER_LAG_EVERY": "0.5",
        "EXPLORER_LAG_POINTS": "50",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tools.ops.explorer",
                "--port",
                str(port),
                "--bootstrap",
                kafka_bootstrap,
                "--topic-prefix",
                prefix,
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                return httpx.get(url + "/ready", timeout=2).status_code == 200
            except httpx.TransportError:  # not listening yet
                return False

        eventually(ready, timeout=60, interval=0.3, message="the explorer ready")
        yield Explorer(url, kafka_bootstrap, prefix, topic, prefix + "inventory", sent)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, explorer: Explorer) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 1200})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(explorer.url)
    expect(page.locator("#live")).to_have_class("live", timeout=WAIT)
    yield page
    context.close()
    assert errors == [], "the page threw"


def search(page: Page, **fields: str) -> None:
    form = page.locator("#search")
    for name in ("since", "until", "key", "id", "type", "header", "topic"):
        form.locator(f'input[name="{name}"]').fill(fields.get(name, ""))
    form.locator('input[name="limit"]').fill(fields.get("limit", "50"))
    summary = page.locator("#search-summary")
    summary.evaluate("node => { node.textContent = ''; delete node.dataset.found; }")
    form.locator("button[type=submit]").click()
    expect(summary).not_to_have_text(re.compile(r"^(searching…)?$"), timeout=WAIT)


def shown(page: Page) -> list[str]:
    rows = page.locator("#search-results tr.hit")
    return rows.evaluate_all("rows => rows.map(r => r.dataset.id)")


def test_the_page_seeks_by_time_and_finds_by_key_and_event_id(
    page: Page, explorer: Explorer
) -> None:
    sent = explorer.sent
    # a time range: the records stamped in it, and only those read
    since, until = START + timedelta(minutes=20), START + timedelta(minutes=30)
    search(page, since=since.isoformat(), until=until.isoformat())
    expected = [s for s in sent if since <= s.stamp < until]
    assert sorted(shown(page)) == sorted(s.event.id for s in expected)
    summary = page.locator("#search-summary")
    expect(summary).to_have_attribute("data-read", str(len(expected)))
    expect(summary).to_contain_text("orders[0]")

    # a key: only its partition is read
    target = sent[37]
    search(page, key=target.event.key)
    assert shown(page) == [target.event.id]
    expect(page.locator("#search-results tr.hit")).to_have_attribute(
        "data-where", f"orders[{target.partition}]@{target.offset}"
    )
    assert key_partition(target.event.key.encode(), 3) == target.partition
    in_partition = sum(1 for s in sent if s.partition == target.partition)
    expect(summary).to_have_attribute("data-read", str(in_partition))
    expect(summary).to_contain_text("in the key's partition of each topic")

    # an event id, with a type that agrees, then one that does not
    other = sent[12]
    search(page, id=other.event.id, type=other.event.type)
    assert shown(page) == [other.event.id]
    expect(page.locator("#search-results tr.hit")).to_have_attribute("data-key", other.event.key)
    search(page, id=other.event.id, type="order-cancelled")
    assert shown(page) == []
    expect(page.locator("#search-results")).to_contain_text("Nothing matches")

    # a malformed field is refused, and the page says which
    search(page, key="ok", header="no equals sign")
    expect(summary).to_have_class(re.compile("failed"))
    expect(summary).to_contain_text("header")


def test_the_page_draws_each_groups_lag_over_time(page: Page, explorer: Explorer) -> None:
    ends = explorer.ends()
    explorer.commit(dict.fromkeys(ends, 0))  # everything to read
    total = sum(ends.values())
    row = page.locator(f'#lag-history tr[data-group="{explorer.group}"]')
    expect(row.locator("td.num")).to_have_text(str(total), timeout=WAIT)
    explorer.commit({p: end // 2 for p, end in ends.items()})  # half read
    half = total - sum(end // 2 for end in ends.values())
    expect(row.locator("td.num")).to_have_text(str(half), timeout=WAIT)
    explorer.commit(ends)  # caught up
    expect(row.locator("td.num")).to_have_text("0", timeout=WAIT)

    spark = row.locator("svg.spark")
    expect(spark).to_have_count(1)
    points = spark.locator("polyline").get_attribute("points") or ""
    heights = [float(pair.split(",")[1]) for pair in points.split()]
    assert len(heights) >= 3
    # high while behind, lower half-way, at the base line once caught up (y grows down)
    assert min(heights) < max(heights)
    assert heights[-1] == max(heights), "caught up: the last point is on the base line"

    history = httpx.get(explorer.url + "/api/lag", timeout=5).json()
    (group,) = [g for g in history["groups"] if g["group"] == explorer.group]
    lags = [lag for _, lag in group["points"]]
    assert total in lags and half in lags and lags[-1] == 0
    assert group["most"] == total
