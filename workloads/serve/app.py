"""The ASGI application (Starlette): routes, validation, batching and metrics.

Routes: `POST /v1/models/<name>:predict` (KServe v1), `POST /v1/models/<name>:explain` (same body,
Integrated Gradients attributions per instance), the Open Inference Protocol v2 (`GET /v2`,
`GET /v2/health/live|ready`, `GET /v2/models/<name>[/versions/<v>]` metadata,
`GET /v2/models/<name>[/versions/<v>]/ready`, `POST /v2/models/<name>[/versions/<v>]/infer`),
`/healthz`, `/readyz`, `/metrics`; the same v2 service over gRPC when `GrpcConfig` asks for it
(grpc_server.py, same event loop, same handlers). Unless `ServeConfig.gate` is mode none, every
route but the health routes and `/metrics` needs credentials (see `auth`). Request bodies are
JSON: `application/json`, or no Content-Type at all (read as JSON, as KServe and Triton servers
do); a v2 infer may use the binary tensor extension (`Inference-Header-Content-Length`). Bodies
above `max_body_bytes` are refused with 413 while being read. Every 4xx answers
`{"error": "<field>: <reason>", "field", "reason"}`, in ASCII-escaped JSON (a lone surrogate from
the request stays writable); bad input never yields a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
    v2_server_metadata,
)
from neuraxis.workloads.serve.runtime import BatchingConfig, ModelRuntime, ModelSlot
from neuraxis.workloads.serve.validation import (
    InvalidInputError,
    V2Request,
    attach_binary_inputs,
    parse_json_body,
    parse_v1,
    parse_v2_request,
    refuse_binary_inputs,
    split_binary_body,
)

LOG = logging.getLogger(__name__)
if TYPE_CHECKING:
    from neuraxis.workloads.serve.grpc_server import GrpcConfig

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


class JSONAnswer(JSONResponse):
    """JSON with every non-ASCII character escaped. A request may carry a lone surrogate (valid
    in a JSON string, not encodable as UTF-8) that an error message or the echoed `id` repeats;
    escaped, it is still the same JSON string and the answer can always be written."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
        return text.encode("ascii")


def error_response(exc: InvalidInputError) -> JSONResponse:
    body = {"error": str(exc), "field": exc.field, "reason": exc.reason}
    return JSONAnswer(body, status_code=exc.status)


def media_type(header: str) -> str:
    return header.split(";", 1)[0].strip().lower()


def is_json_content_type(header: str | None) -> bool:
    """JSON, or no Content-Type at all (tritonclient.http sends none)."""
    if header is None:
        return True
    media = media_type(header)
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


async def forward(runtime: ModelRuntime, rows: list[list[float]]) -> list[Any]:
    """The batched forward. A failure of the model itself (not of the input) is a 500 with a
    body, on every protocol, counted in the metrics (NeuraxisServingErrors); the traceback goes
    to the log only."""
    try:
        return await runtime.batcher.submit(rows)
    except (InvalidInputError, ClientDisconnect):
        raise
    except Exception as exc:
        LOG.exception("inference failed")
        reason = "inference failed on the server; see the server log"
        raise InvalidInputError("model", reason, status=500) from exc


class ServeHandlers:
    def __init__(self, slot: ModelSlot, config: ServeConfig):
        self.slot = slot
        self.config = config
        self.shutting_down = False
        # One explanation at a time (each is N_STEPS forwards per row, off the event loop).
        self.explaining = asyncio.Lock()

    def runtime_for(self, name: str, version: str | None = None) -> ModelRuntime:
        """The runtime serving model `name` (and `version`, when given), or the 503/404 error."""
        runtime = self.slot.current
        if runtime is None:
            raise InvalidInputError("model", "no model loaded yet", 503)
        if name != runtime.model.name:
            served = runtime.model.name
            raise InvalidInputError("model", f"{name!r} not found (this serves {served!r})", 404)
        served_version = runtime.model.signature.model_version
        if version is not None and version != served_version:
            raise InvalidInputError(
                "version",
                f"{version!r} of {name!r} not found (this serves {served_version!r})",
                404,
            )
        return runtime

    def server_ready(self) -> bool:
        return self.slot.current is not None and not self.shutting_down

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether `name` (`version`) serves; an unknown model or version is a 404 error."""
        if not self.server_ready():
            return False
        self.runtime_for(name, version)
        return True

    async def infer(self, runtime: ModelRuntime, request: V2Request) -> dict[str, Any]:
        """One v2 inference on `runtime` (REST and gRPC): batched forward, finite check, drift."""
        outputs = await forward(runtime, request.rows)
        check_finite_outputs(outputs, "inputs (row {i})")
        self.slot.observe_served(runtime, request.rows)
        model: LoadedModel = runtime.model
        return v2_response(
            model.name, model.signature, outputs, request.request_id, request.outputs
        )

    async def _body(self, request: Request, v2: bool) -> Any:
        """The decoded JSON request (with binary tensors attached, for a v2 binary request)."""
        content_type = request.headers.get("content-type")
        header_length = request.headers.get("inference-header-content-length") if v2 else None
        binary_ok = header_length is not None and (
            content_type is None or media_type(content_type) == "application/octet-stream"
        )
        if not (is_json_content_type(content_type) or binary_ok):
            raise InvalidInputError(
                "content-type", f"expected application/json (or none), got {content_type}", 415
            )
        raw = await read_body(request, self.config.max_body_bytes)
        if header_length is None:
            body = parse_json_body(raw)
            if v2:
                refuse_binary_inputs(body)
            return body
        head, tail = split_binary_body(raw, header_length)
        body = parse_json_body(head)
        attach_binary_inputs(body, tail)
        return body

    async def _rows(self, request: Request, runtime: ModelRuntime) -> list[list[float]]:
        with runtime.batcher.arriving():
            return parse_v1(await self._body(request, v2=False), runtime.model.signature)

    async def predict_v1(self, request: Request) -> Response:
        try:
            runtime = self.runtime_for(request.path_params["name"])
            rows = await self._rows(request, runtime)
            outputs = await forward(runtime, rows)
            check_finite_outputs(outputs, "instances[{i}]")
        except InvalidInputError as exc:
            return error_response(exc)
        except ClientDisconnect:
            return Response(status_code=499)  # nobody is listening; recorded in metrics only
        self.slot.observe_served(runtime, rows)
        model: LoadedModel = runtime.model
        return JSONAnswer(v1_response(model.name, model.signature, outputs))

    async def infer_v2(self, request: Request) -> Response:
        params = request.path_params
        try:
            runtime = self.runtime_for(params["name"], params.get("version"))
            with runtime.batcher.arriving():
                body = await self._body(request, v2=True)
                parsed = parse_v2_request(body, runtime.model.signature)
            return JSONAnswer(await self.infer(runtime, parsed))
        except InvalidInputError as exc:
            return error_response(exc)
        except ClientDisconnect:
            return Response(status_code=499)

    async def explain_v1(self, request: Request) -> Response:
        from neuraxis.workloads.explain import baseline_for, integrated_gradients

        try:
            runtime = self.runtime_for(request.path_params["name"])
            model = runtime.model
            if model.explain_error is not None:
                raise InvalidInputError("model", f"cannot be explained: {model.explain_error}", 501)
            rows = await self._rows(request, runtime)
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
        return JSONAnswer(body)

    async def metadata_v2(self, request: Request) -> Response:
        params = request.path_params
        try:
            runtime = self.runtime_for(params["name"], params.get("version"))
        except InvalidInputError as exc:
            return error_response(exc)
        model = runtime.model
        return JSONAnswer(v2_metadata(model.name, model.signature, model.digest))

    async def model_ready_v2(self, request: Request) -> Response:
        params = request.path_params
        try:
            ready = self.model_ready(params["name"], params.get("version"))
        except InvalidInputError as exc:
            return error_response(exc)
        return JSONAnswer(
            {"name": params["name"], "ready": ready}, status_code=200 if ready else 503
        )

    async def server_metadata_v2(self, request: Request) -> Response:
        return JSONAnswer(v2_server_metadata())

    async def live(self, request: Request) -> Response:
        return JSONAnswer({"live": True})

    async def ready(self, request: Request) -> Response:
        runtime = self.slot.current
        if runtime is None or self.shutting_down:
            return JSONAnswer({"ready": False}, status_code=503)
        model = runtime.model
        return JSONAnswer({"ready": True, "model": model.name, "version": model.version})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        reason = (
            "no such route (see /v1/models/<name>:predict, /v1/models/<name>:explain, /v2, "
            "/v2/models/<name>[/versions/<version>][/infer|/ready])"
        )
    elif exc.status_code == 405:
        reason = (
            f"method {request.method} not allowed (allowed: {(exc.headers or {}).get('Allow')})"
        )
    else:
        reason = exc.detail
    body = {"error": f"{request.url.path}: {reason}", "field": "path", "reason": reason}
    return JSONAnswer(body, status_code=exc.status_code, headers=exc.headers)


def build_app(
    model: LoadedModel,
    config: ServeConfig,
    metrics: ServeMetrics | None = None,
    slot: ModelSlot | None = None,
    hooks: Sequence[LifespanHook] = (),
    grpc: GrpcConfig | None = None,
) -> ASGIApp:
    """The server application serving `model` (installed at start-up, inside the event loop),
    and the gRPC server of `grpc` started and stopped with it, on the same handlers."""
    metrics = metrics or ServeMetrics()
    slot = slot or ModelSlot(config.batching, metrics, drift_window=config.drift_window)
    handlers = ServeHandlers(slot, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await slot.install(model)
        async with contextlib.AsyncExitStack() as stack:
            for hook in hooks:
                await stack.enter_async_context(hook())
            if grpc is not None:
                from neuraxis.workloads.serve.grpc_server import serving_grpc

                await stack.enter_async_context(serving_grpc(handlers, metrics, grpc))
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
        Route("/v2", handlers.server_metadata_v2, methods=["GET"]),
        Route("/v2/models/{name}/infer", handlers.infer_v2, methods=["POST"]),
        Route("/v2/models/{name}/ready", handlers.model_ready_v2, methods=["GET"]),
        Route("/v2/models/{name}", handlers.metadata_v2, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/infer", handlers.infer_v2, methods=["POST"]),
        Route(
            "/v2/models/{name}/versions/{version}/ready", handlers.model_ready_v2, methods=["GET"]
        ),
        Route("/v2/models/{name}/versions/{version}", handlers.metadata_v2, methods=["GET"]),
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
