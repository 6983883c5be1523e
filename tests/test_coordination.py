"""NATS and etcd: pinned Helm releases, generated credentials kept by reference, Dynamo wired the real way."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

import schemas
from conftest import objects_of, one, rendered
from components.coordination import Coordination
from dynctl.twin_process import free_port
from recording import is_secret, record, unwrap

RELEASE = "kubernetes:helm.sh/v3:Release"
SECRET = "kubernetes:core/v1:Secret"
NATS_VALUES = schemas.REPO.parent / "shared" / "reference" / "charts" / "nats-values.yaml"
AUTH_VARS = {"NATS_AUTH_USERNAME", "NATS_AUTH_PASSWORD", "ETCD_AUTH_USERNAME", "ETCD_AUTH_PASSWORD"}


def coordination(version="1.6.1", discovery="kubernetes", nats=None, etcd=None, graph="g"):
    def build():
        return Coordination("c", {"namespace": "ns", "graph_name": graph, "dynamo_version": version,
                                  "discovery": discovery, "nats": nats, "etcd": etcd})
    return record(build)


def secrets_by_name(rec) -> dict[str, dict]:
    return {r.inputs["metadata"]["name"]: unwrap(r.inputs["stringData"]) for r in rec.of_type(SECRET)}


# ------------------------------------------------------------------ the component


@dataclass
class EnvCase:
    id: str
    version: str
    discovery: str
    nats: dict | None
    etcd: dict | None
    names: list[str] = field(default_factory=list)


NATS_VARS = ["NATS_SERVER", "NATS_AUTH_USERNAME", "NATS_AUTH_PASSWORD"]
PLANES = ["DYN_EVENT_PLANE", "DYN_REQUEST_PLANE"]
ETCD_VARS = ["ETCD_ENDPOINTS", "ETCD_AUTH_USERNAME", "ETCD_AUTH_PASSWORD"]
ENV_CASES = [
    EnvCase("nothing installed", "1.6.1", "kubernetes", None, None, []),
    # Up to 1.2.x NATS is the default event plane: the address is all Dynamo needs.
    EnvCase("nats on 1.2", "1.2.0", "kubernetes", {}, None, NATS_VARS),
    # From 1.3 the planes default to ZMQ/TCP: NATS must be chosen explicitly.
    EnvCase("nats on 1.3", "1.3.0", "kubernetes", {}, None, NATS_VARS + PLANES),
    EnvCase("etcd discovery", "1.6.1", "etcd", None, {}, ETCD_VARS),
    EnvCase("both on 0.9", "0.9.0", "etcd", {}, {}, NATS_VARS + ETCD_VARS),
    EnvCase("both on 1.6", "1.6.1", "etcd", {}, {}, NATS_VARS + PLANES + ETCD_VARS),
]


@pytest.mark.parametrize("case", ENV_CASES, ids=[c.id for c in ENV_CASES])
def test_dynamo_env_names_the_servers_and_reads_credentials_from_the_secrets(case):
    rec = coordination(case.version, case.discovery, case.nats, case.etcd)
    env = rec.built.env
    assert [e["name"] for e in env] == case.names
    stored = secrets_by_name(rec)
    for item in env:
        if item["name"] in AUTH_VARS:
            assert "value" not in item, item
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["key"] in stored[ref["name"]], f"{item['name']} points at a key the Secret does not have"
        else:
            assert set(item) == {"name", "value"}
    values = {e["name"]: e.get("value") for e in env}
    if "NATS_SERVER" in values:
        assert values["NATS_SERVER"] == "nats://g-nats.ns.svc:4222"
    if "ETCD_ENDPOINTS" in values:
        assert values["ETCD_ENDPOINTS"] == "http://g-etcd.ns.svc:2379"
    for plane in PLANES:
        assert values.get(plane, "nats") == "nats"
    assert len(rec.of_type(RELEASE)) == (case.nats is not None) + (case.etcd is not None)


def test_generated_passwords_exist_only_as_pulumi_secrets_inside_kubernetes_secrets():
    rec = coordination(discovery="etcd", nats={}, etcd={})
    assert len(rec.passwords) == 2 and len(set(rec.passwords)) == 2
    for password in rec.of_type("random:index/randomPassword:RandomPassword"):
        # nats.conf parses the substituted value as config: letters and digits only.
        assert password.inputs["special"] is False and password.inputs["length"] >= 32
    for r in rec.resources:
        text = json.dumps(r.inputs)
        leaked = [p for p in rec.passwords if p in text]
        if r.type == SECRET:
            assert is_secret(r.inputs["stringData"]), "the Secret's data must stay a Pulumi secret"
            assert len(leaked) == 1
        else:
            assert leaked == [], f"{r.type} {r.name} carries a generated password"
    assert not any(p in json.dumps(rec.built.env) for p in rec.passwords)


def test_nats_release_is_pinned_and_authenticates_with_the_secret():
    rec = coordination(nats={"storage_size": "20Gi", "storage_class": "fast"})
    release = rec.named(RELEASE, "c-nats").inputs
    assert (release["chart"], release["version"]) == ("nats", "2.14.2")
    assert release["repositoryOpts"]["repo"] == "https://nats-io.github.io/k8s/helm/charts/"
    assert (release["name"], release["namespace"]) == ("g-nats", "ns")
    values = release["values"]
    js = values["config"]["jetstream"]
    assert js["enabled"] and js["fileStore"]["pvc"] == {"enabled": True, "size": "20Gi", "storageClassName": "fast"}
    assert values["promExporter"] == {"enabled": True, "port": 7777}
    # The server config names environment variables; the container fills them from the Secret.
    auth = values["config"]["merge"]["authorization"]
    used = {m for v in auth.values() for m in re.findall(r"^<< \$(\w+) >>$", v)}
    assert used == {"NATS_AUTH_USERNAME", "NATS_AUTH_PASSWORD"}
    stored = secrets_by_name(rec)
    for var in used:
        ref = values["container"]["env"][var]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in stored[ref["name"]]
    assert stored["g-nats-auth"]["username"] == "dynamo"


def test_etcd_release_uses_the_legacy_image_with_rbac_on_and_the_secret():
    rec = coordination(discovery="etcd", etcd={"replicas": 1, "storage_size": "2Gi"})
    release = rec.named(RELEASE, "c-etcd").inputs
    assert (release["chart"], release["version"]) == ("oci://registry-1.docker.io/bitnamicharts/etcd", "12.0.18")
    assert "repositoryOpts" not in release
    values = release["values"]
    assert values["image"]["repository"] == "bitnamilegacy/etcd"
    assert values["global"]["security"]["allowInsecureImages"] is True
    rbac = values["auth"]["rbac"]
    assert rbac["create"] is True and rbac["allowNoneAuthentication"] is False
    stored = secrets_by_name(rec)
    assert rbac["existingSecretPasswordKey"] in stored[rbac["existingSecret"]]
    # Dynamo logs in as the user the chart bootstraps: root.
    assert stored[rbac["existingSecret"]]["username"] == "root"
    assert values["persistence"] == {"enabled": True, "size": "2Gi"}
    assert values["networkPolicy"] == {"enabled": False}
    assert values["pdb"] == {"create": False}


def test_several_servers_form_clusters_and_open_their_peer_ports():
    rec = coordination(discovery="etcd", nats={"replicas": 3}, etcd={"replicas": 3})
    nats = rec.named(RELEASE, "c-nats").inputs["values"]
    etcd = rec.named(RELEASE, "c-etcd").inputs["values"]
    assert nats["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert etcd["replicaCount"] == 3 and etcd["pdb"] == {"create": True}
    peers = {p["name"]: p["peer_ports"] for p in rec.built.peers}
    assert peers == {"nats": [6222], "etcd": [2379, 2380]}
    single = coordination(discovery="etcd", nats={}, etcd={})
    assert "cluster" not in single.named(RELEASE, "c-nats").inputs["values"]["config"]
    assert {p["name"]: p["peer_ports"] for p in single.built.peers} == {"nats": [], "etcd": []}


def _key_paths(values, prefix=""):
    for key, value in values.items():
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, dict):
            yield from _key_paths(value, path + ".")


FREE_FORM = ("config.merge.", "container.env.")
"""Maps the chart passes through as they are (nats.conf content, env var names)."""


@pytest.mark.skipif(not NATS_VALUES.exists(), reason="../shared/reference/charts/nats-values.yaml not present")
def test_nats_values_only_use_keys_the_pinned_chart_has():
    chart = yaml.safe_load(NATS_VALUES.read_text())
    known = set(_key_paths(chart))
    rec = coordination(nats={"replicas": 3, "storage_class": "fast"})
    ours = set(_key_paths(rec.named(RELEASE, "c-nats").inputs["values"]))
    unknown = sorted(p for p in ours if p not in known and not p.startswith(FREE_FORM))
    assert unknown == []
    # The check can fail: a misspelt key is reported.
    assert "promExporter.prot" not in known


def test_etcd_discovery_without_etcd_is_refused():
    with pytest.raises(ValueError, match="etcd"):
        coordination(discovery="etcd", nats={})


def test_an_external_etcd_is_used_by_reference_without_installing_anything():
    rec = record(lambda: Coordination("c", {
        "namespace": "ns", "graph_name": "g", "dynamo_version": "1.6.1", "discovery": "etcd",
        "external_etcd": {"endpoints": "http://etcd.infra.svc:2379,http://etcd-b.infra:12379", "credentials_secret": "etcd-creds"}}))
    assert rec.of_type(RELEASE) == [] and rec.of_type(SECRET) == []
    env = {e["name"]: e for e in rec.built.env}
    assert env["ETCD_ENDPOINTS"]["value"] == "http://etcd.infra.svc:2379,http://etcd-b.infra:12379"
    assert env["ETCD_AUTH_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "etcd-creds", "key": "password"}
    assert rec.built.external_ports == [2379, 12379] and rec.built.peers == []


def test_release_names_must_fit_helm():
    with pytest.raises(ValueError, match="53"):
        coordination(nats={}, graph="g" * 50)


# ------------------------------------------------------------------ the NATS server really checks them


def chart_style_conf(port: int, merge: dict) -> str:
    """nats.conf as the chart writes it: JSON, then `"<< X >>"` unquoted (its nats.formatConfig rule)."""
    text = json.dumps({"port": port, "host": "127.0.0.1", **merge}, indent=2, sort_keys=True)
    return re.sub(r'"<<\s+(.*)\s+>>"', r"\1", text)


def nats_login(port: int, user: str | None, password: str | None) -> str:
    """CONNECT + PING over the NATS text protocol; returns the server's answer line."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        reader = conn.makefile("rb")
        assert reader.readline().startswith(b"INFO ")
        opts = {"verbose": False, "pedantic": False}
        if user is not None:
            opts.update(user=user, **{"pass": password})
        conn.sendall(f"CONNECT {json.dumps(opts)}\r\nPING\r\n".encode())
        return reader.readline().decode().strip()


@pytest.mark.skipif(shutil.which("nats-server") is None, reason="nats-server not installed (.ci/setup installs it)")
def test_nats_server_accepts_only_the_credentials_from_the_secret(tmp_path: Path):
    rec = coordination(nats={})
    values = rec.named(RELEASE, "c-nats").inputs["values"]
    stored = secrets_by_name(rec)["g-nats-auth"]
    password = rec.passwords[0]
    assert unwrap(stored["password"]) == password
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(chart_style_conf(port, values["config"]["merge"]))
    assert password not in conf.read_text()
    # What the chart's container.env does in the pod: the Secret's keys as environment variables.
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    for var, spec in values["container"]["env"].items():
        env[var] = unwrap(stored[spec["valueFrom"]["secretKeyRef"]["key"]])
    server = subprocess.Popen(["nats-server", "-c", str(conf)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                assert time.monotonic() < deadline, "nats-server did not start"
                time.sleep(0.05)
        assert nats_login(port, "dynamo", password) == "PONG"
        assert "Authorization Violation" in nats_login(port, "dynamo", password[:-1] + "x")
        assert "Authorization Violation" in nats_login(port, None, None)
    finally:
        server.terminate()
        server.wait(timeout=10)


# ------------------------------------------------------------------ the stacks, rendered


def rendered_text(result) -> str:
    return yaml.safe_dump_all(result.objects) + json.dumps(result.outputs, default=str)


def test_multinode_renders_nats_and_etcd_as_flux_releases_with_their_sources(multinode):
    releases = {o["metadata"]["name"]: o for o in objects_of(multinode, "HelmRelease")}
    assert set(releases) == {"vllm-dp-nats", "vllm-dp-etcd"}
    nats_source = one(multinode, "HelmRepository")
    assert nats_source["spec"]["url"] == "https://nats-io.github.io/k8s/helm/charts/"
    chart = releases["vllm-dp-nats"]["spec"]["chart"]["spec"]
    assert (chart["chart"], chart["version"]) == ("nats", "2.14.2")
    assert chart["sourceRef"] == {"kind": "HelmRepository", "name": nats_source["metadata"]["name"]}
    etcd_source = one(multinode, "OCIRepository")
    assert etcd_source["spec"]["url"] == "oci://registry-1.docker.io/bitnamicharts/etcd"
    assert etcd_source["spec"]["ref"] == {"tag": "12.0.18"}
    assert releases["vllm-dp-etcd"]["spec"]["chartRef"] == {"kind": "OCIRepository", "name": etcd_source["metadata"]["name"]}
    # Values are included, and the Secrets they name are rendered next to them.
    secrets = {o["metadata"]["name"]: o for o in objects_of(multinode, "Secret")}
    etcd_rbac = releases["vllm-dp-etcd"]["spec"]["values"]["auth"]["rbac"]
    assert etcd_rbac["existingSecret"] in secrets and etcd_rbac["existingSecretPasswordKey"] in secrets[etcd_rbac["existingSecret"]]["stringData"]
    nats_env = releases["vllm-dp-nats"]["spec"]["values"]["container"]["env"]
    for spec in nats_env.values():
        ref = spec["valueFrom"]["secretKeyRef"]
        assert ref["name"] in secrets and ref["key"] in secrets[ref["name"]]["stringData"]
    for obj in objects_of(multinode, "HelmRelease") + [nats_source, etcd_source] + list(secrets.values()):
        assert obj["metadata"]["namespace"] == "dynamo"
        schemas.validate(obj)


def test_no_generated_credential_appears_anywhere_in_the_render(multinode):
    generated = [r for r in multinode.resources if r.type == "random:index/randomPassword:RandomPassword"]
    assert len(generated) == 2
    assert len(multinode.secret_values) >= 2
    text = rendered_text(multinode)
    for value in multinode.secret_values:
        assert value not in text


def test_multinode_graph_uses_etcd_discovery_and_nats_the_real_way(multinode):
    graph = one(multinode, "DynamoGraphDeployment")
    assert graph["metadata"]["annotations"]["nvidia.com/dynamo-discovery-backend"] == "etcd"
    assert "dynamo.nvidia.com/" not in rendered_text(multinode)
    for component in graph["spec"]["components"]:
        env = {e["name"]: e for e in component["podTemplate"]["spec"]["containers"][0]["env"]}
        assert env["ETCD_ENDPOINTS"]["value"] == "http://vllm-dp-etcd.dynamo.svc:2379"
        assert env["NATS_SERVER"]["value"] == "nats://vllm-dp-nats.dynamo.svc:4222"
        assert env["DYN_EVENT_PLANE"]["value"] == env["DYN_REQUEST_PLANE"]["value"] == "nats"
        for var in AUTH_VARS:
            assert "value" not in env[var] and env[var]["valueFrom"]["secretKeyRef"]["name"].startswith("vllm-dp-")


def test_multinode_on_an_older_release_keeps_nats_as_the_default_event_plane():
    result = rendered("multinode", "dynamo.version=1.1.0")
    graph = one(result, "DynamoGraphDeployment")
    for service in graph["spec"]["services"].values():
        names = {e["name"] for e in service["envs"]}
        assert {"NATS_SERVER", "ETCD_ENDPOINTS"} <= names and not names & set(PLANES)


def test_dev_renders_no_coordination_infrastructure(dev):
    assert objects_of(dev, "HelmRelease") == [] and objects_of(dev, "Secret") == []
    graph = one(dev, "DynamoGraphDeployment")
    assert graph["metadata"]["annotations"]["nvidia.com/dynamo-discovery-backend"] == "kubernetes"
    text = rendered_text(dev)
    for name in ("NATS_SERVER", "ETCD_ENDPOINTS", "DYN_EVENT_PLANE", "dynamo.nvidia.com/"):
        assert name not in text


def test_nats_can_be_switched_on_in_dev_without_etcd():
    result = rendered("dev", "nats.enabled=true")
    assert [o["metadata"]["name"] for o in objects_of(result, "HelmRelease")] == ["vllm-agg-nats"]
    assert objects_of(result, "OCIRepository") == []


@pytest.mark.parametrize("sets, key", [
    (("discovery=etcd",), "discovery"),
    (("etcd.enabled=true",), "etcd.enabled"),
    (("etcd.replicas=2",), "etcd.replicas"),
    (("nats.replicas=9",), "nats.replicas"),
    (("discovery=etcd", "etcd.endpoints=http://e:2379"), "etcd.credentialsSecret"),
    (("discovery=etcd", "etcd.enabled=true", "etcd.endpoints=http://e:2379", "etcd.credentialsSecret=c"), "etcd.endpoints"),
    (("etcd.endpoints=http://e:2379", "etcd.credentialsSecret=c"), "etcd.endpoints"),
    (("discovery=etcd", "etcd.endpoints=etcd:2379", "etcd.credentialsSecret=c"), "etcd.endpoints"),
], ids=["etcd discovery without etcd", "etcd nobody reads", "even etcd members", "too many nats servers",
        "external etcd without credentials", "installed and external etcd", "external etcd nobody reads",
        "endpoint without scheme"])
def test_coordination_config_errors_name_the_key(sets, key):
    from dynctl.render import ConfigError, render_stack

    with pytest.raises(ConfigError) as error:
        render_stack("dev", list(sets))
    assert str(error.value).startswith(key + ":")


def test_dev_can_use_an_existing_etcd_for_discovery():
    result = rendered("dev", "discovery=etcd", "etcd.endpoints=http://etcd.infra.svc:2379", "etcd.credentialsSecret=etcd-creds")
    assert objects_of(result, "HelmRelease") == [] and objects_of(result, "Secret") == []
    graph = one(result, "DynamoGraphDeployment")
    assert graph["metadata"]["annotations"]["nvidia.com/dynamo-discovery-backend"] == "etcd"
    for component in graph["spec"]["components"]:
        env = {e["name"]: e for e in component["podTemplate"]["spec"]["containers"][0]["env"]}
        assert env["ETCD_ENDPOINTS"]["value"] == "http://etcd.infra.svc:2379"
        assert env["ETCD_AUTH_USERNAME"]["valueFrom"]["secretKeyRef"]["name"] == "etcd-creds"
