"""The local broker's JVM options: Kafka's own unless `KAFKA_JVM_PERFORMANCE_OPTS` names
others, and then only options."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.local.kafka import JVM_FLAGS, JVM_FLAGS_VARIABLE, LocalBroker, jvm_flags

pytestmark = pytest.mark.unit


def test_without_the_variable_a_broker_runs_on_kafkas_own_flags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(JVM_FLAGS_VARIABLE, raising=False)
    assert jvm_flags() == JVM_FLAGS


def test_the_variable_replaces_the_flags_in_the_brokers_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(JVM_FLAGS_VARIABLE, "  -XX:TieredStopAtLevel=1   -XX:+UseSerialGC ")
    command = LocalBroker(tmp_path, port=1, controller_port=2)._java_cmd(tmp_path, "kafka.Kafka")
    assert "-XX:TieredStopAtLevel=1" in command and "-XX:+UseSerialGC" in command
    assert "-XX:+UseG1GC" not in command
    assert command[-1] == "kafka.Kafka", "what runs is still Kafka"


@pytest.mark.parametrize(
    "value",
    ["-Xmx1g evil.Main", "-XX:+UseSerialGC -D\x1b[2Jx", "-Dx=" + "a" * 3_000, "/tmp/agent.jar"],
)
def test_a_word_that_is_not_an_option_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(JVM_FLAGS_VARIABLE, value)
    with pytest.raises(ValueError, match=JVM_FLAGS_VARIABLE):
        jvm_flags()
