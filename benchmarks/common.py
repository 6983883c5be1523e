"""Shared pieces of the benchmark scripts: a throwaway twin, /metrics scraping, markdown rows."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from dynctl import twin  # noqa: E402

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


@contextlib.contextmanager
def twin_up(stack: str = "dev", sets: list[str] | tuple[str, ...] = (), kv_blocks: int | None = None):
    """A twin in its own state dir (never the user's), stopped afterwards whatever happens."""
    with tempfile.TemporaryDirectory(prefix="dynctl-bench-") as home:
        state = twin.up(stack, list(sets), kv_blocks=kv_blocks, state_dir=Path(home), echo=lambda m: None)
        try:
            yield state
        finally:
            twin.down(stack, state_dir=Path(home))


def scrape(url: str) -> dict[str, float]:
    """Every sample on the frontend's /metrics, labels folded away (one model per twin)."""
    out: dict[str, float] = {}
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def server_mean_ms(before: dict, after: dict, histogram: str) -> float | None:
    """Mean of a Prometheus histogram over the interval between two scrapes, in ms."""
    n = after.get(f"{histogram}_count", 0) - before.get(f"{histogram}_count", 0)
    s = after.get(f"{histogram}_sum", 0) - before.get(f"{histogram}_sum", 0)
    return s / n * 1000 if n else None


def kill_worker(state: dict, index: int = 0) -> dict:
    """SIGKILL one worker of the twin, as a node or pod failure would."""
    import signal

    worker = [p for p in state["processes"] if p["role"] == "worker"][index]
    os.kill(worker["pid"], signal.SIGKILL)
    return worker


def row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"
