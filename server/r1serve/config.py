"""Server settings: one pydantic-settings model, filled from `R1SERVE_*` variables and CLI flags.

The table in docs/DESIGN.md is the contract; the Kubernetes ConfigMap sets the environment variables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ByteSize, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="R1SERVE_", extra="ignore", protected_namespaces=())

    model: Path = Field(description="checkpoint directory (Hugging Face layout)")
    served_model_name: str = Field("", description="the `model` clients send (default: the directory name)")
    model_revision: str = Field("", description="reported in /version")
    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(8080, ge=0, le=65535, description="port to listen on (0 = any free port)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights and KV dtype (auto: bf16 on GPU, fp32 on CPU)"
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda, cuda:N")
    max_model_len: int | None = Field(
        None, ge=2, description="prompt + output tokens (default min(config, 8192))"
    )
    max_num_seqs: int = Field(64, ge=1, description="sequences decoded together (1 = no batching)")
    max_num_batched_tokens: int = Field(
        2048, ge=16, description="tokens computed per engine step; longer prompts are prefilled in chunks"
    )
    # A step's prompt tokens delay every decode sharing it (that step is the ITL tail). Below roughly
    # 300 tokens a bf16 prefill chunk costs little more than the weight read a decode step does anyway
    # (an H100's FLOP/byte ridge); 512 keeps a mixed step within two to three decode steps of the
    # 1.5B-7B distills while a typical chat prompt still prefills in one step. With nothing decoding,
    # the whole max_num_batched_tokens budget applies, so a burst's first tokens are not held back.
    max_prefill_tokens_when_decoding: int = Field(
        512,
        ge=0,
        description="prompt tokens per engine step while any sequence is decoding (0 = no cap); on a GPU "
        "grown to fill the CUDA graph the step is padded to",
    )
    kv_cache_memory: ByteSize = Field(
        ByteSize(0), description="KV cache budget, bytes or '512MiB' (0 = auto)"
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="fraction of free GPU memory for weights + KV cache when auto"
    )
    block_size: int = Field(16, ge=1, le=1024, description="tokens per KV block")
    max_queue: int = Field(256, ge=0, description="waiting requests before 429")
    drain_timeout: float = Field(30.0, ge=0, description="seconds in-flight requests get after SIGTERM")
    max_request_bytes: int = Field(
        16 * 2**20, ge=0, description="largest request body; a larger one is a 413 (0 = no limit)"
    )
    api_key: SecretStr | None = Field(
        None, description="Bearer key required on /v1 (unset = open); use the variable, flags show in ps"
    )
    enforce_eager: bool = Field(False, description="never capture CUDA graphs")
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs one model is split over (tensor parallel over NCCL; the pod needs as many)"
    )
    # The engine thread and the event loop (HTTP, SSE, detokenising for every stream) share one GIL in
    # one process, and each engine step waits for HTTP work; in a process of its own it does not. On
    # an H200 that paid up to 64 streams (1.6x the tokens) and measured worse beyond, where the host
    # could not keep up (docs/PERFORMANCE.md): off by default, on in the GPU pods (components/gpu),
    # which take at most 64 sequences each.
    engine_process: bool = Field(
        False, description="run the engine (model, scheduler, sampler) in its own process (false: a thread)"
    )
    # Hides the host's per-step work (scheduling, staging, accounting: ~1.5 ms a step at 256
    # sequences on an H200's host) behind the GPU's; results arrive one step later. The CPU engine
    # gains nothing, so off by default; on in the GPU pods (components/gpu), where it served more
    # tokens per second at every level (docs/PERFORMANCE.md). No effect with tensor parallelism.
    async_scheduling: bool = Field(
        False, description="launch step n+1 before step n's tokens are read back (they stay on the GPU)"
    )
    # One API process spends 53-79 us of CPU per streamed token (HTTP, SSE, JSON, detokenising; the
    # figure depends on the core) and is the bound past ~64 streams on an H200 (docs/PERFORMANCE.md);
    # several listen on the port (SO_REUSEPORT) in front of the one engine process, under a
    # supervisor that starts, drains and stops them.
    api_servers: int = Field(
        1,
        ge=1,
        le=64,
        description="HTTP server processes in front of the engine process (needs engine_process)",
    )
    # The e2e tier's "slow version" (docs/E2E.md): on the CPU engine batching does not change
    # latency, so no real setting makes a version reliably slower than another. Never set in a deployment.
    test_delay_seconds: float = Field(
        0.0, ge=0, le=60, description="TEST ONLY: every completion waits this long before it starts"
    )

    @field_validator("api_key", mode="after")
    @classmethod
    def _empty_key_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty variable in a ConfigMap means "no key", not "the empty key".
        return value if value and value.get_secret_value() else None

    @model_validator(mode="after")
    def _api_servers_need_the_engine_process(self) -> Settings:
        if self.api_servers > 1 and not self.engine_process:
            raise ValueError(
                "api_servers > 1 needs engine_process=true (an engine thread lives in one process)"
            )
        return self

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model.resolve().name
