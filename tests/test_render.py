"""Both stacks end to end: the real __main__.py through Pulumi's mocks, then the rendered objects."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from components.graph import KV_EVENTS_CONFIG
import schemas
from conftest import REPO, objects_of, one, rendered

STACKS = ["dev", "multinode"]
VARIANTS = [
    ("dev",),
    ("multinode",),
    ("dev", "dynamo.version=0.8.0"),
    ("dev", "dynamo.version=0.9.0"),
    ("dev", "dynamo.version=1.0.0"),
    ("dev", "dynamo.version=1.1.0", "frontend.routerMode=round-robin"),
    ("dev", "dynamo.version=1.4.0", "hfToken=hf_test_token_value"),
    ("dev", "workers.gpus=2", "workers.nodeCount=2", "modelCache.accessMode=ReadWriteMany"),
    ("dev", "dynamo.version=0.8.0", "workers.nodeCount=2", "modelCache.hostPath=/mnt/hf"),
    ("multinode", "dynamo.version=1.1.0"),
]


def graph_of(result) -> dict:
    return one(result, "DynamoGraphDeployment")


def components(graph: dict) -> dict[str, dict]:
    """name -> component in either dialect (v1beta1 list or v1alpha1 map)."""
    spec = graph["spec"]
    return {c["name"]: c for c in spec["components"]} if "components" in spec else dict(spec["services"])


def container(component: dict) -> dict:
    if "podTemplate" in component:
        return next(c for c in component["podTemplate"]["spec"]["containers"] if c["name"] == "main")
    return component["extraPodSpec"]["mainContainer"]


def env_of(component: dict) -> dict[str, str]:
    items = component.get("envs", []) + container(component).get("env", [])
    return {e["name"]: e.get("value") for e in items}


def cli_render(*argv: str) -> subprocess.CompletedProcess:
    """`python -m dynctl render ARGV` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "dynctl", "render", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.skipif(not schemas.CRDS.exists(), reason="../shared/reference/crds not present")
@pytest.mark.parametrize("variant", VARIANTS, ids=[" ".join(v) for v in VARIANTS])
def test_every_object_validates_strictly_against_upstream_schemas(variant):
    result = rendered(*variant)
    assert result.objects
    for obj in result.objects:
        schemas.validate(obj, result.config.dynamo.version)


def test_schema_check_catches_a_misspelt_field(dev):
    graph = json.loads(json.dumps(graph_of(dev)))
    graph["spec"]["components"][1]["replica"] = 2
    with pytest.raises(Exception):
        schemas.validate(graph, "1.6.1")


def test_dev_graph_is_the_lab_with_routing_fixed(dev):
    graph = graph_of(dev)
    assert graph["apiVersion"] == "nvidia.com/v1beta1"
    parts = components(graph)
    assert set(parts) == {"Frontend", "VllmWorker"}
    frontend, worker = parts["Frontend"], parts["VllmWorker"]
    assert frontend["type"] == "frontend" and frontend["replicas"] == 1
    assert worker["type"] == "worker" and worker["replicas"] == 2
    assert env_of(frontend)["DYN_ROUTER_MODE"] == "kv"
    assert env_of(frontend)["DYN_MIGRATION_LIMIT"] == "3"
    main = container(worker)
    assert main["command"] == ["python3", "-m", "dynamo.vllm"]
    args = main["args"]
    assert args[args.index("--model") + 1] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert args[args.index("--tensor-parallel-size") + 1] == "1"
    assert args[args.index("--kv-events-config") + 1] == KV_EVENTS_CONFIG
    assert main["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert main["envFrom"] == [{"secretRef": {"name": "hf-token-secret"}}]
    assert main["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]
    assert container(frontend).get("resources", {}).get("limits", {}).get("nvidia.com/gpu") is None
    # Like Dynamo's own examples, the frontend gets the token too: it fetches the model's tokenizer.
    assert container(frontend)["envFrom"] == [{"secretRef": {"name": "hf-token-secret"}}]
    assert graph["metadata"]["annotations"]["nvidia.com/dynamo-discovery-backend"] == "kubernetes"
    assert dev.total_gpus == 2


def test_dev_on_0_8_renders_the_lab_v1alpha1_graph():
    result = rendered("dev", "dynamo.version=0.8.0")
    graph = graph_of(result)
    assert graph["apiVersion"] == "nvidia.com/v1alpha1"
    frontend, worker = graph["spec"]["services"]["Frontend"], graph["spec"]["services"]["VllmWorker"]
    assert frontend["componentType"] == "frontend" and worker["componentType"] == "worker"
    # 0.8 only: the scaling adapter owns replicas unless disabled, and services carry a Dynamo namespace.
    assert frontend["scalingAdapter"] == {"disable": True} and worker["scalingAdapter"] == {"disable": True}
    assert worker["dynamoNamespace"] == "vllm-agg"
    assert worker["resources"]["limits"]["gpu"] == "1"
    assert worker["envFromSecret"] == "hf-token-secret" and frontend["envFromSecret"] == "hf-token-secret"
    assert env_of(frontend)["DYN_ROUTER_MODE"] == "kv"
    # Before 1.0, migration is a worker flag and workers publish KV events without an extra flag.
    assert "DYN_MIGRATION_LIMIT" not in env_of(frontend)
    args = container(worker)["args"]
    assert args[args.index("--migration-limit") + 1] == "3"
    assert "--kv-events-config" not in args


@pytest.mark.parametrize("version, adapter", [("0.9.0", False), ("1.1.0", False)])
def test_scaling_adapter_only_disabled_on_0_8(version, adapter):
    graph = graph_of(rendered("dev", f"dynamo.version={version}"))
    assert graph["apiVersion"] == "nvidia.com/v1alpha1"
    assert ("scalingAdapter" in graph["spec"]["services"]["VllmWorker"]) is adapter


def test_round_robin_drops_kv_events():
    result = rendered("dev", "dynamo.version=1.1.0", "frontend.routerMode=round-robin")
    parts = components(graph_of(result))
    assert env_of(parts["Frontend"])["DYN_ROUTER_MODE"] == "round-robin"
    assert "--kv-events-config" not in container(parts["VllmWorker"])["args"]


def test_multinode_worker_spans_nodes():
    result = rendered("dev", "workers.gpus=2", "workers.nodeCount=2", "modelCache.accessMode=ReadWriteMany")
    worker = components(graph_of(result))["VllmWorker"]
    assert worker["multinode"] == {"nodeCount": 2}
    args = container(worker)["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "4"
    assert container(worker)["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert result.total_gpus == 2 * 2 * 2


def test_dev_service_is_nodeport_30200_on_the_frontend_pods(dev):
    service = one(dev, "Service") if len(objects_of(dev, "Service")) == 1 else next(
        s for s in objects_of(dev, "Service") if s["metadata"]["name"].endswith("-frontend-external"))
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"][0]["nodePort"] == 30200 and service["spec"]["ports"][0]["port"] == 8000
    assert service["spec"]["selector"] == {"nvidia.com/dynamo-graph-deployment-name": "vllm-agg",
                                           "nvidia.com/dynamo-component": "Frontend"}


def test_multinode_is_a_production_topology(multinode):
    graph = graph_of(multinode)
    parts = components(graph)
    assert parts["Frontend"]["replicas"] > 1 and parts["VllmWorker"]["replicas"] > 2
    service = next(s for s in objects_of(multinode, "Service") if s["metadata"]["name"].endswith("-frontend-external"))
    assert service["spec"]["type"] == "LoadBalancer"
    for name in ("Frontend", "VllmWorker"):
        spread = parts[name]["podTemplate"]["spec"]["topologySpreadConstraints"][0]
        assert spread["topologyKey"] == "kubernetes.io/hostname"
        assert spread["labelSelector"]["matchLabels"]["nvidia.com/dynamo-component"] == name
    assert graph["metadata"]["annotations"]["nvidia.com/dynamo-discovery-backend"] == "etcd"


def test_pulumi_waits_for_the_graph_like_kubectl_wait(dev):
    annotations = graph_of(dev)["metadata"]["annotations"]
    assert annotations["pulumi.com/waitFor"] == "jsonpath={.status.state}=successful"
    assert int(annotations["pulumi.com/timeoutSeconds"]) >= 600


def test_stack_outputs(dev, multinode):
    assert dev.outputs["frontendUrl"] == "http://<node-ip>:30200"
    assert dev.outputs["graphName"] == "vllm-agg" and dev.outputs["namespace"] == "dynamo"
    assert dev.outputs["totalGpus"] == 2
    curl = dev.outputs["smokeCurl"]
    assert curl.startswith("curl -s http://<node-ip>:30200/v1/chat/completions")
    assert '"model": "Qwen/Qwen2.5-1.5B-Instruct"' in curl
    assert multinode.outputs["totalGpus"] == multinode.config.workers.total_gpus


def test_no_lab_annotations_anywhere(dev, multinode):
    for result in (dev, multinode):
        for obj in result.objects:
            for key in obj.get("metadata", {}).get("annotations", {}) or {}:
                assert not key.startswith("dynamo.nvidia.com/"), key


def test_hf_token_from_config_is_a_secret_that_never_leaves_in_plain_text(tmp_path):
    token = "hf_test_token_value"
    result = rendered("dev", "dynamo.version=1.4.0", f"hfToken={token}")
    secret = next(o for o in objects_of(result, "Secret") if o["metadata"]["name"] == "vllm-agg-hf-token")
    assert secret["stringData"] == {"HF_TOKEN": "[secret]"}
    assert "provide this Secret out of band" in secret["metadata"]["annotations"]["dynamo-distributed/redacted"]
    worker = components(graph_of(result))["VllmWorker"]
    assert container(worker)["envFrom"] == [{"secretRef": {"name": "vllm-agg-hf-token"}}]
    assert token in result.secret_values
    # The Pulumi resource input is still a Pulumi secret, not plain text.
    recorded = next(r for r in result.resources if r.type == "kubernetes:core/v1:Secret" and r.name == "vllm-agg-hf-token")
    assert token not in json.dumps({k: v for k, v in recorded.inputs.items() if k != "stringData"})
    from dynctl.engine import is_secret
    assert is_secret(recorded.inputs["stringData"])
    # Nothing the CLI writes or prints holds it.
    out = tmp_path / "out"
    proc = cli_render("--stack", "dev", "--out", str(out), "--set", f"hfToken={token}")
    assert proc.returncode == 0, proc.stderr
    assert token not in proc.stdout + proc.stderr
    for path in out.rglob("*"):
        if path.is_file():
            assert token not in path.read_text(), path
    secret_file = out / "dynamo" / "secret-vllm-agg-hf-token.yaml"
    assert secret_file.read_text().startswith("# REDACTED")


@pytest.mark.parametrize("sets, key", [
    (["frontend.routerMode=fastest"], "frontend.routerMode"),
    (["workers.replica=3"], "workers.replica"),
    (["discovery=etcd", "etcd.enabled=false"], "discovery"),
    (["dynamo.version=0.7.0"], "dynamo.version"),
])
def test_cli_refuses_bad_config_cleanly(tmp_path, sets, key):
    out = tmp_path / "never"
    proc = cli_render("--stack", "dev", "--out", str(out), *(arg for s in sets for arg in ("--set", s)))
    assert proc.returncode != 0
    assert proc.stderr.startswith(f"error: {key}:"), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_refuses_an_unknown_stack(tmp_path):
    proc = cli_render("--stack", "prod", "--out", str(tmp_path / "x"))
    assert proc.returncode != 0 and "known stacks: dev, multinode" in proc.stderr


def test_bad_config_under_pulumi_is_a_clean_run_error():
    """Under `pulumi preview` the same check stops the program with pulumi.RunError (no traceback)."""
    import pulumi

    from dynctl import engine

    values, secrets = engine.stack_config("dev", ["frontend.routerMode=fastest"])
    with pytest.raises(pulumi.RunError, match=r"frontend.routerMode: 'fastest' is not allowed; allowed values: kv"):
        engine.run_program("dev", values, secrets)


def test_plain_text_hf_token_is_refused_under_pulumi():
    import pulumi

    from dynctl import engine

    values, _ = engine.stack_config("dev", ["hfToken=hf_plain"])
    with pytest.raises(pulumi.RunError, match="hfToken: set in plain text"):
        engine.run_program("dev", values, set())


def test_render_writes_one_file_per_object_and_replaces_its_own_output(tmp_path):
    out = tmp_path / "dev"
    first = cli_render("--stack", "dev", "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert "2 GPUs" in first.stdout
    files = sorted(p for p in out.rglob("*.yaml"))
    assert len(files) == len(rendered("dev").objects)
    again = cli_render("--stack", "dev", "--out", str(out), "--set", "monitoring.enabled=false")
    assert again.returncode == 0, again.stderr
    stray = tmp_path / "mine"
    stray.mkdir()
    (stray / "keep.txt").write_text("not ours")
    refused = cli_render("--stack", "dev", "--out", str(stray))
    assert refused.returncode != 0 and (stray / "keep.txt").exists()


def test_render_works_after_asyncio_run_in_the_same_thread():
    import asyncio

    from dynctl.render import render_stack

    async def nothing():
        return None

    asyncio.run(nothing())
    assert render_stack("dev").total_gpus == 2


def test_load_config_validates_without_running_the_program():
    from dynctl.render import ConfigError, load_config

    assert load_config("multinode", ["workers.replicas=3"]).workers.total_gpus == 3
    with pytest.raises(ConfigError, match="^frontend.routerMode: 'x' is not allowed"):
        load_config("dev", ["frontend.routerMode=x"])
