"""What Argo CD will change: the unified diff of an overlay's rendered manifests before and after an edit."""

from __future__ import annotations

import difflib
import re
import subprocess

import yaml
from rich.console import Console
from rich.text import Text

from r1ops.cli import CommandError
from r1ops.release_state import Environment

_STYLES = {"+": "green", "-": "red", "@": "cyan"}
_HUNK = re.compile(r"^@@ -(\d+)")


def render_valid(env: Environment, when: str) -> str:
    """The overlay's rendered YAML, or a CommandError naming what does not render or validate."""
    # Imported here: the schema validation stack is heavy, and `r1ops --help` should stay fast.
    from r1ops.render import render_overlay, validate_rendered
    from r1ops.schemas import SchemaFetchError

    try:
        text = render_overlay(env.overlay)
    except (CommandError, subprocess.CalledProcessError, OSError, ValueError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        raise CommandError(f"{env.name} does not render {when}: {detail.strip().splitlines()[-1]}") from exc
    try:
        problems = validate_rendered(text)
    except SchemaFetchError as exc:  # no network on a fresh machine: say so, in one line
        raise CommandError(f"cannot validate {env.name}: {exc}") from exc
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CommandError(f"{env.name} does not validate {when}: {problems[0]}{more}")
    return text


def _object_labels(text: str) -> list[str]:
    """`Kind/name` of the object each line of a multi-document YAML stream belongs to."""
    labels: list[str] = []
    chunk: list[str] = []

    def close() -> None:
        obj = yaml.safe_load("".join(chunk)) if chunk else None
        label = ""
        if isinstance(obj, dict):
            label = f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"
        labels.extend([label] * len(chunk))
        chunk.clear()

    for line in text.splitlines(keepends=True):
        if line.rstrip() == "---":
            close()
            labels.append("")
        else:
            chunk.append(line)
    close()
    return labels


def unified(before: str, after: str, name: str) -> str:
    """A unified diff whose hunk headers name the object they change, like git's function context."""
    labels = _object_labels(before)
    out: list[str] = []
    header: int | None = None  # index in `out` of the hunk header still waiting for its label
    line_no = 0  # 0-based line of `before` the next context/removed line is
    for line in difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=f"{name} (now)",
        tofile=f"{name} (after)",
        n=3,
    ):
        if line.startswith("@@"):
            line_no = int(_HUNK.match(line)[1]) - 1
            header = len(out)
            out.append(line)
            continue
        if header is not None and line[:1] in "+-":
            label = labels[max(0, min(line_no, len(labels) - 1))] if labels else ""
            out[header] = out[header].rstrip("\n") + (f" {label}\n" if label else "\n")
            header = None
        if line[:1] in " -":
            line_no += 1
        out.append(line)
    return "".join(out)


def print_diff(diff: str, console: Console) -> None:
    """Colored on a terminal; rich drops the styles when stdout is a pipe or a file."""
    for line in diff.splitlines():
        style = "bold" if line.startswith(("+++", "---")) else _STYLES.get(line[:1])
        console.print(Text(line, style=style or ""), soft_wrap=True)
