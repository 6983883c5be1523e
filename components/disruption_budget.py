"""PodDisruptionBudgets so a node drain never takes every frontend or every worker at once.

One budget per component type that runs more than one replica, `maxUnavailable: 1`, selecting
pods by the labels the operator sets (graph name + component type). A component with a single
replica gets none: a budget there either allows the only pod to go (no protection) or, with
`minAvailable: 1`, blocks every drain of its node forever.
"""

from __future__ import annotations

from typing import Any, Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from components.graph import object_labels, type_selector


class ComponentReplicas(TypedDict):
    """One component of the graph as the budgets see it."""

    type: str
    """Operator component type: frontend, worker, prefill or decode."""
    replicas: int
    """Replicas of the component (a multinode worker counts once, whatever its node count)."""


class GraphDisruptionBudgetsArgs(TypedDict):
    """Which components to protect."""

    namespace: str
    """Namespace of the graph."""
    graph_name: str
    """Name of the DynamoGraphDeployment."""
    components: list[ComponentReplicas]
    """The graph's components and their replica counts."""


def budget_specs(args: GraphDisruptionBudgetsArgs) -> dict[str, dict[str, Any]]:
    """PodDisruptionBudget specs by component type, only for types with more than one replica."""
    return {
        c["type"]: {
            "maxUnavailable": 1,
            "selector": {"matchLabels": type_selector(args["graph_name"], c["type"])},
        }
        for c in args["components"] if c["replicas"] > 1
    }


class GraphDisruptionBudgets(pulumi.ComponentResource):
    """maxUnavailable-1 budgets for the graph's replicated components."""

    budget_names: list[str]
    """Names of the PodDisruptionBudgets created."""

    def __init__(self, name: str, args: GraphDisruptionBudgetsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("dynamo:disruption_budget:GraphDisruptionBudgets", name, None, opts)
        graph = args["graph_name"]
        self.budget_names = []
        for component_type, spec in budget_specs(args).items():
            budget_name = f"{graph}-{component_type}"
            k8s.policy.v1.PodDisruptionBudget(
                f"{name}-{component_type}",
                metadata={"name": budget_name, "namespace": args["namespace"],
                          "labels": object_labels(graph)},
                spec=spec,
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.budget_names.append(budget_name)
        self.register_outputs({"budget_names": self.budget_names})
