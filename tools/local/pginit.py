"""Every registered service's place on a PostgreSQL server: one database each, owned by
one login role of the service's name, which may connect to that database and no other.
Idempotent: run it on every start.

    python -m tools.local.pginit --psql [--credentials DIR] | psql -h HOST -U shop -d postgres
    python -m tools.local.pginit postgresql+psycopg://shop@postgres:5432/shop \\
        --password-file /run/secrets/postgres_password_shop --secrets /run/secrets

The first form prints a psql script (tools/local/postgres.sh, which adds `--superuser
shop`: its administrator), the second connects and does the same (compose's one-shot
`pginit`), both as a superuser; `--env HOST:PORT` prints the exports that point each
service at its database (`tools/local/postgres.sh env`). Each role is LOGIN
NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS and a member of no other
role; its password is set as a SCRAM-SHA-256 verifier computed here, so neither the
server nor its log ever sees the password. Each database is owned by its role, with
CONNECT and TEMPORARY revoked from PUBLIC and its `public` schema owned by the role and
closed to PUBLIC; tables an earlier set-up made as another role are handed over.

The passwords: with `--credentials DIR` (default .run/postgres-credentials), `DIR/<service>`,
made on first use (owner-only, like the Kafka passwords); with `--secrets DIR`,
`DIR/postgres_password_<service>`, as compose mounts them. The names come from
services/registry.py; without a URL only the standard library is imported, so the script
form needs no virtualenv."""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import re
import secrets
import shlex
from collections.abc import Mapping
from pathlib import Path

from services.registry import SERVICES

ROOT = Path(__file__).resolve().parents[2]
CREDENTIALS = ROOT / ".run" / "postgres-credentials"
"""Where the local set-up keeps each role's password, one file per role."""
SUPERUSER = "shop"
"""The administrator's role (tests create their databases as it); its password file sits
beside the services' and compose's server is made with it."""
SECRET_PREFIX = "postgres_password_"
"""Compose's secret of role `order` is `postgres_password_order`."""
SCRAM_ITERATIONS = 4096
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def databases() -> list[str]:
    """Each registered service's database (and the role that owns it)."""
    names = [service.database for service in SERVICES]
    for name in [*names, *roles()]:
        if not _NAME.fullmatch(name) or name.startswith("pg_") or name in ("public", "none"):
            raise ValueError(f"{name!r} is no plain database or role name")
    return names


def roles() -> dict[str, str]:
    """Each registered service's role -> its database."""
    return {service.name: service.database for service in SERVICES}


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802, RFC 7677): given in
    `PASSWORD '...'`, it sets the password without the server ever seeing it."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def ensure_password(folder: Path, name: str) -> str:
    """The password in `folder/<name>`, made on first use: the folder 0700, the file
    0600 from its creation."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    path = folder / name
    if not path.is_file():
        tmp = path.with_name(f".{name}.tmp")
        tmp.unlink(missing_ok=True)
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(24) + "\n")
        tmp.replace(path)
    return read_password(path)


def read_password(path: Path) -> str:
    password = path.read_text().strip()
    if not password or any(ord(char) < 32 for char in password):
        raise ValueError(f"{path} holds no password")
    return password


def credentials(folder: Path) -> dict[str, str]:
    """Each service role's password from `folder`, made where missing."""
    return {role: ensure_password(folder, role) for role in roles()}


def given_secrets(folder: Path) -> dict[str, str]:
    """Each service role's password from compose's secrets in `folder`."""
    return {role: read_password(folder / f"{SECRET_PREFIX}{role}") for role in roles()}


def compose_env(run_dir: Path) -> dict[str, str]:
    """What compose's PostgreSQL secrets are made of (SHOP_POSTGRES_PASSWORD_<ROLE>): the
    superuser's and each service role's password, made under `run_dir` on first use."""
    folder = run_dir / "postgres-credentials"
    return {
        f"SHOP_POSTGRES_PASSWORD_{role.upper()}": ensure_password(folder, role)
        for role in (SUPERUSER, *roles())
    }


def shell_env(address: str, folder: Path) -> str:
    """`export` lines naming each service's database on the server at `address` and the
    file its password is read from (`eval "$(...)"` before `make up`)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{address!r} is not HOST:PORT")
    lines = []
    for role, database in roles().items():
        prefix = role.upper()
        ensure_password(folder, role)
        lines.append(
            f"export {prefix}_DATABASE_URL=postgresql+psycopg://{role}@{host}:{port}/{database}"
        )
        lines.append(f"export {prefix}_DATABASE_PASSWORD_FILE={shlex.quote(str(folder / role))}")
    return "\n".join(lines) + "\n"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def server_statements(role: str, database: str, verifier: str) -> list[str]:
    """On the server (any database), once the database exists: the role as it must be,
    and the database closed to everyone but its owner."""
    quoted, name = f'"{role}"', _literal(role)
    return [
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {name}) "
        f"THEN CREATE ROLE {quoted}; END IF; END $$",
        f"ALTER ROLE {quoted} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
        f"NOBYPASSRLS INHERIT CONNECTION LIMIT -1 PASSWORD {_literal(verifier)}",
        # a member of no other role: it cannot SET ROLE to anyone, nor inherit a right
        "DO $$ DECLARE granted record; BEGIN FOR granted IN SELECT m.roleid::regrole AS r "
        "FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
        f"WHERE r.rolname = {name} "
        f"LOOP EXECUTE format('REVOKE %s FROM %I', granted.r, {name}); END LOOP; END $$",
        f'ALTER DATABASE "{database}" OWNER TO {quoted}',
        f'REVOKE ALL ON DATABASE "{database}" FROM PUBLIC',
    ]


def database_statements(role: str) -> list[str]:
    """Inside the role's database: its `public` schema, and every table, view and
    sequence in it, belong to the role; PUBLIC gets nothing there."""
    quoted, name = f'"{role}"', _literal(role)
    return [
        f"ALTER SCHEMA public OWNER TO {quoted}",
        "REVOKE ALL ON SCHEMA public FROM PUBLIC",
        "DO $$ DECLARE r record; BEGIN FOR r IN "
        "SELECT c.oid::regclass AS relation, CASE c.relkind WHEN 'S' THEN 'SEQUENCE' "
        "WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE' "
        "ELSE 'TABLE' END AS kind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE n.nspname = 'public' AND pg_get_userbyid(c.relowner) <> {name} "
        "AND (c.relkind IN ('r', 'p', 'v', 'm', 'f') OR (c.relkind = 'S' AND NOT EXISTS "
        "(SELECT FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))) "
        f"LOOP EXECUTE format('ALTER %s %s OWNER TO %I', r.kind, r.relation, {name}); "
        "END LOOP; END $$",
    ]


def superuser_statements(role: str, password: str) -> list[str]:
    """The administrator's role: a superuser that signs in with its password."""
    quoted, name = f'"{role}"', _literal(role)
    return [
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {name}) "
        f"THEN CREATE ROLE {quoted}; END IF; END $$",
        f"ALTER ROLE {quoted} WITH LOGIN SUPERUSER PASSWORD {_literal(scram_verifier(password))}",
    ]


def psql_script(
    passwords: Mapping[str, str], maintenance: str = "postgres", superuser: str | None = None
) -> str:
    """The whole set-up as a psql script (psql's \\gexec creates a missing database;
    \\connect enters each), for the roles of `passwords` (role -> password) and, when
    named, the superuser `superuser` (its password in `passwords` too)."""
    lines = ["SET password_encryption = 'scram-sha-256';"]
    if superuser is not None:
        lines += [f"{s};" for s in superuser_statements(superuser, passwords[superuser])]
        passwords = {role: pw for role, pw in passwords.items() if role != superuser}
    owned = roles()
    for role, password in passwords.items():
        database = owned[role]
        lines.append(
            f"SELECT 'CREATE DATABASE \"{database}\"' WHERE NOT EXISTS "
            f"(SELECT FROM pg_database WHERE datname = '{database}')\\gexec"
        )
        lines += [f"{s};" for s in server_statements(role, database, scram_verifier(password))]
        lines.append(f'\\connect "{database}"')
        lines += [f"{statement};" for statement in database_statements(role)]
        lines.append(f'\\connect "{maintenance}"')
    return "\n".join(lines) + "\n"


def create(url: str, passwords: Mapping[str, str], admin_password: str | None = None) -> list[str]:
    """Do the set-up on the server of `url` (a superuser; `admin_password` if the URL has
    none); return the databases it created."""
    import psycopg
    from sqlalchemy import make_url

    server = make_url(url)
    owned = roles()

    def connect(database: str) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=server.host,
            port=server.port or 5432,
            user=server.username,
            password=server.password or admin_password,
            dbname=database,
            autocommit=True,
        )

    created: list[str] = []
    maintenance = server.database or "postgres"
    with connect(maintenance) as connection:
        existing = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
        for role in passwords:
            if owned[role] not in existing:
                connection.execute(f'CREATE DATABASE "{owned[role]}"'.encode())
                created.append(owned[role])
            for statement in server_statements(role, owned[role], scram_verifier(passwords[role])):
                connection.execute(statement.encode())
    for role in passwords:
        with connect(owned[role]) as connection:
            for statement in database_statements(role):
                connection.execute(statement.encode())
    return created


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.local.pginit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    form = parser.add_mutually_exclusive_group(required=True)
    form.add_argument("url", nargs="?", help="a SQLAlchemy URL of the server, as a superuser")
    form.add_argument("--psql", action="store_true", help="print a psql script instead")
    form.add_argument(
        "--env",
        metavar="HOST:PORT",
        help="print the shell exports that point each service at its database there",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--credentials", type=Path, help=f"passwords DIR/<role>, made if missing ({CREDENTIALS})"
    )
    source.add_argument("--secrets", type=Path, help=f"passwords DIR/{SECRET_PREFIX}<role>")
    parser.add_argument("--password-file", type=Path, help="the superuser's password, for a URL")
    parser.add_argument(
        "--superuser", help="with --psql and --credentials: also make this superuser role"
    )
    args = parser.parse_args(argv)
    databases()  # every name checked before any is used
    folder = (args.credentials or CREDENTIALS).resolve()
    if args.env:
        print(shell_env(args.env, folder), end="")
        return 0
    if args.secrets is not None:
        passwords = given_secrets(args.secrets)
    else:
        passwords = credentials(folder)
    if args.psql:
        if args.superuser:
            passwords = {args.superuser: ensure_password(folder, args.superuser), **passwords}
        print(psql_script(passwords, superuser=args.superuser), end="")
        return 0
    admin = read_password(args.password_file) if args.password_file else None
    created = create(args.url, passwords, admin)
    print(
        f"pginit: created {', '.join(created) or 'nothing'}; {len(passwords)} databases,"
        " each owned by its own role"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
