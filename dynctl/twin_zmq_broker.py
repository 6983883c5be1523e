"""The twin's ZMQ event broker: an XSUB/XPUB proxy on 127.0.0.1 for Dynamo's ZMQ event plane.

Without a broker, Dynamo 1.6.1 binds each event publisher (KV events) to `tcp://0.0.0.0:0`,
which no setting moves to loopback. Given `DYN_ZMQ_BROKER_URL=xsub=<url> , xpub=<url>`,
publishers connect their PUB socket to this proxy's XSUB and subscribers their SUB socket to its
XPUB, so no Dynamo process listens for events at all. Runs with the twin venv's python (pyzmq
comes with ai-dynamo):

    python twin_zmq_broker.py --xsub-port 5551 --xpub-port 5552 --health-port 5553
"""

from __future__ import annotations

import argparse
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import zmq

LOOPBACK = "127.0.0.1"


def serve_health(port: int) -> None:
    """`GET /health` answers 200 while the proxy runs (for `twin status` and `dynctl health`)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path.split("?")[0] != "/health":
                self.send_error(404)
                return
            body = b'{"status": "ready"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # polled during start-up and by status: noise
            pass

    server = ThreadingHTTPServer((LOOPBACK, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--xsub-port", type=int, required=True, help="publishers connect here")
    parser.add_argument("--xpub-port", type=int, required=True, help="subscribers connect here")
    parser.add_argument("--health-port", type=int, required=True)
    args = parser.parse_args()
    context = zmq.Context()
    xsub = context.socket(zmq.XSUB)
    xsub.bind(f"tcp://{LOOPBACK}:{args.xsub_port}")
    xpub = context.socket(zmq.XPUB)
    xpub.bind(f"tcp://{LOOPBACK}:{args.xpub_port}")
    # Health only answers once both sockets are bound: the twin starts Dynamo after that.
    serve_health(args.health_port)
    print(f"zmq broker: publishers -> tcp://{LOOPBACK}:{args.xsub_port} (XSUB), "
          f"subscribers -> tcp://{LOOPBACK}:{args.xpub_port} (XPUB)", flush=True)
    zmq.proxy(xsub, xpub)  # forwards events one way and subscriptions the other, until killed


if __name__ == "__main__":
    main()
