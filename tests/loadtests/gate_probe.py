"""python gate_probe.py SCENARIO: the SLO gate over a real Locust environment, in a process of its own
(importing Locust monkey-patches the process with gevent). Prints gate's exit code, then its table."""

from __future__ import annotations

import io
import sys
from types import SimpleNamespace

from locust.env import Environment
from r1load.chat import E2E
from r1load.slo import gate, use_three_digit_buckets
from rich.console import Console


def run(e2e_ms: float, exception: bool) -> tuple[int | None, str]:
    use_three_digit_buckets()  # as the locustfile does on import
    env = Environment(user_classes=[])
    env.create_local_runner()
    env.parsed_options = SimpleNamespace(slo_p99=15.0, slo_ttft_p99=0.0, slo_error_ratio=0.0)
    for _ in range(10):
        for kind, name in (("POST", "chat"), (E2E, "stream")):
            env.events.request.fire(
                request_type=kind,
                name=name,
                response_time=e2e_ms,
                response_length=0,
                exception=None,
                context={},
            )
    if exception:
        env.runner.log_exception("local", "boom", "Traceback (most recent call last): boom")
    out = io.StringIO()
    return gate(env, Console(file=out, width=200)), out.getvalue()


SCENARIOS = {
    "p99-15.4s-against-15s": (15_400.0, False),
    "p99-14.9s-against-15s": (14_900.0, False),
    "exception": (100.0, True),
}

if __name__ == "__main__":
    code, table = run(*SCENARIOS[sys.argv[1]])
    print(code)
    print(table)
