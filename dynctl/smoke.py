"""`dynctl smoke`: the lab's smoke test against a running frontend.

Three checks, one line each: /v1/models lists the model, the lab's chat completion answers
with content and usage, and a streamed request delivers text and ends with [DONE]. Any
failure gets a one-line diagnosis (refused, timeout, HTTP error, error inside the stream)
and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from dynctl.traffic import LAB_PROMPT, Target, describe_error, get_json, stream_chat

SMOKE_MAX_TOKENS = 64  # the lab's smoke request


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("smoke", help="check that the frontend lists the model and answers (plain and streamed)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="frontend base URL, e.g. http://127.0.0.1:8000")
    where.add_argument("--stack", help="take URL and model from this stack (its running twin, or its rendered outputs)")
    p.add_argument("--model", help="model to expect (default: the stack's model, or the first one listed)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds allowed per check (default 30)")
    p.set_defaults(func=run)


def resolve_target(stack: str) -> tuple[str, str | None, str]:
    """(url, model, where it came from) for a stack: its running twin first, else its render."""
    from dynctl import twin

    state = twin.load_state(stack)
    # The state file outlives its processes: is the frontend still the process the twin started?
    if state and any(twin.alive(p) for p in state.get("processes", []) if p.get("role") == "frontend"):
        return state["url"], state.get("model"), f"twin of stack {stack}"
    from dynctl.render import render_stack

    outputs = render_stack(stack, []).outputs
    url = outputs.get("frontendUrl")
    if not url or "<" in url:
        # e.g. http://<node-ip>:30200: only the cluster knows the address.
        raise RuntimeError(f"stack {stack!r} has no running twin and its frontendUrl is {url!r}; run smoke --url "
                           "with the real address (or `dynctl health --stack`, which goes through the API server)")
    return url, outputs.get("model"), f"outputs of stack {stack}"


def run(args) -> int:
    try:
        if args.stack:
            url, stack_model, source = resolve_target(args.stack)
            print(f"target: {url} ({source})")
        else:
            url, stack_model = args.url, None
        target = Target.parse(url)
    except Exception as e:  # config errors, missing stack, bad URL: all one line
        print(f"FAIL target: {e}")
        return 2
    return asyncio.run(smoke(target, args.model or stack_model, args.timeout))


async def smoke(target: Target, model: str | None, timeout: float) -> int:
    """Run the three checks in order; stop at the first failure (later ones would only repeat it)."""
    # 1. the model is listed
    t0 = time.perf_counter()
    try:
        data = await get_json(target, "/v1/models", timeout=timeout)
    except Exception as e:
        return _fail("models", describe_error(e, target))
    listed = [m.get("id") for m in data.get("data", [])]
    if not listed:
        return _fail("models", "frontend answers but lists no model (no worker registered yet?)")
    if model and model not in listed:
        return _fail("models", f"{model!r} not listed; the frontend serves {', '.join(listed)}")
    model = model or listed[0]
    _ok("models", f"{model} listed ({_ms(t0)})")

    # 2. the lab's chat completion, not streamed
    t0 = time.perf_counter()
    body = {"model": model, "messages": [{"role": "user", "content": LAB_PROMPT}],
            "max_tokens": SMOKE_MAX_TOKENS, "stream": False}
    try:
        answer = await get_json(target, "/v1/chat/completions", body=body, timeout=timeout)
    except Exception as e:
        return _fail("chat", describe_error(e, target))
    if "error" in answer:
        return _fail("chat", f"error in a 2xx answer: {answer['error']}")
    content = ((answer.get("choices") or [{}])[0].get("message") or {}).get("content")
    usage = answer.get("usage") or {}
    if not content:
        return _fail("chat", "answer has no content")
    if not usage.get("completion_tokens"):
        return _fail("chat", "answer has no usage.completion_tokens")
    _ok("chat", f"usage {usage.get('prompt_tokens')} prompt / {usage['completion_tokens']} completion tokens "
        f"({_ms(t0)}): {content[:60]!r}")

    # 3. the same question streamed
    r = await stream_chat(target, model, LAB_PROMPT, SMOKE_MAX_TOKENS, timeout=timeout)
    if not r.ok:
        return _fail("stream", _stream_diagnosis(r.error or "", target))
    _ok("stream", f"{r.output_tokens} tokens, TTFT {r.ttft * 1000:.1f} ms, total {r.latency * 1000:.1f} ms")
    print("smoke test passed")
    return 0


def _stream_diagnosis(error: str, target: Target) -> str:
    """stream_chat flattened the error to text; make a refused connection say what to check."""
    if error.startswith("ConnectionRefusedError"):
        return describe_error(ConnectionRefusedError(), target)
    return error


def _ms(t0: float) -> str:
    return f"{(time.perf_counter() - t0) * 1000:.0f} ms"


def _ok(check: str, detail: str) -> None:
    print(f"OK   {check:<7}{detail}")


def _fail(check: str, detail: str) -> int:
    print(f"FAIL {check:<7}{detail}")
    return 1
