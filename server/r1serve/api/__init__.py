"""The HTTP side: OpenAI-compatible routes, probes, metrics and graceful drain (FastAPI + uvicorn)."""
