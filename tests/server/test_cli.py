"""`r1serve` command line: settings from flags and R1SERVE_* variables, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from r1serve.cli import _settings, build_parser
from r1serve.config import Settings


def settings(*argv: str) -> Settings:
    return _settings(build_parser().parse_args(["serve", *argv]))


def test_every_setting_has_a_flag_and_a_variable() -> None:
    help_text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    for name in Settings.model_fields:
        if name != "model":
            assert f"--{name.replace('_', '-')}" in help_text
        assert f"R1SERVE_{name.upper()}" in help_text


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("R1SERVE_MAX_NUM_SEQS", "3")
    monkeypatch.setenv("R1SERVE_KV_CACHE_MEMORY", "512MiB")
    monkeypatch.setenv("R1SERVE_ENFORCE_EAGER", "true")
    s = settings(str(tmp_path))
    assert (s.max_num_seqs, int(s.kv_cache_memory), s.enforce_eager) == (3, 512 * 2**20, True)
    s = settings(str(tmp_path), "--max-num-seqs", "5", "--kv-cache-memory", "1GiB", "--no-enforce-eager")
    assert (s.max_num_seqs, int(s.kv_cache_memory), s.enforce_eager) == (5, 2**30, False)


def test_model_from_environment_and_name_defaults_to_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("R1SERVE_MODEL", str(tmp_path / "DeepSeek-R1-Distill-Qwen-7B"))
    assert settings().model_name == "DeepSeek-R1-Distill-Qwen-7B"
    assert settings("--served-model-name", "r1").model_name == "r1"


def test_api_key_is_secret_and_empty_means_open(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("R1SERVE_API_KEY", "hunter2")
    s = settings(str(tmp_path))
    assert s.api_key.get_secret_value() == "hunter2" and "hunter2" not in repr(s)
    monkeypatch.setenv("R1SERVE_API_KEY", "")
    assert settings(str(tmp_path)).api_key is None


def run_cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "r1serve.cli", *argv], capture_output=True, text=True, timeout=300, env=env
    )


def test_invalid_setting_is_one_line_and_nonzero(tmp_path: Path) -> None:
    r = run_cli("serve", str(tmp_path), "--max-num-seqs", "many")
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [
        "r1serve serve: invalid setting max_num_seqs (--max-num-seqs / R1SERVE_MAX_NUM_SEQS): "
        "Input should be a valid integer, unable to parse string as an integer"
    ]


def test_missing_model_directory(tmp_path: Path) -> None:
    r = run_cli("serve", str(tmp_path / "nope"))
    assert r.returncode == 1 and r.stderr.strip() == f"r1serve serve: {tmp_path / 'nope'}: not a directory"


@pytest.mark.slow
def test_bad_checkpoint_exits_nonzero_with_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.name != "model.safetensors":
            (broken / f.name).write_bytes(f.read_bytes())
    r = run_cli("serve", str(broken), "--host", "127.0.0.1", "--port", "0")
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("r1serve serve: ") and "safetensors" in last, r.stderr


def test_tiny_model_command(tmp_path: Path) -> None:
    r = run_cli("tiny-model", str(tmp_path / "m"))
    assert r.returncode == 0, r.stderr
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    }


def test_access_log_drops_only_successful_probes() -> None:
    import logging

    from r1serve.cli import _quiet_probes

    def record(path: str, status: int) -> logging.LogRecord:
        args = ("127.0.0.1:5", "GET", path, "1.1", status)
        return logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', args, None)

    assert not _quiet_probes(record("/ready", 200)) and not _quiet_probes(record("/metrics", 200))
    assert _quiet_probes(record("/ready", 503)) and _quiet_probes(record("/v1/completions", 200))
