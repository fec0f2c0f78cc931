"""TRITON_CACHE_DIR is checked before anything compiles: one Triton cannot add kernels to is
replaced by a fresh temporary directory, with a warning, rather than failing the start-up."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from r1serve.kernel_cache import cache_problem, use_writable_cache


def test_a_usable_cache_is_kept(tmp_path: Path) -> None:
    env = {"TRITON_CACHE_DIR": str(tmp_path / "triton")}
    use_writable_cache(env)
    assert env == {"TRITON_CACHE_DIR": str(tmp_path / "triton")}
    assert (tmp_path / "triton").is_dir() and not list((tmp_path / "triton").iterdir())  # no litter


def test_no_cache_setting_is_left_alone() -> None:
    env: dict[str, str] = {}
    use_writable_cache(env)
    assert env == {}


@pytest.mark.parametrize("min_free", [None, 2**62], ids=["not-writable", "full"])
def test_an_unusable_cache_falls_back_with_a_warning(
    tmp_path: Path, min_free: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # under a regular file: not creatable even by root (tests may run as root, where modes do not stop writes)
    configured = tmp_path / "cache" if min_free else blocker / "cache"
    env = {"TRITON_CACHE_DIR": str(configured)}
    with caplog.at_level(logging.WARNING):
        use_writable_cache(env, **({"min_free": min_free} if min_free else {}))
    fallback = Path(env["TRITON_CACHE_DIR"])
    assert fallback != configured and fallback.is_dir() and cache_problem(fallback) is None
    expected = "MiB free" if min_free else "is not writable"
    assert f"kernel cache {configured} " in caplog.text and expected in caplog.text
    fallback.rmdir()
