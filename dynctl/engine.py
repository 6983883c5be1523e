"""Run the real Pulumi program in-process through the Pulumi SDK's mock engine.

No Pulumi CLI, no provider plugins, no cluster: `pulumi.runtime.set_mocks` stands in for the
engine, `run_in_stack` runs `__main__.py` exactly as the language host would, and every
resource registration is recorded with the inputs the provider (and the policy pack) would see.
Secrets stay wrapped as Pulumi secrets in the record; `redact()` replaces them for output.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import runpy
import secrets
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

ROOT = Path(__file__).resolve().parent.parent
REDACTED = "[secret]"
_SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"
_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"


class StackConfigError(ValueError):
    """The stack or its --set overrides cannot be read (before the program runs)."""


@dataclass
class Recorded:
    """One resource registration as the engine saw it."""

    type: str
    name: str
    inputs: dict
    urn: str
    custom: bool
    parent: str = ""


@dataclass
class Run:
    resources: list[Recorded] = field(default_factory=list)
    outputs: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    secret_values: list[str] = field(default_factory=list)
    """Plain values of every secret the run saw (so callers can prove none leaks)."""
    thread_loops: set = field(default_factory=set)
    """Event loops the SDK's mock monitor made in executor threads (closed when the run ends)."""


# ---------------------------------------------------------------- config

def project_name(root: Path = ROOT) -> str:
    """The project's name, as Pulumi.yaml declares it (config keys are prefixed with it)."""
    return yaml.safe_load((root / "Pulumi.yaml").read_text())["name"]


def stack_config(stack: str, sets: list[str] | tuple[str, ...] = (), root: Path = ROOT,
                 secret_keys: tuple[str, ...] = ()) -> tuple[dict, set[str]]:
    """Project defaults + Pulumi.<stack>.yaml + --set overrides -> ({key: value}, secret keys).

    `secret_keys` names the keys whose --set value is a secret (the program's stacks.config.SECRET_KEYS).

    Keys are bare (no project prefix); object keys hold nested dicts, like `pulumi config --path`.
    """
    project = yaml.safe_load((root / "Pulumi.yaml").read_text())
    prefix = f"{project['name']}:"
    values: dict[str, Any] = {}
    for key, decl in (project.get("config") or {}).items():
        if isinstance(decl, dict) and ("default" in decl or "value" in decl):
            values[key] = decl.get("value", decl.get("default"))
        elif not isinstance(decl, dict):
            values[key] = decl
    stack_file = root / f"Pulumi.{stack}.yaml"
    if not stack_file.exists():
        known = sorted(p.name[len("Pulumi."):-len(".yaml")] for p in root.glob("Pulumi.*.yaml"))
        raise StackConfigError(f"stack {stack!r} has no Pulumi.{stack}.yaml; known stacks: {', '.join(known)}")
    secret: set[str] = set()
    for key, value in ((yaml.safe_load(stack_file.read_text()) or {}).get("config") or {}).items():
        bare = key[len(prefix):] if key.startswith(prefix) else key
        if ":" in bare:
            continue  # provider config such as kubernetes:context
        if isinstance(value, dict) and set(value) == {"secure"}:
            # An encrypted value: only the Pulumi CLI can decrypt it. Render a placeholder secret.
            value = f"offline-placeholder-for-{bare}"
            secret.add(bare)
        values[bare] = value
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise StackConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. workers.replicas=3")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as exc:
            raise StackConfigError(f"--set {item!r}: value is not valid YAML ({exc.problem})") from None
        set_path(values, key, value)
        if key.split(".")[0] in secret_keys:
            secret.add(key.split(".")[0])
    return values, secret


def set_path(values: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = values
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _engine_value(value: Any) -> str:
    """The engine hands config to programs as strings; objects as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


# ---------------------------------------------------------------- the mock engine

def make_mocks(run: Run):
    import pulumi

    class RecordingMocks(pulumi.runtime.Mocks):
        def new_resource(self, args: pulumi.runtime.MockResourceArgs):
            state = dict(args.inputs)
            if args.typ == "random:index/randomPassword:RandomPassword":
                # Letters and digits only: safe wherever a real password of the stack may end up (nats.conf).
                alphabet = string.ascii_letters + string.digits
                value = "".join(secrets.choice(alphabet) for _ in range(int(unwrap(args.inputs.get("length", 24)))))
                run.secret_values.append(value)
                state["result"] = {_SECRET_SIG_KEY: _SECRET_SIG, "value": value}
            return f"{args.name}-id", state

        def call(self, args: pulumi.runtime.MockCallArgs):
            return {}, None

    return RecordingMocks()


def make_monitor(mocks, run: Run):
    from pulumi.runtime import rpc
    from pulumi.runtime.mocks import MockMonitor

    class RecordingMonitor(MockMonitor):
        def RegisterResource(self, request):
            response = super().RegisterResource(request)
            # The SDK gives each executor thread its own loop and never closes it: remember it.
            run.thread_loops.add(_current_loop())
            if request.type != "pulumi:pulumi:Stack":
                run.resources.append(Recorded(
                    type=request.type,
                    name=request.name,
                    inputs=whole_numbers(rpc.deserialize_properties(request.object)),
                    urn=response.urn,
                    custom=request.custom,
                    parent=request.parent,
                ))
            return response

        def RegisterResourceOutputs(self, request):
            if "::pulumi:pulumi:Stack::" in request.urn:
                run.outputs = rpc.deserialize_properties(request.outputs)
            return super().RegisterResourceOutputs(request)

    return RecordingMonitor(mocks)


def whole_numbers(value: Any) -> Any:
    """Protobuf carries every number as a double; give integers back their type (replicas: 2, not 2.0)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole_numbers(v) for v in value]
    return value


class _Collect(logging.Handler):
    def __init__(self, run: Run):
        super().__init__(logging.WARNING)
        self.run = run

    def emit(self, record: logging.LogRecord) -> None:
        self.run.warnings.append(record.getMessage())


def run_program(stack: str, config: dict, secret_keys: set[str], root: Path = ROOT, preview: bool = False) -> Run:
    """Run `__main__.py` of the project at `root` with this config; record what it registers."""
    run = Run()
    project = project_name(root)
    for key in secret_keys:
        if config.get(key):
            run.secret_values.append(str(config[key]))

    def go() -> None:
        import pulumi
        from pulumi.runtime.stack import run_in_stack
        from pulumi.runtime.sync_await import _sync_await

        logger = logging.getLogger(f"dynctl.engine.{id(run)}")
        logger.propagate = False
        logger.addHandler(_Collect(run))
        mocks = make_mocks(run)
        pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=preview, logger=logger,
                                 monitor=make_monitor(mocks, run))
        pulumi.runtime.set_all_config(
            {f"{project}:{k}": _engine_value(v) for k, v in config.items()},
            [f"{project}:{k}" for k in secret_keys],
        )
        # set_mocks made a root Stack for unit tests; the program gets its own, as under the CLI.
        pulumi.runtime.settings.ROOT.set(None)
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        _sync_await(run_in_stack(lambda: runpy.run_path(str(root / "__main__.py"), run_name="__main__")))

    # A fresh context and event loop per run: the SDK keeps its settings in context variables and
    # needs a current loop (which asyncio.run() elsewhere in the process leaves unset).
    loop = asyncio.new_event_loop()
    previous = _current_loop()
    asyncio.set_event_loop(loop)
    try:
        contextvars.Context().run(go)
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        for thread_loop in run.thread_loops - {None, previous}:
            thread_loop.close()
        # Leave the thread as we found it; where it had no loop, give it a fresh one, as
        # get_event_loop() would have (set_event_loop(None) would make later callers fail).
        asyncio.set_event_loop(previous if previous is not None else asyncio.new_event_loop())
        loop.close()
    return run


def _current_loop() -> Optional[asyncio.AbstractEventLoop]:
    """The thread's current loop without creating one (get_event_loop() would make a new, leaked loop)."""
    local = getattr(asyncio.get_event_loop_policy(), "_local", None)
    return getattr(local, "_loop", None)


# ---------------------------------------------------------------- secrets

def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(_SECRET_SIG_KEY) == _SECRET_SIG


def unwrap(value: Any) -> Any:
    """Plain value of a possibly secret-wrapped value (for code that must compute with it)."""
    return unwrap(value["value"]) if is_secret(value) else value


def redact(value: Any) -> Any:
    """Replace every secret-wrapped value with a marker; leaves everything else as is."""
    if is_secret(value):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def find_secret_values(value: Any, found: Optional[list] = None) -> list:
    found = [] if found is None else found
    if is_secret(value):
        inner = unwrap(value)
        found.extend(find_secret_values(inner) if isinstance(inner, (dict, list)) else [str(inner)])
    elif isinstance(value, dict):
        for v in value.values():
            find_secret_values(v, found)
    elif isinstance(value, list):
        for v in value:
            find_secret_values(v, found)
    return found
