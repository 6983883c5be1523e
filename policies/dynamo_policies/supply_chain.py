"""What runs and what it is given: pinned images from known registries, no literal tokens.

`latest` or an untagged image changes under a running graph on the next pull; an image from
an unknown registry is unreviewed code next to model weights and tokens. A token written as a
literal env value ends up in the stack state, in `kubectl get -o yaml` and in every rendered
manifest, where anyone who can read the namespace (or the Git repo) can copy it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

from . import settings as cfg
from .shapes import (
    all_containers,
    as_list,
    as_map,
    describe,
    graph_components,
    is_graph,
    kubernetes_kind,
    parse_image,
)

# A release-like tag: starts with a version number (`1.6.1`, `v3.5.17`, `2.14.2-alpine`,
# `3.5.17-debian-12-r0`). Branch-like tags (`latest`, `main`, `nightly`) move.
_RELEASE_TAG = re.compile(r"^v?\d+(\.\d+)+([-+_.][0-9A-Za-z][0-9A-Za-z.+_-]*)?$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def _under(repository: str, prefix: str) -> bool:
    """`repository` is the prefix itself or lies below it (whole path segments only)."""
    prefix = prefix.rstrip("/")
    return repository == prefix or repository.startswith(prefix + "/")


def image_problem(image: str, allowed_prefixes: list[str]) -> str | None:
    """Why an image reference is not acceptable, or None when it is."""
    ref = parse_image(image)
    if not any(_under(ref.repository, p) for p in allowed_prefixes):
        return (f"image {image!r} ({ref.repository}) is not from an allowed registry; allowed "
                f"prefixes: {', '.join(allowed_prefixes)} (allowedImagePrefixes in the policy config)")
    if ref.digest:
        if _DIGEST.match(ref.digest):
            return None
        return f"image {image!r} has a malformed digest; use @sha256:<64 hex>"
    if not ref.tag:
        return f"image {image!r} has no tag, so it pulls `latest`; pin a release tag or a digest"
    if not _RELEASE_TAG.match(ref.tag):
        return (f"image {image!r} uses tag {ref.tag!r}, which moves; pin a release tag "
                "(e.g. 1.6.1) or a digest")
    return None


def images_pinned_and_allowed(args: ResourceValidationArgs, report: ReportViolation) -> None:
    allowed = list(cfg.settings(args, "images-pinned-and-allowed")["allowedImagePrefixes"])
    subject = describe(args.resource_type, args.props, args.name)
    for where, container in all_containers(args.resource_type, args.props):
        image = container.get("image")
        if not image:
            continue
        problem = image_problem(str(image), allowed)
        if problem:
            place = f" component {where}" if where else ""
            report(f"{subject}{place} container {container.get('name') or 'main'}: {problem}.", None)


# Name parts that mark an env var as a credential: HF_TOKEN, HUGGING_FACE_HUB_TOKEN,
# NGC_API_KEY, DB_PASSWORD... Split on `_` so DYN_MAX_TOKENS or KV_CACHE_KEYS do not match.
_SECRET_WORDS = {"TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "APIKEY", "CREDENTIALS",
                 "CREDENTIAL"}
_SECRET_PAIRS = {("API", "KEY"), ("ACCESS", "KEY"), ("SECRET", "KEY"), ("PRIVATE", "KEY"),
                 ("AUTH", "KEY")}
# Hugging Face user tokens, whatever variable they are put in.
_HF_TOKEN_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")


def looks_like_secret_name(name: str) -> bool:
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", name.upper()) if p]
    if any(p in _SECRET_WORDS for p in parts):
        return True
    return any(pair in _SECRET_PAIRS for pair in zip(parts, parts[1:]))


def _literal_secret_envs(env_list) -> list[str]:
    """Names of env entries that carry a credential as a literal `value`."""
    found = []
    for entry in as_list(env_list):
        entry = as_map(entry)
        name = str(entry.get("name", ""))
        if "value" not in entry:
            continue  # valueFrom (secretKeyRef) is the right way
        value = entry.get("value")
        if value in (None, ""):
            continue
        if looks_like_secret_name(name) or _HF_TOKEN_VALUE.search(str(value)):
            found.append(name)
    return found


def _env_lists(resource_type: str, props: Mapping) -> list[tuple[str, object]]:
    """(where, env list) for every env list a graph or workload declares."""
    lists: list[tuple[str, object]] = []
    if is_graph(resource_type):
        spec = as_map(props.get("spec"))
        lists.append(("graph env", spec.get("env")))
        lists.append(("graph envs", spec.get("envs")))
        components = graph_components(resource_type, props)
        # v1alpha1 services also carry env at service level (`envs`).
        lists += [(f"component {c.name} envs", c.raw.get("envs")) for c in components if c.alpha]
        for c in components:
            for container in c.containers:
                lists.append((f"component {c.name} container {container.get('name', 'main')}",
                              container.get("env")))
        return lists
    for _, container in all_containers(resource_type, props):
        lists.append((f"container {container.get('name', '?')}", container.get("env")))
    return lists


def no_literal_tokens(args: ResourceValidationArgs, report: ReportViolation) -> None:
    subject = describe(args.resource_type, args.props, args.name)
    for where, env_list in _env_lists(args.resource_type, args.props):
        for name in _literal_secret_envs(env_list):
            report(f"{subject} {where}: env {name} holds a literal value; a token in plain text "
                   "lands in the state, the cluster and rendered manifests. Put it in a Secret "
                   "and use valueFrom.secretKeyRef (or envFrom.secretRef / envFromSecret).", None)
    if kubernetes_kind(args.resource_type) == ("core", "ConfigMap"):
        for key in as_map(args.props.get("data")):
            if looks_like_secret_name(key):
                report(f"{subject}: key {key} looks like a credential; ConfigMaps are not secret. "
                       "Store it in a Secret.", None)


POLICIES = [
    ResourceValidationPolicy(
        name="images-pinned-and-allowed",
        description="Images come from allowed registries and are pinned to a release tag or a "
                    "digest (never latest or untagged).",
        validate=images_pinned_and_allowed,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=cfg.schema("images-pinned-and-allowed"),
    ),
    ResourceValidationPolicy(
        name="no-literal-tokens",
        description="No Hugging Face or other token, password or key as a literal env value.",
        validate=no_literal_tokens,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
]
