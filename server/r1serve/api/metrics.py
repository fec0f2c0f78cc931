"""Prometheus metrics, named as in docs/DESIGN.md (the AnalysisTemplates and dashboards query them).

`inference_requests_total` counts every response of the API (/v1/...) by route template and status
code (an ASGI middleware, so 401/404/429/503 count too; probes and scrapes do not).
`inference_latency_seconds` is the end-to-end latency of successful inference requests, streams
included (measured until the last body byte). The engine gauges are read at scrape time, so they
are never stale.

With several API processes (`api_servers`, r1serve.supervisor) the supervisor sets
PROMETHEUS_MULTIPROC_DIR to a fresh directory: each process's counters and histograms live in files
there (prometheus-client writes them whenever the variable is set), and a scrape,
whichever process answers it, reports their sum (prometheus-client's multiprocess mode). The
engine gauges are the engine's own, the same in every process, so they are not summed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

prometheus_client.disable_created_metrics()

# Fine from 50 ms to 60 s so histogram_quantile(0.99, ...) resolves a latency gate's threshold.
LATENCY_BUCKETS = (
    0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0,
    6.0, 7.5, 10.0, 12.5, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0,
)  # fmt: skip
TOKEN_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
    10.0, 20.0, 40.0, 60.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Fine from 1 to 10 ms, where a step of a distill sits (the ITL target, 3x a batch-1 step, too).
# The ITL and the engine's step interval share them, so a dashboard compares like with like: with
# TOKEN_LATENCY_BUCKETS' 5 -> 10 ms, an ITL of 6 ms read as ~10 ms at P99 next to a 6 ms step.
STEP_BUCKETS = (
    0.001, 0.0015, 0.002, 0.0025, 0.003, 0.0035, 0.004, 0.0045, 0.005, 0.0055, 0.006, 0.007, 0.008,
    0.01, 0.0125, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0,
    60.0,
)  # fmt: skip
# A token's way from the engine to its request's handler: the pipe, the reader thread, the event loop's
# backlog. On an H200 host at 64 streams a pod, P50 ~1 ms and P99 2-4 ms (docs/PERFORMANCE.md).
DELIVERY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005, 0.0075, 0.01,
    0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
EngineState = tuple[int, int, float, int]  # running, waiting, KV usage, preemptions so far
API_PREFIX = "/v1/"
INFERENCE_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})
# Set by a route when a stream that started with 200 later fails, so the error-rate gate sees it.
LATE_STATUS_KEY = "r1serve.late_status"
# perf_counter() when the request reached the app: TTFT and E2E count from there (parsing, the chat
# template and tokenising included), as a client would.
ARRIVED_KEY = "r1serve.arrived"


class EngineGauges(Collector):
    """vllm:num_requests_running / _waiting, vllm:kv_cache_usage_perc and vllm:num_preemptions_total,
    read from the engine when scraped."""

    def __init__(self, model_name: str, read: Callable[[], EngineState | None]) -> None:
        self.model_name, self.read = model_name, read

    def collect(self) -> Iterable[Metric]:
        running, waiting, usage, preemptions = self.read() or (0, 0, 0.0, 0)
        preempted = CounterMetricFamily(
            "vllm:num_preemptions", "Sequences preempted for lack of KV cache memory.", labels=["model_name"]
        )
        preempted.add_metric([self.model_name], preemptions)
        yield preempted
        for name, doc, value in (
            ("vllm:num_requests_running", "Requests in the running batch.", running),
            ("vllm:num_requests_waiting", "Requests waiting to be scheduled.", waiting),
            ("vllm:kv_cache_usage_perc", "Fraction of KV cache blocks in use (0..1).", usage),
        ):
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([self.model_name], value)
            yield family


class Metrics:
    def __init__(
        self, model_name: str, engine_state: Callable[[], EngineState | None], multiprocess: bool = False
    ) -> None:
        self.model_name = model_name
        self.registry = r = CollectorRegistry()
        self.multiprocess = multiprocess  # one of several API processes: scrapes sum their files
        if not self.multiprocess:  # one API process's CPU and memory would pass for the server's
            prometheus_client.ProcessCollector(registry=r)
        prometheus_client.PlatformCollector(registry=r)
        label = ["model_name"]
        self.latency = Histogram(
            "inference_latency_seconds",
            "End-to-end latency of successful inference requests (streams until the last byte).",
            label, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "inference_requests", "HTTP responses by route and status code.",
            ["model_name", "route", "code"], registry=r,
        )  # fmt: skip
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "Request latency from arrival to the last token.",
            label, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time from arrival to the first generated token.",
            label, buckets=TOKEN_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds", "Time between consecutive generated tokens of a request.",
            label, buckets=STEP_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens processed.", label, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Tokens generated.", label, registry=r)
        self.batch_size = Histogram(
            "r1serve_batch_size", "Sequences computed together in one engine step.",
            label, buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.step_interval = Histogram(
            "r1serve_engine_step_interval_seconds",
            "Seconds between the starts of consecutive engine steps while it is busy: the pace at which "
            "every running stream gets a token, before the API process delivers it.",
            label, buckets=STEP_BUCKETS, registry=r,
        )  # fmt: skip
        self.token_delivery = Histogram(
            "r1serve_token_delivery_seconds",
            "Seconds from the engine handing a step's tokens over to a request's handler taking them, once "
            "per hand-over (tokens merged by a handler that fell behind: from the oldest). Includes the "
            "pipe, the event loop's backlog and a slow client's back-pressure; its variation, not its "
            "level, adds to the inter-token latency.",
            label, buckets=DELIVERY_BUCKETS, registry=r,
        )  # fmt: skip
        self.engine_gauges = EngineGauges(model_name, engine_state)
        r.register(self.engine_gauges)
        # Children exist from the start, so rate() has a zero to start from.
        for metric in (
            self.latency,
            self.e2e,
            self.ttft,
            self.itl,
            self.prompt_tokens,
            self.generation_tokens,
            self.batch_size,
            self.step_interval,
            self.token_delivery,
        ):
            metric.labels(model_name)
        # The series the gates divide exist at 0 before the first request: a series born with a
        # non-zero value loses that first increase in rate(), and a brand-new canary would look idle.
        for route in INFERENCE_ROUTES:
            for code in ("200", "500", "503"):
                self.requests.labels(model_name, route, code)

    def exposition(self) -> bytes:
        if not self.multiprocess:
            return prometheus_client.generate_latest(self.registry)
        registry = CollectorRegistry()  # every API process's files, summed
        MultiProcessCollector(registry)
        registry.register(self.engine_gauges)
        return prometheus_client.generate_latest(registry)

    def observe_request(self, route: str, code: int, seconds: float) -> None:
        self.requests.labels(self.model_name, route, str(code)).inc()
        if route in INFERENCE_ROUTES and 200 <= code < 300:
            self.latency.labels(self.model_name).observe(seconds)


class MetricsMiddleware:
    """Counts every HTTP response and times inference requests end to end (pure ASGI: streams too)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Only API traffic counts: kubelet probes (503 while loading or draining) and Prometheus
        # scrapes must neither add 5xx to the error-rate gate nor dilute it with their 200s.
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        start = scope[ARRIVED_KEY] = time.perf_counter()
        status = 500  # if the app dies before answering, uvicorn answers 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # a request refused before routing (a body over the limit) still counts under its route
            route = getattr(scope.get("route"), "path", None)
            route = route or (scope["path"] if scope["path"] in INFERENCE_ROUTES else "unmatched")
            status = scope.get(LATE_STATUS_KEY, status)
            self.metrics.observe_request(route, status, time.perf_counter() - start)
