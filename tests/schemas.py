"""Validate rendered objects against the real upstream schemas, strictly.

Core Kubernetes kinds: kubernetes-validate (strict: unknown fields fail). Custom resources: the
CRDs in ../shared/reference/crds, with every object schema closed (an API server drops or, under
strict field validation, rejects unknown fields, so a misspelt field must fail here).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CRDS = REPO.parent / "shared" / "reference" / "crds"
KUBERNETES_VERSION = "1.33"


class SchemaMissing(LookupError):
    pass


def _close(schema: dict) -> dict:
    """additionalProperties: false wherever the CRD lists properties and does not preserve unknowns."""
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            # A map of field names to schemas, not a schema itself: close each field's schema.
            out[key] = {name: _close(field) for name, field in value.items()}
        elif isinstance(value, list):
            out[key] = [_close(item) for item in value]
        else:
            out[key] = _close(value)
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@lru_cache(maxsize=None)
def _crd_schemas(folder: str) -> dict[tuple[str, str], dict]:
    found: dict[tuple[str, str], dict] = {}
    for path in sorted(Path(folder).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            for version in doc["spec"]["versions"]:
                schema = _close(version["schema"]["openAPIV3Schema"])
                found[(f"{group}/{version['name']}", kind)] = schema
    return found


def crd_schema(api_version: str, kind: str, dynamo_version: str | None = None) -> dict:
    if not CRDS.is_dir():
        pytest.skip(f"{CRDS} not present: custom resources cannot be validated here")
    folder = CRDS
    if kind == "DynamoGraphDeployment" and dynamo_version and dynamo_version.startswith("0.8."):
        folder = CRDS / "v0.8"
    schemas = _crd_schemas(str(folder))
    if (api_version, kind) not in schemas:
        raise SchemaMissing(f"no CRD schema for {api_version} {kind} in {folder}")
    return schemas[(api_version, kind)]


def validate(obj: dict, dynamo_version: str | None = None) -> None:
    """Raise on any schema violation of one rendered object."""
    api_version, kind = obj["apiVersion"], obj["kind"]
    group = api_version.split("/")[0] if "/" in api_version else ""
    if group == "" or group.endswith(".k8s.io") or group in ("apps", "batch", "policy", "autoscaling"):
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        return
    # The CRDs carry Go regexes (e.g. `^(?i)...`) that Python's metaschema check rejects: skip that check.
    validator = jsonschema.Draft7Validator(crd_schema(api_version, kind, dynamo_version))
    error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if error is not None:
        raise error
