"""Built-in kinds against kubernetes-validate's strict schemas (`--strict`: no unknown field),
at a given Kubernetes version.

This is the package's own validation (same schema files, same choice of the newest schema
not newer than the asked version, same JSON Schema draft) with two differences that make it
stricter than its command line: every error is reported, not the first, and a kind without a
schema is an error (the command line only WARNs and exits 0)."""

from __future__ import annotations

import json
import re
from functools import lru_cache

import importlib_resources
import jsonschema
from kubernetes_validate import utils as kv
from kubernetes_validate.version import __version__ as PACKAGE_VERSION
from packaging.version import Version
from referencing import Registry, Resource


class NoSchema(Exception):
    """kubernetes-validate has no schema for this kind at this version."""


def supported_versions() -> list[str]:
    """Returns the Kubernetes minor versions the installed package has schemas for."""
    return sorted({kv.major_minor(v) for v in kv.all_versions()}, key=Version)


def schema_version(desired: str) -> str:
    """Returns the schema version kubernetes-validate uses for `desired`."""
    want = Version(kv.major_minor(desired))
    have = [v for v in kv.all_versions() if Version(kv.major_minor(v)) <= want]
    if not have or want > Version(kv.major_minor(kv.latest_version())):
        raise NoSchema(f"kubernetes-validate {PACKAGE_VERSION} has no schemas for Kubernetes {desired}")
    return have[-1]


def _read(version: str, filename: str):
    ref = importlib_resources.files("kubernetes_validate").joinpath(
        f"kubernetes-json-schema/v{version}-local-strict/{filename}"
    )
    with importlib_resources.as_file(ref) as path:
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None


@lru_cache(maxsize=None)
def _registry(version: str) -> Registry:
    defs = _read(version, "_definitions.json")
    return Resource.from_contents(defs) @ Registry()


@lru_cache(maxsize=None)
def _validator(version: str, api_version: str, kind: str):
    # As kubernetes-validate: rbac.authorization.k8s.io/v1 -> rbac-v1, v1 -> v1.
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = _read(version, f"{kind.lower()}-{api}.json")
    if schema is None:
        return None
    return jsonschema.validators.Draft202012Validator(schema, registry=_registry(version))


@lru_cache(maxsize=None)
def _def_validator(version: str, definition: str):
    schema = {"$ref": f"https://kubernetes.io/api/_definitions.json#/$defs/{definition}"}
    return jsonschema.validators.Draft202012Validator(schema, registry=_registry(version))


def errors(obj: dict, desired: str) -> list[tuple[list, str]]:
    """Returns (path, message) for every schema violation of `obj` at Kubernetes `desired`.

    # Errors
    NoSchema when the package has no schema for the object's kind and apiVersion."""
    version = schema_version(desired)
    v = _validator(version, obj.get("apiVersion", ""), obj.get("kind", ""))
    if v is None:
        raise NoSchema(
            f"no schema for {obj.get('apiVersion')} {obj.get('kind')} in kubernetes-validate "
            f"{PACKAGE_VERSION} at Kubernetes {desired}"
        )
    return [(list(e.absolute_path), _message(e)) for e in v.iter_errors(obj)]


def object_meta_errors(meta: dict, desired: str) -> list[tuple[list, str]]:
    """Checks a custom resource's metadata as the API server does: as a strict ObjectMeta."""
    v = _def_validator(schema_version(desired), "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
    return [(list(e.absolute_path), _message(e)) for e in v.iter_errors(meta)]


def _message(e: jsonschema.ValidationError) -> str:
    if e.validator == "additionalProperties":
        return f"unknown field ({e.message})"
    if e.validator == "required":
        return f"missing required field ({e.message})"
    return e.message if len(e.message) < 300 else e.message[:300] + "..."
