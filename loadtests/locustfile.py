"""Locust load test for the OpenAI-compatible r1serve API (streaming by default).

    locust -f loadtests/locustfile.py --headless -u 8 -r 2 -t 2m --host http://127.0.0.1:8080 \
        --shape step --max-tokens 32:3,256:1 --slo-p99 8 --slo-ttft-p99 2 --slo-error-ratio 0.01 \
        --csv out/run --html out/run.html

Distributed: the same file with `--master` on one process and `--worker --master-host ...` on the
others. See docs/LOADTESTS.md.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from locust import HttpUser, between, events, task
from locust.runners import WorkerRunner
from r1load.chat import chat
from r1load.options import add_arguments
from r1load.prompts import DEFAULT_PROMPTS, load_prompts, max_tokens_sampler
from r1load.shapes import R1Shape
from r1load.slo import gate, use_three_digit_buckets
from r1load.split import parse_split, pick

__all__ = ["ChatUser", "R1Shape"]
use_three_digit_buckets()  # P99s read to 3 digits, in the master and every worker (r1load/slo.py)


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    add_arguments(parser)


@events.init.add_listener
def _check_options(environment, **_kwargs) -> None:
    """Refuse bad flags before any user starts: one line, non-zero exit."""
    options = environment.parsed_options
    if options is None:
        return
    try:
        max_tokens_sampler(options.max_tokens)
        parse_split(options.split)
        load_prompts(Path(options.prompts) if options.prompts else DEFAULT_PROMPTS)
        if not 0.0 <= options.stream_ratio <= 1.0:
            raise ValueError(f"--stream-ratio must be within 0..1, got {options.stream_ratio}")
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"locustfile: {exc}\n")
        sys.exit(2)


@events.quitting.add_listener
def _slo_gate(environment, **_kwargs) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return  # the master holds the merged statistics
    code = gate(environment)
    if code is not None:
        environment.process_exit_code = code


class ChatUser(HttpUser):
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.rng = random.Random()
        self.prompts = load_prompts(Path(options.prompts) if options.prompts else DEFAULT_PROMPTS)
        self.max_tokens = max_tokens_sampler(options.max_tokens)
        self.headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        self.targets = parse_split(options.split)
        base = self.targets[0].url if self.targets else ""
        self.model = options.model or self._served_model(base)

    def _served_model(self, base: str) -> str:
        with self.client.get(
            f"{base}/v1/models", headers=self.headers, name="/v1/models", catch_response=True
        ) as r:
            try:
                return r.json()["data"][0]["id"]
            except (ValueError, KeyError, IndexError):
                r.failure(f"cannot read the model name from /v1/models (HTTP {r.status_code}); pass --model")
                return "unknown"

    @task
    def chat_completion(self) -> None:
        options = self.environment.parsed_options
        prompt = self.rng.choice(self.prompts)
        payload = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt.text}],
            "max_tokens": self.max_tokens(self.rng),
            "temperature": options.temperature,
        }
        target = pick(self.targets, self.rng)
        stream = self.rng.random() < options.stream_ratio
        if target is None:
            chat(self, payload, stream, self.headers)
        else:
            chat(self, payload, stream, self.headers, target.url, target.label)
