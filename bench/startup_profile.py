"""python -m bench.startup_profile MODEL_DIR: where the engine process's start-up goes, by phase and by
code site, from its main thread's stack sampled every few milliseconds.

A sampling profiler, not a tracing one: time spent in C (a CUDA call, an import's file reads) shows
under the Python frame that made the call, and the start-up runs at its own speed. It runs what the
engine process runs, in this process: its imports, then `build_engine` with the server's settings
(`R1SERVE_*` variables, and `--device`). Phases are the steps of `ModelRunner._build` (load_model,
_precompile, the CUDA graphs, ...) and of `build_engine` (the sampler's warm-up, ...); before them,
"imports and set-up". Found with it: the meta device's first use imported ~800 torch modules, 3.5-4.5 s
of an H200 host's start-up (docs/PERFORMANCE.md, session 11).

    python -m bench.startup_profile /tmp/bench-1.5b [--device cuda] [--interval-ms 5] [--out DIR]
"""

from __future__ import annotations

# Only the standard library before the sampler starts: the imports are part of what it measures.
import argparse
import collections
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

Frame = tuple[str, str, int]  # (file path, function, line)

# The steps a phase is named by: the frame called from one of these
PHASE_PARENTS = ("model_runner.py:_build", "model_runner.py:__init__", "loader.py:build_engine")
IMPORTS = "imports and set-up"


def _name(frame: Frame, line: bool = False) -> str:
    path, function, lineno = frame
    return f"{Path(path).name}:{function}" + (f":{lineno}" if line else "")


def phase_of(stack: list[Frame]) -> str:
    """The start-up step a sample falls in: the frame its parent step called ("model_runner.py:_build >
    loader.py:load_model"; "... > imports" for an import there), or IMPORTS outside every step.
    `stack` runs outermost first."""
    names = [_name(frame) for frame in stack]
    for parent in PHASE_PARENTS:
        if parent in names:
            i = names.index(parent)
            if i + 1 == len(names):
                return parent
            child = "imports" if stack[i + 1][0].startswith("<frozen importlib") else names[i + 1]
            return f"{parent} > {child}"
    return IMPORTS


def site_of(stack: list[Frame], ours: str) -> str:
    """Where a sample's time goes: its innermost frame in a file under `ours` (a directory), and its
    leaf frame."""
    mine = [_name(frame, line=True) for frame in stack if frame[0].startswith(ours)]
    return f"{mine[-1] if mine else '-'} | {_name(stack[-1], line=True) if stack else '-'}"


class StackSampler:
    """Samples one thread's Python stack every `interval` seconds, on a daemon thread."""

    def __init__(self, thread_id: int, interval: float) -> None:
        self.thread_id, self.interval = thread_id, interval
        self.samples: list[tuple[float, list[Frame]]] = []  # (seconds since start, stack)
        self.started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="startup-sampler", daemon=True)

    def __enter__(self) -> StackSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            frame = sys._current_frames().get(self.thread_id)
            stack: list[Frame] = []
            while frame is not None:
                stack.append((frame.f_code.co_filename, frame.f_code.co_name, frame.f_lineno))
                frame = frame.f_back
            self.samples.append((time.perf_counter() - self.started, stack[::-1]))

    def seconds_by(self, key: Callable[[list[Frame]], str]) -> collections.Counter:
        """Seconds per `key(stack)`: each sample counts the time since the one before it."""
        totals: collections.Counter = collections.Counter()
        previous = 0.0
        for at, stack in self.samples:
            totals[key(stack)] += at - previous
            previous = at
        return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--device", default=None, help="the server's device setting (default: its own)")
    parser.add_argument("--interval-ms", type=float, default=5.0)
    parser.add_argument("--top", type=int, default=25, help="code sites to list")
    parser.add_argument("--out", type=Path, help="write startup-profile.json here")
    args = parser.parse_args()

    with StackSampler(threading.main_thread().ident, args.interval_ms / 1e3) as sampler:
        from r1serve.config import Settings
        from r1serve.engine import engine_main  # noqa: F401  (the engine process's own imports)
        from r1serve.engine.loader import build_engine

        imported = time.perf_counter() - sampler.started
        overrides = {"device": args.device} if args.device else {}
        runner, _ = build_engine(Settings(model=args.model_dir, **overrides))
        built = time.perf_counter() - sampler.started
    runner.close()  # tensor parallel: ends the other ranks' processes

    import r1serve
    from rich.table import Table

    from bench import console

    ours = str(Path(r1serve.__file__).parent) + "/"
    phases = sampler.seconds_by(phase_of)
    sites = sampler.seconds_by(lambda stack: site_of(stack, ours))
    console.print(
        f"the engine process's modules imported at {imported:.2f} s (torch comes with build_engine), "
        f"the engine built at {built:.2f} s ({len(sampler.samples)} samples)"
    )
    table = Table("phase", "s", title="by start-up step")
    for name, seconds in phases.most_common():
        table.add_row(name, f"{seconds:.2f}")
    console.print(table)
    table = Table("innermost r1serve frame | leaf frame", "s", title=f"the {args.top} costliest code sites")
    for name, seconds in sites.most_common(args.top):
        table.add_row(name, f"{seconds:.2f}")
    console.print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        result = {
            "model_dir": str(args.model_dir), "imports_s": imported, "built_s": built,
            "interval_ms": args.interval_ms, "phases_s": dict(phases.most_common()),
            "sites_s": dict(sites.most_common(args.top)),
        }  # fmt: skip
        (args.out / "startup-profile.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
