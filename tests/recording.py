"""Run one component under Pulumi's mocks and record every registration (for component tests).

Stack-level tests use the real program through dynctl.render; these tests build a single
component with chosen args, which is how the cases that no stack file sets get covered. Both
use the same recording mocks and monitor (dynctl.engine), so they see the same inputs.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any, Callable

import pulumi

from dynctl.engine import Recorded, Run, is_secret, make_mocks, make_monitor, unwrap  # noqa: F401 (re-exported)


@dataclass
class Recording:
    resources: list[Recorded] = field(default_factory=list)
    passwords: list[str] = field(default_factory=list)
    """Every value the mocked RandomPassword generated."""
    built: Any = None
    """What the build function returned (the component)."""

    def of_type(self, type_token: str) -> list[Recorded]:
        return [r for r in self.resources if r.type == type_token]

    def named(self, type_token: str, name: str) -> Recorded:
        found = [r for r in self.of_type(type_token) if r.name == name]
        assert len(found) == 1, f"expected one {type_token} {name}, found {[r.name for r in self.of_type(type_token)]}"
        return found[0]


def record(build: Callable[[], Any]) -> Recording:
    """Run `build` (which creates resources) under fresh mocks; wait for every registration."""
    rec, run = Recording(), Run()

    def go() -> None:
        mocks = make_mocks(run)
        pulumi.runtime.set_mocks(mocks, preview=False, monitor=make_monitor(mocks, run))

        @pulumi.runtime.test
        def build_all():
            rec.built = build()

        build_all()

    # The SDK keeps its settings in context variables: a fresh context per recording.
    contextvars.Context().run(go)
    # Registrations reach the monitor from the SDK's executor threads in no fixed order:
    # sort them by URN so every test sees the same order on every run.
    rec.resources = sorted(run.resources, key=lambda r: r.urn)
    rec.passwords = run.secret_values
    return rec
