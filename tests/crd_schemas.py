"""The Kubeflow CRDs in ../shared/schemas/crds, as jsonschema validators.

A CRD's ``openAPIV3Schema`` is an OpenAPI 3.0 schema, which jsonschema's Draft 4 reads
(types, required, enums, patterns, ``anyOf`` for int-or-string quantities). Two things
the API server does besides are made explicit here:

- ``strict``: an object schema that lists its properties refuses any other field, as the
  server does with ``fieldValidation=Strict`` (it would otherwise drop them silently, so
  a misspelt field would simply vanish);
- the TrainJob's CEL rule on ``metadata.name`` (RFC 1035, at most 63 characters), the one
  rule a created job can break; CEL rules in general are not evaluated.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass

import jsonschema
import yaml

from tests.conftest import REPO_ROOT

CRD_DIR = REPO_ROOT.parent / "shared" / "schemas" / "crds"
CRD_FILES = {"PyTorchJob": "kubeflow.org_pytorchjobs.yaml", "TrainJob": "trainer.kubeflow.org_trainjobs.yaml"}
_RFC1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class CustomResource:
    """One served version of a CRD."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    schema: dict
    status_subresource: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def _closed(schema: dict) -> dict:
    """A copy in which object schemas with listed properties refuse unknown fields."""
    schema = copy.deepcopy(schema)

    def close(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)
    close(schema)
    return schema


@functools.lru_cache(maxsize=None)
def load_crd(kind: str) -> CustomResource:
    document = yaml.load((CRD_DIR / CRD_FILES[kind]).read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    spec = document["spec"]
    version = next(v for v in spec["versions"] if v.get("served", True) and v.get("storage", True))
    return CustomResource(group=spec["group"], version=version["name"], plural=spec["names"]["plural"],
                          kind=spec["names"]["kind"], namespaced=spec["scope"] == "Namespaced",
                          schema=version["schema"]["openAPIV3Schema"],
                          status_subresource="status" in (version.get("subresources") or {}))


@functools.lru_cache(maxsize=None)
def _validator(kind: str, strict: bool) -> jsonschema.Draft4Validator:
    schema = load_crd(kind).schema
    return jsonschema.Draft4Validator(_closed(schema) if strict else schema)


def schema_errors(document: dict, strict: bool = True) -> list[str]:
    """Every way ``document`` breaks its CRD's schema, as ``path: message`` lines."""
    kind = document.get("kind", "")
    if kind not in CRD_FILES:
        return [f"kind: no CRD for {kind!r}"]
    errors = [f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
              for error in _validator(kind, strict).iter_errors(document)]
    name = (document.get("metadata") or {}).get("name", "")
    if kind == "TrainJob" and (not _RFC1035.match(name) or len(name) > 63):
        errors.append(f"metadata.name: {name!r} must be an RFC 1035 label of at most 63 characters")
    resource = load_crd(kind)
    if document.get("apiVersion") != resource.api_version:
        errors.append(f"apiVersion: expected {resource.api_version}, got {document.get('apiVersion')!r}")
    return errors
