"""python -m bench.api_overhead: what the API process costs per streamed token, measured without a GPU.

Beyond 64 streams the engine process makes tokens faster than the one API process can detokenise,
serialise and stream them (docs/PERFORMANCE.md). This measures that side alone: the real server
(`engine_process=true`, uvicorn, the routes, the tiny model's tokenizer and chat template) in a process
of its own, whose engine process runs the real scheduler and sampler over a stand-in runner that
returns random logits after `--step-ms` (a GPU step's time; 0: as fast as the host allows). The
figure that does not depend on what else the machine runs is the API process's CPU time per
streamed token (psutil); tok/s is printed beside it.

    .venv/bin/python -m bench.api_overhead [--streams 64] [--requests 256] [--tokens 128] [--step-ms 2]
"""

from __future__ import annotations

import argparse
import functools
import logging
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import psutil
import torch
from r1ops.processes import ServerProcess, free_port
from rich.table import Table

from bench import console, online


class SleepingRunner:
    """Stands in for ModelRunner in the engine process: sleeps a step's GPU time, returns random logits."""

    def __init__(self, vocab: int, step_s: float, max_model_len: int) -> None:
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.block_size, self.num_blocks, self.max_model_len = 16, 8192, max_model_len
        self.logits = torch.randn(512, vocab, generator=torch.Generator().manual_seed(0))
        self.step_s = step_s

    def run(self, batch: list) -> torch.Tensor:
        if self.step_s:
            time.sleep(self.step_s)
        return self.logits[: len(batch)]

    def on_failure(self, callback: object) -> None:
        pass

    def close(self) -> None:
        pass


def stand_in_engine(
    settings: object, conns: list[Connection], log_level: int, ready: object, step_s: float
) -> None:
    """The engine process's entry point with the stand-in runner in place of the model."""
    from r1serve.checkpoint import load_config
    from r1serve.engine import engine_main
    from r1serve.engine.llm_engine import LLMEngine

    # The sampler runs on the CPU here: with torch's default of a thread per core it took 14 of a
    # 16-core GPU host's cores and was the bottleneck (2k tok/s), not the API process it measures.
    torch.set_num_threads(1)

    def build(s: object) -> tuple[SleepingRunner, LLMEngine]:
        runner = SleepingRunner(load_config(s.model).vocab_size, step_s, s.max_model_len or 4096)
        return runner, LLMEngine(runner, max_num_seqs=s.max_num_seqs, max_num_batched_tokens=8192)

    engine_main.build_engine = build
    engine_main.engine_main(settings, conns, log_level, ready)


def serve(
    model: Path, port: int, streams: int, step_s: float, http: str, loop: str, api_servers: int
) -> None:
    """The API process (`r1serve serve`), or with `api_servers` > 1 the supervisor and its API
    processes, with the stand-in engine child."""
    import uvicorn
    from r1serve.api.app import create_app
    from r1serve.config import Settings
    from r1serve.engine.engine_child import start_engine_child

    logging.basicConfig(level=logging.WARNING)
    settings = Settings(
        model=model, engine_process=True, max_num_seqs=streams, device="cpu", served_model_name="bench",
        host="127.0.0.1", port=port, api_servers=api_servers,
    )  # fmt: skip
    entry = functools.partial(stand_in_engine, step_s=step_s)
    if api_servers > 1:  # the server's own HTTP settings (uvloop, httptools): --http/--loop do not apply
        from r1serve.supervisor import supervise

        sys.exit(supervise(settings, entry))
    child = start_engine_child(settings, entry)
    app = create_app(settings, lambda message: sys.exit(message), child)
    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", http=http, loop=loop, proxy_headers=False
    )


def server_processes(top: psutil.Process, port: int) -> dict[str, list[psutil.Process]]:
    """The API process(es) and the engine process: with one API process it is `top` and the engine its
    spawn child; with several, `top` is the supervisor and the API processes are the children that
    listen on the port."""
    spawned = [c for c in top.children() if any("spawn_main" in part for part in c.cmdline())]
    api = [c for c in spawned if any(cn.laddr.port == port for cn in c.net_connections("tcp"))]
    engine = [c for c in spawned if c not in api]
    return {"API": api or [top], "engine": engine}


def cpu_seconds(procs: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.api_overhead")
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=128, help="output tokens per request")
    ap.add_argument("--step-ms", type=float, default=2.0, help="the stand-in GPU step time")
    ap.add_argument("--http", default="auto", help="uvicorn's HTTP implementation: auto, h11, httptools")
    ap.add_argument("--loop", default="auto", help="uvicorn's event loop: auto, asyncio, uvloop")
    ap.add_argument("--api-servers", type=int, default=1, help="API processes (r1serve.supervisor)")
    ap.add_argument("--server-log", type=Path, help="the server's output (default: beside the tiny model)")
    ap.add_argument("--serve", nargs=2, metavar=("MODEL", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(
            Path(args.serve[0]), int(args.serve[1]), args.streams, args.step_ms / 1e3, args.http, args.loop,
            args.api_servers,
        )  # fmt: skip
        return

    from r1serve.tiny_model import write_tiny_model

    model = write_tiny_model(Path(tempfile.mkdtemp(prefix="api-overhead-")))
    port = free_port()
    cmd = [sys.executable, "-m", "bench.api_overhead", "--serve", str(model), str(port)]
    cmd += [
        "--streams",
        str(args.streams),
        "--step-ms",
        str(args.step_ms),
        "--http",
        args.http,
        "--loop",
        args.loop,
        "--api-servers",
        str(args.api_servers),
    ]
    with open(args.server_log or model / "server.log", "wb") as log:
        server = ServerProcess(model, port=port, proc=subprocess.Popen(cmd, stdout=log, stderr=log))
    try:
        server.wait_ready(120)
        procs = server_processes(psutil.Process(server.proc.pid), port)
        before = {name: cpu_seconds(ps) for name, ps in procs.items()}
        run = online.run_level(server.base_url, "bench", args.streams, args.requests, 200, args.tokens)
        used = {name: cpu_seconds(ps) - before[name] for name, ps in procs.items()}
        used["client"] = run.client_cpu
        cpu = used["API"]
    finally:
        server.stop()
    row = online.summarise(args.streams, run)
    tokens = row["output_tok_s"] * run.wall
    table = Table(
        title=f"{args.api_servers} API process(es) ({args.http} HTTP, {args.loop} loop), {args.streams} "
        f"streams, stand-in step {args.step_ms} ms"
    )
    columns = ("output tok/s", "API CPU µs / token", "CPU share: API (all) / engine / client", "ITL P50 ms")
    for key in (*columns, "ITL P99 ms", "errors"):
        table.add_column(key, justify="right")
    table.add_row(
        f"{row['output_tok_s']:,.0f}",
        f"{1e6 * cpu / max(tokens, 1):,.1f}",
        " / ".join(f"{used[name] / run.wall:.0%}" for name in ("API", "engine", "client")),
        f"{row['itl_p50_ms']:.2f}",
        f"{row['itl_p99_ms']:.2f}",
        str(row["errors"]),
    )
    console.print(table)


if __name__ == "__main__":
    main()
