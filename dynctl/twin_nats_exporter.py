"""Stand-in for the NATS chart's prometheus-nats-exporter sidecar, for the twin's Prometheus.

nats-server has no Prometheus endpoint; in the cluster an exporter sidecar turns its `/varz`
monitoring JSON into metrics, one `nats_varz_<field>` per numeric field. Debian ships no such
exporter, so the twin runs this one (stdlib only, 127.0.0.1 only):

    python twin_nats_exporter.py --varz http://127.0.0.1:8222/varz --port 7777
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def render(varz: dict) -> str:
    """Prometheus text format for every numeric top-level field of /varz."""
    server = str(varz.get("server_id", "")).replace('"', "")
    lines = []
    for field, value in sorted(varz.items()):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name = f"nats_varz_{field}"
        lines += [f"# TYPE {name} gauge", f'{name}{{server_id="{server}"}} {value}']
    return "\n".join(lines) + "\n"


def serve(varz_url: str, port: int) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            try:
                with urllib.request.urlopen(varz_url, timeout=5) as resp:
                    body = render(json.loads(resp.read())).encode()
            except OSError as error:
                self.send_error(503, f"nats-server monitoring unreachable: {error}")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # one line per scrape every 2 s is noise
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--varz", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve(args.varz, args.port)
