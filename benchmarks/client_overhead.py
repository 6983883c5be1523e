"""Is the client honest and fast enough? TTFT measured by `dynctl traffic` vs the frontend's own
histogram, at the lab's concurrency (3) and at 64, and the same against NVIDIA's aiperf.

The frontend's `dynamo_frontend_time_to_first_token_seconds` is scraped before and after each
run; its mean over the run is what the server saw. The client's mean TTFT minus that is time
the client added (or queueing the server does not measure). aiperf is optional: install it in
a separate virtualenv (`python -m venv /tmp/aiperf && /tmp/aiperf/bin/pip install aiperf`) and
pass --aiperf /tmp/aiperf/bin/aiperf. It gets the same twin, concurrency, request count,
prompt length and output length (ignore_eos so every request yields max tokens).

    .venv/bin/python benchmarks/client_overhead.py [--aiperf PATH] [--concurrency 3,64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import tempfile
from pathlib import Path

from common import row, scrape, server_mean_ms, twin_up

from dynctl import twin_install
from dynctl.traffic import Target, make_prompts, run_workload, stream_chat

TTFT = "dynamo_frontend_time_to_first_token_seconds"
DURATION = "dynamo_frontend_request_duration_seconds"


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def ours(state: dict, concurrency: int, requests: int, max_tokens: int) -> dict:
    target = Target.parse(state["url"])
    before, cpu0 = scrape(state["url"]), cpu_seconds()
    rep = asyncio.run(run_workload(target, state["model"], make_prompts(requests), concurrency, max_tokens))
    cpu, after = cpu_seconds() - cpu0, scrape(state["url"])
    return {"client": "dynctl traffic", "ttft": rep.ttft_ms["mean"], "ttft_p50": rep.ttft_ms["p50"],
            "server_ttft": server_mean_ms(before, after, TTFT), "latency": rep.latency_ms["mean"],
            "server_latency": server_mean_ms(before, after, DURATION), "rps": rep.requests_per_s,
            "tok_s": rep.output_tokens_per_s, "failed": rep.failed, "cpu": cpu, "duration": rep.duration_s}


def aiperf(exe: str, state: dict, concurrency: int, requests: int, max_tokens: int, isl: int) -> dict:
    tokenizer = twin_install.ensure_tokenizer(twin_install.venv_python())
    with tempfile.TemporaryDirectory(prefix="aiperf-") as out:
        before = scrape(state["url"])
        cmd = [exe, "profile", "--model", state["model"], "--url", state["url"], "--endpoint-type", "chat",
               "--streaming", "--concurrency", str(concurrency), "--request-count", str(requests),
               "--isl", str(isl), "--isl-stddev", "0", "--osl", str(max_tokens), "--extra-inputs", "ignore_eos:true",
               "--use-legacy-max-tokens", "--use-server-token-count", "--tokenizer", str(tokenizer),
               "--ui", "simple", "--artifact-dir", out]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        after = scrape(state["url"])
        if proc.returncode != 0:
            raise RuntimeError(f"aiperf failed ({proc.returncode}): {proc.stderr[-800:] or proc.stdout[-800:]}")
        d = json.loads((Path(out) / "profile_export_aiperf.json").read_text())
    return {"client": "aiperf", "ttft": d["time_to_first_token"]["avg"], "ttft_p50": d["time_to_first_token"]["p50"],
            "server_ttft": server_mean_ms(before, after, TTFT), "latency": d["request_latency"]["avg"],
            "server_latency": server_mean_ms(before, after, DURATION),
            "rps": d["request_throughput"]["avg"], "tok_s": d["output_token_throughput"]["avg"],
            "failed": int((d.get("error_request_count") or {}).get("avg", 0) or 0), "cpu": None,
            "duration": d["benchmark_duration"]["avg"] if isinstance(d.get("benchmark_duration"), dict) else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stack", default="dev")
    ap.add_argument("--concurrency", default="3,64", help="comma-separated (default 3,64)")
    ap.add_argument("--per-slot", type=int, default=5, help="requests per concurrency slot, at least 30 (default 5)")
    ap.add_argument("--max-tokens", type=int, default=100)
    ap.add_argument("--aiperf", help="path to an aiperf executable (separate venv) to compare with")
    args = ap.parse_args()

    results = []
    with twin_up(args.stack) as state:
        probe = asyncio.run(stream_chat(Target.parse(state["url"]), state["model"], make_prompts(1)[0], 4))
        isl = probe.prompt_tokens  # aiperf gets prompts as long as ours
        for c in (int(x) for x in args.concurrency.split(",")):
            n = max(30, c * args.per_slot)
            ours(state, c, min(n, 2 * c), args.max_tokens)  # warm-up: connections, caches, JIT paths
            results.append((c, n, ours(state, c, n, args.max_tokens)))
            if args.aiperf:
                results.append((c, n, aiperf(args.aiperf, state, c, n, args.max_tokens, isl)))

    print(f"stack {args.stack} twin, {args.max_tokens} output tokens per request, prompt {isl} tokens; "
          "server = the frontend's own histograms over the same run\n")
    print(row("concurrency", "requests", "client", "client TTFT mean ms", "server TTFT mean ms", "gap ms",
              "client latency ms", "server latency ms", "req/s", "output tok/s", "failed", "client CPU s"))
    print(row(*["---"] * 12))
    for c, n, r in results:
        gap = r["ttft"] - r["server_ttft"] if r["server_ttft"] is not None else None
        print(row(c, n, r["client"], f"{r['ttft']:.1f}", f"{r['server_ttft']:.1f}", f"{gap:+.1f}",
                  f"{r['latency']:.1f}", f"{r['server_latency']:.1f}", f"{r['rps']:.1f}", f"{r['tok_s']:.0f}",
                  r["failed"], "-" if r["cpu"] is None else f"{r['cpu']:.1f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
