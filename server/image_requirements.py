"""Print the pinned requirements of the server image: the r1serve runtime dependencies, at exactly
the versions pyproject.toml pins (one source of truth), leaving out the operator tooling."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

SERVER_DEPENDENCIES = frozenset(
    {"torch", "fastapi", "anyio", "uvicorn", "uvloop", "httptools", "pydantic", "pydantic-settings",
     "prometheus-client", "tokenizers", "safetensors", "jinja2", "numpy", "rich"}
)  # fmt: skip


def server_pins(pyproject: Path) -> list[str]:
    pins = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    chosen = [p for p in pins if re.split(r"[=<>!~\[; ]", p, maxsplit=1)[0].lower() in SERVER_DEPENDENCIES]
    missing = SERVER_DEPENDENCIES - {re.split(r"[=<>!~\[; ]", p, maxsplit=1)[0].lower() for p in chosen}
    if missing:
        raise SystemExit(f"pyproject.toml pins none of: {', '.join(sorted(missing))}")
    return chosen


if __name__ == "__main__":
    print("\n".join(server_pins(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"))))
