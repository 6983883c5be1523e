"""Helm releases as Flux objects, for the offline render.

A `kubernetes:helm.sh/v3:Release` is not a Kubernetes object: Pulumi runs Helm itself. To show
(and let a GitOps setup apply) what would be installed, the render turns each recorded release
into a Flux `HelmRelease` (helm.toolkit.fluxcd.io/v2) plus its chart source: a `HelmRepository`
for an https chart repository, an `OCIRepository` for an `oci://` chart
(both source.toolkit.fluxcd.io/v1). The values go in as they are. They never hold a credential
in this project: charts get Secret *names* (existingSecret keys, env valueFrom), so the
converter refuses values that carry a Pulumi secret instead of silently writing it out.
"""

from __future__ import annotations

from typing import Any

from dynctl import engine

HELM_RELEASE_API = "helm.toolkit.fluxcd.io/v2"
SOURCE_API = "source.toolkit.fluxcd.io/v1"
RELEASE_TYPE = "kubernetes:helm.sh/v3:Release"
# How often Flux re-reads the chart source and reconciles the release.
SOURCE_INTERVAL = "1h"
RELEASE_INTERVAL = "10m"
HELM_CHART_MEDIA_TYPE = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"

# Pulumi's wire-format marker of a value not known yet.
_UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"


class FluxConversionError(ValueError):
    """A release that cannot be expressed as Flux objects without losing or leaking something."""


def release_to_flux(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """[chart source, HelmRelease] for one Release's recorded inputs (camelCase, as the provider sees them)."""
    name = inputs.get("name")
    chart = inputs.get("chart")
    if not name or not chart:
        raise FluxConversionError("a Helm release needs an explicit name and chart to become a Flux HelmRelease")
    if inputs.get("valueYamlFiles"):
        raise FluxConversionError(f"release {name}: valueYamlFiles cannot be rendered; pass the values inline")
    namespace = inputs.get("namespace") or "default"
    version = inputs.get("version")
    values = inputs.get("values") or {}
    _refuse_secrets(values, f"release {name}: values")
    repo = (inputs.get("repositoryOpts") or {}).get("repo")

    metadata = {"name": name, "namespace": namespace}
    spec: dict[str, Any] = {"interval": RELEASE_INTERVAL, "releaseName": name}
    if chart.startswith("oci://") or (repo or "").startswith("oci://"):
        url = chart if chart.startswith("oci://") else f"{repo.rstrip('/')}/{chart}"
        source_spec: dict[str, Any] = {
            "interval": SOURCE_INTERVAL,
            "url": url,
            # Without this Flux would take the first layer and not find a chart in it.
            "layerSelector": {"mediaType": HELM_CHART_MEDIA_TYPE, "operation": "copy"},
        }
        if version:
            source_spec["ref"] = {"tag": version}
        source = {"apiVersion": SOURCE_API, "kind": "OCIRepository", "metadata": dict(metadata), "spec": source_spec}
        spec["chartRef"] = {"kind": "OCIRepository", "name": name}
    else:
        if not repo:
            raise FluxConversionError(f"release {name}: chart {chart!r} has no repositoryOpts.repo to fetch it from")
        source = {"apiVersion": SOURCE_API, "kind": "HelmRepository", "metadata": dict(metadata),
                  "spec": {"interval": SOURCE_INTERVAL, "url": repo}}
        chart_spec: dict[str, Any] = {"chart": chart, "sourceRef": {"kind": "HelmRepository", "name": name}}
        if version:
            chart_spec["version"] = version
        spec["chart"] = {"spec": chart_spec}
    if isinstance(inputs.get("timeout"), int):
        spec["timeout"] = f"{inputs['timeout']}s"
    if values:
        spec["values"] = engine.whole_numbers(values)
    release = {"apiVersion": HELM_RELEASE_API, "kind": "HelmRelease", "metadata": dict(metadata), "spec": spec}
    return [source, release]


def _refuse_secrets(value: Any, where: str) -> None:
    if engine.is_secret(value):
        raise FluxConversionError(f"{where} hold a secret; reference a Secret by name instead")
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_secrets(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_secrets(item, f"{where}[{i}]")
    elif value == _UNKNOWN:
        raise FluxConversionError(f"{where} is not known before deployment; it cannot be rendered")


def helm_release_objects(recorded: Any) -> list[dict[str, Any]]:
    """Flux objects for one recorded registration (dynctl.engine.Recorded) of a Helm release."""
    if recorded.type != RELEASE_TYPE:
        raise FluxConversionError(f"{recorded.name} is a {recorded.type}, not a {RELEASE_TYPE}")
    inputs = dict(recorded.inputs)
    inputs.setdefault("name", recorded.name)
    return release_to_flux(inputs)
