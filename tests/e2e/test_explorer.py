"""The event explorer in a real browser (Debian's chromium, driven by Playwright), over a
stack of its own: orders placed through the API appear live with their causal chains,
topics and lag are listed, a malformed record shows as undecodable and as a dead letter,
and the redrive button redrives it (and says what it skipped). The page's screenshot is
kept in the test's folder (and at $EXPLORER_SCREENSHOT when set: docs/images/explorer.png
is made that way)."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import service_databases
from tests.e2e.conftest import RunningStack, start_stack
from tools.local.stack import PORTS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WAIT = 30_000
"""Milliseconds the page gets to show what the API already answered."""
WHERE = re.compile(r"^[a-z-]+\[\d+\]@\d+$")


def chromium() -> str:
    """Debian's chromium; in CI its absence is a failure, elsewhere a skip."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs it with apt-get")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def explored(
    browser: Browser, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    """A SQLite stack with its explorer."""
    folder = tmp_path_factory.mktemp("stack-explorer")
    with service_databases("sqlite", folder, list(PORTS)) as databases:
        running = start_stack(kafka_bootstrap, folder, "sqlite", databases, explorer=True)
        try:
            yield running
        finally:
            running.client.close()
            running.stack.down()


@pytest.fixture
def page(browser: Browser, explored: RunningStack) -> Iterator[Page]:
    assert explored.stack.explorer is not None
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(explored.stack.explorer.url)
    expect(page.locator("#live")).to_have_class("live", timeout=WAIT)
    yield page
    context.close()
    assert errors == [], "the page threw"


def order_row(page: Page, order_id: str):  # noqa: ANN201 - a Playwright Locator
    return page.locator(f'#orders li.order[data-order="{order_id}"]')


def show_chain(page: Page, order_id: str, types: list[str]) -> None:
    """Select the order and wait until its chain shows every one of `types`."""
    order_row(page, order_id).click()
    expect(page).to_have_url(re.compile(f"#order={order_id}$"))
    expect(page.locator("#chain")).to_have_attribute("data-order", order_id, timeout=WAIT)
    for kind in types:
        expect(page.locator(f'#chain g.hop[data-type="{kind}"]')).to_have_count(1, timeout=WAIT)


def test_the_explorer_shows_orders_their_chains_offsets_and_dead_letters_live(
    page: Page, explored: RunningStack, tmp_path: Path
) -> None:
    shop, prefix = explored.operator, explored.topic_prefix
    gear = shop.create_product("Brass gear", 1250)
    shop.set_stock_eventually(gear["id"], 2)
    ada = explored.client.sign_up("Ada")
    line = {"product_id": gear["id"], "quantity": 1}

    confirmed = ada.place_order_eventually([line])["id"]
    cancelled = ada.place_order_eventually([line])["id"]
    ada.wait_for_status(cancelled)
    ada.cancel(cancelled).raise_for_status()
    ada.wait_for_status(cancelled, {"CANCELLED"})
    rejected = ada.place_order_eventually([{**line, "quantity": 2}])["id"]
    assert ada.wait_for_status(rejected)["status"] == "REJECTED"
    assert ada.wait_for_status(confirmed)["status"] == "CONFIRMED"

    # the orders appear, with the state their events imply
    for order_id, state in [
        (confirmed, "CONFIRMED"),
        (cancelled, "CANCELLED"),
        (rejected, "REJECTED"),
    ]:
        expect(order_row(page, order_id)).to_have_attribute("data-state", state, timeout=WAIT)
    expect(page.locator("#count-confirmed")).to_have_text("1", timeout=WAIT)
    expect(page.locator("#count-rejected")).to_have_text("1")

    # each chain runs across the order and inventory lanes, every hop placed on Kafka
    show_chain(page, rejected, ["order-created", "stock-shortage", "order-rejected"])
    expect(page.locator('#chain g.hop[data-type="stock-shortage"]')).to_have_attribute(
        "data-service", "inventory"
    )
    show_chain(page, confirmed, ["order-created", "stock-reserved", "order-confirmed"])
    for lane in ("order", "inventory"):
        expect(page.locator(f'#chain g.lane[data-service="{lane}"]')).to_have_count(1)
    hops = page.locator("#chain g.hop")
    for where in hops.evaluate_all("hops => hops.map(h => h.dataset.where)"):
        assert WHERE.match(where), where
    expect(page.locator('#chain g.hop[data-type="order-created"] text.where')).to_have_text(
        re.compile(r"^orders\[\d+\]@\d+$")
    )
    # and who has read each hop: inventory and user read orders, order reads stock
    for service in ("inventory", "user", "order"):
        expect(
            page.locator(f'#chain g.read[data-service="{service}"][data-read="true"]')
        ).not_to_have_count(0, timeout=WAIT)

    # topics with their partitions' end offsets; each service's group with its lag
    expect(page.locator('#topics tr[data-topic="orders"] .part')).to_have_count(3, timeout=WAIT)
    for service in ("order", "inventory", "user"):
        expect(page.locator(f'#groups tr[data-group="{prefix}{service}"]')).to_be_visible(
            timeout=WAIT
        )

    # a malformed record: undecodable on the page, dead-lettered by both consumers
    key = f"garbage-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": explored.stack.bootstrap})
    producer.produce(prefix + "orders", value=b"\x00\x01 not an event", key=key.encode())
    assert producer.flush(30) == 0
    bad = page.locator("#undecodable li.bad-record", has_text=key)
    expect(bad).to_contain_text("missing CloudEvents header", timeout=WAIT)
    expect(bad.locator("code").first).to_have_text(re.compile(r"^orders\[\d+\]@\d+$"))
    letter = page.locator('#letters li.letter[data-consumer="inventory"]')
    expect(letter.locator(".reason")).to_have_text("invalid-envelope", timeout=WAIT)
    expect(letter).to_contain_text("missing CloudEvents header")
    expect(page.locator('#letters li.letter[data-consumer="user"]')).to_have_count(1, timeout=WAIT)

    # redrive is a button; it re-reads inventory's record and re-publishes it, and the
    # letter shows it
    page.locator('button.redrive[data-consumer="inventory"]').click()
    expect(page.locator("#redrive-result")).to_have_text(
        re.compile(r"^re-published 1 dead-lettered event\(s\) of inventory from dead-letters$"),
        timeout=WAIT,
    )
    expect(page.locator('#letters li.letter.redriven[data-consumer="inventory"]')).to_have_count(
        1, timeout=WAIT
    )
    # a dead letter pointing where no record is: skipped, and the page says why
    producer.produce(
        prefix + "dead-letters",
        value=b"{}",
        key=key.encode(),
        headers=[
            ("dlq_reason", b"handler-failed"),
            ("dlq_error", b"forged"),
            ("dlq_topic", (prefix + "orders").encode()),
            ("dlq_partition", b"0"),
            ("dlq_offset", b"999999999"),
            ("dlq_consumer", b"user"),
            ("dlq_time", b"2026-01-01T00:00:00Z"),
        ],
    )
    assert producer.flush(30) == 0
    forged = page.locator('#letters li.letter[data-consumer="user"]', has_text="forged")
    expect(forged).to_have_count(1, timeout=WAIT)
    page.locator('button.redrive[data-consumer="user"]').click()
    expect(page.locator("#redrive-result")).to_have_text(
        # user's letters of the malformed record (parked again after inventory's redrive)
        # go back; the forged one does not
        re.compile(
            r"^re-published [12] dead-lettered event\(s\) of user from dead-letters;"
            r" skipped, never published: 1 out-of-range$"
        ),
        timeout=WAIT,
    )

    # the page still follows the stack after all that
    later = ada.place_order_eventually([line])["id"]
    expect(order_row(page, later)).to_be_visible(timeout=WAIT)

    show_chain(
        page,
        cancelled,
        ["order-created", "stock-reserved", "order-confirmed", "order-cancelled", "stock-released"],
    )
    page.mouse.move(0, 0)
    shot = tmp_path / "explorer.png"
    page.screenshot(path=shot, full_page=True)
    assert shot.stat().st_size > 10_000
    if target := os.environ.get("EXPLORER_SCREENSHOT"):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
