"""The JSON schemas kubeconform validates the chart against, made from their upstream
sources: the Kubernetes API's OpenAPI (v2) document for the kinds the chart uses, and the
operators' CustomResourceDefinitions (Strimzi, CloudNativePG, Gateway API, Prometheus
Operator). The sources stay outside the repository; deploy/k8s/schemas/README.md says
which release each came from.

    python -m tools.dev.k8s_schemas --kubernetes swagger.json --version 1.36.0 \\
        --crd kafka-crd.yaml --crd clusters-crd.yaml ... --out deploy/k8s/schemas

What the conversion does, so that validation is strict:

- every object schema that lists its properties and says nothing else about further ones
  gets `additionalProperties: false` (an unknown or misspelt field fails), except where a
  CRD keeps unknown fields (`x-kubernetes-preserve-unknown-fields`);
- `int-or-string` and `Quantity` become the union of their JSON types, `nullable` adds
  `null`;
- a Kubernetes kind's file holds only the definitions it reaches, referenced locally; a
  custom resource's `metadata` is Kubernetes' own ObjectMeta, strict too;
- `apiVersion` and `kind` are pinned to the resource's own;
- descriptions and the `x-kubernetes-*` annotations (list semantics, CEL rules) are
  dropped: they do not constrain a document's shape, and the files stay small.

The files sit where kubeconform's `-schema-location` templates find them:
`kubernetes/v<version>-standalone-strict/<kind>[-<group>]-<version>.json` (its default
layout) and `crds/<group>/<kind>_<version>.json`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

DRAFT = "http://json-schema.org/draft-04/schema#"
"""kubeconform compiles schemas as draft 4 unless they say otherwise."""

KUBERNETES_KINDS = (
    ("apps/v1", "Deployment"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("policy/v1", "PodDisruptionBudget"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
)
"""The Kubernetes kinds the chart renders; any other fails validation for want of a
schema."""

OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
UNIONS = {
    "int-or-string": [{"type": "string"}, {"type": "integer"}],
    "io.k8s.apimachinery.pkg.api.resource.Quantity": [{"type": "string"}, {"type": "number"}],
}
DROPPED = ("description", "example", "externalDocs")


def strict(schema: Any, *, preserve_key: str = "x-kubernetes-preserve-unknown-fields") -> Any:
    """A copy of an OpenAPI schema as strict JSON schema (draft 4), recursively."""
    if isinstance(schema, list):
        return [strict(item, preserve_key=preserve_key) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:  # draft 4 ignores whatever stands beside a $ref
        return {"$ref": schema["$ref"]}
    if schema.get("format") == "int-or-string" or schema.get("x-kubernetes-int-or-string"):
        return {"oneOf": UNIONS["int-or-string"]}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in DROPPED or key.startswith("x-"):
            continue
        if key == "nullable":
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: strict(sub, preserve_key=preserve_key) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[key] = strict(value, preserve_key=preserve_key)
        else:
            out[key] = value
    if "properties" in out and "additionalProperties" not in out and not schema.get(preserve_key):
        out["additionalProperties"] = False
    if schema.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def reachable(definitions: dict[str, Any], root: str) -> list[str]:
    """The definitions `root` refers to, directly or not, itself included."""
    seen: list[str] = []
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.append(name)
        todo.extend(refs(definitions[name]))
    return sorted(seen)


def refs(schema: Any) -> Iterable[str]:
    if isinstance(schema, dict):
        if isinstance(schema.get("$ref"), str):
            yield schema["$ref"].removeprefix("#/definitions/")
        for value in schema.values():
            yield from refs(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from refs(value)


def pinned(root: dict[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    """`root` with apiVersion and kind fixed and required."""
    root = dict(root)
    properties = dict(root.get("properties", {}))
    properties["apiVersion"] = {"type": "string", "enum": [api_version]}
    properties["kind"] = {"type": "string", "enum": [kind]}
    root["properties"] = properties
    root["required"] = sorted({*root.get("required", []), "apiVersion", "kind"})
    return root


def kubernetes_definitions(swagger: dict[str, Any]) -> dict[str, Any]:
    """The swagger's definitions, strict, with Quantity as a union."""
    converted = {name: strict(schema) for name, schema in swagger["definitions"].items()}
    for name, union in UNIONS.items():
        if name in converted:
            converted[name] = {"oneOf": union}
    return converted


def find_kind(swagger: dict[str, Any], api_version: str, kind: str) -> str:
    group, _, version = api_version.rpartition("/")
    for name, schema in swagger["definitions"].items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            if (gvk["group"], gvk["version"], gvk["kind"]) == (group, version, kind):
                return name
    raise KeyError(f"{api_version} {kind} is not in the OpenAPI document")


def kubernetes_schema(
    swagger: dict[str, Any], definitions: dict[str, Any], api_version: str, kind: str
) -> dict[str, Any]:
    name = find_kind(swagger, api_version, kind)
    others = [other for other in reachable(definitions, name) if other != name]
    root = pinned(definitions[name], api_version, kind)
    return {"$schema": DRAFT, **root, "definitions": {o: definitions[o] for o in others}}


def kubernetes_file(version: str, api_version: str, kind: str) -> str:
    """kubeconform's default layout: `<version>-standalone-strict/<kind><suffix>.json`."""
    group, _, api = api_version.rpartition("/")
    suffix = f"-{group.split('.')[0]}-{api}" if group else f"-{api}"
    return f"v{version}-standalone-strict/{kind.lower()}{suffix}.json"


def crd_schemas(
    crd: dict[str, Any], definitions: dict[str, Any]
) -> Iterable[tuple[str, dict[str, Any]]]:
    """(path under crds/, schema) for the version a CRD stores (the one to write)."""
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    meta = reachable(definitions, OBJECT_META)
    for version in crd["spec"]["versions"]:
        if not version.get("storage"):
            continue
        root = strict(version["schema"]["openAPIV3Schema"])
        root["properties"] = {
            **root.get("properties", {}),
            "metadata": {"$ref": f"#/definitions/{OBJECT_META}"},
        }
        root["properties"].pop("status", None)  # set by the operator, never in a manifest
        root = pinned(root, f"{group}/{version['name']}", kind)
        schema = {"$schema": DRAFT, **root, "definitions": {m: definitions[m] for m in meta}}
        yield f"{group}/{kind.lower()}_{version['name']}.json", schema


def write(path: Path, schema: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.dev.k8s_schemas",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kubernetes", type=Path, required=True, help="OpenAPI v2 JSON")
    parser.add_argument("--version", required=True, help="its Kubernetes version, e.g. 1.36.0")
    parser.add_argument("--crd", type=Path, action="append", default=[], help="a CRD's YAML")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    swagger = json.loads(args.kubernetes.read_text())
    definitions = kubernetes_definitions(swagger)
    for api_version, kind in KUBERNETES_KINDS:
        path = args.out / "kubernetes" / kubernetes_file(args.version, api_version, kind)
        write(path, kubernetes_schema(swagger, definitions, api_version, kind))
        print(path)
    for file in args.crd:
        for document in yaml.safe_load_all(file.read_text()):
            if document and document.get("kind") == "CustomResourceDefinition":
                for relative, schema in crd_schemas(document, definitions):
                    write(args.out / "crds" / relative, schema)
                    print(args.out / "crds" / relative)
    return 0


if __name__ == "__main__":
    sys.exit(main())
