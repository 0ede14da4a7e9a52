"""Fixtures shared by unit tests: a real SQLite database in tmp_path, no broker."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from shared.messaging.unit_of_work import UnitOfWork
from shared.runtime.service import ServiceSpec
from shared.storage.db import make_engine, make_sessions
from shared.storage.migrations import upgrade


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Callable[[ServiceSpec], Path]:
    """A SQLite file migrated to a service's schema, built once per session per service."""
    templates: dict[str, Path] = {}

    def template(spec: ServiceSpec) -> Path:
        if spec.name not in templates:
            path = tmp_path_factory.mktemp("schema") / f"{spec.name}.db"
            engine = make_engine(f"sqlite:///{path}")
            upgrade(engine, spec.migrations)
            engine.dispose()  # the last connection checkpoints the WAL into the file
            templates[spec.name] = path
        return templates[spec.name]

    return template


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """An empty SQLite database file, configured as the services configure theirs."""
    engine = make_engine(f"sqlite:///{tmp_path}/unit.db")
    yield engine
    engine.dispose()


@pytest.fixture
def service_uow(
    tmp_path: Path, migrated_database: Callable[[ServiceSpec], Path]
) -> Iterator[Callable[[ServiceSpec], UnitOfWork]]:
    """A fresh copy of a service's migrated database, and that service's UnitOfWork."""
    engines: list[Engine] = []

    def build(spec: ServiceSpec) -> UnitOfWork:
        path = tmp_path / f"{spec.name}.db"
        shutil.copyfile(migrated_database(spec), path)
        engine = make_engine(f"sqlite:///{path}")
        engines.append(engine)
        return UnitOfWork(make_sessions(engine), spec.outbox_model, f"/services/{spec.name}")

    yield build
    for engine in engines:
        engine.dispose()
