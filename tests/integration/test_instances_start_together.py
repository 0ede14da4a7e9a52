"""Instances of one service that start at the same moment on one PostgreSQL database."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from services.user import tokens
from services.user.main import SPEC
from services.user.models import User
from shared.messaging.unit_of_work import UnitOfWork
from shared.storage.db import make_engine, make_sessions
from shared.storage.migrations import upgrade
from tests.conftest import fresh_postgres
from tests.helpers import random_email

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def test_two_user_instances_starting_together_make_one_operator() -> None:
    with fresh_postgres(1) as [url]:
        engine = make_engine(url)
        upgrade(engine, SPEC.migrations)
        uow = UnitOfWork(make_sessions(engine), SPEC.outbox_model, "/services/user", "")
        email = random_email()
        together = threading.Barrier(4)
        failures: list[BaseException] = []

        def start() -> None:
            together.wait()
            try:
                with uow() as unit:
                    tokens.ensure_operator(unit, email, "the operator's password")
            except BaseException as exc:
                failures.append(exc)

        starts = [threading.Thread(target=start) for _ in range(4)]
        for thread in starts:
            thread.start()
        for thread in starts:
            thread.join(60)
        with uow.read() as unit:
            count = unit.session.scalar(select(func.count()).where(User.email == email))
        engine.dispose()
    assert failures == []
    assert count == 1
