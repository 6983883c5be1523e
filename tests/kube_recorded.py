"""Recorded Kubernetes API responses served on 127.0.0.1, for preflight and health tests.

The responses are JSON files shaped like a real API server's (tests/fixtures/kube/); the
server also insists on the bearer token from the kubeconfig it writes, like a real one.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

FIXTURES = Path(__file__).parent / "fixtures" / "kube"
TOKEN = "recorded-test-token"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


class RecordedKubeAPI:
    """routes: path or path?query -> (status, body dict or text). Unknown paths get a Kubernetes 404 Status."""

    def __init__(self, routes: dict[str, tuple[int, object]]):
        self.routes = routes
        self.seen: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                api.seen.append(self.path)
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._send(401, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                            "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
                # A route may name its query (pod lists differ only by labelSelector).
                status, body = api.routes.get(unquote(self.path), api.routes.get(urlsplit(self.path).path, (404, None)))
                if body is None:
                    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                            "message": "the server could not find the requested resource", "code": 404}
                self._send(status, body)

            def _send(self, status, body):
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "RecordedKubeAPI":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def kubeconfig(self, directory: Path, token: str = TOKEN) -> Path:
        """A kubeconfig with two contexts; `lab` (current) points here with the right token."""
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "lab",
            "clusters": [{"name": "lab-cluster", "cluster": {"server": self.url}},
                         {"name": "elsewhere", "cluster": {"server": "http://127.0.0.1:9"}}],
            "users": [{"name": "lab-admin", "user": {"token": token}}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab-cluster", "user": "lab-admin"}},
                         {"name": "other", "context": {"cluster": "elsewhere", "user": "lab-admin"}}],
        }
        path = directory / "kubeconfig"
        path.write_text(yaml.safe_dump(cfg))
        return path
