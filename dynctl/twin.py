"""`dynctl twin`: run a stack's graph locally with real Dynamo and no GPU.

`twin up` renders the stack in-process (exactly what `pulumi up` would apply), then starts Dynamo's
real frontend for each frontend replica and Dynamo's mocker (a simulated vLLM engine) for each
worker replica, with the frontend's env and flags and the workers' model and engine flags taken
from the rendered DynamoGraphDeployment. A shared directory stands in for Kubernetes-native
discovery; when the graph uses etcd and/or NATS the real servers run on 127.0.0.1 with
authentication on. With the ZMQ event plane an XSUB/XPUB broker (role zmq-broker) on 127.0.0.1
carries Dynamo's events, so nothing listens beyond loopback. `--monitoring` adds Prometheus with
the stack's PodMonitors and alert rules.

Python API (used by smoke/traffic/health and the tests): up(), status(), down(), load_state().
State: `<state_dir>/<stack>/state.json` (default state_dir `<repo>/.twin`, or $DYNCTL_TWIN_HOME).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

from dynctl import twin_install
from dynctl.twin_graph import (
    ETCD_PASSWORD, ETCD_USER, NATS_PASSWORD, NATS_TOKEN, NATS_USER,
    GraphError, SecretValue, TwinPlan, expand, nats_url_credentials, plan_from_objects, with_local_address,
    without_flags,
)
from dynctl.twin_process import (
    LOOPBACK, answers_ok, free_port, http_get, log_tail, port_in_use, running, spawn, stop_all,
)
from dynctl.twin_servers import (
    Server, ServerError, enable_etcd_auth, start_etcd, start_nats, start_nats_exporter, start_prometheus,
    start_zmq_broker, wait_scraped,
)

READY_TIMEOUT = float(os.environ.get("DYNCTL_TWIN_READY_TIMEOUT", "120"))
# Dynamo advertises the machine's external address unless told otherwise; keep it all on loopback.
LOOPBACK_ENV = {
    name: LOOPBACK
    for name in ("DYN_TCP_RPC_HOST", "DYN_EVENT_PLANE_HOST", "DYN_SYSTEM_HOST", "DYN_TCP_RESPONSE_STREAM_HOST",
                 "DYN_HTTP_HOST", "DYN_HTTP_RPC_HOST")
}
# Set by the twin for each process; values in the graph are the pod's and mean nothing here.
TWIN_OWNED_ENV = {"DYN_SYSTEM_PORT", "DYN_HTTP_PORT", "DYN_DISCOVERY_BACKEND", "DYN_FILE_KV", "HF_HOME", "HOME",
                  "ETCD_ENDPOINTS", "DYN_ZMQ_BROKER_URL", *LOOPBACK_ENV}


class TwinError(RuntimeError):
    """The twin could not do what was asked; the message says why and what to do."""


# ---------------------------------------------------------------- state


def state_home(state_dir: Path | None = None) -> Path:
    return Path(state_dir or os.environ.get("DYNCTL_TWIN_HOME") or twin_install.REPO / ".twin")


def run_dir(stack: str, state_dir: Path | None = None) -> Path:
    return state_home(state_dir) / stack


def load_state(stack: str, state_dir: Path | None = None) -> dict | None:
    path = run_dir(stack, state_dir) / "state.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _save_state(stack: str, state_dir: Path | None, state: dict) -> None:
    path = run_dir(stack, state_dir) / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def _record(server: Server) -> dict:
    record = {"role": server.role, "name": server.name, "pid": server.pid, "started": server.started,
              "endpoint": server.endpoint, "health_url": server.health_url, "log": server.log}
    if server.data_dir:
        record["data_dir"] = server.data_dir
    return record


def _stop(procs: list[dict | Server]) -> None:
    """Stop Dynamo and Prometheus together, then the servers they use (workers deregister from etcd on the way out)."""
    records = [p if isinstance(p, dict) else _record(p) for p in procs]
    for tier in (("prometheus", "frontend", "worker"), ("nats", "etcd", "zmq-broker")):
        stop_all([(r["pid"], r.get("started", "")) for r in records if r["role"] in tier])
    for r in records:
        if r.get("data_dir"):
            shutil.rmtree(r["data_dir"], ignore_errors=True)


# ---------------------------------------------------------------- environment


def _secret(n: int = 24) -> str:
    # Starts with a letter: nats-server parses config values, and a leading digit or dash changes their type.
    return "t" + secrets.token_urlsafe(n)


def _base_env(rd: Path) -> dict[str, str]:
    home = rd / "home"
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        # Dynamo caches model cards under $HOME/.cache; keep every run inside its state dir.
        "HOME": str(home),
        "HF_HOME": str(home / ".cache" / "huggingface"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TMPDIR": str(rd / "tmp"),
        "NO_COLOR": "1",
        **LOOPBACK_ENV,
    }


def _component_env(component, generated: dict[SecretValue, str]) -> dict[str, str]:
    """The container's env as the kubelet would build it, with local values for Secret references."""
    env: dict[str, str] = {}
    for name, value in component.env:
        if isinstance(value, SecretValue):
            env[name] = generated.setdefault(value, _secret())
        else:
            env[name] = expand(value, env)
    return env


def _consistent(envs: list[dict[str, str]], name: str) -> str | None:
    values = {e[name] for e in envs if e.get(name)}
    if len(values) > 1:
        raise TwinError(f"the graph's components disagree on {name}; every pod must get the same value")
    return values.pop() if values else None


# ---------------------------------------------------------------- up


def up(stack: str, sets: list[str] | tuple[str, ...] = (), port: int | None = None, kv_blocks: int | None = None,
       monitoring: bool = False, state_dir: Path | None = None, echo=print) -> dict:
    """Start the stack's twin; returns the state once the model is served. Raises TwinError."""
    from dynctl.render import ConfigError, render_stack

    try:
        rendered = render_stack(stack, list(sets))
    except ConfigError as error:
        raise TwinError(f"stack {stack!r}: {error}") from None
    return up_from_objects(stack, rendered.objects, port=port, kv_blocks=kv_blocks, monitoring=monitoring,
                           state_dir=state_dir, echo=echo)


def up_from_objects(stack: str, objects: list[dict], port: int | None = None, kv_blocks: int | None = None,
                    monitoring: bool = False, state_dir: Path | None = None, echo=print) -> dict:
    try:
        plan = plan_from_objects(objects)
    except GraphError as error:
        raise TwinError(str(error)) from None
    if kv_blocks is not None and kv_blocks < 1:
        raise TwinError("--kv-blocks must be at least 1")
    existing = load_state(stack, state_dir)
    if existing and any(alive(p) for p in existing["processes"]):
        raise TwinError(f"twin {stack!r} is already running at {existing['url']}; run `python -m dynctl twin down --stack {stack}` first")
    if existing:
        down(stack, state_dir)  # a crashed run: clear what it left (process groups, etcd's memory dir)
    if port is not None and port_in_use(port):
        raise TwinError(f"port {port} on {LOOPBACK} is already in use; pick another --port or leave it out for a free one")
    monitors = []
    if monitoring:
        from dynctl import twin_monitoring

        monitors = twin_monitoring.pod_monitors(objects)
        if not monitors:
            raise TwinError(f"--monitoring: stack {stack!r} renders no PodMonitor (enable monitoring in the stack config)")

    python = twin_install.ensure_venv(echo)
    model_dir = twin_install.ensure_tokenizer(python)

    rd = run_dir(stack, state_dir)
    for stale in ("logs", "discovery", "prometheus-data", "home", "tmp", "rules"):
        shutil.rmtree(rd / stale, ignore_errors=True)
    for sub in ("logs", "discovery", "home", "tmp"):
        (rd / sub).mkdir(parents=True, exist_ok=True)
    base = _base_env(rd)

    frontend_port = port or free_port()
    state = {
        "stack": stack, "url": f"http://{LOOPBACK}:{frontend_port}", "model": plan.model,
        "router_mode": plan.router_mode, "migration_limit": plan.migration_limit,
        "graph": plan.graph, "discovery": plan.discovery, "nats": plan.uses_nats,
        "ignored_worker_args": plan.ignored_args, "processes": [],
    }
    servers: list[Server] = []

    def checkpoint() -> None:
        """Record what runs so far: `twin down` (or the next `up`) stops it even if we die."""
        state["processes"] = [_record(s) for s in servers]
        _save_state(stack, state_dir, state)

    t0 = time.monotonic()
    try:
        dynamo_env = _servers_and_env(plan, python, rd, base, servers, echo)
        checkpoint()
        started = _start_dynamo(plan, python, model_dir, rd, dynamo_env, frontend_port, kv_blocks, servers)
        checkpoint()
        prometheus = None
        if monitoring:
            # Started while Dynamo comes up: Prometheus takes seconds to run its first scrapes.
            from dynctl import twin_monitoring

            nats = [s for s in servers if s.role == "nats"]
            if nats and twin_monitoring.selects_nats(objects):
                start_nats_exporter(rd, base, nats[0], servers)
            config, notes = twin_monitoring.write_config(rd, objects, plan, servers)
            for note in notes:
                echo(f"twin: note: {note}")
            prometheus = start_prometheus(rd, base, config, servers)
            state["prometheus_url"] = prometheus.endpoint
            state["monitoring_notes"] = notes
            checkpoint()
        _wait_ready(plan, state, started)
        if prometheus:
            wait_scraped(prometheus)
    except BaseException:
        _stop(servers)
        checkpoint()
        raise
    state["up_seconds"] = round(time.monotonic() - t0, 2)
    _save_state(stack, state_dir, state)
    return state


def _servers_and_env(plan: TwinPlan, python: Path, rd: Path, base: dict, servers: list[Server],
                     echo) -> dict[str, dict[str, str]]:
    """Start etcd/NATS (or the ZMQ event broker) as the graph needs them; returns each Dynamo component's env."""
    generated: dict[SecretValue, str] = {}
    components = [plan.frontend, *plan.workers]
    envs = {c.name: _component_env(c, generated) for c in components}
    every = list(envs.values())
    shared: dict[str, str] = {"DYN_DISCOVERY_BACKEND": plan.discovery}
    if plan.discovery == "file":
        shared["DYN_FILE_KV"] = str(rd / "discovery")
    event_plane = _consistent(every, "DYN_EVENT_PLANE")
    if not event_plane and not plan.uses_nats:
        # Dynamo defaults the event plane to NATS with etcd discovery; without NATS in the graph, ZMQ.
        event_plane = shared["DYN_EVENT_PLANE"] = "zmq"
    if event_plane == "zmq":
        # Direct ZMQ publishers bind 0.0.0.0 (hard-coded in Dynamo 1.6.1); through a broker on
        # 127.0.0.1 they connect out instead and nothing of Dynamo's listens for events.
        _, shared["DYN_ZMQ_BROKER_URL"] = start_zmq_broker(rd, base, python, servers)

    if plan.discovery == "etcd":
        user = _consistent(every, ETCD_USER)
        password = _consistent(every, ETCD_PASSWORD)
        if not (user and password):
            # The twin never runs etcd open; a graph without credentials gets local ones (and a note).
            echo("twin: note: the graph gives Dynamo no etcd credentials (ETCD_AUTH_USERNAME/PASSWORD); using local ones")
            user, password = user or "dynamo", password or _secret()
            shared.update({ETCD_USER: user, ETCD_PASSWORD: password})
        etcd = start_etcd(rd, base, servers)
        enable_etcd_auth(etcd, user, password, root_password=password if user == "root" else _secret())
        shared["ETCD_ENDPOINTS"] = etcd.endpoint

    if plan.uses_nats:
        token = _consistent(every, NATS_TOKEN)
        user, password = _consistent(every, NATS_USER), _consistent(every, NATS_PASSWORD)
        url = _consistent(every, "NATS_SERVER") or "nats://nats:4222"
        url_user, url_password = nats_url_credentials(url)
        if token:
            auth = {"token": token}
        elif user or url_user:
            auth = {"user": user or url_user, "password": password or url_password or ""}
        else:
            echo("twin: note: the graph gives Dynamo no NATS credentials (NATS_AUTH_*); using local ones")
            auth = {"user": "dynamo", "password": _secret()}
            shared.update({NATS_USER: auth["user"], NATS_PASSWORD: auth["password"]})
        nats = start_nats(rd, base, auth, servers)
        shared["NATS_SERVER"] = with_local_address(url, nats.endpoint.split("://", 1)[1])

    out = {}
    for name, env in envs.items():
        merged = {k: v for k, v in env.items() if k not in TWIN_OWNED_ENV}
        out[name] = {**base, **merged, **shared}
    return out


def _start_dynamo(plan: TwinPlan, python: Path, model_dir: Path, rd: Path, envs: dict, frontend_port: int,
                  kv_blocks: int | None, servers: list[Server]) -> list[Server]:
    started: list[Server] = []
    logs = rd / "logs"
    for w in plan.workers:
        args = list(plan.mocker_args[w.name])
        if kv_blocks is not None:
            args = without_flags(args, {"--num-gpu-blocks-override"}) + ["--num-gpu-blocks-override", str(kv_blocks)]
        for i in range(w.replicas):
            system_port = free_port(below=32768)
            env = {**envs[w.name], "DYN_SYSTEM_PORT": str(system_port)}
            env.setdefault("DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS", '["generate"]')
            argv = [str(python), "-m", "dynamo.mocker", "--model-path", str(model_dir), "--model-name", plan.model,
                    "--discovery-backend", plan.discovery, *args]
            name = f"{w.name}-{i}"
            pid, t = spawn(argv, env, logs / f"{name}.log", rd)
            url = f"http://{LOOPBACK}:{system_port}"
            server = Server("worker", name, pid, t, url, f"{url}/health", str(logs / f"{name}.log"))
            servers.append(server)
            started.append(server)
    for i in range(plan.frontend.replicas):
        http_port = frontend_port if i == 0 else free_port()
        argv = [str(python), "-m", "dynamo.frontend", "--http-host", LOOPBACK, "--http-port", str(http_port),
                "--discovery-backend", plan.discovery, *plan.frontend_args]
        name = f"{plan.frontend.name}-{i}"
        pid, t = spawn(argv, envs[plan.frontend.name], logs / f"{name}.log", rd)
        url = f"http://{LOOPBACK}:{http_port}"
        server = Server("frontend", name, pid, t, url, f"{url}/v1/models", str(logs / f"{name}.log"))
        servers.append(server)
        started.append(server)
    return started


def _serves(url: str, model: str) -> bool:
    answer = http_get(url)
    if not answer or answer[0] != 200:
        return False
    try:
        return any(m.get("id") == model for m in json.loads(answer[1]).get("data", []))
    except (ValueError, AttributeError):
        return False


def _wait_ready(plan: TwinPlan, state: dict, started: list[Server]) -> None:
    """Every frontend lists the model and every worker reports healthy, within READY_TIMEOUT."""
    deadline = time.monotonic() + READY_TIMEOUT
    pending = list(started)
    while pending:
        for server in list(pending):
            if not running(server.pid, server.started):
                raise TwinError(f"{server.name} exited during start-up; last log lines ({server.log}):\n{log_tail(server.log)}")
            ok = _serves(server.health_url, plan.model) if server.role == "frontend" else answers_ok(server.health_url, 1.0)
            if ok:
                pending.remove(server)
        if not pending:
            return
        if time.monotonic() > deadline:
            waiting = pending[0]
            raise TwinError(
                f"{', '.join(s.name for s in pending)} not ready within {READY_TIMEOUT:.0f}s "
                f"(frontends must list {plan.model!r} on /v1/models, workers answer /health);"
                f" last log lines of {waiting.name} ({waiting.log}):\n{log_tail(waiting.log)}"
            )
        time.sleep(0.2)


# ---------------------------------------------------------------- status / down


def alive(proc: dict) -> bool:
    """Is a recorded process still the one the twin started? Reaps it if it was our child and
    compares kernel start times, so a recycled pid does not count."""
    return running(int(proc["pid"]), proc.get("started", ""))


def _health(proc: dict, model: str) -> str:
    if not alive(proc):
        return "dead"
    if proc["role"] == "frontend":
        return "ready" if _serves(proc["health_url"], model) else "not-ready"
    return "healthy" if answers_ok(proc["health_url"], 1.0) else "unhealthy"


def status(stack: str, state_dir: Path | None = None) -> dict | None:
    """The recorded state with a live `health` per process (dead|ready|not-ready|healthy|unhealthy), or None."""
    state = load_state(stack, state_dir)
    if state is None:
        return None
    for proc in state["processes"]:
        proc["health"] = _health(proc, state["model"])
    return state


def down(stack: str, state_dir: Path | None = None) -> None:
    """Stop every process of the stack's twin (dependents first); logs stay in the state dir."""
    state = load_state(stack, state_dir)
    if state is None:
        return
    _stop(state["processes"])
    state["processes"] = []
    state["stopped"] = True
    _save_state(stack, state_dir, state)


def install(echo=print) -> Path:
    """Create the twin's Dynamo venv and tokenizer if missing (for CI pre-install)."""
    python = twin_install.ensure_venv(echo)
    twin_install.ensure_tokenizer(python)
    return python


# ---------------------------------------------------------------- CLI


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("twin", help="run a stack locally with real Dynamo (mocker workers, no GPU)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="twin_action", required=True, metavar="ACTION")
    a = actions.add_parser("up", help="start the twin and wait until the model is served")
    a.add_argument("--stack", required=True, help="stack name (dev, multinode, ...)")
    a.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, as for `render` (repeatable)")
    a.add_argument("--port", type=int, help="frontend HTTP port (default: a free one)")
    a.add_argument("--kv-blocks", type=int, help="KV cache capacity of each simulated worker, in blocks")
    a.add_argument("--monitoring", action="store_true", help="also run Prometheus with the stack's PodMonitors and rules")
    a.set_defaults(func=_run_up)
    s = actions.add_parser("status", help="URL and processes with pid, endpoint and health")
    s.add_argument("--stack", required=True)
    s.add_argument("--json", action="store_true", help="print the state as JSON")
    s.set_defaults(func=_run_status)
    d = actions.add_parser("down", help="stop every process of the twin (logs are kept)")
    d.add_argument("--stack", required=True)
    d.set_defaults(func=_run_down)
    i = actions.add_parser("install", help="create the twin's Dynamo virtualenv now (CI pre-install)")
    i.set_defaults(func=_run_install)


def _err(message: str) -> int:
    print(f"twin: error: {message}", file=sys.stderr)
    return 1


def _run_up(args) -> int:
    try:
        state = up(args.stack, args.sets, port=args.port, kv_blocks=args.kv_blocks, monitoring=args.monitoring,
                   echo=lambda m: print(m, file=sys.stderr))
    except (TwinError, ServerError, twin_install.InstallError) as error:
        return _err(str(error))
    for component, flags in state["ignored_worker_args"].items():
        names = " ".join(f for f in flags if f.startswith("--"))
        print(f"twin: note: {component}: vLLM flags the mocker does not simulate: {names}", file=sys.stderr)
    workers = sum(1 for p in state["processes"] if p["role"] == "worker")
    print(f"twin {args.stack}: {state['model']} served at {state['url']} "
          f"({workers} worker(s), router {state['router_mode']}, up in {state['up_seconds']}s)")
    if state.get("prometheus_url"):
        print(f"prometheus: {state['prometheus_url']}")
    print(f"stop with: python -m dynctl twin down --stack {args.stack}")
    print(state["url"])
    return 0


def _run_status(args) -> int:
    state = status(args.stack)
    if state is None:
        return _err(f"no twin state for stack {args.stack!r}; start one with `python -m dynctl twin up --stack {args.stack}`")
    if args.json:
        print(json.dumps(state, indent=2))
    else:
        print(f"twin {args.stack}: {state['url']}  model {state['model']}  router {state['router_mode']}")
        for p in state["processes"]:
            print(f"  {p['role']:<10} {p['name']:<16} pid {p['pid']:<8} {p['health']:<10} {p['endpoint']}")
        if not state["processes"]:
            print("  (stopped)")
    alive = [p for p in state["processes"] if p["health"] != "dead"]
    return 0 if alive and all(p["health"] in ("ready", "healthy") for p in state["processes"]) else 3


def _run_down(args) -> int:
    down(args.stack)
    print(f"twin {args.stack}: stopped; logs in {run_dir(args.stack) / 'logs'}")
    return 0


def _run_install(args) -> int:
    try:
        python = install(echo=lambda m: print(m, file=sys.stderr))
    except twin_install.InstallError as error:
        return _err(str(error))
    print(f"twin: Dynamo ready in {python.parent.parent}")
    return 0
