"""GPU guardrails: every worker asks for GPUs, in amounts a node and the stack can give.

Pods that ask for more GPUs than a node has sit Pending forever; a tensor-parallel size that
does not match the GPUs a pod gets leaves GPUs idle or fails at engine start; a stack that
adds up to more GPUs than its budget starves everything else on the cluster.
"""

from __future__ import annotations

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from . import settings as cfg
from .shapes import Component, describe, graph_components, is_graph, to_count

# Engines whose workers take a tensor-parallel flag; other commands (e.g. the mocker) are
# not checked for parallelism.
_ENGINE_MODULES = ("dynamo.vllm", "dynamo.sglang", "dynamo.trtllm")
_TP_FLAGS = ("--tensor-parallel-size", "-tp", "--tp-size", "--tp")
_PP_FLAGS = ("--pipeline-parallel-size", "-pp", "--pp-size", "--pp")


def _where(args: ResourceValidationArgs, component: Component) -> str:
    return f"{describe(args.resource_type, args.props, args.name)} component {component.name}"


def worker_gpu_limits(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not is_graph(args.resource_type):
        return
    for c in graph_components(args.resource_type, args.props):
        if not c.is_worker:
            continue
        if c.gpu_limit is None:
            report(f"{_where(args, c)} declares no GPU limit, so the scheduler may place it on a "
                   "node without GPUs; set the GPU limit (v1beta1: main container "
                   "resources.limits[\"nvidia.com/gpu\"], v1alpha1: resources.limits.gpu), "
                   "e.g. workers.gpus=1.", None)
        elif c.gpus is None or c.gpus < 1:
            report(f"{_where(args, c)} has GPU limit {c.gpu_limit!r}; it must be a whole number "
                   "of at least 1.", None)


def gpus_per_pod_within_node(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not is_graph(args.resource_type):
        return
    per_node = cfg.settings(args, "gpus-per-pod-within-node")["gpusPerNode"]
    for c in graph_components(args.resource_type, args.props):
        if c.gpus is not None and c.gpus > per_node:
            report(f"{_where(args, c)} asks for {c.gpus} GPUs per pod but a node has {per_node}; "
                   f"the pod would stay Pending. Use at most {per_node} GPUs per pod and spread "
                   "larger models over nodes with multinode.nodeCount (workers.nodeCount).", None)


def _parallel_size(component: Component, flags: tuple[str, ...]) -> int | None:
    value = component.flag(*flags)
    return 1 if value is None else to_count(value)


def tensor_parallel_matches_gpus(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not is_graph(args.resource_type):
        return
    for c in graph_components(args.resource_type, args.props):
        if not c.is_worker or c.gpus is None:
            continue
        words = c.command_line
        runs_engine = any(m in words for m in _ENGINE_MODULES) or c.flag(*_TP_FLAGS) is not None
        if not runs_engine:
            continue
        tp = _parallel_size(c, _TP_FLAGS)
        pp = _parallel_size(c, _PP_FLAGS)
        if tp is None or pp is None:
            report(f"{_where(args, c)} has a tensor/pipeline parallel size that is not a whole "
                   "number.", None)
            continue
        gpus_total = c.gpus * c.node_count
        if tp * pp != gpus_total:
            pp_text = f" x pipeline parallel {pp}" if pp != 1 else ""
            report(f"{_where(args, c)} runs tensor parallel size {tp}{pp_text} but gets "
                   f"{c.gpus} GPUs per pod x {c.node_count} node(s) = {gpus_total}; the engine "
                   "would leave GPUs idle or fail to start. Make --tensor-parallel-size (x "
                   "--pipeline-parallel-size) equal GPUs per pod x multinode.nodeCount.", None)


def frontend_no_gpus(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not is_graph(args.resource_type):
        return
    for c in graph_components(args.resource_type, args.props):
        if not c.is_frontend:
            continue
        for label, value in (("limit", c.gpu_limit), ("request", c.gpu_request)):
            count = to_count(value) if value is not None else 0
            if count != 0:
                report(f"{_where(args, c)} has GPU {label} {value!r}; the frontend only routes "
                       "HTTP and would hold GPUs no worker can use. Remove its GPU resources.",
                       None)


def graph_gpu_usage(resource_type: str, props) -> list[tuple[Component, int]]:
    """(component, GPUs it uses in total) for every component that declares GPUs."""
    usage = []
    for c in graph_components(resource_type, props):
        if c.gpus:
            usage.append((c, c.replicas * c.gpus * c.node_count))
    return usage


def stack_gpu_budget(args: StackValidationArgs, report: ReportViolation) -> None:
    budget = cfg.settings(args, "stack-gpu-budget")["maxGpus"]
    total = 0
    parts = []
    for resource in args.resources:
        if not is_graph(resource.resource_type):
            continue
        for c, gpus in graph_gpu_usage(resource.resource_type, resource.props):
            total += gpus
            parts.append(f"{resource.name}/{c.name}: {c.replicas} replicas x {c.gpus} GPUs x "
                         f"{c.node_count} node(s) = {gpus}")
    if total > budget:
        report(f"the stack uses {total} GPUs but its budget is {budget} ({'; '.join(parts)}). "
               "Lower workers.replicas / workers.gpus / workers.nodeCount, or raise maxGpus of "
               "stack-gpu-budget in the stack's policy config (policies/config/<stack>.json).",
               None)


POLICIES = [
    ResourceValidationPolicy(
        name="worker-gpu-limits",
        description="Every worker component declares a GPU limit of at least 1.",
        validate=worker_gpu_limits,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    ResourceValidationPolicy(
        name="gpus-per-pod-within-node",
        description="No component asks for more GPUs per pod than a node has.",
        validate=gpus_per_pod_within_node,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=cfg.schema("gpus-per-pod-within-node"),
    ),
    ResourceValidationPolicy(
        name="tensor-parallel-matches-gpus",
        description="A worker's tensor parallel size equals its GPUs per pod x multinode.nodeCount.",
        validate=tensor_parallel_matches_gpus,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    ResourceValidationPolicy(
        name="frontend-no-gpus",
        description="Frontend components request and limit no GPUs.",
        validate=frontend_no_gpus,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    StackValidationPolicy(
        name="stack-gpu-budget",
        description="The stack's GPUs (replicas x GPUs per pod x nodes, all graphs) stay within "
                    "its budget.",
        validate=stack_gpu_budget,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=cfg.schema("stack-gpu-budget"),
    ),
]
