"""Run an ASGI app on uvicorn. On SIGTERM uvicorn stops accepting connections, lets in-flight
requests finish (up to `graceful_timeout_s`), then runs the app's shutdown (batcher drain)."""

from __future__ import annotations

from starlette.types import ASGIApp

DEFAULT_GRACEFUL_TIMEOUT_S = 30


def run_server(
    app: ASGIApp,
    host: str,
    port: int,
    graceful_timeout_s: int = DEFAULT_GRACEFUL_TIMEOUT_S,
    log_level: str = "info",
) -> None:
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        timeout_graceful_shutdown=graceful_timeout_s,
        log_level=log_level,
        access_log=False,  # per-request logs cost more than the request; /metrics counts them
    )
    uvicorn.Server(config).run()
