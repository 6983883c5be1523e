"""The local twin: real Dynamo frontend + mocker workers (and real etcd/NATS/Prometheus) from a rendered stack.

Every test that starts processes uses its own state dir and stops what it started in `finally`;
expectations come from the rendered graph, so the tests follow the stack config.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, objects_of, rendered
from dynctl import twin, twin_servers
from dynctl.twin_graph import plan_from_objects

# ---------------------------------------------------------------- helpers (independent of the twin's code)


def graph_component(objects: list[dict], component_type: str) -> dict:
    graph = next(o for o in objects if o["kind"] == "DynamoGraphDeployment")
    return next(c for c in graph["spec"]["components"] if c["type"] == component_type)


def main_container(component: dict) -> dict:
    return next(c for c in component["podTemplate"]["spec"]["containers"] if c["name"] == "main")


def rendered_model(result) -> str:
    args = main_container(graph_component(result.objects, "worker"))["args"]
    return args[args.index("--model") + 1]


def get_json(url: str, body: dict | None = None, headers: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def chat(state: dict, content: str, max_tokens: int = 4, **extra) -> tuple[int, dict]:
    body = {"model": state["model"], "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **extra}
    return get_json(state["url"] + "/v1/chat/completions", body)


def alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap if it is our child
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def process_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def listening_addresses(pid: int) -> set[str]:
    """host:port of every TCP socket the process listens on (from /proc, IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                if width == 8:
                    host = socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1])
                else:
                    words = bytes.fromhex(address)
                    host = socket.inet_ntop(socket.AF_INET6, b"".join(words[i:i + 4][::-1] for i in range(0, 16, 4)))
                found.add(f"{host}:{int(port, 16)}")
    return found


def descendants(pid: int) -> list[int]:
    """pid and every process below it (Dynamo and Prometheus may fork helpers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int(Path(entry, "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def twin_listening_hosts(state: dict) -> dict[str, set[str]]:
    """Every address the twin's processes (and their children) listen on, keyed by process name."""
    out = {}
    for proc in state["processes"]:
        addresses = set()
        for pid in descendants(proc["pid"]):
            with contextlib.suppress(OSError):  # a helper that exited meanwhile
                addresses |= listening_addresses(pid)
        out[proc["name"]] = addresses
    return out


def assert_loopback_only(state: dict) -> None:
    listening = twin_listening_hosts(state)
    assert all(listening.values()), listening  # every server was found listening: the check sees them
    elsewhere = {name: sorted(a for a in addrs if a.rsplit(":", 1)[0] != "127.0.0.1") for name, addrs in listening.items()}
    assert not any(elsewhere.values()), elsewhere


def by_role(state: dict, role: str) -> list[dict]:
    return [p for p in state["processes"] if p["role"] == role]


def wait_until(check, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def twin_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNCTL_TWIN_HOME", str(tmp_path))
    return tmp_path


@contextlib.contextmanager
def running(stack: str, home: Path, sets=(), **kwargs):
    started = time.perf_counter()
    try:
        state = twin.up(stack, list(sets), state_dir=home, echo=lambda _m: None, **kwargs)
        print(f"twin up {stack} {' '.join(sets)}: {time.perf_counter() - started:.2f}s")
        yield state
    finally:
        twin.down(stack, state_dir=home)


def cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DYNCTL_TWIN_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "dynctl", "twin", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)


# ---------------------------------------------------------------- dev stack


def test_dev_twin_serves_the_graph_and_down_leaves_nothing(twin_home, dev):
    frontend_env = {e["name"]: e.get("value") for e in main_container(graph_component(dev.objects, "frontend"))["env"]}
    replicas = graph_component(dev.objects, "worker")["replicas"]
    model = rendered_model(dev)
    with running("dev", twin_home) as state:
        workers, frontends = by_role(state, "worker"), by_role(state, "frontend")
        assert len(workers) == replicas and len(frontends) == graph_component(dev.objects, "frontend")["replicas"]
        assert state["model"] == model
        assert state["router_mode"] == frontend_env["DYN_ROUTER_MODE"]
        assert state["migration_limit"] == int(frontend_env["DYN_MIGRATION_LIMIT"])

        status, models = get_json(state["url"] + "/v1/models")
        assert status == 200 and model in [m["id"] for m in models["data"]]
        status, reply = chat(state, "hello twin", max_tokens=5)
        assert status == 200, reply
        assert reply["model"] == model and reply["usage"]["completion_tokens"] == 5
        assert reply["choices"][0]["message"]["content"].strip()  # the mocker's tokens decode to text

        # KV routing from the graph's env is in effect: a repeated long prompt lands where it is cached.
        prompt = "the quick brown fox jumps over the lazy dog " * 40
        first = chat(state, prompt)[1]["usage"]
        second = chat(state, prompt)[1]["usage"]
        assert first["prompt_tokens_details"]["cached_tokens"] == 0
        assert second["prompt_tokens_details"]["cached_tokens"] > 0

        # The CLI reports the same processes, all healthy.
        shown = cli("status", "--stack", "dev", "--json", home=twin_home)
        assert shown.returncode == 0, shown.stderr
        listed = json.loads(shown.stdout)
        assert [p["pid"] for p in listed["processes"]] == [p["pid"] for p in state["processes"]]
        assert {p["health"] for p in listed["processes"]} <= {"ready", "healthy"}
        assert all(urllib.parse.urlsplit(p["endpoint"]).hostname == "127.0.0.1" for p in listed["processes"])

        # Nothing listens beyond loopback, KV-event publishers included: the ZMQ event plane runs
        # through the twin's broker on 127.0.0.1 (without it Dynamo 1.6.1 binds them to 0.0.0.0).
        (broker,) = by_role(state, "zmq-broker")
        for proc in workers + frontends:
            assert process_env(proc["pid"])["DYN_ZMQ_BROKER_URL"].endswith(f"xpub={broker['endpoint']}")
        assert_loopback_only(state)

        # A second `up` of the same stack is refused while it runs.
        with pytest.raises(twin.TwinError, match="already running"):
            twin.up("dev", state_dir=twin_home, echo=lambda _m: None)

        # The recorded pid is the replica itself: killing it takes exactly that worker away.
        victim = workers[0]
        os.kill(victim["pid"], 9)
        assert wait_until(lambda: not alive(victim["pid"]))
        health = {p["name"]: p["health"] for p in twin.status("dev", twin_home)["processes"]}
        assert health[victim["name"]] == "dead"
        assert health[workers[1]["name"]] == "healthy" and health[frontends[0]["name"]] == "ready"

    pids = [p["pid"] for p in state["processes"]]
    assert not [pid for pid in pids if alive(pid)]
    assert twin.status("dev", twin_home)["processes"] == []
    assert all(Path(p["log"]).stat().st_size > 0 for p in state["processes"])  # logs are kept


def test_twin_follows_stack_overrides_and_kv_blocks(twin_home):
    sets = ["frontend.routerMode=round-robin", "frontend.migrationLimit=0", "workers.replicas=3", "model.name=acme/tiny-chat"]
    with running("dev", twin_home, sets, kv_blocks=64) as state:
        assert len(by_role(state, "worker")) == 3
        assert state["model"] == "acme/tiny-chat" and state["router_mode"] == "round-robin"
        assert state["migration_limit"] == 0
        # Round-robin sends the repeat to another worker, whose cache is cold.
        prompt = "a prompt long enough to fill several KV blocks " * 40
        chat(state, prompt)
        assert chat(state, prompt)[1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        with urllib.request.urlopen(state["url"] + "/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        capacity = [ln for ln in metrics.splitlines() if ln.startswith("dynamo_frontend_model_total_kv_blocks{")]
        assert capacity and all(ln.endswith(" 64") for ln in capacity)


def test_failed_start_reports_the_log_and_stops_everything(twin_home, dev):
    objects = copy.deepcopy(dev.objects)
    worker = main_container(graph_component(objects, "worker"))
    worker["args"] += ["--block-size", "not-a-number"]
    with pytest.raises(twin.TwinError, match="exited during start-up") as error:
        twin.up_from_objects("broken", objects, state_dir=twin_home, echo=lambda _m: None)
    assert "block" in str(error.value)  # the mocker's own complaint, from its log
    state = twin.load_state("broken", twin_home)
    assert state["processes"] and not [p for p in state["processes"] if alive(p["pid"])]


def test_port_in_use_is_refused(twin_home):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(twin.TwinError, match="already in use"):
            twin.up("dev", port=taken.getsockname()[1], state_dir=twin_home, echo=lambda _m: None)


def test_missing_server_binary_names_the_install_command(twin_home, monkeypatch, capsys):
    from dynctl.__main__ import main

    empty = twin_home / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(twin_servers, "SYSTEM_DIRS", ())
    code = main(["twin", "up", "--stack", "multinode", "--set", "workers.replicas=1", "--set", "frontend.replicas=1"])
    assert code != 0
    assert "apt-get install -y etcd-server" in capsys.readouterr().err
    assert twin.status("multinode", twin_home)["processes"] == []


def test_old_graph_worker_migration_flag_becomes_the_frontend_setting():
    old = rendered("dev", "dynamo.version=0.8.0")
    graph = objects_of(old, "DynamoGraphDeployment")[0]
    assert graph["apiVersion"].endswith("v1alpha1")
    args = graph["spec"]["services"]["VllmWorker"]["extraPodSpec"]["mainContainer"]["args"]
    plan = plan_from_objects(old.objects)
    assert plan.migration_limit == int(args[args.index("--migration-limit") + 1])
    assert "--migration-limit" in plan.frontend_args
    assert plan.workers[0].replicas == graph["spec"]["services"]["VllmWorker"]["replicas"]


# ---------------------------------------------------------------- multinode: etcd + NATS with auth


def etcd_call(endpoint: str, path: str, body: dict, token: str | None = None) -> dict:
    return get_json(f"{endpoint}/v3/{path}", body, headers={"Authorization": token} if token else None)[1]


def nats_handshake(endpoint: str, connect: dict) -> str:
    host, port = endpoint.split("://", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.recv(4096)  # INFO
        sock.sendall(b"CONNECT " + json.dumps({"verbose": False, **connect}).encode() + b"\r\nPING\r\n")
        return sock.recv(4096).decode()


def test_multinode_twin_runs_over_nats_and_etcd_with_auth(twin_home, multinode):
    env = {e["name"]: e for e in main_container(graph_component(multinode.objects, "worker"))["env"]}
    assert "secretKeyRef" in env["ETCD_AUTH_PASSWORD"]["valueFrom"]  # the graph reads credentials from Secrets
    sets = ["workers.replicas=2", "frontend.replicas=1"]
    with running("multinode", twin_home, sets) as state:
        (etcd,), (nats,) = by_role(state, "etcd"), by_role(state, "nats")
        worker_env = process_env(by_role(state, "worker")[0]["pid"])
        assert worker_env["ETCD_ENDPOINTS"] == etcd["endpoint"]
        assert worker_env["NATS_SERVER"] == nats["endpoint"]

        # etcd: anonymous and wrong-password access refused; the pods' credential works and sees Dynamo's keys.
        key = base64.b64encode(b"v1/").decode()
        anonymous = etcd_call(etcd["endpoint"], "kv/range", {"key": key, "range_end": base64.b64encode(b"v10").decode()})
        assert "user name is empty" in anonymous.get("error", "")
        wrong = etcd_call(etcd["endpoint"], "auth/authenticate", {"name": worker_env["ETCD_AUTH_USERNAME"], "password": "guess"})
        assert "authentication failed" in wrong.get("error", "")
        token = etcd_call(etcd["endpoint"], "auth/authenticate",
                          {"name": worker_env["ETCD_AUTH_USERNAME"], "password": worker_env["ETCD_AUTH_PASSWORD"]})["token"]
        keys = etcd_call(etcd["endpoint"], "kv/range", {"key": key, "range_end": base64.b64encode(b"v10").decode(),
                                                         "keys_only": True}, token)
        assert int(keys.get("count", 0)) > 0

        # NATS: anonymous clients are refused, the pods' credential is accepted.
        assert "Authorization Violation" in nats_handshake(nats["endpoint"], {})
        assert "PONG" in nats_handshake(nats["endpoint"], {"user": worker_env["NATS_AUTH_USERNAME"],
                                                           "pass": worker_env["NATS_AUTH_PASSWORD"]})

        status, reply = chat(state, "hello over nats", max_tokens=3)
        assert status == 200 and reply["usage"]["completion_tokens"] == 3

        # With NATS carrying events and requests, every server listens on loopback only (and no
        # ZMQ broker runs: events go through NATS).
        assert not by_role(state, "zmq-broker")
        assert_loopback_only(state)

        # No credential the pods get is written anywhere in the twin's state, configs or logs.
        secrets = [worker_env[k] for k in ("ETCD_AUTH_USERNAME", "ETCD_AUTH_PASSWORD", "NATS_AUTH_USERNAME", "NATS_AUTH_PASSWORD")]
        for path in twin_home.rglob("*"):
            if path.is_file():
                text = path.read_bytes()
                assert not [s for s in secrets if s.encode() in text], f"credential written to {path}"
    assert not [p for p in state["processes"] if alive(p["pid"])]
    assert not Path(etcd["data_dir"]).exists()


# ---------------------------------------------------------------- monitoring


def prometheus_query(prometheus: str, query: str) -> list:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    status, answer = get_json(url)
    assert status == 200 and answer["status"] == "success", (query, answer)
    return answer["data"]["result"]


@pytest.mark.parametrize("stack, sets", [("dev", ()), ("multinode", ("workers.replicas=2", "frontend.replicas=1"))],
                         ids=["dev", "multinode"])
def test_monitoring_twin_fills_every_dashboard_query(twin_home, stack, sets):
    from dynctl.twin_monitoring import dashboard_queries, dashboards

    result = rendered(stack, *sets)
    (board,) = dashboards(result.objects)  # the ConfigMap Grafana's sidecar would load
    # Grafana fills $__rate_interval; a plain Prometheus needs a window with a few 2 s scrapes in it.
    queries = [(title, expr.replace("$__rate_interval", "1m")) for title, expr in dashboard_queries(board)]
    rule = objects_of(result, "PrometheusRule")[0]
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    with running(stack, twin_home, sets, monitoring=True) as state:
        prometheus = state["prometheus_url"]
        assert prometheus.startswith("http://127.0.0.1:")
        # Traffic as users send it, in two rounds a scrape apart (rate() needs a counter to move
        # between scrapes): streamed and unary requests, and some the frontend rejects.
        body = {"model": state["model"], "messages": [{"role": "user", "content": "stream"}], "max_tokens": 6, "stream": True}
        req = urllib.request.Request(state["url"] + "/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        for round_ in (1, 2):
            for i in range(12):
                status, _ = chat(state, f"question {i % 3}: " + "tell me about caches " * 30, max_tokens=6)
                assert status == 200
            for _ in range(3):
                assert chat(state, "bad", temperature=99)[0] == 400
                with urllib.request.urlopen(req, timeout=30) as resp:
                    assert b"[DONE]" in resp.read()
            errors = 'sum(dynamo_frontend_requests_total{status="error"})'
            assert wait_until(lambda: [float(r["value"][1]) for r in prometheus_query(prometheus, errors)] == [3.0 * round_])

        def empty() -> list[str]:
            return [f"{title}: {expr}" for title, expr in queries if not prometheus_query(prometheus, expr)]

        assert wait_until(lambda: not empty(), timeout=45), empty()

        targets = get_json(f"{prometheus}/api/v1/targets")[1]["data"]["activeTargets"]
        jobs = {f"{m['metadata']['namespace']}/{m['metadata']['name']}" for m in objects_of(result, "PodMonitor")}
        assert {t["labels"]["job"] for t in targets} == jobs and all(t["health"] == "up" for t in targets)
        def rules() -> dict[str, str]:
            groups = get_json(f"{prometheus}/api/v1/rules")[1]["data"]["groups"]
            return {r["name"]: r.get("state", "") for g in groups for r in g["rules"]}

        assert set(rules()) == alerts
        # One request in six was rejected: the stack's error-ratio alert goes pending on the twin.
        assert wait_until(lambda: rules()["DynamoHighErrorRatio"] in ("pending", "firing"), timeout=30), rules()
    assert not [p for p in state["processes"] if alive(p["pid"])]


def test_status_without_a_twin_says_how_to_start_one(twin_home):
    shown = cli("status", "--stack", "dev", home=twin_home)
    assert shown.returncode == 1
    assert "twin up --stack dev" in shown.stderr
    assert cli("down", "--stack", "dev", home=twin_home).returncode == 0  # nothing to stop is not an error
