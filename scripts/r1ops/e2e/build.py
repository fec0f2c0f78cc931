"""Build the e2e tier's binaries from upstream Go modules, once, into a cache outside the repo.

The two wrapper modules under e2e/ pin the control plane (k8s.io/kubernetes + etcd) and the Argo
Rollouts controller; e2e/sources.yaml pins kwok and the modules whose CRDs and kwok stages are read
straight from the Go module cache. The cache key is a hash of all of those, so a version bump
rebuilds and an unchanged checkout reuses what is there.

    python -m r1ops.e2e.build          # build (or reuse) and print where everything is
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console

from r1ops.e2e.gotoolchain import go_binary

REPO = Path(__file__).resolve().parents[3]
E2E = REPO / "e2e"
console = Console(stderr=True)

# binary name -> Go package, per wrapper module
CONTROLPLANE = {
    "etcd": "go.etcd.io/etcd/server/v3",
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
}
ROLLOUTS = {"rollouts-controller": "github.com/argoproj/argo-rollouts/cmd/rollouts-controller"}


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Toolchain:
    """Everything the harness needs: binary paths, CRD files, kwok stage files."""

    root: Path
    bins: dict[str, Path]
    crds: list[Path]
    kwok_stages: list[Path]
    kubernetes_version: str

    def bin(self, name: str) -> str:
        return str(self.bins[name])


def sources() -> dict:
    return yaml.safe_load((E2E / "sources.yaml").read_text())


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "r1-gitops" / "e2e"


def cache_key() -> str:
    """Hash of what decides the binaries: the wrapper modules, kwok's version, the Go release."""
    h = hashlib.sha256()
    for rel in ("controlplane/go.mod", "controlplane/go.sum", "rollouts/go.mod", "rollouts/go.sum"):
        h.update(rel.encode() + b"\0" + (E2E / rel).read_bytes())
    kwok = sources()["kwok"]
    h.update(f"{kwok['package']}@{kwok['version']}".encode())
    h.update(_go(["env", "GOVERSION"], cwd=E2E / "controlplane").encode())
    return h.hexdigest()[:16]


def _go_env(module_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # The rollouts module states the Go release it needs; let go fetch that toolchain from the
    # module proxy instead of failing when the installed one is a patch behind.
    env["GOTOOLCHAIN"] = "auto"
    # Two parallel compiles at most: CI has two cores and the API server link alone takes GiBs.
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + f" -p={os.environ.get('R1_E2E_GO_PARALLEL', '2')}").strip()
    return env


@functools.cache
def go() -> str:
    pinned = sources()["go"]
    try:
        return go_binary(pinned["version"], pinned["h1"], cache_root() / "go")
    except (OSError, RuntimeError) as exc:
        raise BuildError(f"no Go toolchain: {exc}") from exc


def _go(args: list[str], cwd: Path) -> str:
    res = subprocess.run(
        ["nice", "-n", "19", go(), *args], cwd=cwd, env=_go_env(), capture_output=True, text=True
    )
    if res.returncode != 0:
        raise BuildError(f"go {' '.join(args)} (in {cwd}) failed:\n{res.stderr.strip()[-4000:]}")
    return res.stdout


def module_dir(module: str, version: str | None = None, wrapper: str | None = None) -> Path:
    """Download a module (checksum-verified) and return its directory in the module cache."""
    if wrapper:
        out = _go(["mod", "download", "-json", module], cwd=E2E / wrapper)
    else:
        out = _go(["mod", "download", "-json", f"{module}@{version}"], cwd=Path("/"))
    info = json.loads(out)
    if info.get("Error") or not info.get("Dir"):
        raise BuildError(f"cannot download {module}: {info.get('Error')}")
    return Path(info["Dir"])


def module_version(module: str, wrapper: str) -> str:
    return _go(["list", "-m", "-f", "{{.Version}}", module], cwd=E2E / wrapper).strip()


def _ldflags_controlplane(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    pairs = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    flags = [f"-X k8s.io/component-base/version.{k}={v}" for k, v in pairs.items()]
    flags += [f"-X k8s.io/client-go/pkg/version.{k}={v}" for k, v in pairs.items()]
    return "-s -w " + " ".join(flags)


def _ldflags_rollouts(version: str) -> str:
    return f"-s -w -X github.com/argoproj/argo-rollouts/utils/version.version={version.lstrip('v')}"


def _build(name: str, package: str, wrapper: str, ldflags: str, out: Path, timings: dict) -> None:
    if out.exists():
        return
    start = time.monotonic()
    with console.status(f"[bold]go build {name}[/] ({package}) ..."):
        tmp = out.with_suffix(".tmp")
        _go(["build", "-trimpath", "-ldflags", ldflags, "-o", str(tmp), package], cwd=E2E / wrapper)
        tmp.rename(out)
    timings[name] = round(time.monotonic() - start, 1)
    console.print(f"  built {name} in {timings[name]:.0f}s")


def ensure() -> Toolchain:
    """Build whatever is missing from the cache and return the toolchain (cheap when warm)."""
    root = cache_root() / cache_key()
    bindir = root / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    src = sources()
    k8s_version = module_version("k8s.io/kubernetes", "controlplane")
    rollouts_version = module_version("github.com/argoproj/argo-rollouts", "rollouts")
    timings: dict[str, float] = {}
    start = time.monotonic()
    missing = [n for n in [*CONTROLPLANE, *ROLLOUTS, "kwok"] if not (bindir / n).exists()]
    if missing:
        console.print(f"[bold]e2e toolchain[/] -> {root} (building: {', '.join(missing)})")
    for name, pkg in CONTROLPLANE.items():
        _build(name, pkg, "controlplane", _ldflags_controlplane(k8s_version), bindir / name, timings)
    for name, pkg in ROLLOUTS.items():
        _build(name, pkg, "rollouts", _ldflags_rollouts(rollouts_version), bindir / name, timings)

    kwok = src["kwok"]
    if not (bindir / "kwok").exists():
        t0 = time.monotonic()
        with console.status(f"[bold]go install {kwok['package']}@{kwok['version']}[/] ..."):
            env_bin = {**_go_env(), "GOBIN": str(bindir)}
            res = subprocess.run(
                ["nice", "-n", "19", go(), "install", "-trimpath", f"{kwok['package']}@{kwok['version']}"],
                cwd="/",
                env=env_bin,
                capture_output=True,
                text=True,
            )
            if res.returncode != 0:
                raise BuildError(f"go install kwok failed:\n{res.stderr.strip()[-4000:]}")
        timings["kwok"] = round(time.monotonic() - t0, 1)
        console.print(f"  built kwok in {timings['kwok']:.0f}s")

    kwok_dir = module_dir(kwok["module"], kwok["version"])
    stages = [kwok_dir / s for s in kwok["stages"]]
    crds: list[Path] = []
    for entry in src["crds"]:
        d = module_dir(entry["module"], entry.get("version"), entry.get("from_wrapper"))
        for pattern in entry["files"]:
            found = sorted(Path(p) for p in glob.glob(str(d / pattern)))
            if not found:
                raise BuildError(f"no CRDs match {pattern} in {entry['module']}")
            crds += found
    for p in stages:
        if not p.is_file():
            raise BuildError(f"kwok stage {p} not found in the module cache")

    if timings:
        timings["total"] = round(time.monotonic() - start, 1)
        log = root / "build-times.json"
        history = json.loads(log.read_text()) if log.exists() else []
        history.append({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **timings})
        log.write_text(json.dumps(history, indent=1))
    bins = {n: bindir / n for n in [*CONTROLPLANE, *ROLLOUTS, "kwok"]}
    return Toolchain(root, bins, crds, stages, k8s_version)


def main() -> int:
    start = time.monotonic()
    try:
        tc = ensure()
    except BuildError as exc:
        console.print(f"[red]e2e build failed:[/] {exc}")
        return 1
    console.print(
        f"e2e toolchain ready in {time.monotonic() - start:.1f}s: {tc.root} "
        f"(kubernetes {tc.kubernetes_version}, {len(tc.crds)} CRD files, {len(tc.kwok_stages)} kwok stages)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
