"""Disruption budgets and spreading: a node drain never takes every frontend or every worker."""

from __future__ import annotations

import pytest

import schemas
from components.disruption_budget import GraphDisruptionBudgets
from conftest import objects_of, one, rendered
from recording import record

GRAPH_LABEL = "nvidia.com/dynamo-graph-deployment-name"
TYPE_LABEL = "nvidia.com/dynamo-component-type"


def test_multinode_budgets_each_replicated_tier_by_operator_labels(multinode):
    budgets = {b["metadata"]["name"]: b for b in objects_of(multinode, "PodDisruptionBudget")}
    assert set(budgets) == {"vllm-dp-frontend", "vllm-dp-worker"}
    for kind in ("frontend", "worker"):
        budget = budgets[f"vllm-dp-{kind}"]
        schemas.validate(budget)
        assert budget["metadata"]["namespace"] == "dynamo"
        assert budget["spec"] == {"maxUnavailable": 1,
                                  "selector": {"matchLabels": {GRAPH_LABEL: "vllm-dp", TYPE_LABEL: kind}}}


def test_a_single_replica_gets_no_budget_that_would_block_drains():
    result = rendered("multinode", "frontend.replicas=1")
    assert [b["metadata"]["name"] for b in objects_of(result, "PodDisruptionBudget")] == ["vllm-dp-worker"]


def test_dev_has_no_budgets(dev):
    assert objects_of(dev, "PodDisruptionBudget") == []


@pytest.mark.parametrize("replicas, expected", [
    ({"frontend": 1, "worker": 1}, []),
    ({"frontend": 2, "worker": 1}, ["g-frontend"]),
    ({"frontend": 3, "worker": 8}, ["g-frontend", "g-worker"]),
], ids=["nothing replicated", "frontends only", "both"])
def test_budgets_follow_replica_counts(replicas, expected):
    rec = record(lambda: GraphDisruptionBudgets("b", {
        "namespace": "ns", "graph_name": "g",
        "components": [{"type": t, "replicas": n} for t, n in replicas.items()]}))
    assert rec.built.budget_names == expected
    assert [r.inputs["metadata"]["name"] for r in rec.of_type("kubernetes:policy/v1:PodDisruptionBudget")] == expected


def test_multinode_spreads_frontends_and_workers_over_nodes(multinode, dev):
    graph = one(multinode, "DynamoGraphDeployment")
    for component in graph["spec"]["components"]:
        (spread,) = component["podTemplate"]["spec"]["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["maxSkew"] == 1
        assert spread["labelSelector"]["matchLabels"][GRAPH_LABEL] == "vllm-dp"
    for component in one(dev, "DynamoGraphDeployment")["spec"]["components"]:
        assert "topologySpreadConstraints" not in component["podTemplate"]["spec"]


@pytest.mark.parametrize("stack", ["dev", "multinode"])
def test_containers_drop_capabilities_and_are_not_privileged(stack):
    graph = one(rendered(stack), "DynamoGraphDeployment")
    for component in graph["spec"]["components"]:
        (main,) = component["podTemplate"]["spec"]["containers"]
        context = main["securityContext"]
        assert context["privileged"] is False and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        # vLLM pins memory for GPU transfers: IPC_LOCK on workers, nothing on the frontend.
        assert context["capabilities"].get("add", []) == (["IPC_LOCK"] if component["type"] == "worker" else [])
