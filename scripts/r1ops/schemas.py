"""Upstream API schemas for validating rendered manifests: Kubernetes' OpenAPI v3 and the CRDs of the
platform, taken from the projects' own Go modules (never copied into this repository).

The modules come from the Go module proxy as zips, are checked against the `h1:` hashes pinned here
(the same hashes `go.sum` would hold), and only the schema files are kept, in
`${XDG_CACHE_HOME:-~/.cache}/r1-gitops/schemas/<name>@<version>/`. Bump a version together with its
hash (`go mod download -json MODULE@VERSION` prints it) and with the matching chart in apps/platform.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from r1ops.openapi import crd_version_schema, k8s_definitions, root_schema


@dataclass(frozen=True)
class SchemaModule:
    name: str
    module: str
    version: str
    h1: str  # go.sum hash of the module zip
    prefix: str  # folder inside the module that holds the schemas


# The one place the schema versions are pinned. Keep in step with apps/platform/*.yaml.
MODULES: tuple[SchemaModule, ...] = (
    SchemaModule(
        "kubernetes",
        "k8s.io/kubernetes",
        "v1.34.4",
        "h1:Yy6R4QB8C9kJPp25GFqEvX5XQwY5qzKeqD0Xx6oAcmk=",
        "api/openapi-spec/v3/",
    ),
    SchemaModule(
        "argo-rollouts",
        "github.com/argoproj/argo-rollouts",
        "v1.9.1",
        "h1:+oZciUkeJYVb1vPMOhat4JQlk525j/aT2yizEkVkjLs=",
        "manifests/crds/",
    ),
    SchemaModule(
        "argo-cd",
        "github.com/argoproj/argo-cd/v3",
        "v3.4.2",
        "h1:S3j0K34uGW4geWiM88+0cHcCEtInn2Sa9U7/Sa18L7Y=",
        "manifests/crds/",
    ),
    SchemaModule(
        "prometheus-operator",
        "github.com/prometheus-operator/prometheus-operator",
        "v0.85.0",
        "h1:M5xLCLEoaW2IJfnuCwFzzpL+jSVQu3KGT84Pye+fW8s=",
        "example/prometheus-operator-crd/",
    ),
    SchemaModule(
        "keda",
        "github.com/kedacore/keda/v2",
        "v2.20.2",
        "h1:SR60v8uIcelbveS8n/1jcl8tLdBBIbHMxmdOHw8tKqA=",
        "config/crd/bases/",
    ),
    SchemaModule(
        "gateway-api",
        "sigs.k8s.io/gateway-api",
        "v1.4.0",
        "h1:ZwlNM6zOHq0h3WUX2gfByPs2yAEsy/EenYJB78jpQfQ=",
        "config/crd/standard/",
    ),
)


class SchemaFetchError(RuntimeError):
    """The schemas could not be downloaded or did not match their pinned hash."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "r1-gitops" / "schemas"


def module_dir(mod: SchemaModule) -> Path:
    return cache_root() / f"{mod.name}@{mod.version}"


def _proxy_url(mod: SchemaModule) -> str:
    proxy = os.environ.get("GOPROXY", "https://proxy.golang.org").split(",")[0].split("|")[0]
    if proxy in ("direct", "off", ""):
        proxy = "https://proxy.golang.org"
    # Go's module path escaping: upper-case letters become '!' + lower case.
    escaped = "".join(f"!{c.lower()}" if c.isupper() else c for c in mod.module)
    return f"{proxy.rstrip('/')}/{escaped}/@v/{mod.version}.zip"


def dirhash_h1(zf: zipfile.ZipFile) -> str:
    """golang.org/x/mod/sumdb/dirhash.Hash1 of a module zip, as written in go.sum."""
    lines = []
    for name in sorted(i.filename for i in zf.infolist() if not i.is_dir()):
        lines.append(f"{hashlib.sha256(zf.read(name)).hexdigest()}  {name}\n")
    return "h1:" + base64.b64encode(hashlib.sha256("".join(lines).encode()).digest()).decode()


def _download(mod: SchemaModule, progress: Progress) -> bytes:
    url = _proxy_url(mod)
    task = progress.add_task(f"{mod.name} {mod.version}", total=None)
    buf = io.BytesIO()
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=60) as resp:
            resp.raise_for_status()
            total = resp.headers.get("content-length")
            progress.update(task, total=int(total) if total else None)
            for chunk in resp.iter_bytes():
                buf.write(chunk)
                progress.advance(task, len(chunk))
    except httpx.HTTPError as exc:
        raise SchemaFetchError(f"cannot download {mod.module}@{mod.version} from {url}: {exc}") from exc
    return buf.getvalue()


def _extract(mod: SchemaModule, data: bytes) -> None:
    zf = zipfile.ZipFile(io.BytesIO(data))
    got = dirhash_h1(zf)
    if got != mod.h1:
        raise SchemaFetchError(f"{mod.module}@{mod.version}: hash {got} does not match the pinned {mod.h1}")
    root = f"{mod.module}@{mod.version}/{mod.prefix}"
    out = module_dir(mod)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A private folder renamed into place: concurrent test processes never see half a module.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    kept = 0
    for info in zf.infolist():
        name = info.filename
        if name.startswith(root) and name.endswith((".json", ".yaml")) and "/" not in name[len(root) :]:
            (tmp / name[len(root) :]).write_bytes(zf.read(info))
            kept += 1
    if not kept:
        shutil.rmtree(tmp)
        raise SchemaFetchError(f"{mod.module}@{mod.version} has no schema files under {mod.prefix}")
    try:
        tmp.rename(out)
    except OSError:  # another process got there first with the same verified files
        shutil.rmtree(tmp)


def ensure_schemas(modules: tuple[SchemaModule, ...] = MODULES) -> None:
    """Download whatever pinned schema module is not cached yet (with a progress bar)."""
    missing = [m for m in modules if not module_dir(m).is_dir()]
    if not missing:
        return
    with Progress(
        TextColumn("fetching schemas: {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        transient=True,
    ) as progress:
        for mod in missing:
            _extract(mod, _download(mod, progress))


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """Safe loader that reads a bare `=` (an enum value in the prometheus-operator CRDs) as a string,
    not as YAML 1.1's obsolete `value` tag, which PyYAML cannot construct."""


_Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


class SchemaStore:
    """JSON Schemas by (apiVersion, kind), converted from the cached upstream files on first use."""

    def __init__(self, modules: tuple[SchemaModule, ...] = MODULES) -> None:
        ensure_schemas(modules)
        self._k8s_dir = next(module_dir(m) for m in modules if m.name == "kubernetes")
        self._crd_dirs = [module_dir(m) for m in modules if m.name != "kubernetes"]
        self._k8s_defs: dict[str, dict[str, dict] | None] = {}
        self._crds: dict[tuple[str, str], dict] | None = None
        self._schemas: dict[tuple[str, str], dict | None] = {}

    def schema_for(self, api_version: str, kind: str) -> dict | None:
        """The JSON Schema of one kind, or None when no pinned module defines it."""
        key = (api_version, kind)
        if key not in self._schemas:
            self._schemas[key] = self._build(api_version, kind)
        return self._schemas[key]

    def _build(self, api_version: str, kind: str) -> dict | None:
        if (defs := self._k8s_definitions(api_version)) is not None:
            group, _, version = api_version.rpartition("/")
            if schema := root_schema(defs, group, version, kind):
                return schema
        if (crd := self._crd_index().get((api_version, kind))) is not None:
            return crd_version_schema(crd, self._k8s_definitions("v1") or {})
        return None

    def _k8s_definitions(self, api_version: str) -> dict[str, dict] | None:
        if api_version not in self._k8s_defs:
            group, _, version = api_version.rpartition("/")
            name = f"apis__{group}__{version}_openapi.json" if group else f"api__{version}_openapi.json"
            path = self._k8s_dir / name
            self._k8s_defs[api_version] = (
                k8s_definitions(json.loads(path.read_text())["components"]["schemas"])
                if path.is_file()
                else None
            )
        return self._k8s_defs[api_version]

    def _crd_index(self) -> dict[tuple[str, str], dict]:
        if self._crds is None:
            self._crds = {}
            for folder in self._crd_dirs:
                for path in sorted(folder.glob("*.yaml")):
                    for doc in yaml.load_all(path.read_text(), Loader=_Loader):
                        if not doc or doc.get("kind") != "CustomResourceDefinition":
                            continue
                        spec = doc["spec"]
                        for ver in spec.get("versions", []):
                            if ver.get("served", True):
                                key = (f"{spec['group']}/{ver['name']}", spec["names"]["kind"])
                                self._crds[key] = ver.get("schema", {}).get("openAPIV3Schema", {})
        return self._crds
