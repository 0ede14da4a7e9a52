"""The tools behind `make k8s`: the Go tool cache builds once and never leaves half a
binary, and the schema converter makes strict JSON schemas that still accept what the
Kubernetes API accepts."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tools.dev import gotools, k8s, k8s_schemas

pytestmark = pytest.mark.unit


def fake_go(folder: Path, log: Path, *, fail: bool = False) -> Path:
    """A `go` that records its arguments and 'builds' the binary `go install` names."""
    build = [
        "for spec; do :; done; name=${spec%@*}; name=${name##*/}",
        'printf "#!/bin/sh\\n" > "$GOBIN/$name"; chmod +x "$GOBIN/$name"',
    ]
    script = folder / "go"
    lines = ["#!/bin/sh", f'echo "$@ GOTOOLCHAIN=$GOTOOLCHAIN" >> "{log}"']
    script.write_text("\n".join([*lines, *(["exit 3"] if fail else build)]) + "\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHOP_TOOLS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "cache"


def test_a_tool_is_built_once_at_its_pinned_version_and_then_found(
    tmp_path: Path, cache: Path
) -> None:
    log = tmp_path / "go.log"
    fake_go(tmp_path, log)
    assert gotools.find("kubeconform") is None
    path = gotools.install("kubeconform")
    assert path == cache / f"kubeconform-{gotools.TOOLS['kubeconform'].version}" / "kubeconform"
    assert gotools.find("kubeconform") == path and os.access(path, os.X_OK)
    assert gotools.install("kubeconform") == path
    (call,) = log.read_text().splitlines()  # the second install built nothing
    assert gotools.TOOLS["kubeconform"].spec in call and "GOTOOLCHAIN=local" in call


def test_a_failed_build_leaves_nothing_that_looks_built(tmp_path: Path, cache: Path) -> None:
    fake_go(tmp_path, tmp_path / "go.log", fail=True)
    with pytest.raises(subprocess.CalledProcessError):
        gotools.install("helm")
    assert gotools.find("helm") is None
    assert not any(p.is_file() for p in cache.rglob("*"))


def test_path_says_how_to_build_a_missing_tool(cache: Path, capsys: Any) -> None:
    assert gotools.main(["path", "helm"]) == 1
    assert "python -m tools.dev.gotools install helm" in capsys.readouterr().err


# -- the schema converter -------------------------------------------------------------------


def test_objects_become_closed_unless_they_keep_unknown_fields() -> None:
    schema = {
        "type": "object",
        "description": "dropped",
        "properties": {
            "size": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}]},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "config": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "properties": {"a": {"type": "string"}},
            },
            "note": {"type": "string", "nullable": True},
            "items": {"type": "array", "items": {"type": "object", "properties": {"b": {}}}},
        },
    }
    strict = k8s_schemas.strict(schema)
    assert strict["additionalProperties"] is False and "description" not in strict
    properties = strict["properties"]
    assert properties["size"] == {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    assert properties["labels"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in properties["config"]
    assert properties["note"]["type"] == ["string", "null"]
    assert properties["items"]["items"]["additionalProperties"] is False


def test_a_reference_stands_alone_as_draft_4_reads_it() -> None:
    assert k8s_schemas.strict({"$ref": "#/definitions/x", "description": "y"}) == {
        "$ref": "#/definitions/x"
    }


def swagger() -> dict[str, Any]:
    meta = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    return {
        "definitions": {
            meta: {"type": "object", "properties": {"name": {"type": "string"}}},
            "io.k8s.apimachinery.pkg.api.resource.Quantity": {"type": "string"},
            "io.k8s.api.core.v1.Unused": {"type": "object", "properties": {}},
            "io.k8s.api.demo.v1.Widget": {
                "x-kubernetes-group-version-kind": [
                    {"group": "demo.example.com", "version": "v1", "kind": "Widget"}
                ],
                "type": "object",
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"$ref": f"#/definitions/{meta}"},
                    "size": {"$ref": "#/definitions/io.k8s.apimachinery.pkg.api.resource.Quantity"},
                },
            },
        }
    }


def test_a_kind_carries_only_what_it_reaches_and_its_own_api_version() -> None:
    doc = swagger()
    definitions = k8s_schemas.kubernetes_definitions(doc)
    schema = k8s_schemas.kubernetes_schema(doc, definitions, "demo.example.com/v1", "Widget")
    assert schema["properties"]["kind"] == {"type": "string", "enum": ["Widget"]}
    assert schema["properties"]["apiVersion"]["enum"] == ["demo.example.com/v1"]
    assert sorted(schema["definitions"]) == [
        "io.k8s.apimachinery.pkg.api.resource.Quantity",
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
    ]
    assert schema["definitions"]["io.k8s.apimachinery.pkg.api.resource.Quantity"] == {
        "oneOf": [{"type": "string"}, {"type": "number"}]
    }
    assert k8s_schemas.kubernetes_file("1.36.0", "demo.example.com/v1", "Widget") == (
        "v1.36.0-standalone-strict/widget-demo-v1.json"
    )
    assert k8s_schemas.kubernetes_file("1.36.0", "v1", "Service") == (
        "v1.36.0-standalone-strict/service-v1.json"
    )


def test_a_crd_becomes_one_schema_for_its_stored_version_with_strict_metadata() -> None:
    crd = {
        "spec": {
            "group": "demo.example.com",
            "names": {"kind": "Gadget"},
            "versions": [
                {
                    "name": "v1beta1",
                    "served": True,
                    "storage": False,
                    "schema": {"openAPIV3Schema": {"type": "object"}},
                },
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "metadata": {"type": "object"},
                                "spec": {
                                    "type": "object",
                                    "properties": {"n": {"type": "integer"}},
                                },
                                "status": {"type": "object"},
                            },
                        }
                    },
                },
            ],
        }
    }
    definitions = k8s_schemas.kubernetes_definitions(swagger())
    ((path, schema),) = k8s_schemas.crd_schemas(crd, definitions)
    assert path == "demo.example.com/gadget_v1.json"
    assert schema["properties"]["metadata"] == {
        "$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    }
    assert (
        schema["definitions"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"][
            "additionalProperties"
        ]
        is False
    )
    assert "status" not in schema["properties"]
    assert schema["properties"]["spec"]["additionalProperties"] is False


def test_every_vendored_schema_is_strict_draft_4_json() -> None:
    files = sorted(k8s.SCHEMAS.rglob("*.json"))
    kinds = {path.name.split("-")[0] for path in files if "kubernetes" in path.parts}
    assert kinds == {kind.lower() for _, kind in k8s_schemas.KUBERNETES_KINDS}
    for path in files:
        schema = json.loads(path.read_text())
        assert schema["$schema"] == k8s_schemas.DRAFT, path
        assert schema["additionalProperties"] is False, path
        assert set(schema["required"]) >= {"apiVersion", "kind"}, path
