"""The real etcd, NATS and Prometheus servers (and the ZMQ event broker) the twin runs on 127.0.0.1.

Authentication is always on: etcd gets its users through its own API (it stores only hashes), and
nats-server reads its credentials from environment variables referenced in its config file, so no
credential is ever written to disk by the twin.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dynctl.twin_process import LOOPBACK, answers_ok, free_port, http_get, http_post_json, log_tail, spawn, running

INSTALL_HINT = {
    "etcd": "sudo apt-get update && sudo apt-get install -y etcd-server",
    "nats-server": "sudo apt-get update && sudo apt-get install -y nats-server",
    "prometheus": "sudo apt-get update && sudo apt-get install -y prometheus",
}


class ServerError(RuntimeError):
    """A system server is missing or did not come up."""


# Debian installs nats-server in /usr/sbin, which is not on every user's PATH.
SYSTEM_DIRS = ("/usr/sbin", "/usr/bin")


def require_binary(name: str) -> str:
    path = shutil.which(name) or next((f"{d}/{name}" for d in SYSTEM_DIRS if os.access(f"{d}/{name}", os.X_OK)), None)
    if not path:
        raise ServerError(f"`{name}` is not installed; the twin needs it for this stack. Install it with:\n  {INSTALL_HINT[name]}")
    return path


@dataclass
class Server:
    role: str
    name: str
    pid: int
    started: str
    endpoint: str
    health_url: str
    log: str
    data_dir: str | None = None
    """Data kept outside the state dir (etcd's, in memory); removed on stop."""


def _wait(server: Server, what: str, timeout: float = 20.0, ready=None) -> None:
    """Until ready() (default: the server's health URL answers 200); fails fast if the server exits."""
    ready = ready or (lambda: answers_ok(server.health_url))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running(server.pid, server.started):
            raise ServerError(f"{what} exited during start-up; last log lines:\n{log_tail(server.log)}")
        if ready():
            return
        time.sleep(0.1)
    raise ServerError(f"{what} was not ready within {timeout:.0f}s; last log lines:\n{log_tail(server.log)}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def etcd_data_dir() -> Path:
    """Where etcd keeps its data: memory (tmpfs) when the machine has it.

    etcd 3.4 puts the plain password of `user add` into its raft log (3.5 hashes it first), so
    the data directory must not land on disk; it is removed again by `twin down`.
    """
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return Path(tempfile.mkdtemp(prefix="dynctl-twin-etcd-", dir=base))


def start_etcd(run_dir: Path, env: dict[str, str], started: list[Server]) -> Server:
    binary = require_binary("etcd")
    client, peer = free_port(), free_port()
    url, peer_url = f"http://{LOOPBACK}:{client}", f"http://{LOOPBACK}:{peer}"
    data = etcd_data_dir()
    argv = [
        binary, "--name", "twin", "--data-dir", str(data),
        "--listen-client-urls", url, "--advertise-client-urls", url,
        "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"twin={peer_url}", "--logger", "zap", "--log-outputs", "stderr",
        # etcd logs user names (which come from a Secret) when adding users (info) and on failed
        # logins (warn); errors are all the twin needs in its log.
        "--log-level", "error",
    ]
    log = run_dir / "logs" / "etcd.log"
    pid, t0 = spawn(argv, env, log, run_dir)
    server = Server("etcd", "etcd", pid, t0, url, f"{url}/health", str(log), data_dir=str(data))
    started.append(server)
    _wait(server, "etcd")
    return server


def enable_etcd_auth(server: Server, user: str, password: str, root_password: str) -> None:
    """Create the client user with read/write on every key, then switch authentication on."""
    api = server.endpoint + "/v3/auth"
    calls = [("user/add", {"name": "root", "password": root_password}),
             ("role/add", {"name": "root"}),
             ("user/grant", {"user": "root", "role": "root"})]
    if user != "root":
        everything = _b64(b"\0")  # key "\0" .. range_end "\0": the whole keyspace
        calls += [("user/add", {"name": user, "password": password}),
                  ("role/add", {"name": "dynamo"}),
                  ("role/grant", {"name": "dynamo", "perm": {"permType": "READWRITE", "key": everything, "range_end": everything}}),
                  ("user/grant", {"user": user, "role": "dynamo"})]
    elif password != root_password:
        raise ServerError("internal: root password mismatch")
    calls.append(("enable", {}))
    for path, body in calls:
        answer = http_post_json(f"{api}/{path}", json.dumps(body).encode())
        if answer is None or answer[0] != 200 or b'"error"' in answer[1]:
            detail = answer[1].decode(errors="replace")[:300] if answer else "no answer"
            raise ServerError(f"configuring etcd authentication failed at {path}: {detail}")


NATS_CONFIG = """# Written by dynctl twin. Credentials come from the server's environment, never this file.
listen: {host}:{port}
http: {host}:{monitor}
authorization {{
{auth}
}}
"""


def start_nats(run_dir: Path, env: dict[str, str], auth: dict[str, str], started: list[Server]) -> Server:
    """auth: {"token": ...} or {"user": ..., "password": ...}."""
    binary = require_binary("nats-server")
    port, monitor = free_port(), free_port()
    server_env = dict(env)
    lines = []
    for key, value in auth.items():
        var = f"TWIN_NATS_{key.upper()}"
        server_env[var] = value
        lines.append(f"  {key}: ${var}")
    conf = run_dir / "nats.conf"
    conf.write_text(NATS_CONFIG.format(host=LOOPBACK, port=port, monitor=monitor, auth="\n".join(lines)))
    log = run_dir / "logs" / "nats.log"
    pid, t0 = spawn([binary, "-c", str(conf)], server_env, log, run_dir)
    server = Server("nats", "nats", pid, t0, f"nats://{LOOPBACK}:{port}", f"http://{LOOPBACK}:{monitor}/healthz", str(log))
    started.append(server)
    _wait(server, "nats-server")
    return server


def start_prometheus(run_dir: Path, env: dict[str, str], config: Path, started: list[Server]) -> Server:
    binary = require_binary("prometheus")
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    argv = [
        binary, f"--config.file={config}", f"--web.listen-address={LOOPBACK}:{port}",
        f"--storage.tsdb.path={run_dir / 'prometheus-data'}",
    ]
    log = run_dir / "logs" / "prometheus.log"
    pid, t0 = spawn(argv, env, log, run_dir)
    server = Server("prometheus", "prometheus", pid, t0, url, f"{url}/-/ready", str(log))
    started.append(server)
    _wait(server, "prometheus", timeout=30)
    return server


def wait_scraped(prometheus: Server) -> None:
    """Until every target has been scraped successfully (Prometheus applies new targets after ~5 s).

    rate() ignores what a counter counted before its first scrape: traffic sent right after `up`
    must find every target scraped once already.
    """
    _wait(prometheus, "prometheus's first scrape of every target", timeout=30,
          ready=lambda: _all_scraped(prometheus.endpoint))


def _all_scraped(url: str) -> bool:
    answer = http_get(f"{url}/api/v1/targets?state=active")
    if not answer or answer[0] != 200:
        return False
    targets = json.loads(answer[1])["data"]["activeTargets"]
    return bool(targets) and all(t["health"] == "up" for t in targets)


def start_nats_exporter(run_dir: Path, env: dict[str, str], nats: Server, started: list[Server]) -> Server:
    """The exporter sidecar's stand-in (see twin_nats_exporter.py), polling nats-server's /varz."""
    port = free_port()
    varz = nats.health_url.rsplit("/", 1)[0] + "/varz"
    script = Path(__file__).with_name("twin_nats_exporter.py")
    log = run_dir / "logs" / "nats-exporter.log"
    pid, t0 = spawn([sys.executable, str(script), "--varz", varz, "--port", str(port)], env, log, run_dir)
    url = f"http://{LOOPBACK}:{port}"
    server = Server("nats", "nats-exporter", pid, t0, url, f"{url}/metrics", str(log))
    started.append(server)
    _wait(server, "the NATS exporter")
    return server


def start_zmq_broker(run_dir: Path, env: dict[str, str], python: Path, started: list[Server]) -> tuple[Server, str]:
    """The XSUB/XPUB proxy for Dynamo's ZMQ event plane (see twin_zmq_broker.py).

    Returns the server and the value for Dynamo's DYN_ZMQ_BROKER_URL.
    """
    xsub, xpub, health = free_port(), free_port(), free_port()
    script = Path(__file__).with_name("twin_zmq_broker.py")
    log = run_dir / "logs" / "zmq-broker.log"
    argv = [str(python), str(script), "--xsub-port", str(xsub), "--xpub-port", str(xpub), "--health-port", str(health)]
    pid, t0 = spawn(argv, env, log, run_dir)
    xpub_url = f"tcp://{LOOPBACK}:{xpub}"
    server = Server("zmq-broker", "zmq-broker", pid, t0, xpub_url, f"http://{LOOPBACK}:{health}/health", str(log))
    started.append(server)
    _wait(server, "the ZMQ event broker")
    return server, f"xsub=tcp://{LOOPBACK}:{xsub} , xpub={xpub_url}"
