"""What a service gets from the registry and the library: settings, the shared tables, the
migration environment, a database on PostgreSQL and `python -m services NAME`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from sqlalchemy import create_engine, inspect

import services.__main__ as serve_by_name
from services.registry import SERVICES, get, load, names
from shared.runtime.keys import anchor_text
from shared.runtime.settings import ServiceSettings, service_settings
from shared.storage.migrations import upgrade
from tools.dev import makemigration
from tools.local import pginit
from tools.local.stack import Stack

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def migrations_of(package: str) -> Path:
    return Path(importlib.import_module(package).__file__ or "").parent / "migrations"


def shape(table: Any) -> list[tuple[str, str, bool]]:
    return [(column.name, repr(column.type), column.nullable) for column in table.columns]


def test_the_registry_names_each_service_and_port_once() -> None:
    assert len(set(names())) == len(SERVICES)
    assert len({service.port for service in SERVICES}) == len(SERVICES)
    assert get("inventory").package == "services.inventory"
    with pytest.raises(KeyError, match="registered: order"):
        get("nowhere")


@pytest.mark.parametrize("service", SERVICES, ids=names())
def test_a_registered_service_has_its_app_settings_and_versions(service: Any) -> None:
    assert callable(load(service.app))
    settings = load(service.settings)()
    assert isinstance(settings, ServiceSettings)
    assert settings.model_config.get("env_prefix") == f"{service.name.upper()}_"
    assert settings.port == service.port
    assert settings.database_url == f"sqlite:///.run/data/{service.name}.db"
    assert sorted(path.name for path in migrations_of(service.package).iterdir()) == ["versions"]


def test_service_settings_makes_a_class_for_a_name_not_registered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    GiftCardSettings = service_settings("gift_card", port=8099)
    assert GiftCardSettings.__name__ == "GiftCardSettings"
    assert GiftCardSettings.__module__ == __name__
    defaults = GiftCardSettings()
    assert (defaults.port, defaults.database_url) == (8099, "sqlite:///.run/data/gift_card.db")
    monkeypatch.setenv("GIFT_CARD_PORT", "9001")
    monkeypatch.setenv("GIFT_CARD_DATABASE_URL", "sqlite:///elsewhere.db")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:19092")
    monkeypatch.setenv("ORDER_PORT", "1")
    read = GiftCardSettings()
    assert (read.port, read.database_url) == (9001, "sqlite:///elsewhere.db")
    assert read.kafka_bootstrap_servers == "kafka:19092"

    class WithExtra(GiftCardSettings):  # type: ignore[misc, valid-type]
        card_limit: int = 5

    monkeypatch.setenv("GIFT_CARD_CARD_LIMIT", "7")
    assert (WithExtra().card_limit, WithExtra().port) == (7, 9001)


@pytest.mark.parametrize("service", SERVICES, ids=names())
def test_models_match_their_migrations(service: Any) -> None:
    """Autogenerate against a fresh database at head finds nothing to do."""
    models = importlib.import_module(f"{service.package}.models")
    assert models.OutboxMessage.__tablename__ == "outbox"
    assert models.ProcessedEvent.__tablename__ == "processed_events"
    makemigration.makemigration(
        models.Base.metadata, migrations_of(service.package), None, check=True
    )


def test_a_new_package_gets_its_first_migration_from_the_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = f"throwaway_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "models.py").write_text(
        textwrap.dedent(
            """
            from sqlalchemy import String
            from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

            from shared.storage.tables import shared_tables


            class Base(DeclarativeBase):
                pass


            OutboxMessage, ProcessedEvent, TrustedKey, TrustedKeySet = shared_tables(Base)


            class Card(Base):
                __tablename__ = "cards"

                id: Mapped[str] = mapped_column(String(36), primary_key=True)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    migrations = tmp_path / "elsewhere" / "migrations"
    arguments = [package, "--migrations", str(migrations)]
    assert makemigration.main([*arguments, "--check"]) == 1
    assert makemigration.main([*arguments, "initial schema"]) == 0
    assert len(list((migrations / "versions").glob("*_initial_schema.py"))) == 1
    assert makemigration.main([*arguments, "--check"]) == 0

    engine = create_engine(f"sqlite:///{tmp_path}/fresh.db")
    upgrade(engine, migrations)
    assert set(inspect(engine).get_table_names()) >= {"outbox", "processed_events", "cards"}
    engine.dispose()
    ours = importlib.import_module(f"{package}.models").Base.metadata.tables
    order = importlib.import_module("services.order.models").Base.metadata.tables
    for table in ("outbox", "processed_events"):
        assert shape(ours[table]) == shape(order[table])
        assert {i.name for i in ours[table].indexes} == {i.name for i in order[table].indexes}


def test_python_m_services_serves_the_named_service_on_its_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service's settings decide where it listens unless a flag says otherwise; the
    address chosen is exported for the app factory that each worker runs."""
    served: list[dict[str, Any]] = []

    def serve(app: str, **where: Any) -> None:
        served.append({"app": app, **where, "env": os.environ["INVENTORY_HOST"]})

    monkeypatch.setattr(serve_by_name, "serve", serve)
    monkeypatch.setenv("INVENTORY_HOST", "127.0.0.9")
    monkeypatch.setenv("INVENTORY_PORT", "8002")
    serve_by_name.main(["inventory"])
    serve_by_name.main(["inventory", "--host", "0.0.0.0", "--port", "9002"])
    settled, opened = served
    assert settled["app"] == get("inventory").app == "services.inventory.main:create_app"
    assert (settled["host"], settled["port"], settled["workers"]) == ("127.0.0.9", 8002, 1)
    assert (opened["host"], opened["port"], opened["env"]) == ("0.0.0.0", 9002, "0.0.0.0")
    assert os.environ["INVENTORY_PORT"] == "9002"
    with pytest.raises(SystemExit):
        serve_by_name.main(["nowhere"])


def test_the_stack_runs_the_registered_services(tmp_path: Path) -> None:
    stack = Stack(run_dir=tmp_path, kafka="127.0.0.1:1")
    assert {name: s.port for name, s in stack.services.items()} == {
        s.name: s.port for s in SERVICES
    }


def test_the_stack_gives_every_service_the_anchor_and_only_user_its_private_keys(
    tmp_path: Path,
) -> None:
    stack = Stack(run_dir=tmp_path, kafka="127.0.0.1:1")
    again = Stack(run_dir=tmp_path, kafka="127.0.0.1:1")
    elsewhere = Stack(run_dir=tmp_path / "other", kafka="127.0.0.1:1")

    private = {"USER_KEYSET_SIGNING_KEY_FILE", "USER_KEY_ENCRYPTION_KEY_FILE"}
    user = stack.services["user"].env
    anchor = user["AUTH_KEYSET_PUBLIC_KEY"]
    signing_key = load_pem_private_key(
        Path(user["USER_KEYSET_SIGNING_KEY_FILE"]).read_bytes(), None
    )
    assert isinstance(signing_key, Ed25519PrivateKey) and anchor_text(signing_key) == anchor
    for name, service in stack.services.items():
        assert service.env["AUTH_KEYSET_PUBLIC_KEY"] == anchor, name
        assert private & set(service.env) == (private if name == "user" else set()), name
    for path in (tmp_path / "user-keys").iterdir():
        assert path.stat().st_mode & 0o077 == 0, path
    assert (tmp_path / "user-keys").stat().st_mode & 0o077 == 0
    assert again.services["user"].env == user, "made once, then kept"
    assert elsewhere.services["order"].env["AUTH_KEYSET_PUBLIC_KEY"] != anchor, "a fresh pair"


def test_pginit_script_gives_each_registered_service_a_database_and_a_role_of_its_own() -> None:
    assert pginit.databases() == [service.database for service in SERVICES]
    assert pginit.roles() == {service.name: service.database for service in SERVICES}
    passwords = {service.name: f"pw-{service.name}" for service in SERVICES}
    script = pginit.psql_script(passwords)
    for service in SERVICES:
        role, database = service.name, service.database
        assert (
            f"SELECT 'CREATE DATABASE \"{database}\"' WHERE NOT EXISTS "
            f"(SELECT FROM pg_database WHERE datname = '{database}')\\gexec"
        ) in script
        assert f'THEN CREATE ROLE "{role}"; END IF' in script
        assert (
            f'ALTER ROLE "{role}" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION'
            " NOBYPASSRLS"
        ) in script
        assert f'ALTER DATABASE "{database}" OWNER TO "{role}";' in script
        assert f'REVOKE ALL ON DATABASE "{database}" FROM PUBLIC;' in script
        assert f'\\connect "{database}"\nALTER SCHEMA public OWNER TO "{role}";' in script
        assert passwords[role] not in script, "only its SCRAM verifier reaches the server"
    assert script.count("PASSWORD 'SCRAM-SHA-256$4096:") == len(SERVICES)
    assert script.count("REVOKE ALL ON SCHEMA public FROM PUBLIC;") == len(SERVICES)


def test_pginit_sets_passwords_as_scram_sha_256_verifiers() -> None:
    """RFC 7677's example: the verifier's keys answer its exchange's server signature."""
    verifier = pginit.scram_verifier("pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    method, rest = verifier.split("$", 1)
    parameters, keys = rest.split("$")
    assert (method, parameters) == ("SCRAM-SHA-256", "4096:W22ZaJ0SNY7soEsUEjb6gQ==")
    stored_key, server_key = (base64.b64decode(key) for key in keys.split(":"))
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth = (
        f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
        f"c=biws,r={nonce}"
    ).encode()
    signature = hmac.digest(server_key, auth, "sha256")
    assert base64.b64encode(signature).decode() == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client_key = bytes(
        a ^ b for a, b in zip(proof, hmac.digest(stored_key, auth, "sha256"), strict=True)
    )
    assert hashlib.sha256(client_key).digest() == stored_key
    assert pginit.scram_verifier("pencil") != pginit.scram_verifier("pencil"), "a fresh salt"


def test_pginit_makes_each_password_once_owner_only(tmp_path: Path) -> None:
    first = pginit.credentials(tmp_path / "credentials")
    assert set(first) == set(names()) and len(set(first.values())) == len(SERVICES)
    assert pginit.credentials(tmp_path / "credentials") == first
    assert (tmp_path / "credentials").stat().st_mode & 0o077 == 0
    for name in names():
        assert (tmp_path / "credentials" / name).stat().st_mode & 0o077 == 0
        assert len(first[name]) >= 24


def test_pginit_script_form_needs_only_the_standard_library(tmp_path: Path) -> None:
    """tools/local/postgres.sh runs it with the system's python3, before any virtualenv."""
    probe = (
        "import sys, tools.local.pginit as p; "
        f"p.main(['--psql', '--superuser', 'shop', '--credentials', {str(tmp_path)!r}]); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'pydantic', "
        "'shared', 'alembic', 'psycopg'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines()[-1] == "[]"
    assert done.stdout.count("\\gexec") == len(SERVICES)
    assert 'ALTER ROLE "shop" WITH LOGIN SUPERUSER PASSWORD' in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names(), "shop"])
