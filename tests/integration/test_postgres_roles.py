"""Each service signs in to PostgreSQL as its own role, which owns its database and
nothing else: with one service's credentials another's tables stay out of reach, and
every password is checked. On a server tools/local/postgres.sh sets up, as a developer's."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, OperationalError

from services.inventory.main import SPEC as INVENTORY
from services.order.config import OrderSettings
from services.registry import SERVICES, get, load
from shared.storage.db import make_engine
from shared.storage.migrations import upgrade
from tests.conftest import LocalPostgres
from tools.local import pginit

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.slow]

NAMES = [service.name for service in SERVICES]


def service_url(pg: LocalPostgres, name: str, database: str | None = None) -> str:
    """The URL service `name` connects with, its password filled in from its file the
    way the service does it (`<NAME>_DATABASE_PASSWORD_FILE`), aimed at `database`."""
    exported = pg.exports()
    settings = load(get(name).settings)(
        database_url=exported[f"{name.upper()}_DATABASE_URL"],
        database_password_file=exported[f"{name.upper()}_DATABASE_PASSWORD_FILE"],
    )
    url = settings.database()
    return url.set(database=database or url.database).render_as_string(hide_password=False)


@contextmanager
def connected(url: str) -> Iterator[Connection]:
    engine = make_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def refused(url: str) -> str:
    """The server's refusal of a connection to `url`."""
    with pytest.raises(OperationalError) as caught, connected(url) as connection:
        connection.execute(text("SELECT 1"))
    return str(caught.value)


def test_the_exports_name_each_service_s_role_and_no_password(
    local_postgres: LocalPostgres,
) -> None:
    exported = local_postgres.exports()
    for name in NAMES:
        url = exported[f"{name.upper()}_DATABASE_URL"]
        assert url == (
            f"postgresql+psycopg://{name}@127.0.0.1:{local_postgres.port}/{get(name).database}"
        )
        password_file = local_postgres.credentials / name
        assert exported[f"{name.upper()}_DATABASE_PASSWORD_FILE"] == str(password_file)
        assert password_file.read_text().strip() not in url
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(local_postgres.credentials.stat().st_mode) == 0o700


@pytest.mark.parametrize("name", NAMES)
def test_each_service_signs_in_as_a_role_that_can_do_nothing_beyond_its_database(
    local_postgres: LocalPostgres, name: str
) -> None:
    with connected(service_url(local_postgres, name)) as connection:
        me = connection.execute(
            text(
                "SELECT current_user, rolsuper, rolcreatedb, rolcreaterole, rolreplication,"
                " rolbypassrls, (SELECT count(*) FROM pg_auth_members WHERE member = r.oid)"
                " FROM pg_roles r WHERE rolname = current_user"
            )
        ).one()
        assert tuple(me) == (name, False, False, False, False, False, 0)
        owner = connection.scalar(
            text(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
            )
        )
        assert owner == name, "it owns its database, so it runs its own migrations"
        for statement in ("CREATE DATABASE intruder", "CREATE ROLE intruder", "SET ROLE shop"):
            with pytest.raises(DBAPIError, match="permission denied"):
                connection.execute(text(statement))


def test_one_service_s_credentials_cannot_reach_another_s_tables(
    local_postgres: LocalPostgres,
) -> None:
    inventory_url = service_url(local_postgres, "inventory")
    engine = make_engine(inventory_url)
    try:
        upgrade(engine, INVENTORY.migrations)  # inventory's own tables, made as inventory
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO stock (product_id, available, reserved, version, updated_at)"
                    " VALUES ('secret-gear', 7, 0, 0, now()) ON CONFLICT DO NOTHING"
                )
            )
            owners = set(
                connection.scalars(
                    text("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
                )
            )
        assert owners == {"inventory"}
    finally:
        engine.dispose()

    # order's own password, aimed at inventory's database: no entry
    message = refused(service_url(local_postgres, "order", database="inventory"))
    assert "permission denied for database" in message
    # order as inventory's role, with order's password: refused
    stolen = service_url(local_postgres, "order", database="inventory").replace(
        "://order:", "://inventory:", 1
    )
    assert "password authentication failed" in refused(stolen)
    # from its own database: no role to switch to, no way to read the catalogues' secrets
    with connected(service_url(local_postgres, "order")) as connection:
        for statement in (
            "SET ROLE inventory",
            "SELECT rolpassword FROM pg_authid",
        ):
            with pytest.raises(DBAPIError, match="permission denied"):
                connection.execute(text(statement))


def test_every_password_is_checked_over_tcp(local_postgres: LocalPostgres) -> None:
    port = local_postgres.port
    for url in (
        f"postgresql+psycopg://order:wrong@127.0.0.1:{port}/order",
        f"postgresql+psycopg://order@127.0.0.1:{port}/order",
        f"postgresql+psycopg://shop:shop@127.0.0.1:{port}/postgres",
        f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres",
    ):
        message = refused(url)
        assert "password" in message, message


def test_passwords_are_stored_as_scram_verifiers(local_postgres: LocalPostgres) -> None:
    with connected(local_postgres.superuser_url) as connection:
        stored = dict(
            connection.execute(
                text("SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(:names)"),
                {"names": [*NAMES, pginit.SUPERUSER]},
            ).all()
        )
    assert set(stored) == {*NAMES, pginit.SUPERUSER}
    for role, verifier in stored.items():
        assert verifier.startswith("SCRAM-SHA-256$4096:"), role
        assert (local_postgres.credentials / role).read_text().strip() not in verifier


def test_setting_up_again_keeps_every_password_and_what_each_role_owns(
    local_postgres: LocalPostgres,
) -> None:
    before = {name: (local_postgres.credentials / name).read_text() for name in NAMES}
    local_postgres.script("start")
    assert before == {name: (local_postgres.credentials / name).read_text() for name in NAMES}
    for name in NAMES:
        with connected(service_url(local_postgres, name)) as connection:
            assert connection.scalar(text("SELECT current_user")) == name


def test_compose_s_form_sets_the_passwords_it_is_given(
    local_postgres: LocalPostgres, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`python -m tools.local.pginit URL --password-file F --secrets DIR`, as compose's pginit."""
    secrets = tmp_path_factory.mktemp("secrets")
    for name in NAMES:
        (secrets / f"{pginit.SECRET_PREFIX}{name}").write_text(f"given-{name}-password\n")
    admin = secrets / "postgres_password_shop"
    admin.write_text((local_postgres.credentials / pginit.SUPERUSER).read_text())
    server = local_postgres.superuser_url.replace(f":{admin.read_text().strip()}@", "@", 1)
    old = service_url(local_postgres, "order")
    try:
        assert pginit.main([server, "--password-file", str(admin), "--secrets", str(secrets)]) == 0
        port = local_postgres.port
        with connected(
            f"postgresql+psycopg://order:given-order-password@127.0.0.1:{port}/order"
        ) as connection:
            assert connection.scalar(text("SELECT current_user")) == "order"
        assert "password authentication failed" in refused(old)
    finally:  # the others' passwords back
        pginit.create(local_postgres.superuser_url, pginit.credentials(local_postgres.credentials))
    with connected(old) as connection:
        assert connection.scalar(text("SELECT 1")) == 1


def test_the_service_settings_read_the_exported_password_file(
    local_postgres: LocalPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in local_postgres.exports().items():
        monkeypatch.setenv(key, value)
    url = OrderSettings().database()
    assert (
        url.username == "order"
        and url.password == (local_postgres.credentials / "order").read_text().strip()
    )
