"""Shared fixtures: render a stack once per session (the real program through Pulumi's mocks)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dynctl.render import render_stack  # noqa: E402

_cache: dict = {}


def rendered(stack: str, *sets: str):
    """Render (stack, sets) once per session; tests must not mutate the result."""
    key = (stack, sets)
    if key not in _cache:
        _cache[key] = render_stack(stack, list(sets))
    return _cache[key]


@pytest.fixture(scope="session")
def dev():
    return rendered("dev")


@pytest.fixture(scope="session")
def multinode():
    return rendered("multinode")


def objects_of(result, kind: str) -> list[dict]:
    return [o for o in result.objects if o["kind"] == kind]


def one(result, kind: str) -> dict:
    found = objects_of(result, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]
