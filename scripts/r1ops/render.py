"""`r1ops render ENV` and `r1ops validate [ENV...]`: kustomize builds, checked against the upstream
schemas and the repository's policies (docs/STACK.md)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from r1ops.cli import CommandError
from r1ops.policy import pod_templates
from r1ops.schemas import SchemaFetchError, cache_root
from r1ops.validate import load_objects, ref, validate_rendered

__all__ = ["RenderError", "render_overlay", "validate_rendered"]

PACKAGE_REPO = Path(__file__).resolve().parents[2]
# Used only where no kubectl (with its built-in kustomize) is installed: `go install` builds this.
KUSTOMIZE_MODULE = "sigs.k8s.io/kustomize/kustomize/v5@v5.5.0"


class RenderError(CommandError):
    """kustomize could not build a tree."""


def _kustomize() -> list[str]:
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    gobin = cache_root().parent / "bin"
    built = gobin / "kustomize"
    if not built.exists():
        if not shutil.which("go"):
            raise RenderError("neither kubectl nor kustomize nor go is installed (see scripts/setup.sh)")
        print(f"building {KUSTOMIZE_MODULE} (no kubectl found)", file=sys.stderr)
        env = dict(os.environ, GOBIN=str(gobin))
        subprocess.run(["go", "install", KUSTOMIZE_MODULE], check=True, env=env)
    return [str(built), "build"]


def render_overlay(path: Path) -> str:
    """`kustomize build` of one directory (an overlay, apps/, apps/bootstrap) as YAML text."""
    path = Path(path)
    if not (path / "kustomization.yaml").is_file():
        raise RenderError(f"{path} has no kustomization.yaml")
    proc = subprocess.run([*_kustomize(), str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        raise RenderError(f"kustomize build {path} failed: {detail}")
    return proc.stdout


def repo_root() -> Path:
    cwd = Path.cwd()
    return cwd if (cwd / "overlays").is_dir() else PACKAGE_REPO


def environments(repo: Path) -> list[str]:
    return sorted(p.parent.name for p in (repo / "overlays").glob("*/kustomization.yaml"))


# Trees deployed by Argo CD besides the environments: validated with them.
EXTRA_TREES = {"apps": "apps", "bootstrap": "apps/bootstrap", "observability": "observability"}


def default_targets(repo: Path) -> list[str]:
    extra = [name for name, path in EXTRA_TREES.items() if (repo / path / "kustomization.yaml").is_file()]
    return [*environments(repo), *extra]


def resolve_target(name: str, repo: Path) -> Path:
    """An environment name (overlays/<name>), apps, bootstrap, observability, or a kustomization dir."""
    candidates = {key: repo / path for key, path in EXTRA_TREES.items()}
    path = candidates.get(name) or repo / "overlays" / name
    if (path / "kustomization.yaml").is_file():
        return path
    if (Path(name) / "kustomization.yaml").is_file():
        return Path(name)
    known = ", ".join(default_targets(repo))
    raise CommandError(f"unknown environment {name!r} (known: {known})")


def summary_table(title: str, text: str, problems: list[str]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("kind", "name", "images", "problems"):
        table.add_column(column)
    for obj in load_objects(text):
        own = sum(p.startswith(f"{ref(obj)}:") or p.startswith(f"{ref(obj)} ") for p in problems)
        images = sorted(
            {
                c["image"]
                for _, o, t in pod_templates([obj])
                for c in (t.get("spec") or {}).get("containers") or []
                if o is obj
            }
        )
        name = (obj.get("metadata") or {}).get("name", "?")
        table.add_row(obj.get("kind", "?"), name, "\n".join(images), f"[red]{own}[/red]" if own else "")
    caption = f"{len(problems)} problem(s)" if problems else "valid: upstream schemas and policies"
    table.caption = caption
    return table


def _check(name: str, repo: Path, console: Console) -> list[str]:
    path = resolve_target(name, repo)
    text = render_overlay(path)
    try:
        problems = validate_rendered(text)
    except SchemaFetchError as exc:
        raise CommandError(str(exc)) from exc
    shown = path.relative_to(repo) if path.is_relative_to(repo) else path
    console.print(summary_table(f"{name} ({shown})", text, problems))
    for problem in problems:
        console.print(f"[red]problem[/red] {name}: {problem}", soft_wrap=True)
    return problems


def cmd_render(args: argparse.Namespace) -> int:
    repo = repo_root()
    if args.yaml:
        sys.stdout.write(render_overlay(resolve_target(args.env, repo)))
        return 0
    return 1 if _check(args.env, repo, Console()) else 0


def cmd_validate(args: argparse.Namespace) -> int:
    repo = repo_root()
    names = args.envs or default_targets(repo)
    console = Console()
    failed = [name for name in names if _check(name, repo, console)]
    if failed:
        console.print(f"[red]invalid:[/red] {', '.join(failed)}")
        return 1
    console.print(f"[green]valid:[/green] {', '.join(names)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    render = subparsers.add_parser("render", help="render one environment and summarize it")
    render.add_argument("env", help="an environment, apps, bootstrap, observability, or a kustomization dir")
    render.add_argument("--yaml", action="store_true", help="print the rendered manifests instead")
    render.set_defaults(func=cmd_render)
    validate = subparsers.add_parser("validate", help="render and validate trees (default: all of them)")
    validate.add_argument("envs", nargs="*", metavar="ENV")
    validate.set_defaults(func=cmd_validate)
