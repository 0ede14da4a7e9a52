"""`make test`'s scheduler (tests/conftest.py) on a small project of its own, in two
pytest-xdist workers: every file runs whole on one worker, and the files that share the
session's stacks run together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # real pytest-xdist workers, seconds; no broker

ROOT = Path(__file__).resolve().parents[2]

CONFTEST = """\
from tests.conftest import pytest_collection_modifyitems, pytest_xdist_make_scheduler
"""

TESTS = """\
import json, os, pytest

@pytest.mark.parametrize("n", range({count}))
def test_one(n):
    with open(os.environ["RAN_FILE"], "a") as ran:
        ran.write(json.dumps([__name__, os.environ["PYTEST_XDIST_WORKER"]]) + "\\n")
"""


def test_each_file_runs_whole_on_one_worker_and_a_group_on_one(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "tests" / "unit").mkdir(parents=True)
    (project / "tests" / "zz").mkdir()  # collected after unit/, scheduled before it
    (project / "tests" / "conftest.py").write_text(CONFTEST)
    names = [f"unit/test_u{n}" for n in range(6)] + ["zz/test_auth", "zz/test_edge"]
    for count, name in enumerate(names, start=2):  # files of different lengths
        (project / "tests" / f"{name}.py").write_text(TESTS.format(count=count))
    ran = tmp_path / "ran.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2"]
        + ["--dist", "loadscope", "tests"],
        cwd=project,
        env={**os.environ, "RAN_FILE": str(ran), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    workers: dict[str, set[str]] = {}
    for line in ran.read_text().splitlines():
        module, worker = json.loads(line)
        workers.setdefault(module.rsplit(".", 1)[-1], set()).add(worker)
    assert len(workers) == len(names)
    assert all(len(each) == 1 for each in workers.values()), workers
    assert workers["test_auth"] == workers["test_edge"], "the shared-stack files together"
