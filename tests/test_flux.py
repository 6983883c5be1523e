"""Helm releases become Flux HelmRelease + chart source objects that validate against Flux's CRDs."""

from __future__ import annotations

import copy

import pytest

import schemas
from components.coordination import Coordination
from dynctl.flux import FluxConversionError, helm_release_objects, release_to_flux
from recording import record

RELEASE = "kubernetes:helm.sh/v3:Release"


@pytest.fixture(scope="module")
def recorded_releases() -> dict[str, dict]:
    rec = record(lambda: Coordination("c", {"namespace": "ns", "graph_name": "g", "dynamo_version": "1.6.1",
                                            "discovery": "etcd", "nats": {}, "etcd": {}}))
    return {r.name: r.inputs for r in rec.of_type(RELEASE)}


def test_https_chart_becomes_helm_repository_and_chart_template(recorded_releases):
    inputs = recorded_releases["c-nats"]
    source, release = release_to_flux(inputs)
    assert (source["apiVersion"], source["kind"]) == ("source.toolkit.fluxcd.io/v1", "HelmRepository")
    assert source["spec"]["url"] == inputs["repositoryOpts"]["repo"]
    assert (release["apiVersion"], release["kind"]) == ("helm.toolkit.fluxcd.io/v2", "HelmRelease")
    assert release["spec"]["releaseName"] == "g-nats"
    assert release["spec"]["chart"]["spec"] == {
        "chart": "nats", "version": "2.14.2",
        "sourceRef": {"kind": "HelmRepository", "name": source["metadata"]["name"]}}
    assert release["spec"]["values"] == inputs["values"]
    for obj in (source, release):
        assert obj["metadata"]["namespace"] == "ns"
        schemas.validate(obj)


def test_oci_chart_becomes_oci_repository_and_chart_ref(recorded_releases):
    source, release = release_to_flux(recorded_releases["c-etcd"])
    assert source["kind"] == "OCIRepository"
    assert source["spec"]["url"] == "oci://registry-1.docker.io/bitnamicharts/etcd"
    assert source["spec"]["ref"] == {"tag": "12.0.18"}
    assert source["spec"]["layerSelector"]["mediaType"] == "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
    assert release["spec"]["chartRef"] == {"kind": "OCIRepository", "name": source["metadata"]["name"]}
    assert "chart" not in release["spec"]
    assert release["spec"]["values"]["auth"]["rbac"]["existingSecret"] == "g-etcd-auth"
    for obj in (source, release):
        schemas.validate(obj)


def test_oci_repository_opts_are_joined_with_the_chart_name():
    source, release = release_to_flux({"name": "x", "namespace": "ns", "chart": "etcd", "version": "1.0.0",
                                       "repositoryOpts": {"repo": "oci://registry.example/charts/"}})
    assert source["spec"]["url"] == "oci://registry.example/charts/etcd"
    schemas.validate(source)


def test_values_with_a_secret_are_refused_not_written(recorded_releases):
    inputs = copy.deepcopy(recorded_releases["c-etcd"])
    inputs["values"]["auth"]["rbac"]["rootPassword"] = {
        "4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270", "value": "hunter2hunter2"}
    with pytest.raises(FluxConversionError, match=r"values\.auth\.rbac\.rootPassword"):
        release_to_flux(inputs)


@pytest.mark.parametrize("inputs, message", [
    ({"name": "x", "chart": "nats"}, "repositoryOpts"),
    ({"name": "x", "chart": "nats", "repositoryOpts": {"repo": "https://r"}, "valueYamlFiles": ["v.yaml"]}, "valueYamlFiles"),
    ({"chart": "nats"}, "name"),
], ids=["no repository", "values files", "no name"])
def test_releases_flux_cannot_express_are_refused(inputs, message):
    with pytest.raises(FluxConversionError, match=message):
        release_to_flux(inputs)


def test_recorded_registration_is_converted_with_its_name():
    class Rec:
        type = RELEASE
        name = "logical-name"
        inputs = {"chart": "nats", "repositoryOpts": {"repo": "https://r"}, "values": {"port": 7777.0}}

    source, release = helm_release_objects(Rec())
    assert release["metadata"]["name"] == "logical-name"
    assert release["spec"]["values"] == {"port": 7777} and isinstance(release["spec"]["values"]["port"], int)
