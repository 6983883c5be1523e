"""`dynctl preflight` against recorded Kubernetes API responses served on 127.0.0.1.

Cluster in the recordings: gpu-node-a/b with 4 GPUs each, gpu-node-c cordoned, gpu-node-d
NotReady, a CPU node. In pods_busy.json an earlier graph (lab1/vllm-disagg) holds 2 GPUs on
a and on b, a notebook Deployment 1 on a, a finished Job and a pending pod hold none, and the
dev stack's own previous worker holds 1 on b (it is replaced by the deploy, so it is free).
Free for the dev stack: a=1, b=2.
"""

from __future__ import annotations

import argparse

import pytest
import yaml

from dynctl import preflight
from kube_recorded import RecordedKubeAPI, fixture


def run_preflight(api: RecordedKubeAPI, tmp_path, *extra: str, stack: str = "dev") -> int:
    parser = argparse.ArgumentParser()
    preflight.register(parser.add_subparsers())
    args = parser.parse_args(["preflight", "--stack", stack, "--kubeconfig", str(api.kubeconfig(tmp_path)), *extra])
    return args.func(args)


def routes(pods: str) -> dict:
    return {"/api/v1/nodes": (200, fixture("nodes.json")), "/api/v1/pods": (200, fixture(pods))}


def test_dev_stack_fits_next_to_the_running_lab(tmp_path, capsys):
    with RecordedKubeAPI(routes("pods_busy.json")) as api:
        code = run_preflight(api, tmp_path)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "needs 2 worker pod(s) x 1 GPU = 2 GPUs" in out
    assert "free on schedulable nodes: 3 (including 1 held by this stack's own current pods)" in out
    assert "PASS: the workers fit" in out
    # only running/pending pods are asked for, and the pod list spans all namespaces
    assert any(p.startswith("/api/v1/pods?fieldSelector=status.phase") for p in api.seen)


def test_not_enough_gpus_names_the_deployments_holding_them(tmp_path, capsys):
    with RecordedKubeAPI(routes("pods_busy.json")) as api:
        code = run_preflight(api, tmp_path, "--set", "workers.gpus=2")
    out = capsys.readouterr().out
    assert code == 1, out
    assert "FAIL: 4 GPUs needed, 3 free" in out
    assert "lab1/DynamoGraphDeployment/vllm-disagg (4 GPUs)" in out
    assert "research/Deployment/jupyter-gpu (1 GPU)" in out
    # the finished fine-tuning job holds nothing and is not blamed
    assert "finetune" not in out


def test_enough_gpus_in_total_but_no_single_node_fits(tmp_path, capsys):
    with RecordedKubeAPI(routes("pods_busy.json")) as api:
        code = run_preflight(api, tmp_path, "--set", "workers.gpus=3", "--set", "workers.replicas=1")
    out = capsys.readouterr().out
    assert code == 1, out
    assert "3 GPUs are free in total, but not 1 node(s) with 3 free GPUs" in out


def test_cordoned_and_not_ready_nodes_are_not_counted(tmp_path, capsys):
    # Idle cluster: a and b have 4 free each; c (cordoned) and d (NotReady, 8 GPUs) must not help.
    with RecordedKubeAPI(routes("pods_idle.json")) as api:
        fits = run_preflight(api, tmp_path, "--set", "workers.gpus=4", "--set", "workers.replicas=2")
        too_many = run_preflight(api, tmp_path, "--set", "workers.gpus=4", "--set", "workers.replicas=3")
    out = capsys.readouterr().out
    assert (fits, too_many) == (0, 1), out
    assert "no (cordoned)" in out and "no (not Ready)" in out
    assert "FAIL: 12 GPUs needed, 8 free" in out


def test_multinode_worker_needs_distinct_nodes(tmp_path, capsys):
    with RecordedKubeAPI(routes("pods_idle.json")) as api:
        two_nodes = run_preflight(api, tmp_path, "--set", "workers.nodeCount=2", "--set", "workers.replicas=1",
                                  "--set", "workers.gpus=4", stack="multinode")
        three_nodes = run_preflight(api, tmp_path, "--set", "workers.nodeCount=3", "--set", "workers.replicas=1",
                                    "--set", "workers.gpus=1", stack="multinode")
    out = capsys.readouterr().out
    assert (two_nodes, three_nodes) == (0, 1), out
    assert "replica 1 on gpu-node-a, gpu-node-b" in out
    assert "not 3 node(s) with 1 free GPUs" in out


@pytest.mark.parametrize("token, context, expected", [
    ("wrong-token", None, "HTTP 401 Unauthorized"),
    (None, "other", "cannot reach the Kubernetes API at http://127.0.0.1:9"),
], ids=["bad-credentials", "unreachable-context"])
def test_api_problems_exit_2_with_one_line(tmp_path, capsys, token, context, expected):
    with RecordedKubeAPI(routes("pods_idle.json")) as api:
        path = api.kubeconfig(tmp_path, token=token) if token else api.kubeconfig(tmp_path)
        parser = argparse.ArgumentParser()
        preflight.register(parser.add_subparsers())
        argv = ["preflight", "--stack", "dev", "--kubeconfig", str(path)] + (["--context", context] if context else [])
        args = parser.parse_args(argv)
        code = args.func(args)
    out = capsys.readouterr().out
    assert code == 2
    assert expected in out and "Traceback" not in out


def test_unknown_stack_exits_2(tmp_path, capsys):
    with RecordedKubeAPI(routes("pods_idle.json")) as api:
        parser = argparse.ArgumentParser()
        preflight.register(parser.add_subparsers())
        args = parser.parse_args(["preflight", "--stack", "dev", "--kubeconfig", str(api.kubeconfig(tmp_path)),
                                  "--set", "workers.gpus=banana"])
        code = args.func(args)
    assert code == 2
    assert "CANNOT CHECK: stack 'dev'" in capsys.readouterr().out


def test_exec_credential_plugin_is_refused_clearly(tmp_path, capsys):
    # Cloud kubeconfigs (EKS, GKE) run a plugin for a token; dynctl does not run programs from kubeconfigs.
    with RecordedKubeAPI(routes("pods_idle.json")) as api:
        path = api.kubeconfig(tmp_path)
        cfg = yaml.safe_load(path.read_text())
        cfg["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "aws",
                                            "args": ["eks", "get-token", "--cluster-name", "lab"]}}
        path.write_text(yaml.safe_dump(cfg))
        parser = argparse.ArgumentParser()
        preflight.register(parser.add_subparsers())
        args = parser.parse_args(["preflight", "--stack", "dev", "--kubeconfig", str(path)])
        code = args.func(args)
    out = capsys.readouterr().out
    assert code == 2
    assert "uses an exec/auth-provider credential plugin" in out
    assert api.seen == []  # nothing was sent without credentials
