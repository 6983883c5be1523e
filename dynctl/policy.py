"""`dynctl policy`: run the dynamo-guardrails policy pack offline, without the Pulumi CLI.

    python -m dynctl policy --stack dev [--set workers.replicas=3]
    python -m dynctl policy --manifests rendered/dev [--policy-config policies/config/dev.json]

`--stack` renders the stack in-process (dynctl.render, Pulumi mocks) and checks the resource
inputs the engine would send to the pack; `--manifests` checks any directory of Kubernetes
YAML (rendered output or a GitOps repo), mapping each object to the type token Pulumi would
give it. Both paths run the very policy objects the pack serves, with pulumi-policy's own
argument types, the config file semantics of `--policy-pack-config` and the same handling
of values unknown during preview. Exit status: 0 unless a mandatory policy is violated
(1); 2 for a bad invocation or policy config.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml
from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.deserialize import deserialize_properties
from pulumi_policy.proxy import UnknownValueError, unknown_checking_proxy

from policies.dynamo_policies import PACK_ENFORCEMENT_LEVEL, PACK_NAME, POLICIES
from policies.dynamo_policies.shapes import describe

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "policies" / "config"


class UsageError(ValueError):
    """What to check or how: a bad policy config, stack config, --set or directory (exit 2)."""


@dataclass(frozen=True)
class Subject:
    """One resource as a policy sees it: its Pulumi type token, name, URN and inputs."""

    type: str
    name: str
    urn: str
    props: dict

    @property
    def label(self) -> str:
        return describe(self.type, self.props, self.name)


@dataclass(frozen=True)
class Finding:
    """One reported violation (or a policy that could not run on unknown values)."""

    policy: str
    level: str
    resource: str
    message: str


# ---------------------------------------------------------------- policy config

def load_policy_config(path: Path | None) -> dict[str, Any]:
    """Read and check a `--policy-pack-config` file; {} for none."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read policy config {path}: {e}") from e
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object keyed by policy name")
    check_policy_config(data)
    return data


def check_policy_config(config: dict[str, Any], policies: list[Policy] = POLICIES) -> None:
    """Reject unknown policy names, unknown properties and wrong types.

    A misspelt `maxGpus` would otherwise fall back to the default and quietly loosen a guardrail.
    """
    by_name = {p.name: p for p in policies}
    levels = [level.value for level in EnforcementLevel]
    for name, value in config.items():
        if name != "all" and name not in by_name:
            raise UsageError(f"policy config names unknown policy {name!r}; "
                                    f"known: {', '.join(sorted(by_name))}")
        if isinstance(value, str):
            if value not in levels:
                raise UsageError(f"{name}: enforcement level {value!r} is not one of {levels}")
            continue
        if not isinstance(value, dict):
            raise UsageError(f"{name}: expected an enforcement level or an object")
        policy = by_name.get(name)
        schema_props = dict(policy.config_schema.properties) if policy and policy.config_schema else {}
        schema = {
            "type": "object",
            "properties": {**schema_props, "enforcementLevel": {"enum": levels}},
            "additionalProperties": False,
        }
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as e:
            raise UsageError(f"{name}: {e.message}") from e


def enforcement_level(policy: Policy, config: dict[str, Any]) -> EnforcementLevel:
    """The policy's level: its config entry, else `all`, else its own default, else the pack's."""
    entry = config.get(policy.name)
    if isinstance(entry, str):
        return EnforcementLevel(entry)
    if isinstance(entry, dict) and "enforcementLevel" in entry:
        return EnforcementLevel(entry["enforcementLevel"])
    every = config.get("all")
    if isinstance(every, dict):
        every = every.get("enforcementLevel")
    if isinstance(every, str):
        return EnforcementLevel(every)
    return policy.enforcement_level or PACK_ENFORCEMENT_LEVEL


def policy_properties(policy: Policy, config: dict[str, Any]) -> dict[str, Any]:
    """What `args.get_config()` returns for the policy: its config entry minus the level."""
    entry = config.get(policy.name)
    if not isinstance(entry, dict):
        return {}
    return {k: v for k, v in entry.items() if k != "enforcementLevel"}


# ---------------------------------------------------------------- running the policies

def _options() -> PolicyResourceOptions:
    return PolicyResourceOptions(protect=False, ignore_changes=[], delete_before_replace=None,
                                 aliases=[], custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
                                 additional_secret_outputs=[])


def _run_one(policy: Policy, args: Any, level: EnforcementLevel, default_resource: str,
             labels: dict[str, str], findings: list[Finding]) -> None:
    def report(message: str, urn: str | None = None) -> None:
        findings.append(Finding(policy.name, level.value, labels.get(urn or "", default_resource),
                                message))

    try:
        result = policy.validate(args, report)
        if inspect.isawaitable(result):
            raise TypeError(f"policy {policy.name} is async; the offline runner runs sync policies")
    except UnknownValueError as e:
        # What pulumi-policy does during preview: the policy is skipped with an advisory note.
        findings.append(Finding(policy.name, EnforcementLevel.ADVISORY.value, default_resource,
                                f"can't run during preview: {e.message}"))


def run_policies(subjects: Iterable[Subject], config: dict[str, Any] | None = None,
                 policies: list[Policy] = POLICIES) -> list[Finding]:
    """Run every enabled policy over the subjects, as the pack does on a preview."""
    config = config or {}
    subjects = list(subjects)
    labels = {s.urn: s.label for s in subjects}
    findings: list[Finding] = []
    for policy in policies:
        level = enforcement_level(policy, config)
        if level == EnforcementLevel.DISABLED:
            continue
        if level == EnforcementLevel.REMEDIATE:
            level = EnforcementLevel.MANDATORY  # as the pack reports remaining violations
        props_config = policy_properties(policy, config)
        if isinstance(policy, ResourceValidationPolicy):
            for s in subjects:
                args = ResourceValidationArgs(s.type, unknown_checking_proxy(s.props), s.urn, s.name,
                                              _options(), None, props_config)
                _run_one(policy, args, level, s.label, labels, findings)
        elif isinstance(policy, StackValidationPolicy):
            resources = [PolicyResource(s.type, unknown_checking_proxy(s.props), s.urn, s.name,
                                        _options(), None, None, [], {}) for s in subjects]
            _run_one(policy, StackValidationArgs(resources, props_config), level, "(stack)",
                     labels, findings)
    return findings


# ---------------------------------------------------------------- where resources come from

def type_token(obj: dict) -> str:
    """The Pulumi type token of a Kubernetes object: `kubernetes:<group>/<version>:<Kind>`."""
    api_version = str(obj.get("apiVersion", ""))
    group_version = api_version if "/" in api_version else f"core/{api_version}"
    return f"kubernetes:{group_version}:{obj.get('kind', '')}"


def subjects_from_objects(objects: Iterable[dict], origin: str = "manifests") -> list[Subject]:
    subjects = []
    for obj in objects:
        if not isinstance(obj, dict) or "kind" not in obj:
            continue
        token = type_token(obj)
        metadata = obj.get("metadata") or {}
        name = str(metadata.get("name", ""))
        namespace = metadata.get("namespace")
        qualified = f"{namespace}/{name}" if namespace else name
        urn = f"urn:pulumi:{origin}::{origin}::{token}::{qualified}"
        subjects.append(Subject(token, name, urn, obj))
    return subjects


def load_manifests(directory: Path) -> list[dict]:
    """Every YAML document under the directory (recursively), in path order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")
    objects: list[dict] = []
    for path in sorted([*directory.rglob("*.yaml"), *directory.rglob("*.yml")]):
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as e:
            raise UsageError(f"{path}: not valid YAML: {e}") from e
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind") == "List":
                objects.extend(i for i in doc.get("items") or [] if isinstance(i, dict))
            elif isinstance(doc, dict):
                objects.append(doc)
    return objects


def subjects_from_stack(stack: str, overrides: list[str]) -> list[Subject]:
    """Render the stack in-process and take the inputs of every resource it registers."""
    from dynctl.render import ConfigError, render_stack  # late: rendering pulls in the program

    try:
        return subjects_from_rendered(render_stack(stack, overrides))
    except ConfigError as e:
        raise UsageError(str(e)) from None


def subjects_from_rendered(result: Any) -> list[Subject]:
    """The resources of a `render_stack` result as the engine would send them to the pack.

    Inputs are recorded in Pulumi's wire format; secrets are unwrapped exactly as the pack's
    gRPC server does, unknown values stay as their sentinels for the unknown-checking proxy.
    """
    return [Subject(r.type, r.name, r.urn, deserialize_properties(dict(r.inputs or {})))
            for r in result.resources]


# ---------------------------------------------------------------- output and CLI

def format_table(findings: list[Finding]) -> str:
    if not findings:
        return "no violations"
    ordered = sorted(findings, key=lambda f: (f.level != "mandatory", f.policy, f.resource))
    headers = ("POLICY", "LEVEL", "RESOURCE", "MESSAGE")
    rows = [(f.policy, f.level, f.resource, f.message) for f in ordered]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(3)]
    lines = []
    for row in [headers, *rows]:
        lines.append("  ".join(row[i].ljust(widths[i]) for i in range(3)) + "  " + row[3])
    return "\n".join(lines)


def summary(findings: list[Finding]) -> str:
    mandatory = sum(f.level == "mandatory" for f in findings)
    return (f"{PACK_NAME}: {mandatory} mandatory, {len(findings) - mandatory} advisory "
            f"violation(s)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policy", help="run the policy pack offline over a stack or manifests",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--stack", help="stack to render in-process (dev, multinode)")
    source.add_argument("--manifests", type=Path, help="directory of Kubernetes YAML to check")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for --stack, as for `dynctl render` (repeatable)")
    p.add_argument("--policy-config", type=Path,
                   help="policy-pack config JSON (default for --stack: policies/config/<stack>.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config_path = args.policy_config
    if config_path is None and args.stack:
        default = CONFIG_DIR / f"{args.stack}.json"
        config_path = default if default.exists() else None
    try:
        config = load_policy_config(config_path)
        if args.stack:
            subjects = subjects_from_stack(args.stack, args.overrides)
        else:
            if args.overrides:
                raise UsageError("--set only applies to --stack")
            subjects = subjects_from_objects(load_manifests(args.manifests))
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    findings = run_policies(subjects, config)
    print(format_table(findings))
    print(summary(findings) + f" over {len(subjects)} resources"
          + (f" (policy config {config_path})" if config_path else " (policy defaults)"))
    return 1 if any(f.level == "mandatory" for f in findings) else 0
