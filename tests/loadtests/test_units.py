"""Prompt set, max_tokens distribution and load shapes: pure functions, no server."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from r1load.prompts import load_prompts, max_tokens_sampler
from r1load.schedule import plan
from r1load.slo import three_digit_buckets

REPO = Path(__file__).resolve().parents[2]


def test_prompt_set_has_a_length_mix() -> None:
    prompts = load_prompts()
    kinds = {p.kind for p in prompts}
    assert kinds == {"short", "medium", "long"}
    by_kind = {k: [len(p.text) for p in prompts if p.kind == k] for k in kinds}
    assert max(by_kind["short"]) < min(by_kind["medium"]) < max(by_kind["medium"]) < min(by_kind["long"])


def test_bad_prompt_file_names_the_line(tmp_path) -> None:
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"kind": "short", "prompt": "hi"}\n{"prompt": "no kind"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2"):
        load_prompts(bad)


@pytest.mark.parametrize(
    ("spec", "allowed"),
    [("64", {64}), ("16-18", {16, 17, 18}), ("32,64", {32, 64}), ("32:3,256:1", {32, 256})],
)
def test_max_tokens_forms(spec: str, allowed: set[int]) -> None:
    rng = random.Random(1)
    seen = {max_tokens_sampler(spec)(rng) for _ in range(300)}
    assert seen == allowed


def test_weighted_max_tokens_follow_the_weights() -> None:
    rng = random.Random(2)
    sample = [max_tokens_sampler("32:3,256:1")(rng) for _ in range(4000)]
    assert 0.7 < sample.count(32) / len(sample) < 0.8


@pytest.mark.parametrize("spec", ["0", "abc", "64-16", "32:0", ""])
def test_bad_max_tokens(spec: str) -> None:
    with pytest.raises(ValueError, match="--max-tokens"):
        max_tokens_sampler(spec)


def test_steady_shape_holds_the_users_until_run_time() -> None:
    assert {plan("steady", 8, t, 60, 4) for t in range(0, 60, 5)} == {8}
    assert plan("steady", 8, 60, 60, 4) is None  # the run is over
    assert plan("steady", 8, 1e6, None, 4) == 8  # no -t: until interrupted


def test_step_shape_ramps_in_steps() -> None:
    users = [plan("step", 8, t, 80, 4) for t in (0, 19, 20, 39, 40, 60, 79, 80)]
    assert users == [2, 2, 4, 4, 6, 8, 8, None]


def test_spike_shape_spikes_in_the_middle_fifth() -> None:
    users = [plan("spike", 20, t, 100, 4) for t in (0, 39, 40, 59, 60, 99)]
    assert users == [5, 5, 20, 20, 5, 5]


def _gate(scenario: str) -> tuple[int, str]:
    """Runs tests/loadtests/gate_probe.py: importing Locust monkey-patches the whole process (gevent),
    so the real Locust objects live in a process of their own. Returns (gate's code, its table)."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("gate_probe.py")), scenario],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO / "loadtests")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    code, _, table = proc.stdout.partition("\n")
    return int(code), table


def test_p99_is_read_to_three_digits_so_the_gate_sees_a_small_breach() -> None:
    """Locust keeps two digits by default: a 15.4 s P99 would read 15 s and pass a 15 s gate."""
    assert [three_digit_buckets(v) for v in (57, 147, 3432, 15449, 58760)] == [57, 147, 3430, 15400, 58800]
    assert _gate("p99-15.4s-against-15s")[0] == 1
    assert _gate("p99-14.9s-against-15s")[0] == 0


def test_an_exception_in_a_task_fails_the_gate() -> None:
    """The gate's exit code replaces Locust's, which a raising task would have made non-zero."""
    code, table = _gate("exception")
    assert code == 1
    assert "exceptions raised in tasks" in table and "FAIL" in table
