"""Before the weights are loaded: liveness answers, readiness and the API say 503 with Retry-After.

In-process, with the app's lifespan not started, so the "still loading" state lasts for the test
(a real load of the tiny model is too quick to observe reliably from outside).
"""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi.testclient import TestClient
from r1serve.api.app import create_app
from r1serve.config import Settings


def test_loading_state(tmp_path: Path) -> None:
    fatal: list[str] = []
    app = create_app(Settings(model=tmp_path / "m"), fatal.append)
    client = TestClient(app)  # no `with`: the lifespan (the model load) does not start
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json() == {"status": "loading"}
    assert int(ready.headers["retry-after"]) > 0
    r = client.post(
        "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert r.status_code == 503 and r.json()["error"]["code"] == "loading" and r.headers["retry-after"]
    assert client.get("/v1/models").status_code == 503
    metrics = client.get("/metrics").text
    assert 'vllm:num_requests_waiting{model_name="m"} 0.0' in metrics
    assert 'inference_requests_total{code="503",model_name="m",route="/v1/chat/completions"} 1.0' in metrics
    assert client.get("/version").json()["model"] == "m"
    assert fatal == []


def test_bad_checkpoint_reports_fatal_once_loaded(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    fatal: list[str] = []
    reported = threading.Event()

    def on_fatal(message: str) -> None:
        fatal.append(message)
        reported.set()

    with TestClient(create_app(Settings(model=tmp_path / "m"), on_fatal)) as client:
        assert reported.wait(120)  # the load (started by the lifespan) fails on the empty directory
        assert client.get("/ready").status_code == 503
    assert len(fatal) == 1 and "config.json" in fatal[0] and "\n" not in fatal[0]
