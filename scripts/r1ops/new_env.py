"""`r1ops new-env NAME --from ENV`: scaffold an environment (say a second prod region) from an existing one.

The new overlay is a sibling of its source: the same base, components and patch files, its own
namespace, release.yaml and node placement. It is described as typed Python (`EnvironmentSpec`,
`Kustomization`) and written out with python-kustomize, then rendered and validated like the rest.
Argo CD picks it up through the environments ApplicationSet (a git directory generator over
overlays/*); the promotion path gets an entry so `r1ops promote` can reach it.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from kustomize.generators import clean_data, to_dict_or_dicts
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich.console import Console
from rich.table import Table
from ruamel.yaml import YAML
from ruamel.yaml.scalarstring import LiteralScalarString

from r1ops.cli import CommandError
from r1ops.release_state import (
    OVERLAYS,
    PROMOTION_FILE,
    RELEASE_FILE,
    ReleaseFile,
    add_promotion,
    environment,
    environments,
    promotion_path,
)
from r1ops.rendered_diff import render_valid

REGION_LABEL = "topology.kubernetes.io/region"
ROLLOUT = {"group": "argoproj.io", "kind": "Rollout", "name": "deepseek-r1"}
SCALED_OBJECT = {"group": "keda.sh", "kind": "ScaledObject", "name": "deepseek-r1"}
_BASENAME = "{{.path.basename}}"  # the ApplicationSet git generator's directory name
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

RELEASE_TEMPLATE = """\
# Promotable state of {name}: what `r1ops promote` / `r1ops bump` edit (docs/DESIGN.md). Created by
# `r1ops new-env` from {source}. A promotion is a diff of this file only; components/release copies
# it into the Rollout, the server settings ConfigMap and the model download Job. Never applied.
apiVersion: v1
kind: ConfigMap
metadata:
  name: release
  annotations:
    config.kubernetes.io/local-config: "true"
data:
  image: {image}
  model: {model}
  modelRevision: {revision}
"""


class EnvironmentSpec(BaseModel):
    """What makes the new environment different from its source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(max_length=40)
    source: str
    namespace: str
    node_selector: dict[str, str] = {}
    replicas: int | None = Field(default=None, ge=1)
    min_replicas: int | None = Field(default=None, ge=1)
    max_replicas: int | None = Field(default=None, ge=1)
    promote_from: str

    @model_validator(mode="after")
    def _consistent(self) -> EnvironmentSpec:
        for value in (self.name, self.namespace):
            if not _DNS_LABEL.match(value):
                raise ValueError(f"{value!r} is not a DNS label (lowercase letters, digits, '-')")
        if self.min_replicas and self.max_replicas and self.min_replicas > self.max_replicas:
            raise ValueError(f"min replicas {self.min_replicas} > max replicas {self.max_replicas}")
        return self


@dataclass(kw_only=True)
class Kustomization:
    """The fields an environment overlay uses; python-kustomize turns it into kustomization.yaml."""

    apiVersion: str = "kustomize.config.k8s.io/v1beta1"
    kind: str = "Kustomization"
    namespace: str
    resources: list[str]
    components: list[str] | None = None
    patches: list[dict] = field(default_factory=list)
    replacements: list[dict] | None = None

    @classmethod
    def of_overlay(cls, overlay: Path) -> Kustomization:
        data = yaml.safe_load((overlay / "kustomization.yaml").read_text()) or {}
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise CommandError(
                f"{overlay.name}'s kustomization uses {', '.join(unknown)}: not known to new-env"
            )
        return cls(**{**data, "patches": data.get("patches") or []})

    def local_files(self) -> list[str]:
        """Files inside the overlay directory that it references (patches, resources)."""
        paths = [*self.resources, *(p["path"] for p in self.patches if "path" in p)]
        return [p for p in paths if not p.startswith(("../", "/")) and "://" not in p]

    def to_yaml(self, header: str) -> str:
        data = clean_data(to_dict_or_dicts(self))
        for patch in data.get("patches", []):
            if "patch" in patch:  # inline patches read best as block text
                patch["patch"] = LiteralScalarString(patch["patch"])
        out = io.StringIO()
        writer = YAML()
        writer.indent(mapping=2, sequence=4, offset=2)  # the repo's style: list items under their key
        writer.width = 4096
        writer.dump(data, out)
        return header + out.getvalue()


def _patches(spec: EnvironmentSpec) -> list[dict]:
    """Placement and size on top of the source's patches (which run first, in their order)."""
    patches = []
    if spec.node_selector or spec.replicas:
        # A merge patch with maps and scalars only: nodeSelector entries are added to the source's,
        # and no list (containers) is replaced, so the CRD strategic-merge pitfall does not apply.
        rollout: dict = {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Rollout",
            "metadata": {"name": ROLLOUT["name"]},
        }
        spec_part: dict = {}
        if spec.replicas:
            spec_part["replicas"] = spec.replicas
        if spec.node_selector:
            spec_part["template"] = {"spec": {"nodeSelector": dict(spec.node_selector)}}
        rollout["spec"] = spec_part
        patches.append({"target": dict(ROLLOUT), "patch": yaml.safe_dump(rollout, sort_keys=False)})
    ops = [
        {"op": "replace", "path": f"/spec/{key}", "value": value}
        for key, value in (("minReplicaCount", spec.min_replicas), ("maxReplicaCount", spec.max_replicas))
        if value is not None
    ]
    if ops:
        patches.append({"target": dict(SCALED_OBJECT), "patch": yaml.safe_dump(ops, sort_keys=False)})
    return patches


@dataclass(frozen=True)
class ArgoApp:
    """How Argo CD will deploy overlays/<name>: through the ApplicationSet that generates it."""

    appset_file: Path
    app_name: str
    namespace: str
    sync_by_name: bool  # the ApplicationSet picks the sync policy by the source's name

    @classmethod
    def for_overlay(cls, root: Path, name: str, source: str) -> ArgoApp:
        for path in sorted((root / "apps").glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if not doc or doc.get("kind") != "ApplicationSet":
                    continue
                gits = [g.get("git") or {} for g in doc["spec"].get("generators", [])]
                patterns = [d.get("path", "") for git in gits for d in git.get("directories", [])]
                if any(Path(f"{OVERLAYS}/{name}").match(pattern) for pattern in patterns):
                    template = doc["spec"]["template"]
                    app = template["metadata"]["name"].replace(_BASENAME, name)
                    namespace = template["spec"]["destination"]["namespace"].replace(_BASENAME, name)
                    by_name = f'"{source}"' in doc["spec"].get("templatePatch", "")
                    return cls(path, app, namespace, by_name)
        raise CommandError(
            f"no ApplicationSet in apps/ generates {OVERLAYS}/{name}: add an Argo CD Application"
        )


def scaffold(root: Path, spec: EnvironmentSpec) -> list[Path]:
    """Write overlays/<name>/ and the promotion path entry; returns the paths written."""
    source = environment(root, spec.source)
    target = root / OVERLAYS / spec.name
    kustomization = Kustomization.of_overlay(source.overlay)
    kustomization.namespace = spec.namespace
    kustomization.patches = [*kustomization.patches, *_patches(spec)]
    release = ReleaseFile(source.release_path).state

    target.mkdir(parents=True)
    written = [target / "kustomization.yaml", target / RELEASE_FILE]
    header = (
        f"# {spec.name}: created by `r1ops new-env {spec.name} --from {spec.source}`; the same stack as\n"
        f"# {spec.source} in its own namespace, with its own release.yaml and placement.\n"
    )
    (target / "kustomization.yaml").write_text(kustomization.to_yaml(header))
    (target / RELEASE_FILE).write_text(
        RELEASE_TEMPLATE.format(
            name=spec.name,
            source=spec.source,
            image=json.dumps(release.image),
            model=json.dumps(release.model),
            revision=json.dumps(release.modelRevision),
        )
    )
    for name in kustomization.local_files():
        if name != RELEASE_FILE:
            origin, copy = source.overlay / name, target / name
            copy.parent.mkdir(parents=True, exist_ok=True)
            # A local kustomization directory (a resource) travels whole; a file is a patch or manifest.
            if origin.is_dir():
                shutil.copytree(origin, copy)
            else:
                shutil.copy2(origin, copy)
            written.append(copy)
    add_promotion(root, spec.promote_from, spec.name)
    written.append(root / PROMOTION_FILE)
    return written


def _spec(root: Path, args: argparse.Namespace) -> tuple[EnvironmentSpec, ArgoApp]:
    if args.name in environments(root) or (root / OVERLAYS / args.name).exists():
        raise CommandError(f"{OVERLAYS}/{args.name} already exists")
    source = environment(root, args.source)
    path = promotion_path(root)
    upstream = [s for s, targets in path.promotions.items() if source.name in targets]
    promote_from = args.promote_from or (upstream[0] if upstream else source.name)
    if promote_from not in environments(root):
        raise CommandError(f"--promote-from {promote_from!r} is not an environment")
    rendered = render_valid(source, "now")
    autoscaled = "kind: ScaledObject" in rendered
    if args.replicas and autoscaled:
        raise CommandError(
            f"{source.name} autoscales (KEDA): use --min-replicas/--max-replicas, not --replicas"
        )
    if (args.min_replicas or args.max_replicas) and not autoscaled:
        raise CommandError(f"{source.name} does not autoscale: use --replicas")
    argo = ArgoApp.for_overlay(root, args.name, source.name)
    selector = dict(args.node_selector)
    if args.region:
        selector[REGION_LABEL] = args.region
    try:
        spec = EnvironmentSpec(
            name=args.name,
            source=source.name,
            namespace=argo.namespace,
            node_selector=selector,
            replicas=args.replicas,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            promote_from=promote_from,
        )
    except ValidationError as exc:
        raise CommandError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from exc
    return spec, argo


def run_new_env(args: argparse.Namespace) -> int:
    from r1ops.gitrepo import GitRepo

    root = GitRepo.containing(Path(args.repo)).root
    spec, argo = _spec(root, args)
    promotion = (root / PROMOTION_FILE).read_text()
    console = Console(highlight=False, soft_wrap=True)
    written = scaffold(root, spec)
    try:
        with console.status(f"rendering and validating {spec.name}"):
            render_valid(environment(root, spec.name), "as scaffolded")
    except CommandError:
        shutil.rmtree(root / OVERLAYS / spec.name)
        (root / PROMOTION_FILE).write_text(promotion)
        raise
    table = Table(title=f"new environment {spec.name} (from {spec.source})", title_justify="left")
    table.add_column("what")
    table.add_column("value")
    table.add_row("namespace", spec.namespace)
    table.add_row(
        "node selector", ", ".join(f"{k}={v}" for k, v in spec.node_selector.items()) or "as source"
    )
    autoscaling = f"{spec.min_replicas or 'as source'} to {spec.max_replicas or 'as source'} (KEDA)"
    sized = spec.min_replicas or spec.max_replicas
    table.add_row("replicas", str(spec.replicas) if spec.replicas else autoscaling if sized else "as source")
    table.add_row("promoted from", spec.promote_from)
    table.add_row("Argo CD", f"{argo.app_name}, generated by {argo.appset_file.relative_to(root)}")
    table.add_row("files", "\n".join(str(p.relative_to(root)) for p in written))
    console.print(table)
    if argo.sync_by_name:
        console.print(
            f"[yellow]note[/yellow]: {argo.appset_file.relative_to(root)} chooses the sync policy by the "
            f"name {spec.source!r}: check that {spec.name} gets the same (a prod region should sync by hand)"
        )
    console.print(
        f"{spec.name} renders and validates. Review, then: git add {OVERLAYS}/{spec.name} {PROMOTION_FILE}"
        f" && git commit -m 'new-env: {spec.name} from {spec.source}'"
    )
    return 0


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "new-env",
        help="scaffold a new environment (overlay, release.yaml, promotion path) from an existing one",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", help="the new environment, e.g. prod-eu")
    parser.add_argument("--from", dest="source", required=True, metavar="ENV", help="environment to copy")
    parser.add_argument("--region", help=f"schedule onto nodes labelled {REGION_LABEL}=REGION")
    parser.add_argument(
        "--node-selector",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra node selector (repeatable)",
    )
    parser.add_argument("--replicas", type=int, help="Rollout replicas (sources without an autoscaler)")
    parser.add_argument("--min-replicas", type=int, help="autoscaler minimum (sources with KEDA)")
    parser.add_argument("--max-replicas", type=int, help="autoscaler maximum (sources with KEDA)")
    parser.add_argument(
        "--promote-from",
        metavar="ENV",
        help="environment promoted into this one (default: the one promoted into the source)",
    )
    parser.add_argument("--repo", default=".", help="a path inside the GitOps repository (default: .)")
    parser.set_defaults(func=run_new_env)
