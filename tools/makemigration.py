"""Autogenerate a migration for one service from its models.

python -m tools.makemigration order "add reason column"
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine

from shared.storage.migrations import upgrade

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("service", choices=["order", "inventory", "user", "product"])
    parser.add_argument("message")
    args = parser.parse_args()
    script_location = ROOT / "services" / args.service / "migrations"
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{scratch}/schema.db"
        upgrade(create_engine(url), script_location)
        config = Config()
        config.set_main_option("script_location", str(script_location))
        config.set_main_option("sqlalchemy.url", url)
        command.revision(config, message=args.message, autogenerate=True)


if __name__ == "__main__":
    main()
