"""`dynctl traffic`: concurrent streamed chat completions with honest latency figures.

The HTTP client here is deliberately small and written on raw asyncio streams: each request
goes out in ONE write (request line, headers and body together). Clients that write headers
and body separately (aiohttp among them) meet Nagle's algorithm and delayed ACKs on the
server side and add 20-40 ms of TTFT that the server never saw (TWIN.md). One event loop
also keeps up with 64 concurrent streams on two cores where a thread per request would not.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import random
import socket
import ssl
import time
from dataclasses import asdict, dataclass, field
from typing import AsyncIterator
from urllib.parse import urlsplit

# The lab's smoke question; the default workload asks it 30 times, 3 at a time.
LAB_PROMPT = "Hello! How are you?"
DEFAULT_REQUESTS = 30
DEFAULT_CONCURRENCY = 3
DEFAULT_MAX_TOKENS = 100

# Ordinary English words: about one token each for real BPE tokenizers, so a prefix of
# T words is "about T tokens".
_WORDS = (
    "time year people way day man thing woman life child world school state family student "
    "group country problem hand part place case week company system program question work "
    "government number night point home water room mother area money story fact month lot "
    "right study book eye job word business issue side kind head house service friend father "
    "power hour game line end member law car city community name president team minute idea "
    "kid body information back parent face others level office door health person art war "
    "history party result change morning reason research girl guy moment air teacher force"
).split()


class StreamError(Exception):
    """An error the server reported inside an HTTP 200 event stream."""


class HttpStatusError(Exception):
    """The server answered with a non-2xx status."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


# ---------------------------------------------------------------- minimal HTTP/1.1 client


@dataclass(frozen=True)
class Target:
    """Where the OpenAI-compatible frontend listens."""

    scheme: str
    host: str
    port: int
    base_path: str

    @classmethod
    def parse(cls, url: str) -> "Target":
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        base = parts.path.rstrip("/")
        if base.endswith("/v1"):  # accept both http://h:8000 and http://h:8000/v1
            base = base[: -len("/v1")]
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, base)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.base_path}"


class Response:
    """Status, headers and a body that can be read incrementally (chunked or not)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int,
                 headers: dict[str, str]):
        self._reader = reader
        self._writer = writer
        self.status = status
        self.headers = headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive, with chunked transfer-encoding removed."""
        r = self._reader
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while True:
                size_line = await r.readline()
                if not size_line:
                    raise ConnectionError("connection closed in the middle of a chunked body")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    await r.readline()  # trailer end
                    return
                data = await r.readexactly(size)
                await r.readexactly(2)  # CRLF after each chunk
                yield data
        elif "content-length" in self.headers:
            remaining = int(self.headers["content-length"])
            while remaining > 0:
                data = await r.read(min(remaining, 65536))
                if not data:
                    raise ConnectionError("connection closed before the full body arrived")
                remaining -= len(data)
                yield data
        else:
            while data := await r.read(65536):
                yield data

    async def read(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    def close(self) -> None:
        self._writer.close()


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One context for every https request: loading the CA bundle takes ~20 ms of CPU, which
    would otherwise land inside each request's measured latency."""
    return ssl.create_default_context()


async def request(target: Target, method: str, path: str, body: dict | None = None,
                  headers: dict[str, str] | None = None) -> Response:
    """Send one request in a single write and return once the response headers are in."""
    ctx = _tls_context() if target.scheme == "https" else None
    reader, writer = await asyncio.open_connection(target.host, target.port, ssl=ctx)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = json.dumps(body).encode() if body is not None else b""
    lines = [f"{method} {target.base_path}{path} HTTP/1.1", f"Host: {target.host}:{target.port}",
             "Connection: close", "Accept: */*"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
    await writer.drain()
    status_line = await reader.readline()
    if not status_line:
        writer.close()
        raise ConnectionError("server closed the connection without answering")
    status = int(status_line.split()[1])
    resp_headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        k, _, v = line.decode("latin-1").partition(":")
        resp_headers[k.strip().lower()] = v.strip()
    return Response(reader, writer, status, resp_headers)


def error_message(body: bytes) -> str:
    """The human part of an OpenAI-style error body, or the raw body."""
    try:
        data = json.loads(body)
        err = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    except ValueError:
        return body.decode(errors="replace").strip()[:200] or "(empty body)"


async def get_json(target: Target, path: str, body: dict | None = None, timeout: float = 10.0):
    """GET (or POST when body is given) a JSON document; raise HttpStatusError on non-2xx."""
    async def go():
        resp = await request(target, "POST" if body is not None else "GET", path, body)
        try:
            raw = await resp.read()
        finally:
            resp.close()
        if not 200 <= resp.status < 300:
            raise HttpStatusError(resp.status, error_message(raw))
        return json.loads(raw)
    return await asyncio.wait_for(go(), timeout)


# ---------------------------------------------------------------- one streamed completion


@dataclass
class RequestResult:
    """What one streamed chat completion measured. Times in seconds."""

    index: int
    ok: bool = False
    error: str | None = None
    ttft: float | None = None
    itl: float | None = None
    latency: float | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    content: str = ""


async def stream_chat(target: Target, model: str, prompt: str, max_tokens: int, index: int = 0,
                      timeout: float = 120.0) -> RequestResult:
    """Run one streamed chat completion and time it like the frontend does.

    TTFT is taken at the first event that carries generated text, ITL is the mean gap between
    the first and the last token, as Dynamo's histograms do."""
    result = RequestResult(index)
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()  # reset right before connecting, below
    first = last = None
    chunks_with_text = 0
    usage = None
    done = False
    parts: list[str] = []

    async def run():
        nonlocal start, first, last, chunks_with_text, usage, done
        # The clock includes connecting: a user waits for that too (about 0.1 ms on loopback).
        start = time.perf_counter()
        resp = await request(target, "POST", "/v1/chat/completions", body)
        try:
            if resp.status != 200:
                raise HttpStatusError(resp.status, error_message(await resp.read()))
            buf = b""
            async for chunk in resp.chunks():
                now = time.perf_counter()
                # SSE allows CRLF line ends; normalise the whole buffer, a CRLF may straddle chunks.
                buf = (buf + chunk).replace(b"\r\n", b"\n")
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    event_type, data = _parse_sse(event)
                    if data is None:
                        continue
                    if data == "[DONE]":
                        done = True
                        continue
                    obj = json.loads(data)
                    if event_type == "error" or "error" in obj:
                        err = obj.get("error", obj)
                        msg = err.get("message", err) if isinstance(err, dict) else err
                        code = err.get("code") if isinstance(err, dict) else None
                        raise StreamError(f"{msg}" + (f" (code {code})" if code else ""))
                    for choice in obj.get("choices") or []:
                        delta = choice.get("delta") or {}
                        text = delta.get("content") or delta.get("reasoning_content") or ""
                        if text:
                            parts.append(text)
                            chunks_with_text += 1
                            if first is None:
                                first = now
                            last = now
                    if obj.get("usage"):
                        usage = obj["usage"]
        finally:
            resp.close()

    try:
        await asyncio.wait_for(run(), timeout)
        if not done:
            raise StreamError("stream ended without [DONE]")
        if first is None:
            raise StreamError("stream finished without any generated text")
    except asyncio.TimeoutError:
        result.error = f"timed out after {timeout:g} s"
    except StreamError as e:
        result.error = f"error inside the 200 stream: {e}"
    except HttpStatusError as e:
        result.error = str(e)
    except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
        result.error = f"{type(e).__name__}: {e}"
    end = time.perf_counter()
    result.latency = end - start
    result.content = "".join(parts)
    if usage:
        result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        result.output_tokens = int(usage.get("completion_tokens") or 0)
        details = usage.get("prompt_tokens_details") or {}
        result.cached_tokens = int(details.get("cached_tokens") or 0)
    else:
        result.output_tokens = chunks_with_text
    if first is not None:
        result.ttft = first - start
        if result.output_tokens > 1 and last is not None:
            result.itl = (last - first) / (result.output_tokens - 1)
    result.ok = result.error is None
    return result


def _parse_sse(event: bytes) -> tuple[str | None, str | None]:
    """(event type, data) of one server-sent event; comments give (None, None)."""
    event_type, data = None, []
    for line in event.decode().split("\n"):
        if line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif line.startswith("event:"):
            event_type = line[6:].strip()
    return event_type, ("\n".join(data) if data else None)


# ---------------------------------------------------------------- workload


def make_workload(n: int, prefix_pool: int = 0, prefix_tokens: int = 1000,
                  seed: int = 0) -> list[tuple[int | None, str]]:
    """(prefix group, prompt) per request: the lab's prompt, or with prefix_pool > 0 prompts
    that share one of that many long prefixes.

    Each request gets a distinct tail so that only the shared prefix can come from cache."""
    rng = random.Random(seed)
    if prefix_pool <= 0:
        return [(None, f"Request {i}. {LAB_PROMPT}") for i in range(n)]
    prefixes = [" ".join(rng.choice(_WORDS) for _ in range(prefix_tokens)) for _ in range(prefix_pool)]
    groups = [rng.randrange(prefix_pool) for _ in range(n)]
    return [(g, f"{prefixes[g]}\n\nRequest {i}. {LAB_PROMPT}") for i, g in enumerate(groups)]


def make_prompts(n: int, prefix_pool: int = 0, prefix_tokens: int = 1000, seed: int = 0) -> list[str]:
    return [p for _, p in make_workload(n, prefix_pool, prefix_tokens, seed)]


@dataclass
class Report:
    """Everything `traffic` measured: the JSON report plus per-request rows."""

    requests: int
    succeeded: int
    failed: int
    duration_s: float
    ttft_ms: dict
    itl_ms: dict
    latency_ms: dict
    requests_per_s: float
    output_tokens_per_s: float
    cached_token_ratio: float
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    errors: dict[str, int] = field(default_factory=dict)
    results: list[RequestResult] = field(default_factory=list)

    def to_json(self) -> dict:
        d = asdict(self)
        d["results"] = [{k: v for k, v in asdict(r).items() if k != "content"} for r in self.results]
        return d


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), numpy's default method."""
    s = sorted(values)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(values_s: list[float]) -> dict:
    """mean/p50/p90/p99 in milliseconds (None when nothing was measured)."""
    if not values_s:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    ms = [v * 1000 for v in values_s]
    return {"mean": sum(ms) / len(ms), "p50": percentile(ms, 50), "p90": percentile(ms, 90),
            "p99": percentile(ms, 99)}


def build_report(results: list[RequestResult], duration: float) -> Report:
    ok = [r for r in results if r.ok]
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            errors[r.error or "?"] = errors.get(r.error or "?", 0) + 1
    prompt = sum(r.prompt_tokens for r in ok)
    cached = sum(r.cached_tokens for r in ok)
    out = sum(r.output_tokens for r in ok)
    return Report(
        requests=len(results), succeeded=len(ok), failed=len(results) - len(ok),
        duration_s=duration,
        ttft_ms=summarize([r.ttft for r in ok if r.ttft is not None]),
        itl_ms=summarize([r.itl for r in ok if r.itl is not None]),
        latency_ms=summarize([r.latency for r in ok if r.latency is not None]),
        requests_per_s=len(ok) / duration if duration > 0 else 0.0,
        output_tokens_per_s=out / duration if duration > 0 else 0.0,
        cached_token_ratio=cached / prompt if prompt else 0.0,
        prompt_tokens=prompt, cached_tokens=cached, output_tokens=out,
        errors=errors, results=sorted(results, key=lambda r: r.index))


async def run_workload(target: Target, model: str, prompts: list[str], concurrency: int,
                       max_tokens: int, timeout: float = 120.0, on_done=None) -> Report:
    """Send every prompt with at most `concurrency` in flight; on_done(result) after each."""
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for i, p in enumerate(prompts):
        queue.put_nowait((i, p))
    results: list[RequestResult] = []

    async def worker():
        while True:
            try:
                i, p = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            r = await stream_chat(target, model, p, max_tokens, index=i, timeout=timeout)
            results.append(r)
            if on_done:
                on_done(r)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(prompts))))))
    return build_report(results, time.perf_counter() - t0)


async def first_model(target: Target, timeout: float = 10.0) -> str:
    """The first model the frontend lists (what a user means when giving no --model)."""
    data = await get_json(target, "/v1/models", timeout=timeout)
    models = [m["id"] for m in data.get("data", [])]
    if not models:
        raise RuntimeError(f"{target} lists no model yet (no worker registered)")
    return models[0]


# ---------------------------------------------------------------- CLI


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("traffic", help="send concurrent streamed chat completions and report TTFT/ITL/latency")
    p.add_argument("--url", required=True, help="frontend base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", help="model name (default: the first one /v1/models lists)")
    p.add_argument("--requests", metavar="N", type=int, default=DEFAULT_REQUESTS, help="number of requests (default 30)")
    p.add_argument("--concurrency", metavar="C", type=int, default=DEFAULT_CONCURRENCY,
                   help="requests in flight (default 3)")
    p.add_argument("--max-tokens", metavar="K", type=int, default=DEFAULT_MAX_TOKENS,
                   help="max_tokens per request (default 100)")
    p.add_argument("--prefix-pool", metavar="P", type=int, default=0,
                   help="prompts share P long prefixes (the workload where KV routing matters)")
    p.add_argument("--prefix-tokens", metavar="T", type=int, default=1000,
                   help="words per prefix, about one token each for real tokenizers (default 1000)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per request (default 120)")
    p.add_argument("--seed", type=int, default=0, help="seed for the prefix workload (default 0)")
    p.add_argument("--json", metavar="FILE", help="write the JSON report here")
    p.add_argument("--plot", metavar="FILE.png", help="write latency distributions as a PNG")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if args.requests < 1 or args.concurrency < 1 or args.max_tokens < 1:
        console.print("[red]--requests, --concurrency and --max-tokens must be >= 1[/red]")
        return 2
    try:
        target = Target.parse(args.url)
    except ValueError as e:
        console.print(f"[red]{e}[/red]", soft_wrap=True)
        return 2
    try:
        model = args.model or asyncio.run(first_model(target))
    except Exception as e:  # one line, whatever went wrong reaching the frontend
        console.print(f"[red]cannot list models at {target}: {describe_error(e, target)}[/red]", soft_wrap=True)
        return 1
    prompts = make_prompts(args.requests, args.prefix_pool, args.prefix_tokens, args.seed)

    with Progress(TextColumn("[bold]traffic"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("failed {task.fields[failed]}"), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task("requests", total=len(prompts), failed=0)
        failed = 0

        def on_done(r: RequestResult):
            nonlocal failed
            failed += 0 if r.ok else 1
            progress.update(task, advance=1, failed=failed)

        report = asyncio.run(run_workload(target, model, prompts, args.concurrency, args.max_tokens,
                                             args.timeout, on_done))

    print_summary(report, model, target, args.concurrency, Console())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_json(), f, indent=2)
    if args.plot:
        plot(report, args.plot)
    return 1 if report.failed else 0


def describe_error(e: BaseException, target: Target) -> str:
    """One line that says what is wrong and what to check."""
    if isinstance(e, ConnectionRefusedError):
        return f"connection refused at {target.host}:{target.port} (frontend not running, or wrong port?)"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve host {target.host!r}"
    if isinstance(e, asyncio.TimeoutError):
        return "timed out (frontend overloaded or not answering?)"
    if isinstance(e, HttpStatusError):
        return str(e)
    if isinstance(e, StreamError):
        return f"error inside the HTTP 200 stream: {e}"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def print_summary(report: Report, model: str, target: Target, concurrency: int, console) -> None:
    from rich.table import Table

    table = Table(title=f"{report.requests} requests to {model} at {target}, concurrency {concurrency}")
    table.add_column("metric")
    for col in ("mean", "p50", "p90", "p99"):
        table.add_column(col, justify="right")
    for name, stats in (("TTFT ms", report.ttft_ms), ("ITL ms", report.itl_ms),
                        ("latency ms", report.latency_ms)):
        table.add_row(name, *("-" if stats[c] is None else f"{stats[c]:.1f}" for c in ("mean", "p50", "p90", "p99")))
    console.print(table)
    console.print(
        f"succeeded {report.succeeded}, failed {report.failed} | {report.requests_per_s:.2f} req/s, "
        f"{report.output_tokens_per_s:.1f} output tok/s | cached prompt tokens "
        f"{report.cached_tokens}/{report.prompt_tokens} = {report.cached_token_ratio:.2f}")
    for err, n in report.errors.items():
        console.print(f"[red]{n} x {err}[/red]")


def plot(report: Report, path: str) -> None:
    """Histograms of TTFT, ITL and total latency of the successful requests."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    ok = [r for r in report.results if r.ok]
    series = (("TTFT (ms)", [r.ttft * 1000 for r in ok if r.ttft is not None]),
              ("ITL (ms)", [r.itl * 1000 for r in ok if r.itl is not None]),
              ("latency (ms)", [r.latency * 1000 for r in ok if r.latency is not None]))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (name, values) in zip(axes, series):
        if values:
            ax.hist(values, bins=min(30, max(5, len(values) // 2)), color="#76b900")
            ax.axvline(percentile(values, 50), color="black", linestyle="--", label="p50")
            ax.axvline(percentile(values, 99), color="red", linestyle=":", label="p99")
            ax.legend()
        ax.set_title(name)
        ax.set_ylabel("requests")
    fig.suptitle(f"{report.succeeded} ok / {report.failed} failed, {report.requests_per_s:.2f} req/s")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
