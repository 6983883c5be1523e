"""Kill a worker mid-traffic, with and without request migration, and count failed requests.

For each setting the stack's twin starts (real Dynamo frontend + mocker workers), streamed
traffic runs, and once a few requests have completed one worker gets SIGKILL, as a node or
pod failure would deliver. A request counts as failed when it gets an HTTP error or an error
inside its 200 stream (which is how Dynamo reports a dead worker mid-stream).

    .venv/bin/python benchmarks/worker_kill.py [--stack dev] [--runs 3] [--requests 100]
"""

from __future__ import annotations

import argparse
import asyncio

from common import kill_worker, row, twin_up

from dynctl.traffic import Target, make_prompts, run_workload

SETTINGS = (
    ("migration on (stack default)", []),
    ("migration off (frontend.migrationLimit=0)", ["frontend.migrationLimit=0"]),
)


async def traffic_with_kill(state: dict, args):
    """Run the workload; SIGKILL worker 0 once `kill_after` requests have completed."""
    done = 0
    killed: list[dict] = []

    def on_done(_result):
        nonlocal done
        done += 1
        if done == args.kill_after and not killed:
            killed.append(kill_worker(state))

    report = await run_workload(Target.parse(state["url"]), state["model"], make_prompts(args.requests),
                                args.concurrency, args.max_tokens, timeout=60, on_done=on_done)
    return report, killed[0] if killed else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stack", default="dev")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--kill-after", type=int, default=20, help="completed requests before the kill")
    args = ap.parse_args()

    print(f"stack {args.stack}: {args.requests} streamed requests x {args.max_tokens} tokens, concurrency "
          f"{args.concurrency}; worker 0 gets SIGKILL after {args.kill_after} completed; {args.runs} run(s) each\n")
    print(row("setting", "migration limit", "failed per run", "failed total", "errors seen"))
    print(row("---", "---", "---", "---", "---"))
    for label, sets in SETTINGS:
        failed, errors, limit = [], {}, None
        for _ in range(args.runs):
            with twin_up(args.stack, sets) as state:
                limit = state["migration_limit"]
                report, _killed = asyncio.run(traffic_with_kill(state, args))
            failed.append(report.failed)
            for err, n in report.errors.items():
                errors[err] = errors.get(err, 0) + n
        seen = "; ".join(f"{n} x {e[:100]}" for e, n in sorted(errors.items(), key=lambda kv: -kv[1])) or "-"
        print(row(label, limit, ", ".join(map(str, failed)), f"{sum(failed)} / {args.runs * args.requests}", seen))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
