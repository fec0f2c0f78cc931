"""`r1ops promote SOURCE TARGET` and `r1ops bump [ENV] IMAGE`: move a release between environments in Git.

Argo CD syncs what is in Git, so a promotion is one commit that edits one release.yaml. Before it
commits, the target is rendered before and after and the diff is printed: what Argo CD will change.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from r1ops.cli import CommandError
from r1ops.gitrepo import PUSH_ATTEMPTS, GitRepo
from r1ops.image_ref import ImageRef, ImageRefError
from r1ops.release_state import (
    Environment,
    ReleaseFile,
    ReleaseState,
    describe_changes,
    environment,
    promotion_path,
)
from r1ops.rendered_diff import print_diff, render_valid, unified


@dataclass(frozen=True)
class ReleaseChange:
    """Write `state` into `target`'s release.yaml, as the commit `<verb>(<target>): ...`."""

    repo: GitRepo
    target: Environment
    state: ReleaseState
    verb: str
    source: str | None = None  # the environment promoted from, for the message


@dataclass(frozen=True)
class Delivery:
    """How the commit leaves this machine: options shared by promote and bump."""

    dry_run: bool
    push: bool
    branch: str | None
    remote: str
    attempts: int
    allow_unpushed: bool = False


def _message(change: ReleaseChange, changes: dict[str, tuple[str, str]]) -> str:
    subject = f"{change.verb}({change.target.name}): {describe_changes(changes)}"
    if change.source:
        subject += f" (from {change.source})"
    body = "\n".join(f"{key}: {old} -> {new}" for key, (old, new) in changes.items())
    return f"{subject}\n\n{body}\n"


def _check_delivery(repo: GitRepo, delivery: Delivery) -> None:
    if not delivery.dry_run:
        repo.require_clean()
    if delivery.branch is not None:
        if not repo.valid_branch_name(delivery.branch):
            raise CommandError(f"{delivery.branch!r} is not a valid branch name")
        if repo.branch_exists(delivery.branch):
            raise CommandError(f"branch {delivery.branch} already exists: pick another name or delete it")
    elif delivery.push:
        branch = repo.current_branch()
        if branch is None:
            raise CommandError("HEAD is detached: check out a branch to push, or use --branch NAME")
        # The push carries every commit HEAD has, but the diff shown is only this change's: a local
        # commit nobody reviewed would reach every environment unseen.
        local = (
            []
            if delivery.dry_run or delivery.allow_unpushed
            else repo.commits_not_on(delivery.remote, branch)
        )
        if local:
            more = f" and {len(local) - 1} more" if len(local) > 1 else ""
            raise CommandError(
                f"{branch} has commits that {delivery.remote}/{branch} does not ({local[0]}{more}), and"
                " --push would ship them unseen with this change: push them on their own first, or pass"
                " --allow-unpushed"
            )


def apply(change: ReleaseChange, delivery: Delivery, out: Console, err: Console) -> int:
    """Render, diff, commit and (optionally) push one release change; the tree is clean afterwards."""
    repo, target = change.repo, change.target
    _check_delivery(repo, delivery)
    release = ReleaseFile(target.release_path)
    changes = release.state.changes_to(change.state)
    if not changes:
        out.print(f"nothing to {change.verb}: {target.name} already has this release")
        return 0

    start_branch, start_commit = repo.current_branch(), repo.head()
    branch = delivery.branch or start_branch
    committed = switched = False
    try:
        with err.status(f"rendering {target.name} before and after"):
            before = render_valid(target, "now")
            target.release_path.write_text(release.text_with(change.state))
            after = render_valid(target, "with the new release")
        diff = unified(before, after, target.name)
        print_diff(diff or f"(the rendered manifests of {target.name} do not change)", out)
        if delivery.dry_run:
            out.print("dry run: nothing written")
            return 0
        if delivery.branch is not None:
            # The edited release.yaml moves along to the new branch; the current one stays as it was.
            repo.switch(delivery.branch, create=True)
            switched = True
        message = _message(change, changes)
        sha = repo.commit([target.release_path], message)
        committed = True
        out.print(f"committed {sha[:12]} on {branch or 'detached HEAD'}: {message.splitlines()[0]}")
        if delivery.push:
            assert branch is not None  # _check_delivery refused a detached HEAD
            attempt = repo.push(
                delivery.remote,
                branch,
                attempts=delivery.attempts,
                after_rebase=lambda: _recheck(target, f"{delivery.remote}/{branch}"),
            )
            rebased = f" (after {attempt - 1} rebase(s) onto newer commits)" if attempt > 1 else ""
            out.print(f"pushed to {delivery.remote}/{branch}{rebased}")
    finally:
        if not committed:
            target.release_path.write_text(release.text)
        if switched:
            repo.switch(start_branch or start_commit)
            if not committed:
                repo.git("branch", "--quiet", "--delete", "--force", delivery.branch)
    return 0


def _recheck(target: Environment, upstream: str) -> None:
    """The remote's newer commits could break the target: check it again before pushing."""
    try:
        render_valid(target, f"after rebasing onto {upstream}")
    except CommandError as exc:
        raise CommandError(f"{exc}; the rebased commit is kept locally, nothing was pushed") from exc


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _delivery(args: argparse.Namespace) -> Delivery:
    return Delivery(
        args.dry_run, args.push, args.branch, args.remote, args.push_attempts, args.allow_unpushed
    )


def _consoles() -> tuple[Console, Console]:
    return Console(highlight=False, soft_wrap=True), Console(stderr=True, highlight=False, soft_wrap=True)


def run_promote(args: argparse.Namespace) -> int:
    repo = GitRepo.containing(Path(args.repo))
    path = promotion_path(repo.root)
    source, target = environment(repo.root, args.source), environment(repo.root, args.target)
    if not path.allows(source.name, target.name):
        raise CommandError(f"{source.name} -> {target.name} is not on the promotion path ({path.describe()})")
    state, current = ReleaseFile(source.release_path).state, ReleaseFile(target.release_path).state
    out, err = _consoles()
    if state.model != current.model and not args.with_model:
        # Environments may serve different models (a 1.5B in dev, a 32B in prod): the build moves on,
        # the model and its revision stay, unless asked.
        state = current.model_copy(update={"image": state.image})
        out.print(
            f"{target.name} keeps its model {current.model} "
            f"({source.name} serves another model; --with-model moves it)"
        )
    change = ReleaseChange(repo, target, state, "promote", source=source.name)
    return apply(change, _delivery(args), out, err)


def run_bump(args: argparse.Namespace) -> int:
    repo = GitRepo.containing(Path(args.repo))
    try:
        image = ImageRef.parse(args.image)
    except ImageRefError as exc:
        raise CommandError(str(exc)) from exc
    path = promotion_path(repo.root)
    name = args.env or path.first
    if name != path.first and not args.any_env:
        raise CommandError(
            f"new builds land in {path.first}, the start of the promotion path; "
            f"promote them to {name}, or pass --any-env for a hotfix"
        )
    target = environment(repo.root, name)
    state = ReleaseFile(target.release_path).state.model_copy(update={"image": str(image)})
    return apply(ReleaseChange(repo, target, state, "bump"), _delivery(args), *_consoles())


def _add_delivery_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print the rendered diff, write nothing")
    parser.add_argument(
        "--push",
        action="store_true",
        help="push the branch; if the remote moved, pull --rebase and retry (bounded)",
    )
    parser.add_argument(
        "--allow-unpushed",
        action="store_true",
        help="--push even though the branch has commits the remote does not (they go out too)",
    )
    parser.add_argument("--branch", metavar="NAME", help="commit on a new branch (for a pull request)")
    parser.add_argument("--remote", default="origin", help="remote to push to (default: origin)")
    parser.add_argument(
        "--push-attempts",
        type=_positive,
        default=PUSH_ATTEMPTS,
        metavar="N",
        help="pushes to try (default: %(default)s)",
    )
    parser.add_argument("--repo", default=".", help="a path inside the GitOps repository (default: .)")


def register(subparsers: argparse._SubParsersAction) -> None:
    promote = subparsers.add_parser(
        "promote",
        help="promote one environment's release to the next (dev -> staging -> prod) by git commit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    promote.add_argument("source", help="environment to promote from, e.g. staging")
    promote.add_argument("target", help="environment to promote into, e.g. prod")
    promote.add_argument(
        "--with-model",
        action="store_true",
        help="also move the model id (and its revision) when the environments serve different models",
    )
    _add_delivery_options(promote)
    promote.set_defaults(func=run_promote)

    bump = subparsers.add_parser(
        "bump",
        help="set the image of the first environment (CI, after a build) by git commit",
        description="Set an environment's image (repo:tag or repo@sha256:digest) and commit it.",
    )
    bump.add_argument("env", nargs="?", help="environment (default: the first of the promotion path)")
    bump.add_argument("image", help="the new image: repo:tag or repo@sha256:<digest>")
    bump.add_argument("--any-env", action="store_true", help="allow an environment past the first (hotfix)")
    _add_delivery_options(bump)
    bump.set_defaults(func=run_bump)
