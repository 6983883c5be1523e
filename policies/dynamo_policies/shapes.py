"""Read Dynamo graphs and Kubernetes workloads out of resource inputs.

The policies receive the resource inputs exactly as the provider sees them: camelCase
Kubernetes objects. During `pulumi preview` pulumi-policy wraps them in read-only proxies
(Mapping / Sequence, not dict / list) that raise `UnknownValueError` when a value is not
known yet, so everything here reads through `Mapping`/`Sequence` and never copies.

A DynamoGraphDeployment comes in two shapes:
- v1alpha1: `spec.services` maps a component name to a service (`componentType`,
  `resources.limits.gpu` as a string, `envs`, `extraPodSpec.mainContainer`, `multinode.nodeCount`).
- v1beta1: `spec.components` is a list of `{name, type, replicas, podTemplate, multinode}`;
  the container named `main` runs the engine, GPUs are `resources.limits["nvidia.com/gpu"]`.
`graph_components` turns both into the same `Component` records so each policy is written once.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

GRAPH_KIND = "DynamoGraphDeployment"
GRAPH_GROUP = "nvidia.com"
GPU_RESOURCE = "nvidia.com/gpu"
DISCOVERY_ANNOTATION = "nvidia.com/dynamo-discovery-backend"

# Component types that run an inference engine (and so need GPUs on a real cluster).
WORKER_TYPES = frozenset({"worker", "prefill", "decode"})
FRONTEND_TYPE = "frontend"

# Where the pod spec sits in each core workload kind.
_POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}


def as_map(value: Any) -> Mapping:
    """The value when it is a mapping, else an empty one (absent or malformed fields)."""
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> Sequence:
    """The value when it is a list, else an empty one. Strings are not lists here."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return value
    return []


def dig(obj: Any, *path: str) -> Any:
    """obj[path[0]][path[1]]... or None when any step is missing."""
    for key in path:
        if not isinstance(obj, Mapping) or key not in obj:
            return None
        obj = obj[key]
    return obj


def split_type(resource_type: str) -> tuple[str, str, str]:
    """`kubernetes:apps/v1:Deployment` -> ("kubernetes", "apps/v1", "Deployment")."""
    parts = resource_type.split(":")
    if len(parts) != 3:
        return ("", "", resource_type)
    return (parts[0], parts[1], parts[2])


def kubernetes_kind(resource_type: str) -> tuple[str, str]:
    """(group, kind) for a Kubernetes type token, ("", "") for anything else.

    The core group is spelt `core` in Pulumi tokens (`kubernetes:core/v1:Service`).
    """
    provider, group_version, kind = split_type(resource_type)
    if provider != "kubernetes" or "/" not in group_version:
        return ("", "")
    return (group_version.split("/")[0], kind)


def is_graph(resource_type: str) -> bool:
    return kubernetes_kind(resource_type) == (GRAPH_GROUP, GRAPH_KIND)


def graph_api_version(resource_type: str) -> str:
    """`v1alpha1` or `v1beta1` (the version part of the token)."""
    return split_type(resource_type)[1].split("/")[-1]


def describe(resource_type: str, props: Mapping, fallback_name: str) -> str:
    """`Kind namespace/name` for messages, from the object's metadata when it has one."""
    kind = split_type(resource_type)[2]
    metadata = as_map(dig(props, "metadata"))
    name = metadata.get("name") or fallback_name
    namespace = metadata.get("namespace")
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def to_count(value: Any) -> int | None:
    """A whole count from an int or a quantity string ("2"); None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        return int(value)
    return None


@dataclass(frozen=True)
class Component:
    """One component of a graph, the same for both API versions.

    Replicas, node count and GPUs are read only when a policy asks for them: a value that is
    unknown during preview then stops only the policies that need it.
    """

    name: str
    type: str
    raw: Mapping
    """The v1beta1 component or v1alpha1 service as written."""
    alpha: bool
    containers: list = field(default_factory=list)
    """Every container of the pod; the main (engine) container first."""
    env: list = field(default_factory=list)
    """Env entries the main container gets: graph-wide, component, then container env."""
    volumes: list = field(default_factory=list)

    @property
    def replicas(self) -> int:
        return _replicas(self.raw.get("replicas"))

    @property
    def node_count(self) -> int:
        return _node_count(self.raw.get("multinode"))

    def _gpu(self, section: str) -> Any:
        # v1alpha1 declares GPUs on the service (`resources.<section>.gpu`); a GPU limit set
        # directly on a container counts too, as the pod would get it either way.
        if self.alpha:
            value = dig(self.raw, "resources", section, "gpu")
            if value is not None:
                return value
        return _container_gpus(self.containers, section)

    @property
    def gpu_limit(self) -> Any:
        """The declared GPU limit per pod as written (None when not declared)."""
        return self._gpu("limits")

    @property
    def gpu_request(self) -> Any:
        return self._gpu("requests")

    @property
    def is_worker(self) -> bool:
        return self.type in WORKER_TYPES

    @property
    def is_frontend(self) -> bool:
        return self.type == FRONTEND_TYPE

    @property
    def gpus(self) -> int | None:
        return to_count(self.gpu_limit)

    @property
    def command_line(self) -> list[str]:
        """Command and args of the main container as separate words.

        A `sh -c "python3 -m dynamo.vllm ..."` string is split too, so flags are found
        however the command is written.
        """
        if not self.containers:
            return []
        main = self.containers[0]
        words: list[str] = []
        for item in [*as_list(main.get("command")), *as_list(main.get("args"))]:
            text = str(item)
            if any(c.isspace() for c in text.strip()):
                try:
                    words.extend(shlex.split(text))
                except ValueError:
                    words.extend(text.split())
            else:
                words.append(text)
        return words

    def flag(self, *names: str) -> str | None:
        """Value of the first of the given command-line flags (`--x v` or `--x=v`)."""
        return flag_value(self.command_line, names)

    def env_value(self, name: str) -> str | None:
        """Literal value of an env var for the main container (last definition wins)."""
        found = None
        for entry in self.env:
            entry = as_map(entry)
            if entry.get("name") == name and "value" in entry:
                found = str(entry.get("value"))
        return found

    def env_defined(self, name: str) -> bool:
        return any(as_map(e).get("name") == name for e in self.env)


def flag_value(words: Sequence[str], names: Sequence[str]) -> str | None:
    for i, word in enumerate(words):
        for name in names:
            if word == name and i + 1 < len(words):
                return words[i + 1]
            if word.startswith(name + "="):
                return word[len(name) + 1:]
    return None


def _node_count(multinode: Any) -> int:
    if not isinstance(multinode, Mapping):
        return 1
    # The CRD defaults nodeCount to 2 when a multinode block is given without one.
    count = to_count(multinode.get("nodeCount", 2))
    return count if count is not None else 1


def _replicas(value: Any) -> int:
    # The operator runs one replica when none is given.
    count = to_count(value)
    return count if count is not None else 1


def _container_gpus(containers: Sequence, section: str) -> Any:
    """The GPU quantity of the first container declaring one in resources.<section>."""
    for container in containers:
        value = dig(container, "resources", section, GPU_RESOURCE)
        if value is not None:
            return value
    return None


def pod_containers(pod_spec: Mapping, main_name: str | None = None) -> list:
    """Containers, init and ephemeral containers of a pod spec, the `main_name` one first."""
    containers = list(as_list(pod_spec.get("containers")))
    if main_name is not None:
        containers.sort(key=lambda c: as_map(c).get("name") != main_name)
    containers += list(as_list(pod_spec.get("initContainers")))
    containers += list(as_list(pod_spec.get("ephemeralContainers")))
    return [as_map(c) for c in containers]


def _beta_components(spec: Mapping) -> list[Component]:
    graph_env = list(as_list(spec.get("env")))
    result = []
    for raw in as_list(spec.get("components")):
        raw = as_map(raw)
        pod_spec = as_map(dig(raw, "podTemplate", "spec"))
        containers = pod_containers(pod_spec, main_name="main")
        main = containers[0] if containers else {}
        result.append(Component(
            name=str(raw.get("name", "")),
            type=str(raw.get("type", "")),
            raw=raw,
            alpha=False,
            containers=containers,
            env=graph_env + list(as_list(main.get("env"))),
            volumes=list(as_list(pod_spec.get("volumes"))),
        ))
    return result


def _alpha_components(spec: Mapping) -> list[Component]:
    graph_env = list(as_list(spec.get("envs")))
    result = []
    for name, raw in as_map(spec.get("services")).items():
        raw = as_map(raw)
        pod_spec = as_map(raw.get("extraPodSpec"))
        main = as_map(pod_spec.get("mainContainer"))
        containers = [main] + pod_containers(pod_spec) if main else pod_containers(pod_spec)
        result.append(Component(
            name=str(name),
            type=str(raw.get("componentType", "")),
            raw=raw,
            alpha=True,
            containers=containers,
            env=graph_env + list(as_list(raw.get("envs"))) + list(as_list(main.get("env"))),
            volumes=list(as_list(pod_spec.get("volumes"))),
        ))
    return result


def graph_components(resource_type: str, props: Mapping) -> list[Component]:
    """The components of a DynamoGraphDeployment, whatever its API version."""
    spec = as_map(props.get("spec"))
    if graph_api_version(resource_type) == "v1alpha1" or "services" in spec:
        return _alpha_components(spec)
    return _beta_components(spec)


def graph_name(props: Mapping, fallback: str) -> str:
    return as_map(props.get("metadata")).get("name") or fallback


def workload_pod_spec(resource_type: str, props: Mapping) -> Mapping | None:
    """The pod spec of a core workload (Pod, Deployment, StatefulSet, Job...), else None."""
    group, kind = kubernetes_kind(resource_type)
    if group not in ("core", "apps", "batch") or kind not in _POD_SPEC_PATHS:
        return None
    spec = dig(props, *_POD_SPEC_PATHS[kind])
    return spec if isinstance(spec, Mapping) else None


def all_containers(resource_type: str, props: Mapping) -> list[tuple[str, Mapping]]:
    """(where, container) for every container a graph or core workload would run.

    `where` names the component or workload for messages.
    """
    if is_graph(resource_type):
        found = []
        for component in graph_components(resource_type, props):
            for container in component.containers:
                found.append((component.name, container))
        return found
    pod_spec = workload_pod_spec(resource_type, props)
    if pod_spec is None:
        return []
    return [("", c) for c in pod_containers(pod_spec)]


def all_volumes(resource_type: str, props: Mapping) -> list[Mapping]:
    """Pod volumes of a graph (every component) or of a core workload."""
    if is_graph(resource_type):
        return [as_map(v) for c in graph_components(resource_type, props) for v in c.volumes]
    pod_spec = workload_pod_spec(resource_type, props)
    if pod_spec is None:
        return []
    return [as_map(v) for v in as_list(pod_spec.get("volumes"))]


RELEASE_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


def image_version(image: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) from an image tag like `vllm-runtime:1.6.1`, else None."""
    tag = parse_image(image).tag
    if not tag:
        return None
    match = RELEASE_VERSION.match(tag)
    if not match:
        return None
    return (int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))


@dataclass(frozen=True)
class ImageRef:
    """An image reference split the way container runtimes read it."""

    repository: str
    """Full repository including the registry host, e.g. `docker.io/library/nats`."""
    tag: str
    digest: str


def parse_image(image: str) -> ImageRef:
    """Split `[registry/]path[:tag][@digest]`; Docker Hub names get their implicit prefix.

    `nats:2.10` is `docker.io/library/nats:2.10` to the runtime, so allow lists written
    with full names match it.
    """
    name, _, digest = image.partition("@")
    tag = ""
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = name.rpartition(":")
    first, _, rest = name.partition("/")
    if not rest:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    return ImageRef(repository=name, tag=tag, digest=digest)
