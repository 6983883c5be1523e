"""The dynamo-guardrails policy pack and `dynctl policy`.

Every mandatory policy must catch its violation in a hand-written manifest set on both graph
API versions (tests/fixtures/policy), the shipped stacks must pass, and the same policies must
behave the same offline (dynctl.policy) and when served by pulumi-policy's analyzer, the code
`pulumi preview --policy-pack policies` talks to over gRPC.
"""

from __future__ import annotations

import ast
import copy
import json
import select
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.runtime import proto
from pulumi.runtime.proto import analyzer_pb2_grpc
from pulumi_policy import EnforcementLevel
from pulumi_policy.policy import _PolicyAnalyzerServicer
from pulumi_policy.proxy import UNKNOWN_NUMBER_VALUE, UNKNOWN_STRING_VALUE

from conftest import rendered
from dynctl import policy as runner
from dynctl.__main__ import main as dynctl_main
from dynctl.render import write as write_rendered
from policies.dynamo_policies import PACK_ENFORCEMENT_LEVEL, PACK_NAME, POLICIES
from policies.dynamo_policies import settings as policy_settings

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "policy"
VERSIONS = ("v1beta1", "v1alpha1")
MANDATORY = [p.name for p in POLICIES if p.enforcement_level == EnforcementLevel.MANDATORY]
ADVISORY = [p.name for p in POLICIES if p.enforcement_level == EnforcementLevel.ADVISORY]
FIXTURE_CONFIG = runner.load_policy_config(FIXTURES / "config.json")


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def findings_for(objects: list[dict], config: dict | None = None) -> list[runner.Finding]:
    return runner.run_policies(runner.subjects_from_objects(objects), config or {})


def mandatory(findings) -> set[str]:
    return {f.policy for f in findings if f.level == "mandatory"}


def graph_of(objects: list[dict]) -> dict:
    return next(o for o in objects if o["kind"] == "DynamoGraphDeployment")


# ---------------------------------------------------------------- the pack served by pulumi-policy

LEVEL_TO_PROTO = {"advisory": proto.ADVISORY, "mandatory": proto.MANDATORY,
                  "disabled": proto.DISABLED, "remediate": proto.REMEDIATE}
PROTO_TO_LEVEL = {v: k for k, v in LEVEL_TO_PROTO.items()}


def _struct(props: dict) -> struct_pb2.Struct:
    return json_format.ParseDict(props, struct_pb2.Struct())


class InProcess:
    """pulumi-policy's analyzer service called directly, as its gRPC server would."""

    def __init__(self):
        self.servicer = _PolicyAnalyzerServicer(PACK_NAME, "0.1.0", POLICIES, PACK_ENFORCEMENT_LEVEL)

    def __getattr__(self, method):
        return lambda request: getattr(self.servicer, method)(request, None)


def analyze_served(subjects: list[runner.Subject], config: dict, service=None) -> list[tuple[str, str, str, str]]:
    """Run the pack through pulumi-policy's analyzer service, as `pulumi preview` drives it.

    The CLI sends every policy's resolved enforcement level and config (Configure), then one
    Analyze per resource and one AnalyzeStack. Returns (policy, level, urn, message) for every
    diagnostic. `service` is the in-process servicer or a gRPC stub to the running pack.
    """
    service = service or InProcess()
    service.ConfigureStack(proto.AnalyzerStackConfigureRequest())
    request = proto.ConfigureAnalyzerRequest()
    for policy in POLICIES:
        level = runner.enforcement_level(policy, config).value
        entry = request.policyConfig[policy.name]
        entry.enforcementLevel = LEVEL_TO_PROTO[level]
        props = runner.policy_properties(policy, config)
        if props:
            entry.properties.update(props)
    service.Configure(request)
    diagnostics = []
    for s in subjects:
        response = service.Analyze(proto.AnalyzeRequest(
            type=s.type, properties=_struct(s.props), urn=s.urn, name=s.name))
        diagnostics += [(d.policyName, PROTO_TO_LEVEL[d.enforcementLevel], s.urn, d.message)
                        for d in response.diagnostics]
    response = service.AnalyzeStack(proto.AnalyzeStackRequest(resources=[
        proto.AnalyzerResource(type=s.type, properties=_struct(s.props), urn=s.urn, name=s.name)
        for s in subjects]))
    diagnostics += [(d.policyName, PROTO_TO_LEVEL[d.enforcementLevel], d.urn, d.message)
                    for d in response.diagnostics]
    return diagnostics


class Stub:
    """The running pack over gRPC, every call bounded."""

    def __init__(self, channel):
        self.stub = analyzer_pb2_grpc.AnalyzerStub(channel)

    def __getattr__(self, method):
        return lambda request: getattr(self.stub, method)(request, timeout=30)


@pytest.fixture(scope="module")
def running_pack():
    """The pack started the way the Pulumi CLI starts it: it prints its port and serves."""
    # The CLI's command line for a Python pack: pulumi.policy runs the pack directory's
    # __main__.py (engine address unused here: the pack only serves).
    process = subprocess.Popen([sys.executable, "-u", "-m", "pulumi.policy", "127.0.0.1:0",
                                str(REPO / "policies")], cwd=REPO / "policies",
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    channel = None
    try:
        ready, _, _ = select.select([process.stdout], [], [], 60)
        assert ready, "the policy pack printed no port within 60 s"
        port = int(process.stdout.readline())
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        yield Stub(channel)
    finally:
        if channel is not None:
            channel.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def stack_subjects(result) -> list[runner.Subject]:
    """A rendered stack's resources in the wire format the engine would send (secrets wrapped)."""
    return [runner.Subject(r.type, r.name, r.urn, json.loads(json.dumps(r.inputs or {})))
            for r in result.resources]


# ---------------------------------------------------------------- hand-written manifest sets

@pytest.mark.parametrize("version", VERSIONS)
def test_passing_sets_have_no_violation_at_all(version):
    objects = load(FIXTURES / "passing" / f"{version}.yaml")
    assert {o["apiVersion"] for o in objects if o["kind"] == "DynamoGraphDeployment"} == {
        f"nvidia.com/{version}"}
    assert findings_for(objects, FIXTURE_CONFIG) == []


VIOLATION_CASES = [(p, v) for p in MANDATORY for v in VERSIONS]


def test_every_mandatory_policy_has_a_violation_set_per_version():
    files = {p.name for p in (FIXTURES / "violations").glob("*.v1*.yaml")}
    assert files == {f"{p}.{v}.yaml" for p, v in VIOLATION_CASES}


@pytest.mark.parametrize("policy,version", VIOLATION_CASES, ids=[f"{p}-{v}" for p, v in VIOLATION_CASES])
def test_each_mandatory_policy_catches_its_hand_written_violation(policy, version):
    path = FIXTURES / "violations" / f"{policy}.{version}.yaml"
    objects = load(path)
    findings = findings_for(objects, FIXTURE_CONFIG)
    assert mandatory(findings) == {policy}
    graph = graph_of(objects)
    hits = [f for f in findings if f.policy == policy]
    # The message names the resource and says what to change.
    assert all(graph["metadata"]["name"] in f.message or f.resource == "(stack)" for f in hits)


@pytest.mark.parametrize("policy,version", VIOLATION_CASES, ids=[f"{p}-{v}" for p, v in VIOLATION_CASES])
def test_the_served_pack_reports_the_same_mandatory_violation(policy, version):
    subjects = runner.subjects_from_objects(load(FIXTURES / "violations" / f"{policy}.{version}.yaml"))
    served = analyze_served(subjects, FIXTURE_CONFIG)
    assert {p for p, level, _, _ in served if level == "mandatory"} == {policy}
    offline = runner.run_policies(subjects, FIXTURE_CONFIG)
    assert sorted(m for p, _, _, m in served if p == policy) == sorted(
        f"{next(x.description for x in POLICIES if x.name == policy)}\n{f.message}"
        for f in offline if f.policy == policy)


def test_core_workloads_outside_a_graph_are_checked_for_images_and_tokens():
    findings = findings_for(load(FIXTURES / "violations" / "core-workloads.yaml"))
    assert mandatory(findings) == {"images-pinned-and-allowed", "no-literal-tokens"}
    messages = " ".join(f.message for f in findings)
    assert "container fetch" in messages and "has no tag" in messages  # an init container
    assert "CronJob dynamo/cache-warmer" in messages and "'latest'" in messages
    assert "env HF_TOKEN" in messages and "env DB_PASSWORD" in messages


def test_the_cli_checks_a_manifest_directory_and_fails_on_a_mandatory_violation(tmp_path, capsys):
    (tmp_path / "graph.yaml").write_text(
        (FIXTURES / "violations" / "tensor-parallel-matches-gpus.v1beta1.yaml").read_text())
    code = dynctl_main(["policy", "--manifests", str(tmp_path),
                        "--policy-config", str(FIXTURES / "config.json")])
    out = capsys.readouterr().out
    assert code == 1
    header, row = out.splitlines()[:2]
    assert header.split()[:4] == ["POLICY", "LEVEL", "RESOURCE", "MESSAGE"]
    assert row.split()[:4] == ["tensor-parallel-matches-gpus", "mandatory", "DynamoGraphDeployment",
                               "dynamo/llm"]
    assert "1 mandatory" in out


def test_the_cli_passes_a_clean_directory(capsys):
    code = dynctl_main(["policy", "--manifests", str(FIXTURES / "passing"),
                        "--policy-config", str(FIXTURES / "config.json")])
    assert code == 0
    assert "no violations" in capsys.readouterr().out


# ---------------------------------------------------------------- each policy, crafted cases

def passing(version: str) -> list[dict]:
    return copy.deepcopy(load(FIXTURES / "passing" / f"{version}.yaml"))


def components(graph: dict) -> dict[str, dict]:
    """Component name -> the dict to edit (v1beta1 component / v1alpha1 service)."""
    spec = graph["spec"]
    if "services" in spec:
        return spec["services"]
    return {c["name"]: c for c in spec["components"]}


def main_container(component: dict) -> dict:
    if "extraPodSpec" in component:
        return component["extraPodSpec"]["mainContainer"]
    return next(c for c in component["podTemplate"]["spec"]["containers"] if c["name"] == "main")


def set_env(component: dict, name: str, value: str) -> None:
    env = main_container(component).setdefault("env", [])
    env[:] = [e for e in env if e["name"] != name] + [{"name": name, "value": value}]


@pytest.mark.parametrize("version", VERSIONS)
def test_kv_routing_with_more_than_five_frontends_is_advised_against(version):
    objects = passing(version)
    frontend = components(graph_of(objects))["Frontend"]
    set_env(frontend, "DYN_ROUTER_MODE", "kv")
    frontend["replicas"] = 6
    findings = findings_for(objects, FIXTURE_CONFIG)
    assert [(f.policy, f.level) for f in findings] == [("kv-routing-frontend-replicas", "advisory")]
    assert "6 frontend replicas" in findings[0].message
    set_env(frontend, "DYN_ROUTER_MODE", "round-robin")
    assert findings_for(objects, FIXTURE_CONFIG) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_a_graph_without_a_podmonitor_is_reported(version):
    objects = [o for o in passing(version) if o["kind"] != "PodMonitor"]
    findings = findings_for(objects, FIXTURE_CONFIG)
    assert [(f.policy, f.level, f.resource) for f in findings] == [
        ("graph-has-podmonitor", "advisory", "DynamoGraphDeployment dynamo/llm")]


def test_podmonitors_provided_by_the_platform_can_be_declared():
    objects = [o for o in passing("v1beta1") if o["kind"] != "PodMonitor"]
    assert findings_for(objects, {"graph-has-podmonitor": {"providedOutsideStack": True}}) == []


def test_a_podmonitor_for_another_graph_or_for_nats_does_not_count():
    objects = passing("v1beta1")
    monitor = next(o for o in objects if o["kind"] == "PodMonitor")
    monitor["spec"]["selector"]["matchLabels"] = {"nvidia.com/dynamo-graph-deployment-name": "other"}
    assert {f.policy for f in findings_for(objects)} >= {"graph-has-podmonitor"}
    monitor["spec"]["selector"]["matchLabels"] = {"app.kubernetes.io/name": "nats"}
    assert "graph-has-podmonitor" in {f.policy for f in findings_for(objects)}


@pytest.mark.parametrize("version", VERSIONS)
def test_hostpath_outside_the_model_cache_prefixes_is_reported(version):
    objects = passing(version)
    worker = components(graph_of(objects))["VllmWorker"]
    pod = worker.get("extraPodSpec") or worker["podTemplate"]["spec"]
    pod["volumes"][0]["hostPath"]["path"] = "/mnt/models/../../etc"
    findings = findings_for(objects, FIXTURE_CONFIG)
    assert [(f.policy, f.level) for f in findings] == [("model-cache-hostpath-prefix", "advisory")]
    assert "/mnt/models/../../etc" in findings[0].message
    config = {"model-cache-hostpath-prefix": {"allowedPrefixes": ["/etc"]}}
    assert "model-cache-hostpath-prefix" not in {f.policy for f in findings_for(objects, config)}


def test_hostpath_persistent_volumes_are_checked_too():
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "cache"},
          "spec": {"hostPath": {"path": "/home/user/models"}, "capacity": {"storage": "1Ti"}}}
    findings = findings_for([pv])
    assert [(f.policy, f.resource) for f in findings] == [
        ("model-cache-hostpath-prefix", "PersistentVolume cache")]


def test_workers_without_migration_are_advised_on_both_sides_of_1_0():
    objects = passing("v1beta1")  # 1.6.1: migration is a frontend setting
    frontend = components(graph_of(objects))["Frontend"]
    main_container(frontend)["env"] = [{"name": "DYN_ROUTER_MODE", "value": "kv"}]
    findings = findings_for(objects, FIXTURE_CONFIG)
    assert [(f.policy, f.level) for f in findings] == [("workers-request-migration", "advisory")]
    assert "on the Frontend" in findings[0].message

    objects = passing("v1alpha1")  # 0.9.0: migration is a worker flag
    worker = components(graph_of(objects))["VllmWorker"]
    main_container(worker)["args"] = [main_container(worker)["args"][0].replace("--migration-limit 3", "")]
    # Setting it on the frontend does nothing before 1.0.
    set_env(components(graph_of(objects))["Frontend"], "DYN_MIGRATION_LIMIT", "3")
    findings = findings_for(objects, FIXTURE_CONFIG)
    assert [(f.policy, f.level) for f in findings] == [("workers-request-migration", "advisory")]
    assert "on every worker" in findings[0].message


@pytest.mark.parametrize("image,problem", [
    ("nvcr.io/nvidia/ai-dynamo/vllm-runtime:latest", "moves"),
    ("nvcr.io/nvidia/ai-dynamo/vllm-runtime", "no tag"),
    ("nvcr.io/nvidia/ai-dynamo/vllm-runtime:main", "moves"),
    ("nvcr.io/nvidia/ai-dynamo/vllm-runtime@sha256:abc", "malformed digest"),
    ("nvcr.io/nvidia/ai-dynamo-fork/vllm-runtime:1.6.1", "not from an allowed registry"),
    ("docker.io/library/natsfoo:2.14.2", "not from an allowed registry"),
    ("ubuntu:24.04", "not from an allowed registry"),
    ("nvcr.io/nvidia/ai-dynamo/vllm-runtime:1.6.1", None),
    ("nats:2.14.2-alpine", None),
    ("docker.io/bitnamilegacy/etcd:3.5.21-debian-12-r5", None),
    ("natsio/nats-server-config-reloader:0.23.0", None),
    ("gcr.io/etcd-development/etcd:v3.5.17", None),
])
def test_image_rule(image, problem):
    from policies.dynamo_policies.supply_chain import image_problem

    result = image_problem(image, policy_settings.DEFAULT_ALLOWED_IMAGE_PREFIXES)
    if problem is None:
        assert result is None
    else:
        assert problem in result and image in result


@pytest.mark.parametrize("name,secret", [
    ("HF_TOKEN", True), ("HUGGING_FACE_HUB_TOKEN", True), ("NGC_API_KEY", True),
    ("DB_PASSWORD", True), ("aws_secret_access_key", True),
    ("DYN_MAX_TOKENS", False), ("HF_HOME", False), ("DYN_ROUTER_MODE", False), ("KV_CACHE_KEYS", False),
])
def test_token_names(name, secret):
    from policies.dynamo_policies.supply_chain import looks_like_secret_name

    assert looks_like_secret_name(name) is secret


def test_an_hf_token_value_is_caught_under_any_name_and_valuefrom_is_fine():
    objects = passing("v1beta1")
    worker = components(graph_of(objects))["VllmWorker"]
    set_env(worker, "MODEL_ACCESS", "hf_" + "a" * 34)
    assert mandatory(findings_for(objects, FIXTURE_CONFIG)) == {"no-literal-tokens"}
    # The passing set already carries HF_TOKEN through valueFrom.secretKeyRef.
    assert any(e.get("valueFrom") for e in main_container(worker)["env"] if e["name"] == "HF_TOKEN")


def test_the_cli_never_prints_a_token_it_found(tmp_path, capsys):
    token = "hf_" + "Z9" * 20
    objects = passing("v1beta1")
    set_env(components(graph_of(objects))["VllmWorker"], "HF_TOKEN", token)
    (tmp_path / "set.yaml").write_text(yaml.safe_dump_all(objects))
    assert dynctl_main(["policy", "--manifests", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "env HF_TOKEN holds a literal value" in out
    assert token not in out + err


def test_tokens_in_a_configmap_are_reported():
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "env", "namespace": "dynamo"},
          "data": {"HF_TOKEN": "x", "dashboard.json": "{}"}}
    findings = findings_for([cm])
    assert [(f.policy, f.resource) for f in findings] == [("no-literal-tokens", "ConfigMap dynamo/env")]


def test_etcd_and_nats_count_as_installed_in_every_form():
    graph = graph_of(passing("v1beta1"))  # etcd discovery + NATS_SERVER
    # Without ETCD_ENDPOINTS the pods rely on an etcd the stack (or platform) runs.
    graph["spec"]["env"] = [e for e in graph["spec"]["env"] if e["name"] != "ETCD_ENDPOINTS"]
    forms = {
        "pulumi helm release": [
            runner.Subject("kubernetes:helm.sh/v3:Release", "llm-etcd", "urn:e",
                           {"chart": "oci://registry-1.docker.io/bitnamicharts/etcd", "name": "llm-etcd"}),
            runner.Subject("kubernetes:helm.sh/v3:Release", "llm-nats", "urn:n",
                           {"chart": "nats", "name": "llm-nats"})],
        "flux helmrelease with chartRef": runner.subjects_from_objects([
            {"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
             "metadata": {"name": "llm-etcd"},
             "spec": {"releaseName": "llm-etcd", "chartRef": {"kind": "OCIRepository", "name": "llm-etcd"}}},
            {"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease", "metadata": {"name": "x"},
             "spec": {"chart": {"spec": {"chart": "nats"}}}}]),
        "platform chart subcharts": [
            runner.Subject("kubernetes:helm.sh/v3:Release", "platform", "urn:p",
                           {"chart": "dynamo-platform", "name": "dynamo-platform",
                            "values": {"etcd": {"enabled": True}, "nats": {"enabled": True}}})],
        "named statefulset and service": runner.subjects_from_objects([
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "dynamo-etcd"}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "nats"}}]),
    }
    graph_subject = runner.subjects_from_objects([graph])
    only_graph = runner.run_policies(graph_subject, {})
    assert {"etcd-discovery-needs-etcd", "nats-planes-need-nats"} <= mandatory(only_graph)
    for form, subjects in forms.items():
        found = mandatory(runner.run_policies(graph_subject + subjects, {}))
        assert not found & {"etcd-discovery-needs-etcd", "nats-planes-need-nats"}, form
    # A platform release without the subcharts enabled provides neither.
    bare = runner.Subject("kubernetes:helm.sh/v3:Release", "platform", "urn:p",
                          {"chart": "dynamo-platform", "name": "dynamo-platform"})
    assert {"etcd-discovery-needs-etcd", "nats-planes-need-nats"} <= mandatory(
        runner.run_policies(graph_subject + [bare], {}))


def test_a_graph_pointed_at_an_existing_etcd_needs_none_in_the_stack():
    objects = load(FIXTURES / "violations" / "etcd-discovery-needs-etcd.v1beta1.yaml")
    frontend = components(graph_of(objects))["Frontend"]
    set_env(frontend, "ETCD_ENDPOINTS", "https://etcd.infra.svc:2379")
    assert mandatory(findings_for(objects)) == set()
    # Through the real program: etcd.endpoints instead of etcd.enabled.
    result = rendered("dev", "discovery=etcd", "etcd.endpoints=https://etcd.infra.svc:2379",
                      "etcd.credentialsSecret=etcd-creds")
    config = runner.load_policy_config(REPO / "policies" / "config" / "dev.json")
    assert mandatory(runner.run_policies(runner.subjects_from_rendered(result), config)) == set()


def test_coordination_provided_outside_the_stack_is_accepted_when_configured():
    graph = graph_of(passing("v1beta1"))
    graph["spec"]["env"] = [e for e in graph["spec"]["env"] if e["name"] != "ETCD_ENDPOINTS"]
    subjects = runner.subjects_from_objects([graph])
    assert mandatory(runner.run_policies(subjects, {})) == {"etcd-discovery-needs-etcd", "nats-planes-need-nats"}
    config = {"etcd-discovery-needs-etcd": {"providedOutsideStack": True},
              "nats-planes-need-nats": {"providedOutsideStack": True}}
    assert not mandatory(runner.run_policies(subjects, config))


# ---------------------------------------------------------------- unknown values during preview

def test_unknown_values_warn_instead_of_crashing_in_both_paths():
    graph = graph_of(passing("v1beta1"))
    worker = components(graph)["VllmWorker"]
    worker["replicas"] = UNKNOWN_NUMBER_VALUE
    main_container(worker)["image"] = UNKNOWN_STRING_VALUE
    subjects = runner.subjects_from_objects([graph])

    offline = runner.run_policies(subjects, FIXTURE_CONFIG)
    unknown = [f for f in offline if "can't run during preview" in f.message]
    assert {f.policy for f in unknown} >= {"images-pinned-and-allowed", "stack-gpu-budget"}
    assert all(f.level == "advisory" for f in unknown)
    assert ".spec.components" in unknown[0].message

    served = analyze_served(subjects, FIXTURE_CONFIG)
    served_unknown = {p for p, level, _, m in served if "during preview" in m and level == "advisory"}
    assert served_unknown == {f.policy for f in unknown}
    # Policies that do not touch the unknown values still run and still pass.
    assert "worker-gpu-limits" not in {p for p, _, _, _ in served}


def test_unknown_values_do_not_fail_the_cli(tmp_path, capsys, monkeypatch):
    objects = passing("v1beta1")
    components(graph_of(objects))["VllmWorker"]["replicas"] = UNKNOWN_NUMBER_VALUE
    monkeypatch.setattr(runner, "subjects_from_stack", lambda stack, sets: runner.subjects_from_objects(objects))
    code = dynctl_main(["policy", "--stack", "dev"])
    out = capsys.readouterr().out
    assert code == 0
    assert "stack-gpu-budget" in out and "can't run during preview" in out


# ---------------------------------------------------------------- config handling

def test_enforcement_levels_come_from_the_config_file():
    objects = load(FIXTURES / "violations" / "worker-gpu-limits.v1beta1.yaml")
    assert mandatory(findings_for(objects)) == {"worker-gpu-limits"}
    as_advice = findings_for(objects, {"worker-gpu-limits": "advisory"})
    assert mandatory(as_advice) == set()
    assert "worker-gpu-limits" in {f.policy for f in as_advice}
    assert "worker-gpu-limits" not in {f.policy for f in findings_for(objects, {"worker-gpu-limits": "disabled"})}
    assert mandatory(findings_for(load(FIXTURES / "passing" / "v1beta1.yaml"), {"all": "mandatory"})) == set()
    graphless = [o for o in passing("v1beta1") if o["kind"] != "PodMonitor"]
    assert mandatory(findings_for(graphless, {"all": "mandatory"})) == {"graph-has-podmonitor"}
    assert mandatory(findings_for(graphless, {"all": {"enforcementLevel": "mandatory"}})) == {"graph-has-podmonitor"}
    # A policy's own entry wins over `all`.
    assert mandatory(findings_for(objects, {"all": "advisory", "worker-gpu-limits": "mandatory"})) == {
        "worker-gpu-limits"}


@pytest.mark.parametrize("config,error", [
    ({"stack-gpu-budget": {"maxGPUs": 2}}, "maxGPUs"),
    ({"stack-gpu-budget": {"maxGpus": "two"}}, "'two'"),
    ({"stack-gpu-budgets": {"maxGpus": 2}}, "unknown policy"),
    ({"worker-gpu-limits": "warn"}, "not one of"),
    ({"all": {"maxGpus": 2}}, "maxGpus"),
])
def test_bad_policy_config_is_rejected(tmp_path, capsys, config, error):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(config))
    code = dynctl_main(["policy", "--manifests", str(FIXTURES / "passing"), "--policy-config", str(path)])
    assert code == 2
    assert error in capsys.readouterr().err


def test_config_numbers_arrive_as_floats_through_the_pack_and_still_work():
    objects = load(FIXTURES / "violations" / "stack-gpu-budget.v1beta1.yaml")
    served = analyze_served(runner.subjects_from_objects(objects), {"stack-gpu-budget": {"maxGpus": 17}})
    message = next(m for p, _, _, m in served if p == "stack-gpu-budget")
    assert "uses 18 GPUs but its budget is 17 " in message  # 17, not 17.0
    served = analyze_served(runner.subjects_from_objects(objects), {"stack-gpu-budget": {"maxGpus": 18}})
    assert "stack-gpu-budget" not in {p for p, _, _, _ in served}


@pytest.mark.parametrize("stack", ["dev", "multinode"])
def test_shipped_policy_configs_are_valid(stack):
    config = runner.load_policy_config(REPO / "policies" / "config" / f"{stack}.json")
    assert config["stack-gpu-budget"]["maxGpus"] >= 1


# ---------------------------------------------------------------- the shipped stacks

@pytest.mark.parametrize("stack", ["dev", "multinode"])
def test_shipped_stacks_pass_their_pack_offline_and_served(stack):
    result = rendered(stack)
    config = runner.load_policy_config(REPO / "policies" / "config" / f"{stack}.json")
    offline = runner.run_policies(runner.subjects_from_rendered(result), config)
    assert mandatory(offline) == set(), runner.format_table(offline)
    served = analyze_served(stack_subjects(result), config)
    assert {p for p, level, _, _ in served if level == "mandatory"} == set()
    # The budget fits, and not by accident: the stack uses GPUs.
    assert 0 < result.total_gpus <= config["stack-gpu-budget"]["maxGpus"]


@pytest.mark.parametrize("stack", ["dev", "multinode"])
def test_rendered_manifests_give_the_same_verdict_as_the_stack(stack, tmp_path):
    result = rendered(stack)
    write_rendered(result, tmp_path / stack)
    config = runner.load_policy_config(REPO / "policies" / "config" / f"{stack}.json")
    from_manifests = runner.run_policies(
        runner.subjects_from_objects(runner.load_manifests(tmp_path / stack)), config)
    from_stack = runner.run_policies(runner.subjects_from_rendered(result), config)
    key = lambda fs: sorted((f.policy, f.level, f.resource) for f in fs)  # noqa: E731
    assert key(from_manifests) == key(from_stack)
    assert mandatory(from_manifests) == set()


# dynamo.version picks the graph API: 0.9.0 renders v1alpha1 (spec.services), 1.6.1 v1beta1.
API_RELEASES = {"v1alpha1": "dynamo.version=0.9.0", "v1beta1": "dynamo.version=1.6.1"}
RENDERED_CASES = [
    # (override, policies it must trip: (name, level))
    ((), set()),
    (("workers.gpus=16",), {("gpus-per-pod-within-node", "mandatory"), ("stack-gpu-budget", "mandatory")}),
    (("workers.replicas=3",), {("stack-gpu-budget", "mandatory")}),
    (("dynamo.image=nvcr.io/nvidia/ai-dynamo/vllm-runtime:latest",), {("images-pinned-and-allowed", "mandatory")}),
    (("frontend.replicas=6",), {("kv-routing-frontend-replicas", "advisory")}),
    (("modelCache.hostPath=/srv/models",), {("model-cache-hostpath-prefix", "advisory")}),
]


@pytest.mark.parametrize("api", API_RELEASES)
@pytest.mark.parametrize("sets,expected", RENDERED_CASES, ids=[" ".join(c[0]) or "as-shipped" for c in RENDERED_CASES])
def test_rendered_dev_stack_on_both_api_versions(api, sets, expected):
    result = rendered("dev", API_RELEASES[api], *sets)
    graph = next(r for r in result.resources if "DynamoGraphDeployment" in r.type)
    assert graph.type == f"kubernetes:nvidia.com/{api}:DynamoGraphDeployment"
    config = runner.load_policy_config(REPO / "policies" / "config" / "dev.json")
    found = {(f.policy, f.level) for f in runner.run_policies(runner.subjects_from_rendered(result), config)}
    # Exactly as expected, advisory ones included: the stack's PodMonitors select the graph.
    assert found == expected


MULTINODE_CASES = [
    ((), set()),
    # One worker spanning 2 nodes x 2 GPUs (tensor parallel 4), twice: 8 GPUs, within 12.
    (("workers.nodeCount=2", "workers.gpus=2", "workers.replicas=2"), set()),
    (("workers.nodeCount=2", "workers.gpus=2", "workers.replicas=4"), {"stack-gpu-budget"}),
    (("workers.replicas=13",), {"stack-gpu-budget"}),
]


@pytest.mark.parametrize("api", API_RELEASES)
@pytest.mark.parametrize("sets,expected", MULTINODE_CASES, ids=[" ".join(c[0]) or "as-shipped" for c in MULTINODE_CASES])
def test_rendered_multinode_stack_on_both_api_versions(api, sets, expected):
    config = runner.load_policy_config(REPO / "policies" / "config" / "multinode.json")
    findings = runner.run_policies(runner.subjects_from_rendered(rendered("multinode", API_RELEASES[api], *sets)), config)
    assert mandatory(findings) == expected, runner.format_table(findings)


def test_more_worker_gpus_than_the_dev_budget_fail_the_stack_check(capsys):
    code = dynctl_main(["policy", "--stack", "dev", "--set", "workers.replicas=3"])
    out = capsys.readouterr().out
    assert code == 1
    assert "stack-gpu-budget" in out and "uses 3 GPUs but its budget is 2" in out


def test_a_bad_set_is_a_usage_error(capsys):
    assert dynctl_main(["policy", "--stack", "dev", "--set", "workers.replicas=lots"]) == 2
    assert "error:" in capsys.readouterr().err


# ---------------------------------------------------------------- the pack's files

def test_policy_pack_main_only_builds_the_pack():
    tree = ast.parse((REPO / "policies" / "__main__.py").read_text())
    statements = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))]
    docstring, call = statements
    assert isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant)
    assert isinstance(call, ast.Expr) and call.value.func.id == "PolicyPack"
    imported = {a.name for s in tree.body if isinstance(s, ast.ImportFrom) for a in s.names}
    assert {"PolicyPack", "POLICIES", "PACK_NAME"} <= imported


def test_policy_pack_project_files():
    project = yaml.safe_load((REPO / "policies" / "PulumiPolicy.yaml").read_text())
    assert project["runtime"]["name"] == "python"
    assert project["description"] and project["version"]
    requirements = [line.split("#")[0].strip()
                    for line in (REPO / "policies" / "requirements.txt").read_text().splitlines()]
    requirements = [r for r in requirements if r]
    assert "pulumi-policy==1.21.0" in requirements and "pulumi==3.272.0" in requirements
    assert all("==" in r for r in requirements)


def test_the_packs_label_and_annotation_names_are_the_programs():
    # The pack runs from policies/ in its own venv (policies/requirements.txt) and cannot import
    # components/, so it keeps copies; a drifted copy would make its policies miss real graphs.
    from components import graph
    from policies.dynamo_policies import operations, shapes

    assert shapes.DISCOVERY_ANNOTATION == graph.DISCOVERY_ANNOTATION
    assert operations.GRAPH_NAME_LABEL == graph.LABEL_GRAPH


def test_policies_are_unique_and_documented():
    names = [p.name for p in POLICIES]
    assert len(names) == len(set(names)) == 13
    assert set(MANDATORY) | set(ADVISORY) == set(names)
    assert set(ADVISORY) == {"kv-routing-frontend-replicas", "graph-has-podmonitor",
                             "model-cache-hostpath-prefix", "workers-request-migration"}
    readme = (REPO / "policies" / "README.md").read_text()
    for name in names:
        assert f"`{name}`" in readme
    for policy in POLICIES:
        if policy.name in policy_settings.DEFAULTS:
            assert set(policy.config_schema.properties) == set(policy_settings.DEFAULTS[policy.name])


# ---------------------------------------------------------------- the pack as the CLI runs it

def test_the_running_pack_describes_its_policies(running_pack):
    info = running_pack.GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == PACK_NAME
    described = {p.name: p for p in info.policies}
    assert set(described) == {p.name for p in POLICIES}
    assert {n for n, p in described.items() if p.enforcementLevel == proto.MANDATORY} == set(MANDATORY)
    budget = json_format.MessageToDict(described["stack-gpu-budget"].configSchema.properties)
    assert budget["maxGpus"]["type"] == "integer" and budget["maxGpus"]["default"] == 8


@pytest.mark.parametrize("stack", ["dev", "multinode"])
def test_the_running_pack_passes_the_shipped_stacks(running_pack, stack):
    config = runner.load_policy_config(REPO / "policies" / "config" / f"{stack}.json")
    served = analyze_served(stack_subjects(rendered(stack)), config, running_pack)
    assert {p for p, level, _, _ in served if level == "mandatory"} == set()


def test_the_running_pack_blocks_a_stack_over_budget(running_pack):
    config = runner.load_policy_config(REPO / "policies" / "config" / "dev.json")
    served = analyze_served(stack_subjects(rendered("dev", "workers.replicas=3")), config, running_pack)
    assert [(p, level) for p, level, _, _ in served if level == "mandatory"] == [("stack-gpu-budget", "mandatory")]
