"""Online serving over HTTP: streaming chat requests at fixed concurrency, and cold start to /ready."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from r1ops.processes import ServerProcess

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


async def run_level(
    base_url: str, model: str, concurrency: int, requests: int, words: int, max_tokens: int
) -> tuple[list[RequestTiming], float]:
    rng = random.Random(concurrency)
    texts = [prompt(rng, words) for _ in range(requests)]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for t in texts:
        queue.put_nowait(t)
    results: list[RequestTiming] = []
    limits = httpx.Limits(max_connections=concurrency + 8)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                results.append(await one_request(client, model, queue.get_nowait(), max_tokens))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return results, wall


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summarise(concurrency: int, results: list[RequestTiming], wall: float) -> dict:
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
        "e2e_p50_s": percentile([r.e2e for r in ok], 0.5),
        "e2e_p99_s": percentile([r.e2e for r in ok], 0.99),
        "output_tok_s": sum(r.output_tokens for r in ok) / wall,
        "error_kinds": ",".join(sorted({r.error for r in results if r.error})),
    }


def cold_start(model_dir: Path, log: Path, tensor_parallel_size: int = 1) -> tuple[float, ServerProcess]:
    """Seconds from process start to /ready (weights load, KV sizing, warm-up, graph capture)."""
    settings = {
        "max_num_seqs": 256,
        "served_model_name": "bench",
        "tensor_parallel_size": tensor_parallel_size,
    }
    server = ServerProcess(model_dir, settings=settings, log_path=log)
    start = time.perf_counter()
    server.start(ready_timeout=600)
    return time.perf_counter() - start, server
