"""Custom resources against their published schemas (deploy/check/schemas), made strict.

A CRD's openAPIV3Schema accepts unknown fields unless told otherwise (the API server prunes
them silently, so a typo vanishes instead of failing). Loading a schema here adds
`additionalProperties: false` to every object schema that lists `properties` and sets neither
`additionalProperties` nor `x-kubernetes-preserve-unknown-fields`; `x-kubernetes-embedded-resource`
objects also accept apiVersion/kind/metadata, `x-kubernetes-int-or-string` becomes
integer-or-string, `nullable` admits null. The root `metadata` is checked as the API server
does, as a strict ObjectMeta (builtin.object_meta_errors). Objects are defaulted from the
schema's `default`s before validation and CEL, as the API server defaults before it validates.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# The datree JSON schemas carry no group/version/kind or scope: name them here.
DATREE = {
    "datree/monitoring.coreos.com/podmonitor_v1.json": ("monitoring.coreos.com/v1", "PodMonitor", "Namespaced"),
    "datree/cert-manager.io/certificate_v1.json": ("cert-manager.io/v1", "Certificate", "Namespaced"),
    "datree/cert-manager.io/issuer_v1.json": ("cert-manager.io/v1", "Issuer", "Namespaced"),
    "datree/kueue.x-k8s.io/localqueue_v1beta1.json": ("kueue.x-k8s.io/v1beta1", "LocalQueue", "Namespaced"),
}


@dataclass
class CrdSchema:
    """One kind's schema: as published (for defaults and CEL) and made strict (for validation)."""

    api_version: str
    kind: str
    scope: str
    source: str
    raw: dict
    validator: jsonschema.Draft4Validator


def strict(node: dict) -> dict:
    """Returns a strict copy of a structural schema node (see the module doc)."""
    node = dict(node)
    if node.get("x-kubernetes-embedded-resource"):
        props = dict(node.get("properties") or {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
        node["properties"] = props
    if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        node["additionalProperties"] = False
    if node.get("x-kubernetes-int-or-string") and "type" not in node and "anyOf" not in node:
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(node.get("type"), str):
        node["type"] = [node["type"], "null"]
    if "properties" in node:
        node["properties"] = {k: strict(v) for k, v in node["properties"].items()}
    if isinstance(node.get("items"), dict):
        node["items"] = strict(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = strict(node["additionalProperties"])
    return node


def load(schemas_dir: Path) -> dict[tuple[str, str], CrdSchema]:
    """Loads every schema under `schemas_dir` keyed by (apiVersion, kind)."""
    out: dict[tuple[str, str], CrdSchema] = {}

    def add(api_version: str, kind: str, scope: str, source: str, schema: dict) -> None:
        s = strict(schema)
        s["properties"] = dict(s.get("properties") or {})
        s["properties"]["metadata"] = {"type": "object"}  # checked as ObjectMeta instead
        s["properties"]["apiVersion"] = {"type": "string", "enum": [api_version]}
        s["properties"]["kind"] = {"type": "string", "enum": [kind]}
        s["additionalProperties"] = False
        out[(api_version, kind)] = CrdSchema(api_version, kind, scope, source, schema, jsonschema.Draft4Validator(s))

    for path in sorted((schemas_dir / "crds").glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=LOADER)
        spec = crd["spec"]
        for ver in spec["versions"]:
            if not ver.get("served", True):
                continue
            add(f"{spec['group']}/{ver['name']}", spec["names"]["kind"], spec["scope"],
                str(path.relative_to(schemas_dir)), ver["schema"]["openAPIV3Schema"])
    for rel, (api_version, kind, scope) in DATREE.items():
        add(api_version, kind, scope, rel, json.loads((schemas_dir / rel).read_text()))
    return out


def with_defaults(value, schema: dict):
    """Returns a copy of `value` with the schema's defaults filled in where a field is absent
    (in objects that are present, as the API server's structural defaulting does)."""
    value = copy.deepcopy(value)
    _default(value, schema)
    return value


def _default(value, schema: dict) -> None:
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for k, sub in props.items():
            if k not in value and "default" in sub:
                value[k] = copy.deepcopy(sub["default"])
        for k, v in value.items():
            if k in props:
                _default(v, props[k])
            elif isinstance(schema.get("additionalProperties"), dict):
                _default(v, schema["additionalProperties"])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for v in value:
            _default(v, schema["items"])


def errors(s: CrdSchema, obj: dict) -> list[tuple[list, str]]:
    """Returns (path, message) for each strict-schema violation of a defaulted object."""
    out = []
    for e in s.validator.iter_errors(obj):
        msg = e.message
        if e.validator == "additionalProperties":
            msg = f"unknown field ({e.message}; schema {s.source}, made strict)"
        elif len(msg) > 300:
            msg = msg[:300] + "..."
        out.append((list(e.absolute_path), msg))
    return out
