"""Online results as a plot: output tok/s, TTFT P99 and ITL P99 against concurrency, one line a run.

`python -m bench` draws its own run; this compares runs from their JSON files:

    python -m bench.plot docs/perf/a.json:label-a docs/perf/b.json:label-b --out cmp.png --title "..."
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PANELS = (
    ("output_tok_s", "output tokens/s"),
    ("ttft_p99_ms", "TTFT P99 (ms)"),
    ("itl_p99_ms", "inter-token P99 (ms)"),
)


def plot_runs(runs: dict[str, list[dict]], path: Path, title: str) -> None:
    """`runs`: label -> the `online` levels of a bench JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.8))
    for ax, (key, label) in zip(axes, PANELS, strict=True):
        for name, levels in runs.items():
            conc = [r["concurrency"] for r in levels]
            ax.plot(conc, [r[key] for r in levels], "o-", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streaming requests")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.plot")
    ap.add_argument("runs", nargs="+", metavar="JSON[:LABEL]")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title", default="r1serve, online serving")
    args = ap.parse_args()
    runs = {}
    for spec in args.runs:
        path, _, label = spec.partition(":")
        data = json.loads(Path(path).read_text())
        if "online" not in data:
            raise SystemExit(f"python -m bench.plot: {path} has no online results")
        runs[label or Path(path).stem] = data["online"]
    plot_runs(runs, args.out, args.title)
    print(args.out)


if __name__ == "__main__":
    main()
