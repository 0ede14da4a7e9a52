"""Where a test run's Kafka and PostgreSQL come from (tests/conftest.py `Backends.choose`):
what the environment names, else TEST_BACKENDS with the engine and the local images."""

from __future__ import annotations

import importlib

import pytest

pytestmark = pytest.mark.unit

conftest = importlib.import_module("tests.conftest")
SERVERS = ("KAFKA_BOOTSTRAP_SERVERS", "TEST_DATABASE_URL")


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """The engine and the images as a test sets them; no server named, TEST_BACKENDS unset."""
    state: dict[str, object] = {"engine": True, "images": {"kafka", "postgres"}, "asked": 0}
    for name in (*SERVERS, conftest.BACKEND_CHOICE):
        monkeypatch.delenv(name, raising=False)

    def engine() -> bool:
        state["asked"] = int(str(state["asked"])) + 1
        return bool(state["engine"])

    monkeypatch.setattr(conftest, "docker_engine", engine)
    monkeypatch.setattr(conftest.containers, "image_ref", lambda name: f"local/{name}")
    monkeypatch.setattr(
        conftest.containers,
        "image_present",
        lambda ref: ref.removeprefix("local/") in state["images"],  # type: ignore[operator]
    )
    return state


def chosen() -> tuple[str, str]:
    backends = conftest.Backends.choose()
    return backends.kafka, backends.postgres


@pytest.mark.parametrize("value", ["", "auto"])
def test_auto_takes_a_container_where_the_image_is_built(
    value: str, machine: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(conftest.BACKEND_CHOICE, value)
    assert chosen() == ("container", "container")
    machine["images"] = {"kafka"}
    assert chosen() == ("container", "local")
    machine["engine"] = False
    assert chosen() == ("local", "local")


def test_a_named_server_wins_whatever_test_backends_says(
    machine: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pytest-xdist worker gets the controller's addresses, so it must take them."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    monkeypatch.setenv("TEST_DATABASE_URL", "postgresql+psycopg://shop@127.0.0.1/postgres")
    for value in ("container", "local"):
        monkeypatch.setenv(conftest.BACKEND_CHOICE, value)
        assert chosen() == ("given", "given")
    machine["engine"] = False
    monkeypatch.setenv(conftest.BACKEND_CHOICE, "container")
    assert chosen() == ("given", "given")
    assert machine["asked"] == 0, "no engine is asked about when none is needed"


def test_local_never_takes_a_container(
    machine: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(conftest.BACKEND_CHOICE, "local")
    assert chosen() == ("local", "local")
    assert machine["asked"] == 0


def test_container_stops_the_run_without_an_engine_or_an_image(
    machine: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(conftest.BACKEND_CHOICE, "container")
    assert chosen() == ("container", "container")
    machine["images"] = {"kafka"}
    with pytest.raises(pytest.UsageError, match="local/postgres is not built"):
        chosen()
    machine["engine"] = False
    with pytest.raises(pytest.UsageError, match="no engine answers"):
        chosen()


@pytest.mark.parametrize("value", ["containers", "CONTAINER", "x" * 10_000, "local "])
def test_an_unknown_choice_is_refused_before_anything_starts(
    value: str, machine: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(conftest.BACKEND_CHOICE, value)
    with pytest.raises(pytest.UsageError, match="one of auto, container, local") as refused:
        chosen()
    assert len(str(refused.value)) < 200, "the message quotes a bounded part of the value"
    assert machine["asked"] == 0
