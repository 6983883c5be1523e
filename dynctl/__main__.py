"""python -m dynctl <command> ...: one entry point; each command lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("render", "policy", "twin", "preflight", "smoke", "traffic", "health")


def build_parser() -> argparse.ArgumentParser:
    """The whole CLI: every command module that is present registers its subcommand."""
    parser = argparse.ArgumentParser(prog="python -m dynctl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"dynctl.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"dynctl.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
