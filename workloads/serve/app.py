"""The ASGI application (Starlette): routes, validation, batching and metrics.

Routes: `POST /v1/models/<name>:predict` (KServe v1), `POST /v1/models/<name>:explain` (same body,
Integrated Gradients attributions per instance), `POST /v2/models/<name>/infer` and
`GET /v2/models/<name>` (Open Inference Protocol v2), `GET /v2/health/live|ready`, `/healthz`,
`/readyz`, `/metrics`. Unless `ServeConfig.gate` is mode none, every route but the health
routes and `/metrics` needs credentials (see `auth`). Requests must be `application/json`;
bodies above `max_body_bytes` are refused with 413 while being read. Every 4xx answers
`{"error": "<field>: <reason>", "field", "reason"}`; bad input never yields a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from neuraxis.workloads.drift import DEFAULT_WINDOW
from neuraxis.workloads.serve.auth import NO_KEY, SCOPE_KEY, AuthMiddleware, Gate
from neuraxis.workloads.serve.limits import ConcurrencyLimit
from neuraxis.workloads.serve.metrics import ServeMetrics, route_label
from neuraxis.workloads.serve.model_loader import LoadedModel
from neuraxis.workloads.serve.responses import (
    check_finite_outputs,
    explain_response,
    v1_response,
    v2_metadata,
    v2_response,
)
from neuraxis.workloads.serve.runtime import BatchingConfig, ModelRuntime, ModelSlot
from neuraxis.workloads.serve.validation import (
    InvalidInputError,
    parse_json_body,
    parse_v1,
    parse_v2,
)

LOG = logging.getLogger(__name__)
DEFAULT_MAX_BODY_BYTES = 1 << 20
# Integrated Gradients runs N_STEPS forwards per instance: one request explains at most this many.
MAX_EXPLAIN_INSTANCES = 64

# Extra work that lives as long as the server (the edge agent's sync loops).
LifespanHook = Callable[[], AbstractAsyncContextManager[None]]


@dataclass(frozen=True)
class ServeConfig:
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    drift_window: int = DEFAULT_WINDOW  # rows in the PSI window of neuraxis_feature_drift
    gate: Gate = field(default_factory=Gate)  # authentication and rate limits (default: none)
    # Prediction requests handled at once; more get 429 with Retry-After. None: no limit.
    max_in_flight: int | None = None
    retry_after_s: int = 1


def error_response(exc: InvalidInputError) -> JSONResponse:
    body = {"error": str(exc), "field": exc.field, "reason": exc.reason}
    return JSONResponse(body, status_code=exc.status)


def is_json_content_type(header: str | None) -> bool:
    if header is None:
        return False
    media = header.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed `limit` bytes: from
    Content-Length before reading, or while streaming a chunked body."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InvalidInputError("body", f"{declared} bytes exceeds the limit of {limit} bytes", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InvalidInputError("body", f"more than the limit of {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


class MetricsMiddleware:
    """Counts requests by route template and status, times them, tracks in-flight requests."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_label(scope["path"])
        status = 500
        counted = route != "/metrics"

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = time.perf_counter()
        if counted:
            self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            if counted:
                self.metrics.in_flight.dec()
            key_id = scope.get(SCOPE_KEY, NO_KEY)
            self.metrics.observe(route, status, time.perf_counter() - start, key_id)


class ServeHandlers:
    def __init__(self, slot: ModelSlot, config: ServeConfig):
        self.slot = slot
        self.config = config
        self.shutting_down = False
        # One explanation at a time (each is N_STEPS forwards per row, off the event loop).
        self.explaining = asyncio.Lock()

    def runtime_for(self, name: str) -> ModelRuntime:
        runtime = self.slot.current
        if runtime is None:
            raise InvalidInputError("model", "no model loaded yet", 503)
        if name != runtime.model.name:
            served = runtime.model.name
            raise InvalidInputError("model", f"{name!r} not found (this serves {served!r})", 404)
        return runtime

    async def _rows(
        self, request: Request, runtime: ModelRuntime, v2: bool
    ) -> tuple[Any, list[list[float]]]:
        if not is_json_content_type(request.headers.get("content-type")):
            got = request.headers.get("content-type", "none")
            raise InvalidInputError("content-type", f"expected application/json, got {got}", 415)
        with runtime.batcher.arriving():
            body = parse_json_body(await read_body(request, self.config.max_body_bytes))
            parse = parse_v2 if v2 else parse_v1
            return body, parse(body, runtime.model.signature)

    async def _predict(self, request: Request, v2: bool) -> Response:
        try:
            runtime = self.runtime_for(request.path_params["name"])
            body, rows = await self._rows(request, runtime, v2)
            outputs = await runtime.batcher.submit(rows)
            check_finite_outputs(outputs, "inputs (row {i})" if v2 else "instances[{i}]")
        except InvalidInputError as exc:
            return error_response(exc)
        except ClientDisconnect:
            return Response(status_code=499)  # nobody is listening; recorded in metrics only
        except Exception:
            # The model itself failed (not the input): a 500 with a body, counted in the
            # metrics (NeuraxisServingErrors), the traceback in the log only.
            LOG.exception("inference failed")
            reason = "inference failed on the server; see the server log"
            return JSONResponse({"error": f"model: {reason}", "field": "model", "reason": reason},
                                status_code=500)  # fmt: skip
        self.slot.observe_served(runtime, rows)
        model: LoadedModel = runtime.model
        if v2:
            request_id = body.get("id")  # echoed back, as v2 asks
            return JSONResponse(v2_response(model.name, model.signature, outputs, request_id))
        return JSONResponse(v1_response(model.name, model.signature, outputs))

    async def predict_v1(self, request: Request) -> Response:
        return await self._predict(request, v2=False)

    async def infer_v2(self, request: Request) -> Response:
        return await self._predict(request, v2=True)

    async def explain_v1(self, request: Request) -> Response:
        from neuraxis.workloads.explain import baseline_for, integrated_gradients

        try:
            runtime = self.runtime_for(request.path_params["name"])
            model = runtime.model
            if model.explain_error is not None:
                raise InvalidInputError("model", f"cannot be explained: {model.explain_error}", 501)
            _, rows = await self._rows(request, runtime, v2=False)
            if len(rows) > MAX_EXPLAIN_INSTANCES:
                limit = MAX_EXPLAIN_INSTANCES
                raise InvalidInputError("instances", f"{len(rows)} given; at most {limit} here")
            baseline = baseline_for(model.profile, len(model.signature.features))
            import torch

            x = torch.tensor(rows, dtype=torch.float32)
            async with self.explaining:
                explanation = await asyncio.to_thread(
                    integrated_gradients, model.module, x, baseline, model.signature.task
                )
            body = explain_response(model.name, model.signature, baseline, explanation)
        except InvalidInputError as exc:
            return error_response(exc)
        except ClientDisconnect:
            return Response(status_code=499)
        return JSONResponse(body)

    async def metadata_v2(self, request: Request) -> Response:
        try:
            runtime = self.runtime_for(request.path_params["name"])
        except InvalidInputError as exc:
            return error_response(exc)
        model = runtime.model
        return JSONResponse(v2_metadata(model.name, model.signature, model.digest))

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        runtime = self.slot.current
        if runtime is None or self.shutting_down:
            return JSONResponse({"ready": False}, status_code=503)
        model = runtime.model
        return JSONResponse({"ready": True, "model": model.name, "version": model.version})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        reason = (
            "no such route (see /v1/models/<name>:predict, /v1/models/<name>:explain, "
            "/v2/models/<name>/infer)"
        )
    elif exc.status_code == 405:
        reason = (
            f"method {request.method} not allowed (allowed: {(exc.headers or {}).get('Allow')})"
        )
    else:
        reason = exc.detail
    body = {"error": f"{request.url.path}: {reason}", "field": "path", "reason": reason}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def build_app(
    model: LoadedModel,
    config: ServeConfig,
    metrics: ServeMetrics | None = None,
    slot: ModelSlot | None = None,
    hooks: Sequence[LifespanHook] = (),
) -> ASGIApp:
    """The server application serving `model` (installed at start-up, inside the event loop)."""
    metrics = metrics or ServeMetrics()
    slot = slot or ModelSlot(config.batching, metrics, drift_window=config.drift_window)
    handlers = ServeHandlers(slot, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await slot.install(model)
        async with contextlib.AsyncExitStack() as stack:
            for hook in hooks:
                await stack.enter_async_context(hook())
            try:
                yield
            finally:
                handlers.shutting_down = True
        await slot.close()

    async def metrics_route(request: Request) -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    routes = [
        Route("/v1/models/{name}:predict", handlers.predict_v1, methods=["POST"]),
        Route("/v1/models/{name}:explain", handlers.explain_v1, methods=["POST"]),
        Route("/v2/models/{name}/infer", handlers.infer_v2, methods=["POST"]),
        Route("/v2/models/{name}", handlers.metadata_v2, methods=["GET"]),
        Route("/v2/health/live", handlers.live, methods=["GET"]),
        Route("/v2/health/ready", handlers.ready, methods=["GET"]),
        Route("/healthz", handlers.live, methods=["GET"]),
        Route("/readyz", handlers.ready, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
    ]
    app: ASGIApp = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error}
    )
    if config.max_in_flight is not None:  # inside the metrics: a 429 is counted like any answer
        app = ConcurrencyLimit(app, config.max_in_flight, config.retry_after_s)
    # Auth outside the in-flight limit (a refused key takes no slot), metrics outside auth:
    # refused requests (401/403/429) are counted too.
    guarded = AuthMiddleware(app, config.gate, on_limited=metrics.observe_limited)
    return MetricsMiddleware(guarded, metrics)
