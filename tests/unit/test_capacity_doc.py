"""docs/capacity.md holds to the code: the topics, partitions and consumers it states are
the registry's, the chart's footprint it quotes is the chart's, and every command it gives
for a figure is one that exists (a make target, `python -m tools.bench` with options its
parser takes)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from shared.messaging import topics
from tools.bench.__main__ import parser
from tools.dev import k8s_values

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "capacity.md"
VALUES = ROOT / "deploy" / "k8s" / "event-driven-shop" / "values.yaml"


def text() -> str:
    return DOC.read_text()


def section(title: str) -> str:
    """The text under a `## title` heading, up to the next one of its level."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text(), re.M | re.S)
    assert match, f"docs/capacity.md has no section {title!r}"
    return match.group(1)


def table_rows(part: str) -> list[list[str]]:
    """The cells of each table row in `part`, header and rule lines aside."""
    rows = []
    for line in part.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[-| ]+\|", line):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def quoted(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


def make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, re.M))


def commands() -> list[str]:
    """Every code span of the document that runs something: make or the bench."""
    spans = (" ".join(span.split()) for span in re.findall(r"`([^`]+)`", text()))
    return [s for s in spans if re.match(r"(\w+=\S+ )*(make |python -m tools\.bench)", s)]


def check_command(command: str) -> None:
    for step in command.split("&&"):
        words = shlex.split(step)
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
            words.pop(0)  # an environment assignment before the command
        if words[:1] == ["make"]:
            target, *assignments = words[1:]
            assert target in make_targets(), f"{command!r}: no make target {target!r}"
            for assignment in assignments:
                name, _, value = assignment.partition("=")
                assert name == "BENCH_ARGS", f"{command!r}: make takes no {name}"
                parser().parse_args(shlex.split(value))
        else:
            assert words[:3] == ["python", "-m", "tools.bench"], command
            parser().parse_args(words[3:])


def test_the_document_quotes_the_benchs_commands() -> None:
    quoted_commands = commands()
    assert "make up && make bench" in " ".join(quoted_commands)
    for wanted in ("make bench-postgres", "python -m tools.bench consumer"):
        assert wanted in quoted_commands
    assert "python -m tools.bench relay" in quoted_commands


@pytest.mark.parametrize("command", commands())
def test_every_command_the_document_gives_exists(command: str) -> None:
    check_command(command)


@pytest.mark.parametrize(
    "command",
    [
        "make benchmark",
        "make bench BENCH_ARGS='--no-such-option'",
        "python -m tools.bench consume",
        "make bench-postgres WORKERS=4",
    ],
)
def test_a_command_that_does_not_exist_is_caught(command: str) -> None:
    with pytest.raises((AssertionError, SystemExit)):
        check_command(command)


def test_each_service_consumes_what_the_registry_says_and_scales_to_its_partitions() -> None:
    values = k8s_values.registry_values()
    partitions = {topic["name"]: topic["partitions"] for topic in values["topics"]}
    rows = {
        row[0]: row
        for row in table_rows(section("Topics, partitions and the chart today"))
        if row[0] != "service"
    }
    assert set(rows) == {service["name"] for service in values["services"]}
    for service in values["services"]:
        _, consumes, cap = rows[service["name"]]
        assert quoted(consumes) == set(service["subscribes"]), service["name"]
        assert int(cap) == max(partitions[t] for t in service["subscribes"]), service["name"]


def test_the_topic_settings_stated_are_topic_specs() -> None:
    spec = k8s_values.topic_spec("orders")
    days = topics.EVENT_RETENTION.days
    stated = (
        f"({spec['partitions']} partitions, {spec['replicas']} replicas, "
        f"`min.insync.replicas` {spec['config']['min.insync.replicas']}, "
        f"`retention.ms` {days} days)"
    )
    assert stated in " ".join(section("Topics, partitions and the chart today").split())
    assert f"Every topic has {spec['partitions']} partitions" in text()
    assert {
        k8s_values.topic_spec(t["name"])["partitions"]
        for t in k8s_values.registry_values()["topics"]
    } == {spec["partitions"]}


def test_every_topic_of_the_stack_has_its_records_per_order() -> None:
    inputs = section("Inputs")
    named = set()
    for row in table_rows(inputs):
        if row[0] != "topic":
            named |= quoted(row[0])
    topics = {topic["name"] for topic in k8s_values.registry_values()["topics"]}
    assert topics <= named, f"not in the per-topic table: {sorted(topics - named)}"


def test_the_charts_footprint_quoted_is_the_charts() -> None:
    footprint = yaml.safe_load(VALUES.read_text())["footprint"]
    (s4,) = [row for row in table_rows(section("Inputs")) if row[0].startswith("**S4**")]
    order, inventory, product, user = (float(cell) for cell in s4[1:5])
    assert {"order": order, "inventory": inventory, "product": product, "user": user} == {
        name: float(figures["cpuMsPerOrder"]) for name, figures in footprint.items()
    }
    assert float(s4[5].split()[0]) == pytest.approx(order + inventory + product + user)
