"""Switching KAFKA_NODES as documented: `make down`, `make clean-kafka` (python -m
tools.local.stack reset-kafka), then `make up` with the new size. The nodes' data belongs
to a cluster of one size, so `up` refuses another size and names the commands; the reset
removes the data and its size stamp together, keeps the jars, certificates and passwords,
and refuses while a node runs. No broker is started: a sleeping child plays a node."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tools.local.cluster import LocalCluster, NodePorts

pytestmark = pytest.mark.unit


def cluster(run_dir: Path, nodes: int) -> LocalCluster:
    ports = [NodePorts(free_port(), free_port(), free_port()) for _ in range(nodes)]
    return LocalCluster(run_dir / "kafka", nodes=nodes, ports=ports, run_dir=run_dir)


@pytest.fixture
def three(tmp_path: Path) -> LocalCluster:
    """The data a three-node `make up` leaves: each node's config and data, the cluster's
    id and size; beside it the jars, the certificates and the passwords."""
    made = cluster(tmp_path, 3)
    made.check_size()
    made.cluster_id()
    for node in made.nodes.values():
        node.data_dir.mkdir(parents=True)
        (node.data_dir / "meta.properties").write_text("node.id=1\n")
        node.config_file.write_text(node._properties())
    (made.home / "libs").mkdir()
    (made.home / "libs" / "kafka_2.13-4.1.1.jar").write_bytes(b"jar")
    made.credentials_dir.mkdir()
    (made.credentials_dir / "admin").write_text("secret\n")
    return made


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    module = importlib.import_module("tools.local.stack")
    monkeypatch.setattr(module, "RUN_DIR", tmp_path)
    monkeypatch.delenv("SCALE", raising=False)
    return module


def test_up_with_another_size_refuses_and_names_the_commands_that_switch(
    tmp_path: Path, three: LocalCluster
) -> None:
    with pytest.raises(RuntimeError) as refused:
        cluster(tmp_path, 1).check_size()
    said = str(refused.value)
    assert "3-node cluster, not 1" in said
    assert "make down" in said and "make clean-kafka" in said and "reset-kafka" in said
    assert "KAFKA_NODES=1 make up" in said


def test_the_documented_switch_works(
    tmp_path: Path, three: LocalCluster, stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removing the node-* folders alone left the size stamp, and `up` still refused."""
    monkeypatch.setenv("KAFKA_NODES", "1")
    old_id = three.cluster_id()
    assert stack.main(["reset-kafka"]) == 0

    home = three.home
    assert not list(home.glob("node-*"))
    assert not (home / "cluster-size").exists() and not (home / "nodes-cluster-id").exists()
    assert (home / "libs" / "kafka_2.13-4.1.1.jar").exists(), "the jars stay"
    assert (tmp_path / "kafka-credentials" / "admin").exists(), "the passwords stay"
    one = cluster(tmp_path, 1)
    one.check_size()
    assert (home / "cluster-size").read_text().strip() == "1"
    assert one.cluster_id() != old_id, "a new cluster, formatted afresh"


@pytest.fixture
def running_node(three: LocalCluster) -> Iterator[subprocess.Popen[bytes]]:
    """Node 3 of the three-node cluster, still running (its command line as a broker's)."""
    node = three.nodes[3]
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    fake = subprocess.Popen([*command, "kafka.Kafka", str(node.config_file)])
    node.pid_file.write_text(f"{fake.pid}\n")
    yield fake
    fake.kill()
    fake.wait()


def test_reset_refuses_while_a_node_of_the_old_size_runs(
    tmp_path: Path,
    three: LocalCluster,
    running_node: subprocess.Popen[bytes],
    stack: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KAFKA_NODES", "1")
    assert stack.main(["reset-kafka"]) == 2
    assert "node-3 still runs" in capsys.readouterr().err
    assert (three.home / "node-3" / "data" / "meta.properties").exists()
    assert running_node.poll() is None


def test_down_with_the_new_size_stops_the_nodes_of_the_old_one(
    tmp_path: Path, three: LocalCluster, running_node: subprocess.Popen[bytes]
) -> None:
    """`make down` after KAFKA_NODES changed still stops every node the home holds."""
    cluster(tmp_path, 1).stop(timeout=10)
    assert running_node.wait(10) is not None
    assert cluster(tmp_path, 1).reset()


def test_removing_the_node_folders_by_hand_is_enough_too(
    tmp_path: Path, three: LocalCluster
) -> None:
    """What the message used to say: the size stamp of a cluster with no data left is
    no reason to refuse."""
    for folder in three.home.glob("node-*"):
        shutil.rmtree(folder)
    cluster(tmp_path, 1).check_size()
    assert (three.home / "cluster-size").read_text().strip() == "1"
