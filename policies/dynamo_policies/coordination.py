"""Discovery and messaging consistent with what the stack installs.

A graph annotated for etcd discovery (`nvidia.com/dynamo-discovery-backend: etcd`) hangs
at startup when no etcd runs; a graph whose event or request plane is NATS
(`DYN_EVENT_PLANE=nats`, `DYN_REQUEST_PLANE=nats`, or a `NATS_SERVER` address) loses KV events
or requests when no NATS runs. Both are stack policies: they compare the graphs with the rest
of the stack.

etcd/NATS count as installed when the stack has
- a Helm release of the chart (`kubernetes:helm.sh/v3:Release`, props `chart`/`name`; or the
  v4 `Chart` component),
- a Flux HelmRelease for it (the rendered-manifest form: `spec.chart.spec.chart`,
  `spec.chartRef.name`, `spec.releaseName`),
- a StatefulSet, Deployment or Service named like it (`dynamo-etcd`, `nats`),
- a dynamo-platform release whose values enable the subchart (`etcd.enabled`, `nats.enabled`),
or when the policy config says it is provided outside the stack. A graph whose every component
sets `ETCD_ENDPOINTS` names the etcd it uses (an existing one) and needs none in the stack.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    StackValidationArgs,
    StackValidationPolicy,
)

from . import settings as cfg
from .shapes import (
    DISCOVERY_ANNOTATION,
    as_map,
    describe,
    dig,
    graph_components,
    is_graph,
    kubernetes_kind,
    split_type,
)

_SERVICES = ("etcd", "nats")
_NAMED_KINDS = {("apps", "StatefulSet"), ("apps", "Deployment"), ("core", "Service")}


def _words(text: str) -> set[str]:
    """`oci://registry-1.docker.io/bitnamicharts/etcd` -> {..., "etcd"}; `dynamo-nats` -> {"dynamo", "nats"}."""
    return {w for w in re.split(r"[^a-z0-9]+", text.lower()) if w}


def _platform_subcharts(values: Mapping) -> set[str]:
    return {s for s in _SERVICES if dig(values, s, "enabled") is True}


def installed_services(resources) -> set[str]:
    """Which of etcd / NATS the stack's resources install."""
    found: set[str] = set()
    for r in resources:
        props = r.props
        provider, group_version, kind = split_type(r.resource_type)
        names: list[str] = []
        values: Mapping = {}
        if provider == "kubernetes" and group_version.startswith("helm.sh/"):
            names = [str(props.get("chart") or ""), str(props.get("name") or "")]
            values = as_map(props.get("values"))
        elif kubernetes_kind(r.resource_type) == ("helm.toolkit.fluxcd.io", "HelmRelease"):
            spec = as_map(props.get("spec"))
            names = [str(dig(spec, "chart", "spec", "chart") or ""),
                     str(dig(spec, "chartRef", "name") or ""),
                     str(spec.get("releaseName") or "")]
            values = as_map(spec.get("values"))
        elif kubernetes_kind(r.resource_type) in _NAMED_KINDS:
            names = [str(dig(props, "metadata", "name") or r.name)]
        else:
            continue
        words = set().union(*(_words(n) for n in names))
        found |= words & set(_SERVICES)
        if "platform" in words:
            found |= _platform_subcharts(values)
    return found


def _uses_nats(component) -> bool:
    for var in ("DYN_EVENT_PLANE", "DYN_REQUEST_PLANE"):
        if (component.env_value(var) or "").lower() == "nats":
            return True
    for flag in ("--event-plane", "--request-plane"):
        if (component.flag(flag) or "").lower() == "nats":
            return True
    return component.env_defined("NATS_SERVER")


def _check(args: StackValidationArgs, report: ReportViolation, service: str, policy: str,
           needs, alternative: str = "") -> None:
    """Report every graph that `needs` the service when the stack installs none.

    `alternative` is one more way out, offered in the message after enabling the service.
    """
    if cfg.settings(args, policy)["providedOutsideStack"]:
        return
    if service in installed_services(args.resources):
        return
    for r in args.resources:
        if not is_graph(r.resource_type):
            continue
        reason = needs(r)
        if reason:
            report(f"{describe(r.resource_type, r.props, r.name)} {reason} but the stack "
                   f"installs no {service}. Enable {service} in the stack config ({service}.enabled)"
                   f"{alternative}, or set providedOutsideStack in the {policy} policy config when the "
                   "platform runs it.", r.urn)


def _needs_etcd(r) -> str | None:
    backend = as_map(dig(r.props, "metadata", "annotations")).get(DISCOVERY_ANNOTATION)
    if str(backend or "").lower() != "etcd":
        return None
    # Every component pointed at an etcd by ETCD_ENDPOINTS is a graph wired to an existing
    # etcd (etcd.endpoints); without it the pods only find what the stack or platform runs.
    components = graph_components(r.resource_type, r.props)
    if components and all(c.env_defined("ETCD_ENDPOINTS") for c in components):
        return None
    return f"uses etcd discovery ({DISCOVERY_ANNOTATION}: etcd) without ETCD_ENDPOINTS on every component"


def _needs_nats(r) -> str | None:
    users = [c.name for c in graph_components(r.resource_type, r.props) if _uses_nats(c)]
    if users:
        return (f"sends events or requests over NATS (components {', '.join(users)}: "
                "DYN_EVENT_PLANE/DYN_REQUEST_PLANE=nats or NATS_SERVER)")
    return None


def etcd_discovery_needs_etcd(args: StackValidationArgs, report: ReportViolation) -> None:
    _check(args, report, "etcd", "etcd-discovery-needs-etcd", _needs_etcd,
           alternative=" or point it at an existing one (etcd.endpoints)")


def nats_planes_need_nats(args: StackValidationArgs, report: ReportViolation) -> None:
    _check(args, report, "nats", "nats-planes-need-nats", _needs_nats)


POLICIES = [
    StackValidationPolicy(
        name="etcd-discovery-needs-etcd",
        description="A graph using etcd discovery is deployed with etcd.",
        validate=etcd_discovery_needs_etcd,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=cfg.schema("etcd-discovery-needs-etcd"),
    ),
    StackValidationPolicy(
        name="nats-planes-need-nats",
        description="A graph using NATS for its event or request plane is deployed with NATS.",
        validate=nats_planes_need_nats,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=cfg.schema("nats-planes-need-nats"),
    ),
]
