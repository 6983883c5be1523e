"""`dynctl smoke` and `dynctl traffic` against the twin: real Dynamo frontend and mocker workers.

Also the failure paths a user meets: nothing listening, a server that never answers, an error
inside an HTTP 200 stream, and a worker killed mid-run with and without request migration."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
from contextlib import contextmanager

import pytest

from dynctl import traffic, twin
from dynctl.__main__ import main as dynctl
from dynctl.twin_process import free_port

STREAM_ERROR_EVENT = (b'data: {"error":{"message":"Service temporarily unavailable","code":503,'
                      b'"type":"Service Unavailable"}}\n\n')


@contextmanager
def twin_home(path):
    old = os.environ.get("DYNCTL_TWIN_HOME")
    os.environ["DYNCTL_TWIN_HOME"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("DYNCTL_TWIN_HOME", None)
        else:
            os.environ["DYNCTL_TWIN_HOME"] = old


@pytest.fixture(scope="module")
def dev_twin(tmp_path_factory):
    """The dev stack's twin: KV routing, migration limit 3 (the stack's defaults), 2 workers."""
    with twin_home(tmp_path_factory.mktemp("twins")):
        state = twin.up("dev", echo=lambda m: None)
        try:
            yield state
        finally:
            twin.down("dev")


def test_smoke_passes_against_the_twin(dev_twin, capsys):
    assert dynctl(["smoke", "--stack", "dev"]) == 0
    out = capsys.readouterr().out
    assert f"target: {dev_twin['url']} (twin of stack dev)" in out
    assert f"OK   models {dev_twin['model']} listed" in out
    assert "OK   chat" in out and "OK   stream" in out
    assert out.rstrip().endswith("smoke test passed")


def test_lab_traffic_has_no_failures_and_reports_every_figure(dev_twin, tmp_path, capsys):
    report_file, plot_file = tmp_path / "report.json", tmp_path / "latency.png"
    code = dynctl(["traffic", "--url", dev_twin["url"], "--json", str(report_file), "--plot", str(plot_file)])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(report_file.read_text())
    assert (report["requests"], report["succeeded"], report["failed"]) == (30, 30, 0)  # the lab's workload
    for metric in ("ttft_ms", "itl_ms", "latency_ms"):
        stats = report[metric]
        assert set(stats) == {"mean", "p50", "p90", "p99"}
        assert 0 < stats["p50"] <= stats["p90"] <= stats["p99"]
    assert report["ttft_ms"]["p50"] < report["latency_ms"]["p50"]
    assert report["requests_per_s"] > 0 and report["output_tokens_per_s"] > 0
    assert 0 <= report["cached_token_ratio"] <= 1
    assert all(r["output_tokens"] == traffic.DEFAULT_MAX_TOKENS for r in report["results"])
    assert plot_file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "succeeded 30, failed 0" in out


def test_shared_prefixes_are_served_from_cache(dev_twin, tmp_path):
    report_file = tmp_path / "report.json"
    code = dynctl(["traffic", "--url", dev_twin["url"], "--requests", "12", "--concurrency", "2",
                   "--max-tokens", "4", "--prefix-pool", "2", "--prefix-tokens", "300", "--json", str(report_file)])
    report = json.loads(report_file.read_text())
    assert code == 0 and report["failed"] == 0
    # With two prefixes among twelve prompts most of each prompt is a repeat: KV routing finds it.
    assert report["cached_token_ratio"] > 0.3
    assert report["cached_token_ratio"] == report["cached_tokens"] / report["prompt_tokens"]


def test_wrong_model_is_diagnosed(dev_twin, capsys):
    assert dynctl(["smoke", "--url", dev_twin["url"], "--model", "no/such-model"]) == 1
    assert f"FAIL models 'no/such-model' not listed; the frontend serves {dev_twin['model']}" in capsys.readouterr().out


def test_refused_connection_is_diagnosed(capsys):
    port = free_port()
    assert dynctl(["smoke", "--url", f"http://127.0.0.1:{port}"]) == 1
    out = capsys.readouterr().out
    assert f"FAIL models connection refused at 127.0.0.1:{port} (frontend not running, or wrong port?)" in out


@contextmanager
def raw_server(respond):
    """A one-thread TCP server on 127.0.0.1 that hands each connection to respond(conn)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()
    conns = []

    def loop():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conns.append(conn)
            respond(conn)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join(timeout=5)
        for c in conns:
            c.close()
        srv.close()


def test_server_that_never_answers_times_out(capsys):
    with raw_server(lambda conn: None) as url:  # accepts, reads nothing, answers nothing
        assert dynctl(["smoke", "--url", url, "--timeout", "1"]) == 1
    assert "FAIL models timed out" in capsys.readouterr().out


def _recorded_frontend(conn):
    """Replays Dynamo's answers: models list, a chat answer, then a 200 stream that fails midway."""
    request = b""
    while b"\r\n\r\n" not in request:
        request += conn.recv(65536)
    head, _, body = request.partition(b"\r\n\r\n")
    length = int(next((l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")), 0))
    while len(body) < length:
        body += conn.recv(65536)
    if head.startswith(b"GET /v1/models"):
        payload = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(payload), payload))
    elif b'"stream": false' in body:
        payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                              "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(payload), payload))
    else:
        events = [b'data: {"choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n',
                  b'data: {"choices":[{"index":0,"delta":{"content":" hi"}}]}\n\n', STREAM_ERROR_EVENT]
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + chunked)
    conn.close()


def test_error_inside_a_200_stream_fails_smoke_and_counts_in_traffic(tmp_path, capsys):
    with raw_server(_recorded_frontend) as url:
        assert dynctl(["smoke", "--url", url]) == 1
        out = capsys.readouterr().out
        assert "OK   chat" in out
        assert "FAIL stream error inside the 200 stream: Service temporarily unavailable (code 503)" in out
        report_file = tmp_path / "r.json"
        assert dynctl(["traffic", "--url", url, "--requests", "4", "--concurrency", "2", "--json", str(report_file)]) == 1
    report = json.loads(report_file.read_text())
    assert (report["succeeded"], report["failed"]) == (0, 4)
    assert report["errors"] == {"error inside the 200 stream: Service temporarily unavailable (code 503)": 4}


def _traffic_killing_a_worker(state: dict) -> traffic.Report:
    """40 streamed requests, 8 at a time; SIGKILL the first worker once 8 have completed."""
    worker = next(p for p in state["processes"] if p["role"] == "worker")
    done = []

    def on_done(_):
        done.append(1)
        if len(done) == 8:
            os.kill(worker["pid"], signal.SIGKILL)

    prompts = traffic.make_prompts(40)
    return asyncio.run(traffic.run_workload(traffic.Target.parse(state["url"]), state["model"], prompts,
                                            concurrency=8, max_tokens=200, timeout=60, on_done=on_done))


def test_killed_worker_loses_nothing_with_migration(dev_twin):
    assert dev_twin["migration_limit"] > 0
    report = _traffic_killing_a_worker(dev_twin)
    assert (report.succeeded, report.failed) == (40, 0), report.errors


def test_killed_worker_fails_requests_without_migration(tmp_path):
    with twin_home(tmp_path):
        state = twin.up("dev", ["frontend.migrationLimit=0"], echo=lambda m: None)
        try:
            assert state["migration_limit"] == 0
            report = _traffic_killing_a_worker(state)
        finally:
            twin.down("dev")
    assert report.failed >= 1 and report.succeeded + report.failed == 40
    assert all("503" in err or "unavailable" in err.lower() for err in report.errors), report.errors


def test_stack_without_a_twin_needs_a_real_address(tmp_path, capsys):
    # The dev stack's output is http://<node-ip>:30200: smoke must not guess an address.
    with twin_home(tmp_path):
        assert dynctl(["smoke", "--stack", "dev"]) == 2
    out = capsys.readouterr().out
    assert "FAIL target: stack 'dev' has no running twin and its frontendUrl is 'http://<node-ip>:30200'" in out


def test_traffic_to_nothing_exits_non_zero(capsys):
    port = free_port()
    assert dynctl(["traffic", "--url", f"http://127.0.0.1:{port}", "--requests", "2"]) == 1
    assert f"connection refused at 127.0.0.1:{port}" in capsys.readouterr().err
