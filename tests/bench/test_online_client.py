"""bench/online.py's client, which `python -m bench` measures the server with: split over processes
so that it is not itself the bottleneck, it must still send every request once and count every token."""

from __future__ import annotations

import math

import pytest

from bench import online


def test_a_level_split_over_client_processes_sends_every_request_once(start_server) -> None:
    server = start_server(served_model_name="bench", max_num_seqs=48)
    concurrency = online.STREAMS_PER_CLIENT + 8  # two client processes: 20 streams each
    run = online.run_level(server.base_url, "bench", concurrency, 2 * concurrency, 20, 6)
    assert len(run.results) == 2 * concurrency
    assert all(r.error is None and r.output_tokens == 6 and r.ttft > 0 for r in run.results)
    assert all(len(r.itls) <= 5 for r in run.results)  # a gap per chunk after the first; tokens may merge
    row = online.summarise(concurrency, run)
    assert row["errors"] == 0 and row["output_tok_s"] > 0 and row["client_cores"] > 0
    # the engine stepped back to back during the level, and the bench read its pace off /metrics
    assert run.server[online.STEP_INTERVAL][-1][1] > 0
    assert run.server[online.SERVER_TTFT][-1][1] == 2 * concurrency  # every request's first token
    assert 0 < row["engine_step_p50_ms"] <= row["engine_step_p99_ms"]
    assert 0 < row["delivery_p50_ms"] <= row["delivery_p99_ms"]  # and each token's way to its handler
    assert row["server_ttft_p99_ms"] > 0
    # the start-up phases the bench keeps from the server's log, ending where it became ready
    lines = online.start_up_log(server.log_path.read_text())
    assert any(" weights on cpu in " in line for line in lines)
    assert any(" loaded bench on cpu " in line for line in lines)
    assert " ready: serving bench" in lines[-1]


def test_bucket_quantile_interpolates_inside_a_bucket_as_prometheus_does() -> None:
    buckets = [(0.001, 0.0), (0.002, 50.0), (0.004, 100.0), (math.inf, 100.0)]
    assert online.bucket_quantile(0.5, buckets) == 0.002
    assert math.isclose(online.bucket_quantile(0.75, buckets), 0.003)
    # past the last finite bound: that bound, as histogram_quantile answers
    assert online.bucket_quantile(0.99, [(0.001, 0.0), (math.inf, 10.0)]) == 0.001
    assert math.isnan(online.bucket_quantile(0.99, [(0.001, 0.0), (math.inf, 0.0)]))
    assert math.isnan(online.bucket_quantile(0.99, []))
    # inside the first bucket, from 0; no +Inf bucket (a truncated scrape): no answer
    assert math.isclose(online.bucket_quantile(0.5, [(0.002, 10.0), (math.inf, 10.0)]), 0.001)
    assert math.isnan(online.bucket_quantile(0.5, [(0.001, 5.0), (0.002, 10.0)]))


def test_server_histograms_sum_their_series_and_count_a_level_s_increase() -> None:
    text = """# TYPE r1serve_engine_step_interval_seconds histogram
r1serve_engine_step_interval_seconds_bucket{le="0.002",model_name="a"} 3.0
r1serve_engine_step_interval_seconds_bucket{le="+Inf",model_name="a"} 4.0
r1serve_engine_step_interval_seconds_bucket{le="0.002",model_name="b"} 1.0
r1serve_engine_step_interval_seconds_bucket{le="+Inf",model_name="b"} 6.0
r1serve_engine_step_interval_seconds_count{model_name="a"} 4.0
r1serve_engine_step_interval_seconds_sum{model_name="a"} 0.01
# TYPE other_seconds histogram
other_seconds_bucket{le="+Inf"} 9.0
"""
    parsed = online.parse_histograms(text)
    assert parsed == {online.STEP_INTERVAL: [(0.002, 4.0), (math.inf, 10.0)]}
    # a bucket that appeared during the level counts from 0
    increase = online.histogram_increase(parsed[online.STEP_INTERVAL], [(math.inf, 4.0)])
    assert increase == [(0.002, 4.0), (math.inf, 6.0)]


def test_cpu_list_reads_what_taskset_takes() -> None:
    assert online.cpu_list("0-3,8") == {0, 1, 2, 3, 8}
    assert online.cpu_list("5") == {5}
    with pytest.raises(ValueError, match="not a CPU list"):
        online.cpu_list("0-3,")


def test_the_load_generator_gets_the_cpus_the_server_leaves() -> None:
    assert online.load_generator_cpus("0-3", set(range(16))) == set(range(4, 16))
    with pytest.raises(ValueError, match=r"\[16\] are not among"):
        online.load_generator_cpus("12-16", set(range(16)))
    with pytest.raises(ValueError, match="no CPU left"):
        online.load_generator_cpus("0-1", {0, 1})


def test_start_up_log_keeps_the_servers_lines_up_to_ready() -> None:
    text = """INFO:     Started server process [1]
2026-11-28 20:39:00,001 INFO engine r1serve.model_runner: weights on cuda in 2.1s
Loading weights ━━━━━━━━━━ 100%
2026-11-28 20:39:05,987 INFO engine r1serve.engine.loader: loaded bench on cuda in 9.9s
2026-11-28 20:39:06,008 INFO r1serve-api-1 r1serve.api.state: ready: serving bench
2026-11-28 20:39:06,010 INFO r1serve-api-0 r1serve.api.state: ready: serving bench
2026-11-28 20:40:00,000 INFO r1serve-api-0 r1serve.api.drain: signal 15: draining 0 in-flight requests
"""
    assert [line[24:] for line in online.start_up_log(text)] == [
        "INFO engine r1serve.model_runner: weights on cuda in 2.1s",
        "INFO engine r1serve.engine.loader: loaded bench on cuda in 9.9s",
        "INFO r1serve-api-1 r1serve.api.state: ready: serving bench",
    ]
