"""`dynctl render`: the stack's Kubernetes objects as YAML, without a cluster or the Pulumi CLI.

The real `__main__.py` runs in-process under the SDK's mock engine (dynctl/engine.py) with the
stack's config; every Kubernetes resource it registers becomes one YAML file. Helm releases
become Flux HelmRelease + source objects so the folder works with GitOps tools as is.
Secrets never reach the output: Secret data is redacted and secret values are masked.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dynctl import engine, flux

MARKER = ".dynctl-render"
SECRET_TYPES = ("kubernetes:core/v1:Secret",)
REDACTED_ANNOTATION = "dynamo-distributed/redacted"
REDACTED_HEADER = (
    "# REDACTED: the values of this Secret are Pulumi secrets and are not written here.\n"
    "# Do not apply this file as is: create the Secret out of band (pulumi up, SOPS, Sealed or External Secrets).\n"
)


class ConfigError(ValueError):
    """Bad stack config or --set override; the message names the key and what is allowed."""


@dataclass
class Rendered:
    stack: str
    config: Any
    """The typed StackConfig (stacks.config.StackConfig)."""
    resources: list[engine.Recorded]
    """Every resource registration, inputs as the provider and the policy pack see them (secrets wrapped)."""
    objects: list[dict]
    """Every Kubernetes object as it would be applied; secrets redacted."""
    outputs: dict
    """Stack outputs, secrets redacted."""
    warnings: list[str]
    secret_values: list[str]
    """Plain secret values seen during the run: none of them may appear in any output."""
    seconds: float

    @property
    def total_gpus(self) -> int:
        return int(self.outputs.get("totalGpus", 0))


def load_config(stack: str, sets: list[str] | tuple[str, ...] = (), root: Path = engine.ROOT):
    """The stack's typed config (stacks.config.StackConfig) without running the program; ConfigError if bad."""
    return _read_config(stack, sets, root)[0]


def _read_config(stack: str, sets, root: Path):
    """(typed config, raw values, secret keys): the same validation the program runs, done first."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from stacks import config as stack_config

    try:
        values, secret_keys = engine.stack_config(stack, list(sets), root, stack_config.SECRET_KEYS)
        plain = {k: v for k, v in values.items() if k not in stack_config.SECRET_KEYS}
        return stack_config.parse(plain), values, secret_keys
    except (engine.StackConfigError, stack_config.ConfigError) as error:
        raise ConfigError(str(error)) from None


def render_stack(stack: str, sets: list[str] | tuple[str, ...] = (), root: Path = engine.ROOT) -> Rendered:
    """Run the program for `stack` with --set style overrides; raise ConfigError on bad config."""
    started = time.perf_counter()
    typed, values, secret_keys = _read_config(stack, sets, root)
    run = engine.run_program(stack, values, secret_keys, root)
    for rec in run.resources:
        run.secret_values.extend(engine.find_secret_values(rec.inputs))
    objects = kubernetes_objects(run.resources)
    return Rendered(
        stack=stack,
        config=typed,
        resources=run.resources,
        objects=objects,
        outputs=engine.redact(run.outputs),
        warnings=run.warnings,
        secret_values=sorted({s for s in run.secret_values if s}),
        seconds=time.perf_counter() - started,
    )


def kubernetes_objects(resources: list[engine.Recorded]) -> list[dict]:
    objects: list[dict] = []
    for rec in resources:
        if not rec.custom or not rec.type.startswith("kubernetes:"):
            continue
        if rec.type == flux.RELEASE_TYPE:
            objects.extend(flux.helm_release_objects(rec))
            continue
        inputs = redact_secret(rec.inputs) if rec.type in SECRET_TYPES else rec.inputs
        obj = {k: v for k, v in engine.redact(inputs).items() if not k.startswith("__")}
        obj.setdefault("metadata", {}).setdefault("name", rec.name)
        objects.append(_ordered(obj))
    return objects


def _ordered(obj: dict) -> dict:
    """apiVersion, kind, metadata first, as people write manifests."""
    head = ("apiVersion", "kind", "metadata")
    return {**{k: obj[k] for k in head if k in obj}, **{k: v for k, v in obj.items() if k not in head}}


def redact_secret(obj: dict) -> dict:
    """A Secret with every value replaced: keys stay so readers see what the Secret holds."""
    out = dict(obj)
    meta = dict(engine.unwrap(out.get("metadata")) or {})
    meta["annotations"] = {**(meta.get("annotations") or {}),
                           REDACTED_ANNOTATION: "values replaced by [secret]; provide this Secret out of band"}
    out["metadata"] = meta
    for field in ("data", "stringData"):
        values = engine.unwrap(out.get(field))
        if isinstance(values, dict):
            out[field] = {key: engine.REDACTED for key in values}
    return out


def object_path(obj: dict) -> Path:
    meta = obj.get("metadata", {})
    folder = meta.get("namespace") or "_cluster"
    return Path(folder) / f"{obj.get('kind', 'Object').lower()}-{meta.get('name')}.yaml"


def write(rendered: Rendered, out: Path) -> list[Path]:
    """Write one YAML per object under `out` (replacing an earlier render, never other files)."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise FileExistsError(f"{out} is not empty and was not written by dynctl render; choose another --out")
        shutil.rmtree(out)
    written = []
    for obj in rendered.objects:
        path = out / object_path(obj)
        path.parent.mkdir(parents=True, exist_ok=True)
        redacted = REDACTED_ANNOTATION in (obj.get("metadata", {}).get("annotations") or {})
        path.write_text((REDACTED_HEADER if redacted else "") + yaml.safe_dump(obj, sort_keys=False, width=120))
        written.append(path)
    (out / MARKER).write_text(f"rendered by dynctl render --stack {rendered.stack}\n")
    return written


def summary(rendered: Rendered) -> str:
    kinds: dict[str, int] = {}
    for obj in rendered.objects:
        kinds[obj.get("kind", "?")] = kinds.get(obj.get("kind", "?"), 0) + 1
    lines = [
        f"stack {rendered.stack}: {len(rendered.objects)} objects, {rendered.total_gpus} GPUs requested "
        f"(rendered in {rendered.seconds:.1f} s)",
        "  " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())),
    ]
    for key in ("graphName", "graphApiVersion", "namespace", "frontendUrl"):
        if key in rendered.outputs:
            lines.append(f"  {key}: {rendered.outputs[key]}")
    lines += [f"  warning: {w}" for w in rendered.warnings]
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="render a stack's Kubernetes objects offline (no cluster, no Pulumi CLI)")
    p.add_argument("--stack", required=True, help="stack name: dev or multinode (Pulumi.<stack>.yaml)")
    p.add_argument("--out", required=True, type=Path, help="folder to write one YAML per object into")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key with a dotted path, value parsed as YAML (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        rendered = render_stack(args.stack, args.sets)
        write(rendered, args.out)
    except (ConfigError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary(rendered))
    print(f"  wrote {len(rendered.objects)} files under {args.out}")
    return 0
