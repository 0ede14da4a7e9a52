"""A service's database password comes from a file (`<NAME>_DATABASE_PASSWORD_FILE`, a
mounted secret), read at start-up into the URL it connects with: never in its environment,
its settings' URL or a log."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.order.config import OrderSettings
from services.order.main import SPEC
from shared.runtime.service import ServiceRuntime

pytestmark = pytest.mark.unit

URL = "postgresql+psycopg://order@db.internal:5432/order"
PASSWORD = "s3cret-Ab_9-xyz"


def secret(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "order-password"
    path.write_bytes(content)
    return path


def test_the_password_file_fills_in_the_url_s_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORDER_DATABASE_URL", URL)
    monkeypatch.setenv(
        "ORDER_DATABASE_PASSWORD_FILE", str(secret(tmp_path, b"%s\n" % PASSWORD.encode()))
    )
    settings = OrderSettings()
    url = settings.database()
    assert (url.username, url.password, url.host, url.database) == (
        "order",
        PASSWORD,
        "db.internal",
        "order",
    )
    assert PASSWORD not in repr(settings) and PASSWORD not in settings.database_url
    assert PASSWORD not in str(url), "a URL prints its password masked"


def test_the_service_connects_with_the_password_from_the_file(tmp_path: Path) -> None:
    settings = OrderSettings(
        database_url=URL,
        database_password_file=secret(tmp_path, PASSWORD.encode()),
        kafka_bootstrap_servers="127.0.0.1:1",
    )
    runtime = ServiceRuntime(SPEC, settings)
    try:
        assert runtime.engine.url.password == PASSWORD
    finally:
        runtime.engine.dispose()


def test_without_a_password_file_the_url_is_used_as_given() -> None:
    given = "postgresql+psycopg://shop:inline@127.0.0.1:5433/order"
    assert OrderSettings(database_url=given).database().password == "inline"
    sqlite = OrderSettings(database_url="sqlite:///.run/data/order.db").database()
    assert sqlite.database == ".run/data/order.db"


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"", "empty"),
        (b"\n\n", "empty"),
        (b"one\ntwo\n", "one line"),
        (b"pass\x00word", "control character"),
        (b"pass\tword", "control character"),
        (b"\xff\xfe", "UTF-8"),
        (b"x" * 1025, "longer than 1024"),
    ],
)
def test_a_password_file_that_holds_no_single_password_is_refused(
    tmp_path: Path, content: bytes, error: str
) -> None:
    settings = OrderSettings(database_url=URL, database_password_file=secret(tmp_path, content))
    with pytest.raises(ValueError, match=error) as caught:
        settings.database()
    assert "ORDER_DATABASE_PASSWORD_FILE" in str(caught.value)


def test_a_missing_password_file_names_the_setting(tmp_path: Path) -> None:
    settings = OrderSettings(database_url=URL, database_password_file=tmp_path / "absent")
    with pytest.raises(RuntimeError, match="ORDER_DATABASE_PASSWORD_FILE unreadable"):
        settings.database()


def test_a_password_in_both_the_url_and_a_file_is_refused_without_showing_either(
    tmp_path: Path,
) -> None:
    settings = OrderSettings(
        database_url="postgresql+psycopg://order:inline-pw@db/order",
        database_password_file=secret(tmp_path, PASSWORD.encode()),
    )
    with pytest.raises(ValueError, match="both") as caught:
        settings.database()
    assert "inline-pw" not in str(caught.value) and PASSWORD not in str(caught.value)


def test_a_password_file_for_sqlite_is_refused(tmp_path: Path) -> None:
    settings = OrderSettings(
        database_url="sqlite:///order.db", database_password_file=secret(tmp_path, b"pw")
    )
    with pytest.raises(ValueError, match="SQLite"):
        settings.database()
