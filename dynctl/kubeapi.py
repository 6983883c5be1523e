"""Just enough Kubernetes API access for `preflight` and `health`: kubeconfig + `requests`.

Reads a kubeconfig (token, token file, client certificate, basic auth; CA or insecure),
and GETs JSON or text. No client library: these commands only ever read a handful of lists.
Inline certificate data is written to a private temporary directory for `requests`, and
removed on close.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from pathlib import Path

import requests
import yaml


def add_cluster_arguments(parser) -> None:
    """The flags every cluster-facing command shares: --stack, --kubeconfig, --context, --set."""
    parser.add_argument("--stack", required=True, help="stack name (dev, multinode, ...)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: its current-context)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="config override as for render, e.g. workers.replicas=2 (repeatable)")


class KubeError(Exception):
    """The API could not be reached or refused us; the message says which and why."""


class KubeClient:
    """A read-only session against the API server of one kubeconfig context."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None, timeout: float = 15.0):
        path = Path(kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
                    or Path.home() / ".kube" / "config").expanduser()
        try:
            cfg = yaml.safe_load(path.read_text()) or {}
        except OSError as e:
            raise KubeError(f"cannot read kubeconfig {path}: {e.strerror}") from e
        self.context = context or cfg.get("current-context")
        if not self.context:
            raise KubeError(f"{path} has no current-context; pass --context")
        ctx = _named(cfg, "contexts", self.context, "context", path)
        cluster = _named(cfg, "clusters", ctx.get("cluster"), "cluster", path)
        user = _named(cfg, "users", ctx.get("user"), "user", path) if ctx.get("user") else {}
        self.namespace = ctx.get("namespace", "default")
        self.server = cluster["server"].rstrip("/")
        self.timeout = timeout
        self._tmp = tempfile.mkdtemp(prefix="dynctl-kube-")  # mode 0700: only we read the keys
        base = path.parent
        self.session = requests.Session()
        self.session.headers["Accept"] = "application/json"

        if cluster.get("insecure-skip-tls-verify"):
            self.session.verify = False
        elif cluster.get("certificate-authority-data"):
            self.session.verify = self._data_file("ca.crt", cluster["certificate-authority-data"])
        elif cluster.get("certificate-authority"):
            self.session.verify = str(base / cluster["certificate-authority"])

        if user.get("exec") or user.get("auth-provider"):
            raise KubeError(f"context {self.context!r} uses an exec/auth-provider credential plugin, which "
                            "dynctl does not run; use a context with a token or client certificate")
        if user.get("token"):
            self.session.headers["Authorization"] = f"Bearer {user['token']}"
        elif user.get("tokenFile"):
            self.session.headers["Authorization"] = f"Bearer {(base / user['tokenFile']).read_text().strip()}"
        elif user.get("username"):
            self.session.auth = (user["username"], user.get("password", ""))
        cert = (self._data_file("client.crt", user["client-certificate-data"]) if user.get("client-certificate-data")
                else str(base / user["client-certificate"]) if user.get("client-certificate") else None)
        key = (self._data_file("client.key", user["client-key-data"]) if user.get("client-key-data")
               else str(base / user["client-key"]) if user.get("client-key") else None)
        if cert and key:
            self.session.cert = (cert, key)

    def _data_file(self, name: str, b64: str) -> str:
        p = os.path.join(self._tmp, name)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(b64))
        return p

    def close(self) -> None:
        self.session.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "KubeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _get(self, path: str, params: dict | None) -> requests.Response:
        url = f"{self.server}{path}"
        try:
            resp = self.session.get(url, params=params, timeout=self.timeout)
        except requests.exceptions.SSLError as e:
            raise KubeError(f"TLS error talking to {self.server}: {e.__class__.__name__} "
                            "(wrong certificate-authority in the kubeconfig?)") from e
        except requests.exceptions.ConnectionError as e:
            raise KubeError(f"cannot reach the Kubernetes API at {self.server} (context {self.context!r})") from e
        except requests.exceptions.Timeout as e:
            raise KubeError(f"the Kubernetes API at {self.server} did not answer in {self.timeout:g} s") from e
        if resp.status_code in (401, 403):
            raise KubeError(f"GET {path}: HTTP {resp.status_code} {_status_message(resp)} "
                            f"(credentials of context {self.context!r} lack access?)")
        return resp

    def get(self, path: str, params: dict | None = None) -> dict:
        """GET a JSON object; 404 and other errors raise KubeError."""
        resp = self._get(path, params)
        if resp.status_code != 200:
            raise KubeError(f"GET {path}: HTTP {resp.status_code} {_status_message(resp)}")
        return resp.json()

    def get_optional(self, path: str, params: dict | None = None) -> dict | None:
        """Like get, but None when the object does not exist."""
        resp = self._get(path, params)
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise KubeError(f"GET {path}: HTTP {resp.status_code} {_status_message(resp)}")
        return resp.json()

    def proxy(self, path: str) -> tuple[int, str]:
        """GET through the API server's service/pod proxy: (status, body text)."""
        resp = self._get(path, None)
        return resp.status_code, resp.text


def _named(cfg: dict, section: str, name: str | None, field: str, path: Path) -> dict:
    for entry in cfg.get(section) or []:
        if entry.get("name") == name:
            return entry.get(field) or {}
    raise KubeError(f"{path}: no {field} named {name!r} in {section}")


def _status_message(resp: requests.Response) -> str:
    """The message of a Kubernetes Status object, or the start of the body."""
    try:
        return resp.json().get("message", "")
    except ValueError:
        return resp.text[:200]
