"""Find a Go toolchain, or fetch the pinned one from the Go module proxy on a machine without Go.

Go releases are published as the module golang.org/toolchain, so the same proxy that serves the
wrapper modules' dependencies serves Go itself. The archive is checked against the pinned `h1:`
hash (the go.sum format: golang.org/x/mod/sumdb/dirhash.Hash1) before it is unpacked.
"""

from __future__ import annotations

import base64
import hashlib
import platform
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

PROXY = "https://proxy.golang.org"
ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def dirhash_h1(archive: zipfile.ZipFile) -> str:
    lines = []
    for name in sorted(i.filename for i in archive.infolist() if not i.is_dir()):
        lines.append(f"{hashlib.sha256(archive.read(name)).hexdigest()}  {name}\n")
    return "h1:" + base64.b64encode(hashlib.sha256("".join(lines).encode()).digest()).decode()


def go_binary(version: str, sums: dict[str, str], cache: Path) -> str:
    """`go` from PATH, else the pinned `version` (e.g. go1.26.10) fetched into `cache`."""
    found = shutil.which("go")
    if found:
        return found
    plat = f"linux-{ARCH.get(platform.machine(), platform.machine())}"
    dest = cache / f"{version}.{plat}"
    if (dest / "bin" / "go").exists():
        return str(dest / "bin" / "go")
    if plat not in sums:
        raise RuntimeError(f"no Go on PATH and no pinned {version} for {plat}: install Go 1.26+")
    module_version = f"v0.0.1-{version}.{plat}"
    url = f"{PROXY}/golang.org/toolchain/@v/{module_version}.zip"
    with tempfile.TemporaryDirectory() as tmp:
        zip_path = Path(tmp) / "go.zip"
        with (
            urllib.request.urlopen(url, timeout=60) as resp,
            open(zip_path, "wb") as out,
            Progress(
                *Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), transient=True
            ) as progress,
        ):
            task = progress.add_task(
                f"downloading {version}", total=int(resp.headers.get("Content-Length", 0))
            )
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                progress.advance(task, len(chunk))
        with zipfile.ZipFile(zip_path) as archive:
            got = dirhash_h1(archive)
            if got != sums[plat]:
                raise RuntimeError(f"{url}: checksum {got} does not match the pinned {sums[plat]}")
            prefix = f"golang.org/toolchain@{module_version}/"
            staging = Path(tmp) / "go"
            for info in archive.infolist():
                if info.is_dir() or not info.filename.startswith(prefix):
                    continue
                target = staging / info.filename[len(prefix) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(info))
                # Module zips carry no permissions: executables are bin/* and pkg/tool/*/*.
                rel = target.relative_to(staging).parts
                if rel[0] == "bin" or rel[:2] == ("pkg", "tool"):
                    target.chmod(0o755)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), dest)
    return str(dest / "bin" / "go")
