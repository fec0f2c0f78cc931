"""Online serving over HTTP: streaming chat requests at fixed concurrency, and cold start to /ready."""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
import random
import re
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from r1ops.processes import ServerProcess

STREAMS_PER_CLIENT = 32  # streams one client process drives
MAX_CLIENT_PROCESSES = 8

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "this",
    "are",
    "from",
    "at",
    "or",
    "an",
    "have",
    "not",
    "model",
    "token",
    "cache",
    "batch",
    "prompt",
    "reply",
    "reason",
    "think",
    "answer",
]


@dataclass
class RequestTiming:
    ttft: float = 0.0
    itls: list[float] = field(default_factory=list)
    e2e: float = 0.0
    output_tokens: int = 0
    error: str | None = None


def prompt(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


async def one_request(client: httpx.AsyncClient, model: str, text: str, max_tokens: int) -> RequestTiming:
    timing = RequestTiming()
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                timing.error = f"HTTP {resp.status_code}"
                return timing
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    timing.output_tokens = chunk["usage"]["completion_tokens"]
                if not chunk.get("choices"):
                    continue
                delta = chunk["choices"][0].get("delta", {})
                if not (delta.get("content") or delta.get("reasoning_content")):
                    continue
                now = time.perf_counter()
                if timing.ttft == 0.0:
                    timing.ttft = now - start
                else:
                    timing.itls.append(now - last)
                last = now
    except httpx.HTTPError as exc:
        timing.error = type(exc).__name__
    timing.e2e = time.perf_counter() - start
    return timing


@dataclass
class LevelRun:
    """One concurrency level's requests, its wall time, the client's own CPU time, and the server's
    histograms over the level (SERVER_HISTOGRAMS: buckets as (upper bound, count) pairs)."""

    results: list[RequestTiming]
    wall: float
    client_cpu: float
    server: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


# The server's side of the client's figures: the engine's step pace (its share of the ITL), the
# tokens' delivery from the engine to their request's handler (whose variation is the API process's
# share), and the TTFT from a request's arrival in the API process (the rest of the client's is HTTP).
STEP_INTERVAL = "r1serve_engine_step_interval_seconds"
TOKEN_DELIVERY = "r1serve_token_delivery_seconds"
SERVER_TTFT = "vllm:time_to_first_token_seconds"
SERVER_HISTOGRAMS = (STEP_INTERVAL, TOKEN_DELIVERY, SERVER_TTFT)


def server_histograms(base_url: str) -> dict[str, list[tuple[float, float]]]:
    """SERVER_HISTOGRAMS as the server's /metrics has them now (`parse_histograms`)."""
    return parse_histograms(httpx.get(f"{base_url}/metrics", timeout=30).text)


def parse_histograms(text: str) -> dict[str, list[tuple[float, float]]]:
    """SERVER_HISTOGRAMS in a Prometheus exposition: (upper bound, cumulative count) pairs, summed
    over the series of each (`sum by (le)`), ascending."""
    out: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name in SERVER_HISTOGRAMS:
            counts: dict[float, float] = defaultdict(float)
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    counts[float(sample.labels["le"])] += sample.value
            out[family.name] = sorted(counts.items())
    return out


def histogram_increase(
    after: list[tuple[float, float]], before: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """The buckets' increase between two scrapes (a bucket absent before counts from 0)."""
    then = dict(before)
    return [(le, n - then.get(le, 0.0)) for le, n in after]


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile over cumulative buckets: linear inside the bucket it falls in,
    the last finite bound past it; NaN with no observations or no +Inf bucket."""
    if not buckets or buckets[-1][0] != math.inf or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == math.inf:
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


def run_level(
    base_url: str,
    model: str,
    concurrency: int,
    requests: int,
    words: int,
    max_tokens: int,
    streams_per_client: int = STREAMS_PER_CLIENT,
) -> LevelRun:
    """`requests` streaming chats, `concurrency` at a time, from as many client processes as it takes
    for the client not to be what is measured: one Python process parsing every stream's chunks
    spent ~110-130 µs of CPU a token on this project's CPU machine, twice the server's API process
    (`python -m bench.api_overhead`), so one process tops out at several thousand tokens a second."""
    rng = random.Random(concurrency)
    texts = [prompt(rng, words) for _ in range(requests)]
    clients = min(MAX_CLIENT_PROCESSES, -(-concurrency // streams_per_client))

    def parts(start_at: float) -> list[tuple]:
        return [
            (base_url, model, len(range(i, concurrency, clients)), texts[i::clients], max_tokens, start_at)
            for i in range(clients)
        ]

    before = server_histograms(base_url)
    if clients == 1:
        start_at = time.time()
        done = [_run_part(*parts(start_at)[0])]
    else:
        with ProcessPoolExecutor(clients, mp_context=multiprocessing.get_context("spawn")) as pool:
            # every client process started (a spawned one imports for seconds) before the clock starts
            list(pool.map(time.sleep, [0.2] * clients))
            start_at = time.time() + 0.2  # then all begin together
            done = list(pool.map(_run_part, *zip(*parts(start_at), strict=True)))
    after = server_histograms(base_url)
    return LevelRun(
        [r for part in done for r in part[0]],
        max(end for _, end, _ in done) - start_at,
        sum(cpu for _, _, cpu in done),
        {name: histogram_increase(buckets, before.get(name, [])) for name, buckets in after.items()},
    )


def _run_part(
    base_url: str, model: str, concurrency: int, texts: list[str], max_tokens: int, start_at: float
) -> tuple[list[RequestTiming], float, float]:
    """One client process's share: its timings, when it finished (time.time()) and its CPU seconds."""
    time.sleep(max(0.0, start_at - time.time()))
    cpu = time.process_time()
    results = asyncio.run(_requests(base_url, model, concurrency, texts, max_tokens))
    return results, time.time(), time.process_time() - cpu


async def _requests(
    base_url: str, model: str, concurrency: int, texts: list[str], max_tokens: int
) -> list[RequestTiming]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for t in texts:
        queue.put_nowait(t)
    results: list[RequestTiming] = []
    limits = httpx.Limits(max_connections=concurrency + 8)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                results.append(await one_request(client, model, queue.get_nowait(), max_tokens))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summarise(concurrency: int, run: LevelRun) -> dict:
    results, wall = run.results, run.wall
    ok = [r for r in results if r.error is None]
    itls = [x for r in ok for x in r.itls]
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "ttft_p50_ms": 1e3 * percentile([r.ttft for r in ok], 0.5),
        "ttft_p99_ms": 1e3 * percentile([r.ttft for r in ok], 0.99),
        "itl_p50_ms": 1e3 * percentile(itls, 0.5),
        "itl_p99_ms": 1e3 * percentile(itls, 0.99),
        # the server's side (histogram buckets: interpolated, as Prometheus does)
        "server_ttft_p99_ms": 1e3 * bucket_quantile(0.99, run.server.get(SERVER_TTFT, [])),
        "engine_step_p50_ms": 1e3 * bucket_quantile(0.5, run.server.get(STEP_INTERVAL, [])),
        "engine_step_p99_ms": 1e3 * bucket_quantile(0.99, run.server.get(STEP_INTERVAL, [])),
        "delivery_p50_ms": 1e3 * bucket_quantile(0.5, run.server.get(TOKEN_DELIVERY, [])),
        "delivery_p99_ms": 1e3 * bucket_quantile(0.99, run.server.get(TOKEN_DELIVERY, [])),
        "e2e_p50_s": percentile([r.e2e for r in ok], 0.5),
        "e2e_p99_s": percentile([r.e2e for r in ok], 0.99),
        "output_tok_s": sum(r.output_tokens for r in ok) / wall,
        "error_kinds": ",".join(sorted({r.error for r in results if r.error})),
        "client_cores": run.client_cpu / wall,  # near its process count: the client was the bottleneck
    }


def cpu_list(text: str) -> set[int]:
    """CPUs as taskset writes them: "0-3,8" -> {0, 1, 2, 3, 8}."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise ValueError(f"{text!r} is not a CPU list like 0-3 or 0,2,4-7") from None
    return cpus


def load_generator_cpus(server_cpus: str, allowed: set[int]) -> set[int]:
    """The CPUs of `allowed` that the server's (`server_cpus`, a subset of them) leave free."""
    server = cpu_list(server_cpus)
    if not server <= allowed:
        raise ValueError(f"CPUs {sorted(server - allowed)} are not among this process's {sorted(allowed)}")
    if not allowed - server:
        raise ValueError("no CPU left for the load generator")
    return allowed - server


# The server's own start-up lines: each phase's time (weights, kernels, KV sizing, graphs), up to ready
START_UP_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \w+ \S+ r1serve\.")


def start_up_log(text: str) -> list[str]:
    """The server log's r1serve lines up to the first `ready`: kept in the bench's JSON, so that a
    slow cold start can be explained after the log itself is gone."""
    lines = []
    for line in text.splitlines():
        if START_UP_LINE.match(line):
            lines.append(line)
            if " ready: " in line:
                break
    return lines


def cold_start(
    model_dir: Path, log: Path, tensor_parallel_size: int = 1, server_cpus: str | None = None
) -> tuple[float, ServerProcess]:
    """Seconds from process start to /ready (weights load, KV sizing, warm-up, graph capture).

    `server_cpus` pins the server (all its processes) to those CPUs, as a pod's CPU limit under the
    static CPU manager would, and the calling thread, and so the client processes it starts later, to
    the others: the load generator does not take the server's cores."""
    settings = {
        "max_num_seqs": 256,
        "served_model_name": "bench",
        "tensor_parallel_size": tensor_parallel_size,
    }
    server = ServerProcess(model_dir, settings=settings, log_path=log, cpus=server_cpus)
    if server_cpus is not None:
        try:
            os.sched_setaffinity(0, load_generator_cpus(server_cpus, os.sched_getaffinity(0)))
        except ValueError as exc:
            raise SystemExit(f"--server-cpus {server_cpus}: {exc}") from None
    start = time.perf_counter()
    server.start(ready_timeout=600)
    return time.perf_counter() - start, server
