"""Read a rendered stack and decide what the local twin runs.

The twin must run what `pulumi up` would deploy, so everything here is derived from the rendered
Kubernetes objects (the DynamoGraphDeployment, its Secrets, PodMonitors and PrometheusRules), never
from stack config directly. Both DGD API versions are understood: v1beta1 `spec.components` (a list)
and v1alpha1 `spec.services` (a map keyed by component name).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from components.graph import DISCOVERY_ANNOTATION, WORKER_TYPES

# Dynamo reads these to authenticate to etcd and NATS (names taken from ai-dynamo-runtime 1.6.1).
ETCD_USER, ETCD_PASSWORD = "ETCD_AUTH_USERNAME", "ETCD_AUTH_PASSWORD"
NATS_USER, NATS_PASSWORD, NATS_TOKEN = "NATS_AUTH_USERNAME", "NATS_AUTH_PASSWORD", "NATS_AUTH_TOKEN"

# vLLM worker flags that the mocker understands with the same meaning. Value flags take one argument.
_MOCKER_VALUE_FLAGS = {
    "--block-size", "--max-model-len", "--max-num-seqs", "--max-num-batched-tokens",
    "--gpu-memory-utilization", "--data-parallel-size", "--num-gpu-blocks-override",
    "--kv-cache-dtype", "--disaggregation-mode",
}
_MOCKER_SWITCHES = {
    "--enable-prefix-caching", "--no-enable-prefix-caching",
    "--enable-chunked-prefill", "--no-enable-chunked-prefill",
}
# Pre-1.0 spellings of the disaggregation role.
_ROLE_SWITCHES = {"--is-prefill-worker": "prefill", "--is-decode-worker": "decode"}


class GraphError(ValueError):
    """The rendered stack has no graph the twin can run."""


@dataclass(frozen=True)
class SecretValue:
    """An env value that Kubernetes would fill from a Secret; the twin generates a local one."""

    secret: str
    key: str


@dataclass(frozen=True)
class Component:
    """One DGD component as its pods would run it."""

    name: str
    type: str
    replicas: int
    args: tuple[str, ...]
    env: tuple[tuple[str, str | SecretValue], ...]
    """Ordered (name, value) pairs; `$(VAR)` references are expanded later, as the kubelet does."""


@dataclass(frozen=True)
class TwinPlan:
    """Everything the twin starts, derived from the rendered graph."""

    graph: str
    namespace: str
    model: str
    router_mode: str
    migration_limit: int
    frontend: Component
    workers: tuple[Component, ...]
    discovery: str
    """`etcd` when the graph asks for it, else `file` (stands in for Kubernetes-native discovery)."""
    uses_nats: bool
    frontend_args: tuple[str, ...]
    mocker_args: dict[str, tuple[str, ...]]
    """Per worker component: mocker flags mapped from its vLLM arguments."""
    ignored_args: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Per worker component: vLLM flags with no mocker equivalent (GPU layout, KV transfer, ...)."""


def find_graph(objects: list[dict]) -> dict:
    graphs = [o for o in objects if o.get("kind") == "DynamoGraphDeployment"]
    if len(graphs) != 1:
        raise GraphError(f"expected one DynamoGraphDeployment in the rendered stack, found {len(graphs)}")
    return graphs[0]


def _env_list(items: list[dict] | None) -> list[tuple[str, str | SecretValue]]:
    out: list[tuple[str, str | SecretValue]] = []
    for item in items or []:
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            out.append((item["name"], SecretValue(ref["name"], ref["key"])))
        elif "valueFrom" in item:
            field_path = (item["valueFrom"].get("fieldRef") or {}).get("fieldPath", "")
            out.append((item["name"], {"status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}.get(field_path, "")))
        else:
            out.append((item["name"], str(item.get("value", ""))))
    return out


def _secret_keys(objects: list[dict], name: str) -> list[str]:
    """Keys of a Secret the stack renders; none for a Secret made outside the stack (its keys are unknown)."""
    for o in objects:
        if o.get("kind") == "Secret" and o.get("metadata", {}).get("name") == name:
            return sorted({*(o.get("data") or {}), *(o.get("stringData") or {})})
    return []


def _env_from(objects: list[dict], secret_names: list[str]) -> list[tuple[str, str | SecretValue]]:
    return [(key, SecretValue(name, key)) for name in secret_names for key in _secret_keys(objects, name)]


def _container_args(container: dict) -> tuple[str, ...]:
    command = list(container.get("command") or [])
    args = list(container.get("args") or [])
    # `sh -c "python3 -m dynamo.vllm --model ..."`: the flags live inside one shell string.
    if command[-1:] == ["-c"] and len(args) == 1:
        return tuple(shlex.split(args[0]))
    if len(args) == 1 and " " in args[0] and args[0].lstrip().startswith(("python", "--")):
        return tuple(shlex.split(args[0]))
    return tuple(command + args)


def _components_v1beta1(graph: dict, objects: list[dict]) -> list[Component]:
    out = []
    for c in graph["spec"].get("components") or []:
        containers = ((c.get("podTemplate") or {}).get("spec") or {}).get("containers") or []
        main = next((k for k in containers if k.get("name") == "main"), containers[0] if containers else {})
        secrets = [e["secretRef"]["name"] for e in main.get("envFrom") or [] if "secretRef" in e]
        env = _env_from(objects, secrets) + _env_list(main.get("env"))
        out.append(Component(c["name"], c.get("type", ""), int(c.get("replicas", 1)), _container_args(main), tuple(env)))
    return out


def _components_v1alpha1(graph: dict, objects: list[dict]) -> list[Component]:
    out = []
    for name, s in (graph["spec"].get("services") or {}).items():
        main = (s.get("extraPodSpec") or {}).get("mainContainer") or {}
        secrets = [s["envFromSecret"]] if s.get("envFromSecret") else []
        secrets += [e["secretRef"]["name"] for e in main.get("envFrom") or [] if "secretRef" in e]
        env = _env_from(objects, secrets) + _env_list(s.get("envs")) + _env_list(main.get("env"))
        out.append(Component(name, s.get("componentType", ""), int(s.get("replicas", 1)), _container_args(main), tuple(env)))
    return out


def flag_value(args: tuple[str, ...] | list[str], flag: str) -> str | None:
    """Value of `--flag V` or `--flag=V` (last one wins, as argparse does)."""
    value = None
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


def env_value(component: Component, name: str) -> str | SecretValue | None:
    value = None
    for k, v in component.env:
        if k == name:
            value = v
    return value


def _plain_env(component: Component, name: str) -> str | None:
    value = env_value(component, name)
    return value if isinstance(value, str) else None


def mocker_args_for(worker: Component) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(mocker flags, ignored vLLM flags) for one worker component's vLLM arguments."""
    args = _after_module(worker.args)
    mapped: list[str] = []
    ignored: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        name, _, inline = a.partition("=")
        takes_value = not inline and i + 1 < len(args) and not args[i + 1].startswith("--")
        value = inline or (args[i + 1] if takes_value else "")
        step = 2 if takes_value else 1
        if name in _MOCKER_VALUE_FLAGS:
            mapped += [name, value]
        elif name in _MOCKER_SWITCHES:
            mapped.append(name)
            step = 1
        elif name in _ROLE_SWITCHES:
            mapped += ["--disaggregation-mode", _ROLE_SWITCHES[name]]
            step = 1
        elif name in ("--model", "--served-model-name", "--migration-limit"):
            pass  # the model is set by the twin; migration moved to the frontend in 1.0 (see plan)
        elif name.startswith("--"):
            ignored += [a] + ([value] if takes_value else [])
        i += step
    return tuple(mapped), tuple(ignored)


_TWIN_FRONTEND_FLAGS = {"--http-port", "--http-host", "--discovery-backend", "--router-mode", "--migration-limit"}


def _after_module(args: tuple[str, ...]) -> list[str]:
    """Arguments after `python3 -m <module>`."""
    args_list = list(args)
    return args_list[args_list.index("-m") + 2:] if "-m" in args_list else args_list


def without_flags(args: list[str], flags: set[str]) -> list[str]:
    """args with every `--flag V` / `--flag=V` of `flags` removed."""
    out, i = [], 0
    while i < len(args):
        name = args[i].partition("=")[0]
        if name in flags:
            i += 1 if "=" in args[i] else 2
            continue
        out.append(args[i])
        i += 1
    return out


def _int(value: str | None, what: str) -> int:
    try:
        return int(value or 0)
    except ValueError:
        raise GraphError(f"{what} must be an integer, got {value!r}") from None


def plan_from_objects(objects: list[dict]) -> TwinPlan:
    graph = find_graph(objects)
    meta = graph.get("metadata") or {}
    version = str(graph.get("apiVersion", ""))
    components = _components_v1alpha1(graph, objects) if version.endswith("v1alpha1") else _components_v1beta1(graph, objects)
    frontends = [c for c in components if c.type == "frontend"]
    workers = tuple(c for c in components if c.type in WORKER_TYPES)
    if len(frontends) != 1 or not workers:
        raise GraphError(
            f"graph {meta.get('name')!r} needs one frontend and at least one worker component, "
            f"found types {[c.type for c in components]}"
        )
    frontend = frontends[0]
    models = {flag_value(w.args, "--served-model-name") or flag_value(w.args, "--model") for w in workers}
    if None in models or len(models) != 1:
        raise GraphError(f"every worker must name the same model with --model, found {sorted(map(str, models))}")
    model = models.pop()

    router_mode = flag_value(frontend.args, "--router-mode") or _plain_env(frontend, "DYN_ROUTER_MODE") or "round-robin"
    # Migration is a frontend setting from Dynamo 1.0 and a worker flag before; the twin runs 1.6.1,
    # so an old graph's worker flag becomes the frontend's.
    migration = (
        flag_value(frontend.args, "--migration-limit")
        or _plain_env(frontend, "DYN_MIGRATION_LIMIT")
        or next((flag_value(w.args, "--migration-limit") for w in workers if flag_value(w.args, "--migration-limit")), None)
    )
    migration_limit = _int(migration, "migration limit")

    every = [frontend, *workers]
    annotations = {**(meta.get("annotations") or {})}
    discovery = "etcd" if annotations.get(DISCOVERY_ANNOTATION) == "etcd" or any(
        env_value(c, "ETCD_ENDPOINTS") is not None for c in every) else "file"
    uses_nats = any(
        env_value(c, "NATS_SERVER") is not None
        or _plain_env(c, "DYN_EVENT_PLANE") == "nats" or _plain_env(c, "DYN_REQUEST_PLANE") == "nats"
        or flag_value(c.args, "--event-plane") == "nats" or flag_value(c.args, "--request-plane") == "nats"
        for c in every
    )

    # The frontend's own flags pass through; ports, hosts and discovery are the twin's.
    frontend_args = without_flags(_after_module(frontend.args), _TWIN_FRONTEND_FLAGS)
    frontend_args += ["--router-mode", router_mode]
    if migration_limit:
        frontend_args += ["--migration-limit", str(migration_limit)]
    mocker, ignored = {}, {}
    for w in workers:
        mocker[w.name], ignored[w.name] = mocker_args_for(w)
    return TwinPlan(
        graph=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "default")),
        model=model,
        router_mode=router_mode,
        migration_limit=migration_limit,
        frontend=frontend,
        workers=workers,
        discovery=discovery,
        uses_nats=uses_nats,
        frontend_args=tuple(frontend_args),
        mocker_args=mocker,
        ignored_args={k: v for k, v in ignored.items() if v},
    )


_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion against variables defined earlier in the container."""
    return _REF.sub(lambda m: env.get(m.group(1), m.group(0)), value)


def nats_url_credentials(url: str) -> tuple[str | None, str | None]:
    """user, password embedded in a nats:// URL, if any."""
    parts = urlsplit(url)
    return parts.username, parts.password


def with_local_address(url: str, host_port: str) -> str:
    """The same URL pointing at the twin's server, keeping any credentials in it."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return f"{parts.scheme}://{userinfo}{host_port}"
