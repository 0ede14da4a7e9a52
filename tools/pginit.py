"""One database per registered service on a PostgreSQL server; creating is idempotent.

    python -m tools.pginit postgresql+psycopg://shop:shop@postgres:5432/shop
    python -m tools.pginit --psql | psql -h 127.0.0.1 -p 5433 -U shop -d postgres

The first form connects and creates what is missing (compose's one-shot `pginit`); the
second prints a psql script doing the same (tools/postgres_local.sh). The connecting role
owns what it creates. The names come from services/registry.py; without a URL only the
standard library is imported, so the script form needs no virtualenv."""

from __future__ import annotations

import argparse
import re

from services.registry import SERVICES


def databases() -> list[str]:
    names = [service.database for service in SERVICES]
    for name in names:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"{name!r} is no plain database name")
    return names


def psql_script(names: list[str]) -> str:
    """`CREATE DATABASE` for each name not on the server yet (psql's \\gexec runs them)."""
    return "".join(
        f"SELECT 'CREATE DATABASE \"{name}\"' WHERE NOT EXISTS "
        f"(SELECT FROM pg_database WHERE datname = '{name}')\\gexec\n"
        for name in names
    )


def create(url: str, names: list[str]) -> list[str]:
    """Create each database missing on the server of `url`; return those created."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            existing = set(connection.scalars(text("SELECT datname FROM pg_database")))
            missing = [name for name in names if name not in existing]
            for name in missing:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.pginit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    form = parser.add_mutually_exclusive_group(required=True)
    form.add_argument("url", nargs="?", help="a SQLAlchemy URL of the server, as its owner")
    form.add_argument("--psql", action="store_true", help="print a psql script instead")
    args = parser.parse_args(argv)
    if args.psql:
        print(psql_script(databases()), end="")
        return 0
    created = create(args.url, databases())
    print(f"pginit: created {', '.join(created) or 'nothing'}; {len(databases())} databases")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
