"""KV-aware routing vs round-robin on the twin: how much of the prompt comes from cache.

Runs the stack's twin (real Dynamo frontend + mocker workers) with a small KV cache per
worker and the prefix workload (prompts sharing a few long prefixes), once under the stack's
router and once under round-robin, and prints the cached-token ratio of each
(usage.prompt_tokens_details.cached_tokens / prompt_tokens, summed) next to the theoretical
best: every request after the first of its prefix served its whole shared prefix from cache
(as an unbounded cache with perfect routing would).

    .venv/bin/python benchmarks/kv_routing.py [--stack dev] [--requests 200] [--kv-blocks 100]
"""

from __future__ import annotations

import argparse
import asyncio

from common import row, twin_up

from dynctl.render import load_config
from dynctl.traffic import Target, make_workload, run_workload, stream_chat


def measure(stack: str, sets: list[str], kv_blocks: int, workload, args):
    with twin_up(stack, sets, kv_blocks=kv_blocks) as state:
        prompts = [p for _, p in workload]
        report = asyncio.run(run_workload(Target.parse(state["url"]), state["model"], prompts, args.concurrency,
                                             args.max_tokens))
        return state, report


def words_for_tokens(stack: str, tokens: int) -> int:
    """How many prefix words make `tokens` prompt tokens with the twin's tokenizer.

    traffic's prefixes are English words, about one token each for real tokenizers; the
    twin's toy tokenizer splits them further, so measure it once with two prompt sizes."""
    with twin_up(stack) as state:
        target = Target.parse(state["url"])
        sizes = []
        for words in (0, 200):
            prompt = make_workload(1, 1, words, seed=1)[0][1] if words else make_workload(1)[0][1]
            r = asyncio.run(stream_chat(target, state["model"], prompt, 1))
            sizes.append(r.prompt_tokens)
    per_word = (sizes[1] - sizes[0]) / 200
    return max(1, round(tokens / per_word))


def theoretical_best(workload, reports) -> float:
    """Upper bound: each group's block-aligned shared prefix (the most any of its requests got
    from cache, in any run) is a hit for every request but the first of the group."""
    shared: dict[int, int] = {}
    for report in reports:
        for r in report.results:
            g = workload[r.index][0]
            shared[g] = max(shared.get(g, 0), r.cached_tokens)
    seen: set[int] = set()
    hits = 0
    for r in sorted(reports[0].results, key=lambda r: r.index):
        g = workload[r.index][0]
        if g in seen:
            hits += shared[g]
        seen.add(g)
    total = sum(r.prompt_tokens for r in reports[0].results)
    return hits / total if total else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stack", default="dev")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--prefix-pool", type=int, default=8)
    ap.add_argument("--prefix-tokens", type=int, default=1000, help="prefix length in the twin's tokens")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--kv-blocks", type=int, default=100, help="KV cache per worker, in blocks (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    stack_router = load_config(args.stack).frontend.router_mode
    words = words_for_tokens(args.stack, args.prefix_tokens)
    workload = make_workload(args.requests, args.prefix_pool, words, args.seed)
    runs = []
    for router in dict.fromkeys([stack_router, "round-robin"]):
        state, report = measure(args.stack, [f"frontend.routerMode={router}"], args.kv_blocks, workload, args)
        workers = sum(1 for p in state["processes"] if p["role"] == "worker")
        runs.append((router, workers, report))
    best = theoretical_best(workload, [r for _, _, r in runs])

    mean_prompt = runs[0][2].prompt_tokens / max(1, runs[0][2].succeeded)
    print(f"stack {args.stack}: {args.requests} requests, concurrency {args.concurrency}, {args.prefix_pool} shared "
          f"prefixes of ~{args.prefix_tokens} tokens (mean prompt {mean_prompt:.0f} tokens), "
          f"KV cache {args.kv_blocks} blocks per worker, {runs[0][1]} workers\n")
    print(row("router", "cached-token ratio", "cached / prompt tokens", "failed", "TTFT p50 ms"))
    print(row("---", "---", "---", "---", "---"))
    for router, _, rep in runs:
        label = f"{router} (stack)" if router == stack_router else router
        print(row(label, f"{rep.cached_token_ratio:.2f}", f"{rep.cached_tokens} / {rep.prompt_tokens}", rep.failed,
                  f"{rep.ttft_ms['p50']:.1f}"))
    print(row("theoretical best", f"{best:.2f}", "every request after its prefix's first hits", "", ""))
    return 1 if any(rep.failed for _, _, rep in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
