"""`dynctl health`: against a running twin (real Dynamo), and against recorded Kubernetes API
responses served on 127.0.0.1 for the cluster path (graph status, pods, API server proxy)."""

from __future__ import annotations

import argparse
import json
import os
import signal

import pytest

from dynctl import health, twin
from kube_recorded import RecordedKubeAPI, fixture

NS, GRAPH = "dynamo", "vllm-agg"
PODS = f"/api/v1/namespaces/{NS}/pods"
DGD = f"/apis/nvidia.com/v1beta1/namespaces/{NS}/dynamographdeployments/{GRAPH}"
FRONTEND_PROXY = f"/api/v1/namespaces/{NS}/services/vllm-agg-frontend-external:http/proxy"
WORKERS = ("vllm-agg-vllmworker-7f9b6c8d4-4hx2n", "vllm-agg-vllmworker-7f9b6c8d4-9qk7m")
MODEL = "Qwen/Qwen2.5-1.5B-Instruct"
# Bodies as Dynamo 1.6.1 answers them (recorded from the twin's frontend and workers).
FRONTEND_HEALTH = {"status": "healthy", "endpoints": ["dyn://dynamo.backend.generate"], "instances": [
    {"component": "backend", "endpoint": "generate", "namespace": "dynamo", "instance_id": 14680055634938172645,
     "transport": {"tcp": "10.244.1.17:33145/cbba08d25b7614e5/dynamo/backend/generate"}, "device_type": "cuda",
     "request_plane_codec": "msgpack"},
    {"component": "backend", "endpoint": "generate", "namespace": "dynamo", "instance_id": 6171100728728723034,
     "transport": {"tcp": "10.244.1.18:45877/55a4276ab9079e5a/dynamo/backend/generate"}, "device_type": "cuda",
     "request_plane_codec": "msgpack"}]}
MODELS = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 1796415143, "owned_by": "nvidia"}]}
WORKER_HEALTH = {"status": "ready", "uptime": {"secs": 612, "nanos": 526980599},
                 "endpoints": {"worker_kv_query_source_ea1f07a860b70": "ready", "generate": "ready"}}


def run_health(stack: str, kubeconfig=None, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    health.register(parser.add_subparsers())
    argv = ["health", "--stack", stack] + (["--kubeconfig", str(kubeconfig)] if kubeconfig else []) + list(extra)
    args = parser.parse_args(argv)
    return args.func(args)


def cluster_routes(dgd: str, pods: str, models=MODELS) -> dict:
    routes = {
        DGD: (200, fixture(dgd)),
        f"{PODS}?labelSelector=nvidia.com/dynamo-graph-deployment-name={GRAPH}": (200, fixture(pods)),
        f"{FRONTEND_PROXY}/health": (200, json.dumps(FRONTEND_HEALTH)),
        f"{FRONTEND_PROXY}/v1/models": (200, json.dumps(models)),
    }
    for w in WORKERS:
        routes[f"{PODS}/{w}:9090/proxy/health"] = (200, json.dumps(WORKER_HEALTH))
    return routes


@pytest.fixture(autouse=True)
def no_twin(tmp_path, monkeypatch):
    # Cluster tests must not find a twin of the same stack that a developer left running.
    monkeypatch.setenv("DYNCTL_TWIN_HOME", str(tmp_path / "twins"))
    monkeypatch.setenv("COLUMNS", "200")  # rich tables: one row per line


def test_healthy_graph_through_the_api_server(tmp_path, capsys):
    with RecordedKubeAPI(cluster_routes("health_dgd_ready.json", "health_pods_ready.json")) as api:
        code = run_health("dev", api.kubeconfig(tmp_path))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "HEALTHY: 7 checks passed" in out
    # everything went through the API server: the frontend Service proxy and each worker pod's system port
    assert f"{FRONTEND_PROXY}/v1/models" in api.seen
    assert all(f"{PODS}/{w}:9090/proxy/health" in api.seen for w in WORKERS)


def test_degraded_graph_names_what_is_wrong(tmp_path, capsys):
    routes = cluster_routes("health_dgd_degraded.json", "health_pods_degraded.json", models={"object": "list", "data": []})
    with RecordedKubeAPI(routes) as api:
        code = run_health("dev", api.kubeconfig(tmp_path))
    out = capsys.readouterr().out
    assert code == 1, out
    assert "state pending, Ready=False (Resources not ready: vllm-agg-vllmworker: 1/2 replicas ready)" in out
    assert "1/2 ready; vllm-agg-vllmworker-7f9b6c8d4-9qk7m: CrashLoopBackOff (restarts 6)" in out
    assert f"/v1/models does not list {MODEL} (lists: nothing)" in out
    # the crashing pod is not probed through the proxy
    assert f"{PODS}/{WORKERS[1]}:9090/proxy/health" not in api.seen


def test_graph_not_deployed(tmp_path, capsys):
    with RecordedKubeAPI({}) as api:
        code = run_health("dev", api.kubeconfig(tmp_path))
    out = capsys.readouterr().out
    assert code == 1
    assert "not found (nvidia.com/v1beta1); is the stack deployed?" in out


def test_nats_and_etcd_checked_when_enabled(tmp_path, capsys):
    routes = cluster_routes("health_dgd_ready.json", "health_pods_ready.json")
    nats_sel = "app.kubernetes.io/name=nats,app.kubernetes.io/instance=vllm-agg-nats,app.kubernetes.io/component=nats"
    etcd_sel = "app.kubernetes.io/name=etcd,app.kubernetes.io/instance=vllm-agg-etcd"
    routes[f"{PODS}?labelSelector={nats_sel}"] = (200, fixture("health_pods_nats.json"))
    routes[f"{PODS}?labelSelector={etcd_sel}"] = (200, fixture("health_pods_etcd.json"))
    routes[f"{PODS}/vllm-agg-nats-0:8222/proxy/healthz"] = (200, '{"status":"ok"}')
    # etcd answers 503 while it has no leader
    routes[f"{PODS}/vllm-agg-etcd-0:2379/proxy/health"] = (503, '{"health":"false","reason":"RAFT NO LEADER"}')
    with RecordedKubeAPI(routes) as api:
        code = run_health("dev", api.kubeconfig(tmp_path), "--set", "nats.enabled=true", "--set", "etcd.enabled=true",
                          "--set", "discovery=etcd")
    out = capsys.readouterr().out
    assert code == 1, out
    assert "nats vllm-agg-nats-0" not in out.split("UNHEALTHY")[1]
    assert "etcd vllm-agg-etcd-0: HTTP 503" in out and "RAFT NO LEADER" in out


def test_unreachable_cluster_exits_2(tmp_path, capsys):
    with RecordedKubeAPI({}) as api:
        code = run_health("dev", api.kubeconfig(tmp_path), "--context", "other")
    assert code == 2
    assert "cannot reach the Kubernetes API at http://127.0.0.1:9" in capsys.readouterr().out


def test_twin_health_and_a_dead_worker(tmp_path, capsys):
    state = twin.up("dev", state_dir=None, echo=lambda m: None)
    try:
        assert run_health("dev") == 0
        out = capsys.readouterr().out
        assert "HEALTHY" in out and "2 worker instance(s) registered" in out
        worker = next(p for p in state["processes"] if p["role"] == "worker")
        os.kill(worker["pid"], signal.SIGKILL)
        os.waitpid(worker["pid"], 0)  # the twin started it from this process: wait until it is gone
        assert run_health("dev") == 1
        out = capsys.readouterr().out
        assert f"worker {worker['name']}: process {worker['pid']} is not running" in out
    finally:
        twin.down("dev")
