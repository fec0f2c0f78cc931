"""The load test's own command-line flags; each also reads a LOCUST_* environment variable."""

from __future__ import annotations

from typing import Any


def add_arguments(parser: Any) -> None:
    add = parser.add_argument  # not a group: only the parser itself takes is_secret
    add(
        "--model",
        env_var="LOCUST_MODEL",
        default="",
        help="model name to send (default: first of /v1/models)",
    )
    add(
        "--stream-ratio",
        env_var="LOCUST_STREAM_RATIO",
        type=float,
        default=1.0,
        help="fraction of requests that stream (default 1.0: all)",
    )
    add(
        "--max-tokens",
        env_var="LOCUST_MAX_TOKENS",
        default="16-64",
        help="max_tokens distribution: 64 | 16-128 | 32,64 | 32:3,256:1 (default 16-64)",
    )
    add("--temperature", env_var="LOCUST_TEMPERATURE", type=float, default=0.6)
    add(
        "--prompts",
        env_var="LOCUST_PROMPTS",
        default="",
        help="JSONL prompt set (default: loadtests/prompts.jsonl)",
    )
    add(
        "--split",
        env_var="LOCUST_SPLIT",
        default="",
        help="weighted targets instead of --host: label@http://host:port=weight,... (a canary split)",
    )
    add(
        "--shape",
        env_var="LOCUST_SHAPE",
        choices=["steady", "step", "spike"],
        default="steady",
        help="load shape over --run-time: steady, step ramp to -u, or spike to -u (default steady)",
    )
    add("--steps", env_var="LOCUST_STEPS", type=int, default=4, help="steps of the step ramp (default 4)")
    add(
        "--slo-p99",
        env_var="LOCUST_SLO_P99",
        type=float,
        default=0.0,
        help="SLO gate: end-to-end P99 latency in seconds (0: not gated)",
    )
    add(
        "--slo-ttft-p99",
        env_var="LOCUST_SLO_TTFT_P99",
        type=float,
        default=0.0,
        help="SLO gate: time-to-first-token P99 in seconds (0: not gated)",
    )
    add(
        "--slo-error-ratio",
        env_var="LOCUST_SLO_ERROR_RATIO",
        type=float,
        default=-1.0,
        help="SLO gate: highest allowed failed/total request ratio (negative: not gated)",
    )
    add(
        "--api-key",
        env_var="LOCUST_API_KEY",
        default="",
        is_secret=True,
        help="Bearer key (prefer the env var: flags show up in process lists)",
    )
