"""Start, probe and stop the twin's local server processes.

Each server is exec'd directly (no shell in between) in its own session, so the recorded pid is the
server itself: killing it kills that replica, and stopping its process group leaves nothing behind.
A pid is only trusted together with its kernel start time, so a recycled pid is never signalled.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port(below: int | None = None) -> int:
    """A port free on 127.0.0.1 right now. `below`: stay under that port number (Dynamo parses
    DYN_SYSTEM_PORT as a signed 16-bit integer, and the kernel's own picks are above 32767)."""
    if below is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            return s.getsockname()[1]
    for _ in range(200):
        port = random.randrange(20000, below)
        if not port_in_use(port):
            return port
    raise OSError(f"no free port found on {LOOPBACK} below {below}")


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


def start_time(pid: int) -> str | None:
    """Kernel start time of pid (clock ticks since boot), or None when it no longer runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # exited, waiting to be reaped
        return None
    return fields[19]


def spawn(argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> tuple[int, str]:
    """Start argv detached from our terminal; returns (pid, start time)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = None
    for _ in range(50):  # /proc entry appears immediately; the loop only guards against a slow fork
        started = start_time(proc.pid)
        if started:
            break
        time.sleep(0.01)
    return proc.pid, started or ""


def running(pid: int, started: str) -> bool:
    _reap(pid)
    return bool(started) and start_time(pid) == started


def _reap(pid: int) -> None:
    # When the twin was started from this Python process (tests, tools), exited servers are our
    # children and stay zombies until waited for.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the session leader's pid is its group id
    except ProcessLookupError:
        pass


def stop_all(procs: list[tuple[int, str]], grace: float = 10.0) -> None:
    """Stop several processes at once: SIGTERM every group, wait together, SIGKILL the rest."""
    ours = []
    for pid, started in procs:
        if running(pid, started):
            _signal_group(pid, signal.SIGTERM)
            ours.append((pid, started))
        elif start_time(pid) is None:
            ours.append((pid, started))  # leader gone; its group may still hold children
        # else: the pid now belongs to some other process: not ours to signal
    deadline = time.monotonic() + grace
    while any(running(pid, t) for pid, t in ours) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Children of a leader that was killed by hand keep the group alive; the kernel never hands
    # out a pid that is still a live group id, so these members are ours.
    leftovers = [pid for pid, _ in ours if _group_alive(pid)]
    for pid in leftovers:
        _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while leftovers and time.monotonic() < deadline:
        for pid in leftovers:
            _reap(pid)
        leftovers = [pid for pid in leftovers if _group_alive(pid)]
        time.sleep(0.05)
    for pid, _ in ours:
        _reap(pid)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # killpg(…, 0) also succeeds for zombies; only count members that still run.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def http_get(url: str, timeout: float = 2.0, headers: dict | None = None,
             data: bytes | None = None) -> tuple[int, bytes] | None:
    """(status, body) of a GET (or a POST when `data` is given), or None when nothing answers."""
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return None


def answers_ok(url: str, timeout: float = 2.0) -> bool:
    """True when a GET of url answers 200 (how every twin server reports healthy)."""
    answer = http_get(url, timeout)
    return bool(answer and answer[0] == 200)


def http_post_json(url: str, body: bytes, timeout: float = 5.0, headers: dict | None = None) -> tuple[int, bytes] | None:
    return http_get(url, timeout, {"Content-Type": "application/json", **(headers or {})}, data=body)


def log_tail(path: Path | str, lines: int = 25) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
