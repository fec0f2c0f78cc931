"""ModelRunner: the engine's one handle on the model.

It loads the checkpoint, owns the paged KV cache, and runs one forward pass over a ragged batch of
sequences per step. The caller (the block manager) owns block allocation; block ids are in
`[0, num_blocks)`.

With `tensor_parallel_size` N > 1 this runner is rank 0 of N: it starts the other ranks' processes
(`tp_worker.py`), each holding 1/N of the model and its KV heads, and every `run` hands the batch to
them before running it; the logits it returns are the whole vocabulary's, as with one rank.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from r1serve.checkpoint import GenerationDefaults, ModelConfig, load_config, load_generation_defaults
from r1serve.cuda_graphs import MIXED_GRAPH_TOKENS, CacheLayout, DecodeGraphs, MixedGraphs, batch_sizes
from r1serve.engine.sampler import to_device
from r1serve.model import AttentionMetadata, CausalLM, kernel_compile, load_model, triton_attention
from r1serve.model.parallel import TensorParallel, init_process_group
from r1serve.packed_step import PackedStep, ScheduledSeq, TokenFeed, pack
from r1serve.tokenizer import Tokenizer
from r1serve.tp_worker import Leader, TensorParallelError, Workers

log = logging.getLogger(__name__)
CPU_KV_CACHE_BYTES = 256 * 2**20
DEFAULT_MAX_MODEL_LEN = 8192
SAMPLER_PEAK_LOGITS = 12  # see _auto_kv_budget
SMALL_MODEL_HIDDEN_SIZE = 1024  # below this, CPU inference runs single-threaded (see limit_cpu_threads)
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"invalid device {device!r} (use auto, cpu, cuda or cuda:N)") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"invalid dtype {dtype!r} (use auto, {', '.join(DTYPES)})")
    return DTYPES[dtype]


def limit_cpu_threads(config: ModelConfig) -> None:
    """One intra-op thread for small models on the CPU, unless OMP_NUM_THREADS says otherwise.

    Their matmuls are too small to gain from threads, and on a busy machine OpenMP's waiting threads
    cost far more than they give: the tiny model took 80 ms a decode step with 2 threads and 3 ms with
    1 on 2 shared cores. Process-wide, like torch's own setting.
    """
    if "OMP_NUM_THREADS" not in os.environ and config.hidden_size < SMALL_MODEL_HIDDEN_SIZE:
        torch.set_num_threads(1)


class ModelRunner:
    def __init__(
        self,
        model_dir: Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        kv_cache_memory: int = 0,
        gpu_memory_utilization: float = 0.9,
        block_size: int = 16,
        max_model_len: int | None = None,
        progress: bool = True,
        enforce_eager: bool = False,
        max_num_seqs: int = 256,
        tensor_parallel_size: int = 1,
        _leader: Leader | None = None,  # set by tp_worker in the processes of ranks > 0
    ) -> None:
        model_dir = Path(model_dir)
        self.config: ModelConfig = load_config(model_dir)
        self.generation_defaults: GenerationDefaults = load_generation_defaults(model_dir, self.config)
        self.tokenizer = Tokenizer(model_dir)
        if tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be positive, got {tensor_parallel_size}")
        self.tp = TensorParallel(0 if _leader is None else _leader.rank, tensor_parallel_size)
        self.device = _rank_device(resolve_device(device), self.tp)
        if self.device.type == "cpu":
            limit_cpu_threads(self.config)
        self.dtype = resolve_dtype(dtype, self.device)
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = block_size
        limit = self.config.max_position_embeddings
        if max_model_len is not None and not 0 < max_model_len <= limit:
            raise ValueError(
                f"max_model_len {max_model_len} is outside 1..{limit} (the model's max_position_embeddings)"
            )
        self.max_model_len = max_model_len or min(limit, DEFAULT_MAX_MODEL_LEN)
        # input tokens may come from the device (TokenFeed); tensor-parallel workers get token ids
        self.feeds_tokens = tensor_parallel_size == 1
        self.graphs: DecodeGraphs | None = None  # captured once the cache exists
        self.mixed_graphs: MixedGraphs | None = None
        self._peers: Workers | Leader | None = _leader
        self._workers: Workers | None = None  # rank 0's handle on the other ranks
        if self.tp.size > 1:
            with torch.device("meta"):
                CausalLM(self.config, self.tp)  # checks every split before a process starts
        if self.tp.size > 1 and _leader is None:
            settings = dict(
                device=device, dtype=dtype, kv_cache_memory=kv_cache_memory,
                gpu_memory_utilization=gpu_memory_utilization, block_size=block_size,
                max_model_len=max_model_len, progress=False, enforce_eager=enforce_eager,
                max_num_seqs=max_num_seqs,
            )  # fmt: skip
            self._workers = self._peers = Workers(self.tp.size, model_dir, settings, self.device)
        try:
            self._build(
                model_dir, kv_cache_memory, gpu_memory_utilization, max_num_seqs, enforce_eager, progress
            )
        except BaseException as exc:
            # A collective broken by a worker that died at start-up says little: name the worker.
            # (Bad settings or checkpoints raise ValueError / CheckpointError on every rank alike.)
            died = None
            if self._workers is not None and isinstance(exc, RuntimeError):
                died = None if isinstance(exc, TensorParallelError) else self._workers.death()
            self.close()
            if died is not None:
                raise TensorParallelError(died) from exc
            raise

    def _build(
        self,
        model_dir: Path,
        kv_cache_memory: int,
        gpu_memory_utilization: float,
        max_num_seqs: int,
        enforce_eager: bool,
        progress: bool,
    ) -> None:
        """Weights, process group (tensor parallel), KV cache and decode graphs: the steps every rank
        takes in the same order, so their collectives meet."""
        # Each start-up phase's time in the log: a slow pod's start is read there (docs/RUNBOOK.md)
        started = time.monotonic()
        self.model: CausalLM = load_model(
            model_dir, self.config, self.device, self.dtype, progress=progress, tp=self.tp
        )
        if progress:
            log.info("weights on %s in %.1fs", self.device, time.monotonic() - started)
        if self._peers is not None:
            init_process_group(self.tp, self._peers.rendezvous(), self.device)

        cfg = self.config
        self._block_shape = (self.block_size, cfg.num_key_value_heads // self.tp.size, cfg.head_dim)
        self.block_bytes = 2 * cfg.num_hidden_layers * math.prod(self._block_shape) * self.dtype.itemsize
        use_graphs = self.device.type == "cuda" and not enforce_eager
        if self.device.type == "cuda" and kernel_compile.available():
            self._precompile(max_num_seqs, use_graphs, profile=not kv_cache_memory)
        budget = kv_cache_memory or self._auto_kv_budget(gpu_memory_utilization, max_num_seqs, use_graphs)
        self.num_blocks = self._agree_on_blocks(budget // self.block_bytes)
        needed = -(-self.max_model_len // self.block_size)
        if self.num_blocks < needed:
            raise ValueError(
                f"KV cache of {budget / 2**20:.0f} MiB holds {self.num_blocks} blocks of "
                f"{self.block_size} tokens; "
                f"one sequence of max_model_len {self.max_model_len} needs {needed}: "
                "raise kv_cache_memory / gpu_memory_utilization or lower max_model_len"
            )
        # On the GPU one extra block, owned by no sequence, takes the K/V writes of CUDA-graph padding rows.
        self.kv_cache = self._allocate_cache(self.num_blocks + use_graphs)
        self.kv_cache_bytes = self.kv_cache.numel() * self.kv_cache.element_size()
        self.model.bind_kv_cache(self.kv_cache)
        if use_graphs:
            started = time.monotonic()
            cache = CacheLayout(
                max_blocks_per_seq=-(-self.max_model_len // self.block_size), block_size=self.block_size,
                scratch_block=self.num_blocks, max_context_len=self.max_model_len, device=self.device,
            )  # fmt: skip
            self.graphs = DecodeGraphs(self._forward_logits, cache, max_batch=max_num_seqs, progress=progress)
            # mixed steps need the varlen attention kernel, whose grid covers any split of the tokens
            if triton_attention.supports_head_dim(cfg.head_dim):
                self.mixed_graphs = MixedGraphs(self.model, cache, max_seqs=max_num_seqs, progress=progress)
            if progress:
                log.info("captured the CUDA graphs in %.1fs", time.monotonic() - started)

    @property
    def mixed_step_sizes(self) -> tuple[int, ...]:
        """The token counts a step with a prompt chunk is padded to (its CUDA graphs); () when eager."""
        return () if self.mixed_graphs is None else tuple(self.mixed_graphs.sizes)

    def _precompile(self, max_num_seqs: int, use_graphs: bool, profile: bool) -> None:
        """Compiles the Triton kernels of start-up's steps several at a time (kernel_compile), on a
        cache just big enough: the decode batches (the graphs' sizes), the mixed steps the graphs
        capture (eager: warm-up's prompts) and, when the KV cache is sized by it (`profile`), the
        profiling prefill. A step launching a variant not compiled here compiles it when it first
        comes, as without this."""
        blocks = list(range(-(-self.max_model_len // self.block_size)))
        prompts = MIXED_GRAPH_TOKENS if use_graphs else self._warmup_lengths()
        steps = [[ScheduledSeq([0] * self.max_model_len, 0, blocks)]] if profile else []
        steps += [[ScheduledSeq([0], 0, blocks[:1])] * b for b in batch_sizes(max_num_seqs)]
        steps += [
            [ScheduledSeq([0] * n, 0, blocks), ScheduledSeq([0], n, blocks)]
            for n in sorted({min(n, self.max_model_len - 1) for n in prompts} - {0})
        ]
        started = time.monotonic()
        self.num_blocks = len(blocks)
        self.model.bind_kv_cache(self._allocate_cache(len(blocks)))
        with torch.inference_mode(), kernel_compile.precompiling():
            for batch in steps:
                self.execute(batch)
        self.model.bind_kv_cache(self._allocate_cache(0))
        torch.cuda.empty_cache()  # the pass's activations and cache, before the KV cache is sized
        log.info("compiled the start-up's GPU kernels in %.1fs", time.monotonic() - started)

    def _allocate_cache(self, num_blocks: int) -> torch.Tensor:
        cfg = self.config
        shape = (2, cfg.num_hidden_layers, num_blocks, *self._block_shape)
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    def _auto_kv_budget(self, utilization: float, max_num_seqs: int, use_graphs: bool) -> int:
        if self.device.type != "cuda":
            return CPU_KV_CACHE_BYTES
        # Profile the largest step (one max_model_len prefill) against a just-big-enough cache; the KV
        # cache then gets the free memory less that step's activations, the graphs' share (the decode
        # graphs' logits, the mixed-step graphs' pool) and the (1 - utilization) share of the card
        # kept as headroom.
        torch.cuda.empty_cache()
        weights = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        blocks = self.num_blocks = -(-self.max_model_len // self.block_size)
        self.model.bind_kv_cache(self._allocate_cache(blocks))
        with torch.inference_mode():  # on every rank at once (tensor parallel): no hand-over
            self.execute([ScheduledSeq([0] * self.max_model_len, 0, list(range(blocks)))])
        torch.cuda.synchronize(self.device)
        activations = torch.cuda.max_memory_allocated(self.device) - weights - blocks * self.block_bytes
        if use_graphs:
            # the mixed-step graphs keep a pool for their largest step (MIXED_GRAPH_TOKENS[-1] tokens)
            # for good, beside any eager step: estimated from the profiled step, per token
            activations += activations * MIXED_GRAPH_TOKENS[-1] // self.max_model_len
        # The sampler at a full decode batch, which start-up's sampler warm-up reaches: top-k/top-p
        # holds the logits in ~12 float32 copies at its peak (the sort's values, int64 indices and
        # workspace, softmax, cumsum, masks, the scatter, the noise; counted from the code).
        activations += SAMPLER_PEAK_LOGITS * max_num_seqs * self.config.vocab_size * 4
        self.model.bind_kv_cache(self._allocate_cache(0))
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        budget = free - int(total * (1 - utilization)) - activations
        log.info(
            "GPU memory: %.1f GiB total, %.1f GiB free after weights (%.1f GiB); activations %.1f GiB; "
            "KV cache %.1f GiB",
            total / 2**30, free / 2**30, weights / 2**30, activations / 2**30, budget / 2**30,
        )  # fmt: skip
        # Not raised here when <= 0 (the log above shows it): the other ranks would wait at
        # _agree_on_blocks for this one. 0 blocks fails the block-count check on every rank alike.
        return max(budget, 0)

    def _pack(self, batch: list[ScheduledSeq]) -> PackedStep:
        return pack(
            batch, block_size=self.block_size, num_blocks=self.num_blocks, max_model_len=self.max_model_len,
            vocab_size=self.config.vocab_size,
        )  # fmt: skip

    def _to_device(
        self, step: PackedStep
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor]:
        def dev(values: np.ndarray, dtype: torch.dtype = torch.int64) -> torch.Tensor:
            # pinned: queued, not waiting for a step in flight (async scheduling)
            return to_device(values, dtype, self.device)

        meta = AttentionMetadata(
            slot_mapping=dev(step.slots),
            cu_seqlens_q=dev(step.cu_seqlens, torch.int32),
            start_pos=dev(step.start),
            context_lens=dev(step.end),
            block_tables=dev(step.tables, torch.int32),
            max_query_len=step.max_query_len,
            max_context_len=int(step.end.max()),
        )
        return dev(step.input_ids), dev(step.positions), meta, dev(step.last_token)

    def _agree_on_blocks(self, num_blocks: int) -> int:
        """The smallest of the ranks' block counts: every rank's cache must hold every block id."""
        if self.tp.size == 1:
            return num_blocks
        count = torch.tensor([num_blocks], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MIN)
        return int(count.item())

    @torch.inference_mode()
    def run(self, batch: list[ScheduledSeq], feed: TokenFeed | None = None) -> torch.Tensor:
        """One forward pass over all sequences (packed into one token batch); writes their new K/V into
        the cache and returns float32 logits `[len(batch), vocab]` of each entry's last token.
        Tensor parallel: on every rank, with the batch checked here before any other rank sees it.
        (A decode step that fits the decode graphs is not checked: its tokens were sampled and its
        blocks allocated by the engine, and checking it would cost a pass over every block table.)
        `feed`: input tokens still on the device, written over the listed chunks' last tokens (one
        rank only, `feeds_tokens`)."""
        if not batch:
            raise ValueError("empty batch")
        if self._workers is None:
            return self.execute(batch, feed=feed)
        if feed is not None:
            raise ValueError("tensor parallel: the workers need the step's token ids (no TokenFeed)")
        prepared = None if self._graph_step(batch) else self._pack(batch)
        try:
            self._workers.send(batch)
            return self.execute(batch, prepared)
        except Exception as exc:
            raise self._workers.step_failed(exc) from exc

    def _graph_step(self, batch: list[ScheduledSeq]) -> bool:
        return self.graphs is not None and self.graphs.fits([len(s.token_ids) for s in batch])

    def execute(
        self, batch: list[ScheduledSeq], prepared: PackedStep | None = None, feed: TokenFeed | None = None
    ) -> torch.Tensor:
        """`run` on this rank alone (call under inference_mode): what a tensor-parallel worker does
        with each batch rank 0 sends it. `prepared`: the batch's `_pack`, if already built."""
        if self._graph_step(batch):
            return self.graphs.run(
                [s.token_ids[0] for s in batch], [s.start_pos for s in batch], [s.block_table for s in batch],
                feed,
            )  # fmt: skip
        step = prepared or self._pack(batch)
        if self.mixed_graphs is not None and self.mixed_graphs.fits(step):
            last_hidden = self.mixed_graphs.run(step, feed)
        else:
            input_ids, positions, meta, last_token = self._to_device(step)
            if feed is not None:
                at = to_device(step.last_token[feed.chunks], torch.int64, self.device)
                feed.write(input_ids, at, to_device(feed.rows, torch.int64, self.device))
            last_hidden = self.model(input_ids, positions, meta)[last_token]
        return self.model.compute_logits(last_hidden).float()

    def _forward_logits(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """A decode step (one token per sequence) as captured in a CUDA graph."""
        return self.model.compute_logits(self.model(input_ids, positions, meta)).float()

    def warmup(self) -> None:
        """Forward passes so the first requests pay no lazy initialisation. Eager on the GPU
        (`enforce_eager`), they compile each launch shape the prefill attention kernel picks by prompt
        length (2..256 tokens, then flat): compiling one took hundreds of ms, and at 64 streams a
        first mixed step that paid it set the TTFT and inter-token P99. With CUDA graphs these steps
        replay the mixed-step graphs, whose capture compiled what they launch; a step above the
        largest graph (1,024 tokens) whose longest chunk is under 16 tokens would still compile its
        launch shape when it first comes. Writes the first blocks, so call it before serving."""
        lengths = self._warmup_lengths()
        for n in lengths:
            blocks = list(range(-(-(n + 1) // self.block_size)))
            # a prompt, and beside it a sequence decoding: the mixed step's form
            self.run([ScheduledSeq([0] * n, 0, blocks), ScheduledSeq([0], n, blocks)])
        if self.graphs is None:  # eager: no graph capture has compiled the decode form
            self.run([ScheduledSeq([0], lengths[0], list(range(-(-(lengths[0] + 1) // self.block_size))))])

    def _warmup_lengths(self) -> list[int]:
        if self.device.type == "cuda":
            return [n for n in (2, 4, 8, 16, 32, 64, 128, 256) if n < self.max_model_len]
        return [min(4, self.block_size, self.max_model_len)]

    def on_failure(self, callback: Callable[[str], None]) -> None:
        """Tensor parallel: `callback(message)` runs (on another thread) once a worker has died or the
        ranks have fallen out of step; the runner is unusable from then on. No-op with one rank."""
        if self._workers is not None:
            self._workers.on_failure = callback

    def close(self) -> None:
        """Tensor parallel: ends the other ranks' processes and leaves the process group. Idempotent;
        a no-op with one rank."""
        peers, self._peers, self._workers = self._peers, None, None
        if peers is not None:
            # the graphs hold NCCL collectives: freed first (CapturedGraphs.release); after a failure a
            # graph may wait on a dead peer forever, so no synchronize then
            for graphs in (self.graphs, self.mixed_graphs):
                if graphs is not None:
                    graphs.release(sync=getattr(peers, "error", None) is None)
            self.graphs = self.mixed_graphs = None
            peers.close()


def _rank_device(device: torch.device, tp: TensorParallel) -> torch.device:
    """This rank's device: the CPU, or GPU `rank` (the pod's GPUs are the visible ones)."""
    if tp.size == 1 or device.type == "cpu":
        return device
    if device.index not in (None, 0):
        raise ValueError(
            f"device {device} with tensor_parallel_size {tp.size}: rank r runs on cuda:r; "
            "pick the GPUs with CUDA_VISIBLE_DEVICES and use device cuda"
        )
    visible = torch.cuda.device_count()
    if visible < tp.size:
        raise ValueError(f"tensor_parallel_size {tp.size} needs {tp.size} GPUs; {visible} visible")
    rank_device = torch.device("cuda", tp.rank)
    torch.cuda.set_device(rank_device)  # Triton and CUDA graphs launch on the current device
    return rank_device
