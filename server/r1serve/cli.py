"""`r1serve serve MODEL_DIR` and `r1serve tiny-model OUT_DIR`.

Every `serve` flag is generated from r1serve.config.Settings, so flags and R1SERVE_* variables can
never drift apart; a flag given on the command line wins over the variable.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from r1serve.config import Settings
from r1serve.kernel_cache import use_writable_cache

if TYPE_CHECKING:
    from r1serve.engine.engine_child import EngineChild

# processName: with several API processes (`api_servers`) their lines interleave
LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", nargs="?", default=argparse.SUPPRESS, help="checkpoint directory (R1SERVE_MODEL)"
    )
    for name, field in Settings.model_fields.items():
        if name == "model":
            continue
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description} (R1SERVE_{name.upper()})"
        if field.annotation is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            parser.add_argument(flag, default=argparse.SUPPRESS, metavar=name.upper(), help=help_text)


def _settings(args: argparse.Namespace) -> Settings:
    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    try:
        return Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a rule across settings
            message = first["msg"].removeprefix("Value error, ")
            raise SystemExit(f"r1serve serve: invalid settings: {message}") from None
        where = ".".join(str(p) for p in first["loc"])
        raise SystemExit(f"r1serve serve: invalid setting {where} (--{where.replace('_', '-')} / "
                         f"R1SERVE_{where.upper()}): {first['msg']}") from None  # fmt: skip


def _quiet_probes(record: logging.LogRecord) -> bool:
    """Drop access-log lines of successful probes and scrapes (every few seconds, from every kubelet)."""
    from r1serve.api.drain import PROBE_PATHS

    args = record.args if isinstance(record.args, tuple) else ()
    return not (len(args) == 5 and args[2] in PROBE_PATHS and args[4] == 200)


def serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not settings.model.is_dir():
        print(f"r1serve serve: {settings.model}: not a directory", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    use_writable_cache()
    if settings.api_servers > 1:
        from r1serve.supervisor import supervise

        return supervise(settings)
    engine_child = None
    if settings.engine_process:
        from r1serve.engine.engine_child import start_engine_child

        # before the imports below: the engine process imports torch and loads the model meanwhile
        engine_child = start_engine_child(settings)
    fatal = run_api_server(settings, engine_child)
    if fatal is not None:
        print(f"r1serve serve: {fatal}", file=sys.stderr)
        return 1
    return 0


def run_api_server(
    settings: Settings, engine_child: EngineChild | None, sock: socket.socket | None = None
) -> str | None:
    """Serves HTTP until a drain ends (None) or the engine fails (its one-line message). `sock`: this
    API process's listening socket when there are several (`api_servers`); else it binds host:port."""
    import uvicorn

    from r1serve.api.app import create_app
    from r1serve.api.drain import DrainingServer

    fatal: list[str] = []
    server: DrainingServer | None = None

    def on_fatal(message: str) -> None:
        fatal.append(message)
        assert server is not None
        server.should_exit = True

    app = create_app(settings, on_fatal, engine_child)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=2,
        # Named, not "auto": a missing one fails at start rather than silently costing the API
        # process ~20% more CPU per streamed token (docs/PERFORMANCE.md).
        loop="uvloop", http="httptools",
        # Inside the pod the kubelet and Prometheus talk to the server directly; no proxy headers.
        proxy_headers=False, server_header=False,
    )  # fmt: skip
    logging.getLogger("uvicorn.access").addFilter(_quiet_probes)  # after Config: it sets up logging
    server = DrainingServer(config, app.state.server.drain, settings.drain_timeout)
    server.run(sockets=None if sock is None else [sock])
    return fatal[0] if fatal else None


def tiny_model(args: argparse.Namespace) -> int:
    from r1serve.tiny_model import write_tiny_model

    out = write_tiny_model(Path(args.out_dir), arch=args.arch, seed=args.seed)
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="r1serve", description="OpenAI-compatible DeepSeek-R1 inference server"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="serve a checkpoint over HTTP", argument_default=argparse.SUPPRESS)
    _add_settings_flags(p)
    p.set_defaults(func=serve)
    p = sub.add_parser("tiny-model", help="write a small random-weight checkpoint (for tests and demos)")
    p.add_argument("out_dir")
    p.add_argument("--arch", default="qwen2", choices=["qwen2", "llama"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=tiny_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
