"""`r1ops`: the operator's CLI: render/validate, promote/bump/new-env, analyze, stack/demo, preflight."""

from __future__ import annotations

import argparse
import importlib
import sys

# Module name -> its subcommands are added by module.register(subparsers).
COMMAND_MODULES = [
    "r1ops.render",  # render / validate
    "r1ops.promote",  # promote / bump
    "r1ops.new_env",  # new-env
    "r1ops.analysis.cli",  # analyze (Argo Rollouts analysis dry run)
    "r1ops.stack",  # stack / demo
    "r1ops.preflight",  # preflight
]


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1ops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"r1ops {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"r1ops {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # `python -m r1ops.cli`: run the imported module's main, so that subcommands raising
    # r1ops.cli.CommandError are caught (this file is `__main__`, a different class otherwise).
    from r1ops.cli import main as _main

    sys.exit(_main())
