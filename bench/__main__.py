"""python -m bench: run the GPU benchmark cases, print a table, write JSON (and a plot).

PYTHONPATH=server:scripts:. python3 -m bench --shape 1.5b --out /tmp/bench
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import time
from pathlib import Path

import torch
from rich.table import Table

from bench import console, engine_cases, hardware, online, peer, plot, shapes

CASES = ("peer", "decode", "offline", "coldstart", "online")


def free_gpu() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def table(title: str, rows: list[dict]) -> None:
    t = Table(title=title)
    for key in rows[0]:
        t.add_column(key, justify="right")
    for row in rows:
        t.add_row(*(f"{v:,.2f}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--shape", choices=sorted(shapes.SHAPES), default="1.5b")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma list of {CASES}")
    ap.add_argument("--levels", default="1,8,32,64,128,256", help="online concurrency levels")
    ap.add_argument(
        "--requests-per-stream",
        type=int,
        default=8,
        help="online requests per concurrent stream, at least 16 a level (2 until session 5: noisy P99s)",
    )
    ap.add_argument(
        "--streams-per-client",
        type=int,
        default=online.STREAMS_PER_CLIENT,
        help="online streams one client process drives (fewer: more client processes, at most 8)",
    )
    ap.add_argument(
        "--prompt-words",
        type=int,
        default=200,
        help="online prompt length in words (~1.3 tokens each; R1 contexts run to thousands)",
    )
    ap.add_argument("--offline-requests", type=int, default=256)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument(
        "--async-scheduling",
        action="store_true",
        help="engine cases overlap a step's host work with the GPU (online: R1SERVE_ASYNC_SCHEDULING=true)",
    )
    ap.add_argument("--tp", type=int, default=1, help="tensor_parallel_size: GPUs the model is split over")
    ap.add_argument(
        "--server-cpus",
        default=None,
        help="online: pin the server to these CPUs (taskset list, e.g. 0-3: a pod's 4-CPU limit) "
        "and the load generator to the others",
    )
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("python -m bench: needs a CUDA GPU (see bench/README.md)")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    cases = args.cases.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "shape": args.shape,
        "hardware": hardware.describe(),
        "command": vars(args) | {"out": str(args.out)},
        # the server's settings come from its environment (async scheduling, engine process, caps)
        "server_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("R1SERVE_")},
    }

    def save() -> None:
        """After every case, so a run cut short keeps what it measured."""
        (args.out / f"bench-{args.shape}.json").write_text(json.dumps(result, indent=2))

    # with --tp N a step reads its weights from N cards at once: the ceilings are N cards' bandwidth
    copy_bw = hardware.copy_bandwidth() * args.tp
    cfg = shapes.SHAPES[args.shape]
    weight_bytes = shapes.bytes_per_decode_step(cfg)
    kv_tok = shapes.kv_bytes_per_token(cfg)
    result["ceilings"] = {
        "copy_bandwidth_gb_s": copy_bw / 1e9,
        "bf16_matmul_tflops": hardware.matmul_tflops(),
        "weight_bytes_per_step_gb": weight_bytes / 1e9,
        "batch1_limit_tok_s": copy_bw / weight_bytes,
    }
    table("ceilings", [result["ceilings"]])
    free_gpu()

    model_dir = args.model_dir or Path(f"/tmp/bench-{args.shape}")
    if not (model_dir / "model.safetensors.index.json").exists():
        with console.status(f"writing a random {args.shape} checkpoint"):
            shapes.write_checkpoint(model_dir, args.shape)

    if "peer" in cases:
        with console.status("transformers generate() baseline"):
            model = peer.load(model_dir)
            result["peer"] = {
                "b1_128in_256out_tok_s": peer.generate_tok_s(model, 1, 128, 256),
                "b256_512in_256out_tok_s": peer.generate_tok_s(model, 256, 512, 256),
            }
            del model
            free_gpu()
        table("peer: transformers generate()", [result["peer"]])
        save()

    if "decode" in cases or "offline" in cases:
        engine = engine_cases.build_engine(
            model_dir, max_num_seqs=256, enforce_eager=args.enforce_eager, tensor_parallel_size=args.tp,
            async_scheduling=args.async_scheduling,
        )  # fmt: skip
        try:
            if "decode" in cases:
                logs, wall, out = engine_cases.run_requests(engine, [(128, 256)], label="batch-1 decode")
                steps = engine_cases.decode_steps(logs)
                step_s = sorted(s.seconds for s in steps)[len(steps) // 2]
                result["decode_b1"] = {
                    "tok_s": len(steps) / sum(s.seconds for s in steps),
                    "median_step_ms": step_s * 1e3,
                    "bandwidth_share": engine_cases.bandwidth_utilisation(
                        logs, weight_bytes, kv_tok, copy_bw
                    ),
                    "share_of_limit": (len(steps) / sum(s.seconds for s in steps)) / (copy_bw / weight_bytes),
                    "graph_replay_ms": engine_cases.graph_step_ms(engine),
                    "phase_ms": engine_cases.phase_ms(steps),
                }
                b1 = result["decode_b1"]
                table(
                    "batch-1 decode (128 in / 256 out)",
                    [
                        {k: v for k, v in b1.items() if k != "phase_ms"},
                    ],
                )
                table("batch-1 decode: host ms per step by engine phase", [b1["phase_ms"]])
                save()
            if "offline" in cases:
                reqs = engine_cases.offline_requests(args.offline_requests)
                logs, wall, out = engine_cases.run_requests(engine, reqs, label="offline throughput")
                result["offline"] = {
                    "requests": len(reqs),
                    "output_tokens": out,
                    "seconds": wall,
                    "output_tok_s": out / wall,
                    "decode_bandwidth_share": engine_cases.bandwidth_utilisation(
                        logs, weight_bytes, kv_tok, copy_bw
                    ),
                    "steps": len(logs),
                    "decode_steps": len(engine_cases.decode_steps(logs)),
                    # where the time goes, decode-only steps and steps with a prompt chunk apart
                    "decode_step_phase_ms": engine_cases.phase_ms(engine_cases.decode_steps(logs)),
                    "mixed_step_phase_ms": engine_cases.phase_ms([s for s in logs if s.tokens != s.batch]),
                }
                if "peer" in result:
                    result["offline"]["x_peer_b256"] = out / wall / result["peer"]["b256_512in_256out_tok_s"]
                off = result["offline"]
                table(
                    "offline: 256 requests, lengths uniform in 100-1024",
                    [{k: v for k, v in off.items() if not isinstance(v, dict)}],
                )
                table(
                    "offline: host ms per step by engine phase (sync = waiting for the GPU)",
                    [{"steps": kind, **off[f"{kind}_step_phase_ms"]} for kind in ("decode", "mixed")],
                )
                save()
        finally:
            engine.runner.close()  # tensor parallel: the workers hold the other GPUs
        del engine
        free_gpu()

    if "coldstart" in cases or "online" in cases:
        log = args.out / "server.log"  # appended to: this start's lines come after `before`
        before = log.stat().st_size if log.exists() else 0
        ready_s, server = online.cold_start(model_dir, log, args.tp, args.server_cpus)
        result["cold_start_s"] = ready_s
        with log.open("rb") as f:
            f.seek(before)
            result["cold_start_log"] = online.start_up_log(f.read().decode(errors="replace"))
        console.print(f"cold start to /ready: {ready_s:.1f} s")
        save()
        try:
            if "online" in cases:
                levels = result["online"] = []
                for c in (int(x) for x in args.levels.split(",")):
                    t0 = time.perf_counter()
                    run = online.run_level(
                        server.base_url, "bench", c, max(args.requests_per_stream * c, 16),
                        args.prompt_words, 128, streams_per_client=args.streams_per_client,
                    )  # fmt: skip
                    levels.append(online.summarise(c, run))
                    save()  # each level: a part killed at its time limit keeps the levels it finished
                    console.print(f"  concurrency {c}: {time.perf_counter() - t0:.0f} s")
                table(f"online: streaming chat, ~{args.prompt_words}-word prompts, 128 output tokens", levels)
                plot.plot_runs(
                    {"r1serve": levels},
                    args.out / f"online-{args.shape}.png",
                    f"r1serve, {args.shape} shape, {result['hardware']['card']}",
                )
        finally:
            server.stop()

    save()
    console.print(f"wrote {args.out}/bench-{args.shape}.json")


if __name__ == "__main__":
    main()
