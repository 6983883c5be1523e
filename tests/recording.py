"""Run one component under Pulumi's mocks and record every registration (for component tests).

Stack-level tests use the real program through dynctl.render; these tests build a single
component with chosen args, which is how the cases that no stack file sets get covered.
"""

from __future__ import annotations

import contextvars
import secrets
import string
from dataclasses import dataclass, field
from typing import Any, Callable

import pulumi

SECRET_SIG = "4dabf18193072939515e22adb298388d"
PASSWORD_TYPE = "random:index/randomPassword:RandomPassword"


@dataclass
class Registration:
    type: str
    name: str
    inputs: dict


@dataclass
class Recording:
    resources: list[Registration] = field(default_factory=list)
    passwords: list[str] = field(default_factory=list)
    """Every value the mocked RandomPassword generated."""
    built: Any = None
    """What the build function returned (the component)."""

    def of_type(self, type_token: str) -> list[Registration]:
        return [r for r in self.resources if r.type == type_token]

    def named(self, type_token: str, name: str) -> Registration:
        found = [r for r in self.of_type(type_token) if r.name == name]
        assert len(found) == 1, f"expected one {type_token} {name}, found {[r.name for r in self.of_type(type_token)]}"
        return found[0]


def unwrap(value: Any) -> Any:
    """A secret-wrapped value's plain value (the mocks keep Pulumi's secret marker)."""
    return value["value"] if isinstance(value, dict) and SECRET_SIG in value else value


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and SECRET_SIG in value


def whole(value: Any) -> Any:
    """Protobuf numbers are doubles: 7777.0 -> 7777 so tests compare with what a chart sees."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole(v) for v in value]
    return value


def record(build: Callable[[], Any]) -> Recording:
    """Run `build` (which creates resources) under fresh mocks; wait for every registration."""
    rec = Recording()

    class Mocks(pulumi.runtime.Mocks):
        def new_resource(self, args: pulumi.runtime.MockResourceArgs):
            state = dict(args.inputs)
            if args.typ == PASSWORD_TYPE:
                alphabet = string.ascii_letters + string.digits
                value = "".join(secrets.choice(alphabet) for _ in range(int(args.inputs.get("length", 16))))
                rec.passwords.append(value)
                state["result"] = value
            rec.resources.append(Registration(args.typ, args.name, whole(args.inputs)))
            return f"{args.name}-id", state

        def call(self, args: pulumi.runtime.MockCallArgs):
            return {}

    def go() -> None:
        pulumi.runtime.set_mocks(Mocks(), preview=False)

        @pulumi.runtime.test
        def run():
            rec.built = build()

        run()

    # The SDK keeps its settings in context variables: a fresh context per recording.
    contextvars.Context().run(go)
    return rec
