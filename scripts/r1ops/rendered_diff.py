"""What Argo CD will change: the unified diff of an overlay's rendered manifests before and after an edit."""

from __future__ import annotations

import difflib
import subprocess

from rich.console import Console
from rich.text import Text

from r1ops.cli import CommandError
from r1ops.release_state import Environment

_STYLES = {"+": "green", "-": "red", "@": "cyan"}


def render_valid(env: Environment, when: str) -> str:
    """The overlay's rendered YAML, or a CommandError naming what does not render or validate."""
    from r1ops.render import render_overlay, validate_rendered  # the stack's renderer: kubectl kustomize

    try:
        text = render_overlay(env.overlay)
    except (CommandError, subprocess.CalledProcessError, OSError, ValueError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        raise CommandError(f"{env.name} does not render {when}: {detail.strip().splitlines()[-1]}") from exc
    from r1ops.schemas import SchemaFetchError

    try:
        problems = validate_rendered(text)
    except SchemaFetchError as exc:  # no network on a fresh machine: say so, in one line
        raise CommandError(f"cannot validate {env.name}: {exc}") from exc
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CommandError(f"{env.name} does not validate {when}: {problems[0]}{more}")
    return text


def unified(before: str, after: str, name: str) -> str:
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=f"{name} (now)",
        tofile=f"{name} (after)",
        n=3,
    )
    return "".join(lines)


def print_diff(diff: str, console: Console) -> None:
    """Colored on a terminal; rich drops the styles when stdout is a pipe or a file."""
    for line in diff.splitlines():
        style = "bold" if line.startswith(("+++", "---")) else _STYLES.get(line[:1])
        console.print(Text(line, style=style or ""), soft_wrap=True)
