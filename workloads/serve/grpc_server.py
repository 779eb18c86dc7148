"""The Open Inference Protocol v2 over gRPC: `inference.GRPCInferenceService` (ServerLive,
ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer) on grpc.aio.

It runs in the event loop that runs uvicorn (started and stopped by the app's lifespan) and answers
through the same `ServeHandlers` as REST: one model in memory, one batcher, the same validation
(a request is turned into the REST body it stands for and parsed by `parse_v2_request`), the same
metrics (route `grpc:<Method>`, code the HTTP equivalent). A refusal carries the REST error text,
`<field>: <reason>`, with INVALID_ARGUMENT, NOT_FOUND or UNAVAILABLE.

Authentication is the REST gate (`ServeConfig.gate`) on each call's metadata (`authorization:
Bearer <key>` or `x-api-key`), so refusals are counted like REST's: UNAUTHENTICATED (401),
PERMISSION_DENIED (403), RESOURCE_EXHAUSTED with a `retry-after` trailer (429), UNAVAILABLE
(503); ServerLive and ServerReady stay open. `GrpcConfig.interceptors` can add more.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from neuraxis.workloads.serve.auth import NO_KEY, AuthError, credential_headers
from neuraxis.workloads.serve.metrics import GRPC_ROUTE_PREFIX, ServeMetrics
from neuraxis.workloads.serve.oip import inference_pb2 as pb
from neuraxis.workloads.serve.responses import v2_metadata, v2_server_metadata
from neuraxis.workloads.serve.validation import InvalidInputError, fp32_values, parse_v2_request

if TYPE_CHECKING:
    from neuraxis.workloads.serve.app import ServeHandlers

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
DEFAULT_GRPC_PORT = 8081
DEFAULT_GRACE_S = 30.0

# The gRPC status of each HTTP status an InvalidInputError carries.
STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    500: grpc.StatusCode.INTERNAL,  # the model failed, not the input
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


@dataclass(frozen=True)
class GrpcConfig:
    port: int
    host: str = "127.0.0.1"
    max_message_bytes: int = 1 << 20  # the REST body limit; larger messages: RESOURCE_EXHAUSTED
    grace_s: float = DEFAULT_GRACE_S  # on shutdown, in-flight calls get this long
    # Run before every call, in order (API-key authentication goes here).
    interceptors: Sequence[grpc.aio.ServerInterceptor] = ()


def body_of(request: pb.ModelInferRequest) -> dict[str, Any]:
    """The REST body a ModelInferRequest stands for. FP32 data comes from `raw_input_contents`
    (what tritonclient and kserve send) or `contents.fp32_contents`; other datatypes are left
    without data for parse_v2 to refuse by datatype."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        n = len(request.inputs)
        raise InvalidInputError("raw_input_contents", f"{len(raw)} entries for {n} inputs")
    inputs = []
    for i, tensor in enumerate(request.inputs):
        data: list[float] = []
        if tensor.datatype == "FP32":
            fp32 = tensor.contents.fp32_contents
            data = fp32_values(raw[i], f"raw_input_contents[{i}]") if raw else list(fp32)
        shape = list(tensor.shape)
        inputs.append(
            {"name": tensor.name, "datatype": tensor.datatype, "shape": shape, "data": data}
        )
    body: dict[str, Any] = {"inputs": inputs}
    if request.id:
        body["id"] = request.id
    if request.outputs:
        body["outputs"] = [{"name": out.name} for out in request.outputs]
    return body


def raw_tensor(datatype: str, data: list[Any]) -> bytes:
    """A tensor's little-endian bytes; BYTES elements are each prefixed by a 4-byte length."""
    if datatype == "BYTES":
        items = [str(v).encode("utf-8", "backslashreplace") for v in data]
        return b"".join(struct.pack("<I", len(item)) + item for item in items)
    return np.asarray(data, dtype="<f4").tobytes()


def response_of(body: dict[str, Any]) -> pb.ModelInferResponse:
    """The ModelInferResponse of a REST answer. Data goes in `raw_output_contents`, as Triton
    answers: tritonclient.grpc reads numeric outputs only from there."""
    response = pb.ModelInferResponse(
        model_name=body["model_name"], model_version=body["model_version"], id=body.get("id", "")
    )
    for tensor in body["outputs"]:
        response.outputs.add(
            name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"]
        )
        response.raw_output_contents.append(raw_tensor(tensor["datatype"], tensor["data"]))
    return response


def metadata_of(doc: dict[str, Any]) -> pb.ModelMetadataResponse:
    def tensors(specs: list[dict[str, Any]]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [pb.ModelMetadataResponse.TensorMetadata(**spec) for spec in specs]

    return pb.ModelMetadataResponse(
        name=doc["name"],
        versions=doc["versions"],
        platform=doc["platform"],
        inputs=tensors(doc["inputs"]),
        outputs=tensors(doc["outputs"]),
    )


def _decoder(message_type: Callable[[], Any]) -> Callable[[bytes], Any]:
    """Parse a request; None for bytes that are no such message (invalid UTF-8 in a string
    field, say), which the handler refuses with INVALID_ARGUMENT, not gRPC's INTERNAL."""

    def decode(data: bytes) -> Any:
        message = message_type()
        try:
            message.ParseFromString(data)
        except DecodeError:
            return None
        return message

    return decode


# Liveness and readiness stay open, like /v2/health/* over REST (probes carry no key).
OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})
AUTH_CODES = {
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


class AuthRefusedError(Exception):
    """A call the gate refused (carries the REST refusal: status, reason, key id)."""

    def __init__(self, error: AuthError):
        super().__init__(error.reason)
        self.error = error


class InferenceServicer:
    """GRPCInferenceService on the REST handlers (single model, shared batcher and metrics)."""

    def __init__(self, handlers: ServeHandlers, metrics: ServeMetrics):
        self.handlers = handlers
        self.metrics = metrics

    async def server_live(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.handlers.server_ready())

    async def model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        ready = self.handlers.model_ready(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=ready)

    async def server_metadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**v2_server_metadata())

    async def model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        model = self.handlers.runtime_for(request.name, request.version or None).model
        return metadata_of(v2_metadata(model.name, model.signature, model.digest))

    async def model_infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        runtime = self.handlers.runtime_for(request.model_name, request.model_version or None)
        parsed = parse_v2_request(body_of(request), runtime.model.signature)
        return response_of(await self.handlers.infer(runtime, parsed))

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> str:
        """The caller's key id, by the same gate as REST (credentials in call metadata:
        `authorization: Bearer <key>` or `x-api-key`)."""
        gate = self.handlers.config.gate
        if gate.mode == "none":
            return NO_KEY
        who = await gate.check(credential_headers(context.invocation_metadata() or ()))
        if isinstance(who, AuthError):
            raise AuthRefusedError(who)
        return who

    def _handler(
        self,
        method: str,
        call: Callable[[Any], Awaitable[Any]],
        request_type: Callable[[], Any],
        response_type: Any,
    ) -> grpc.RpcMethodHandler:
        route = f"{GRPC_ROUTE_PREFIX}{method}"

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start, key_id, counted = time.perf_counter(), NO_KEY, False
            self.metrics.in_flight.inc()

            def count(code: int) -> None:
                # Counted before the answer or the error status leaves: a client that reads
                # /metrics right after its call sees that call.
                nonlocal counted
                counted = True
                self.metrics.in_flight.dec()
                self.metrics.observe(route, code, time.perf_counter() - start, key_id)

            try:
                if method not in OPEN_METHODS:
                    key_id = await self._authenticate(context)
                if request is None:
                    kind = request_type.__name__
                    raise InvalidInputError("request", f"not a valid {kind} message")
                answer = await call(request)
                count(200)
                return answer
            except InvalidInputError as exc:
                count(exc.status)
                await context.abort(STATUS_CODES.get(exc.status, grpc.StatusCode.UNKNOWN), str(exc))
            except AuthRefusedError as refused:
                code, key_id = refused.error.status, refused.error.key_id
                if code == 429:
                    self.metrics.observe_limited(key_id)
                    context.set_trailing_metadata(
                        (("retry-after", str(refused.error.retry_after)),)
                    )
                count(code)
                status = AUTH_CODES.get(code, grpc.StatusCode.UNAUTHENTICATED)
                await context.abort(status, refused.error.body["error"])
            finally:
                if not counted:
                    count(500)

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=_decoder(request_type),
            response_serializer=response_type.SerializeToString,
        )

    def generic_handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, tuple[Callable[[Any], Awaitable[Any]], Any, Any]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": (
                self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse
            ),
            "ModelMetadata": (
                self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse
            ),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
        }  # fmt: skip
        handlers = {name: self._handler(name, *spec) for name, spec in methods.items()}
        return grpc.method_handlers_generic_handler(SERVICE, handlers)


def build_grpc_server(servicer: InferenceServicer, config: GrpcConfig) -> grpc.aio.Server:
    """A grpc.aio server bound to `config.host:config.port` (not started)."""
    server = grpc.aio.server(
        interceptors=list(config.interceptors),
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a silently shared port
        ],
    )
    server.add_generic_rpc_handlers((servicer.generic_handler(),))
    address = f"{config.host}:{config.port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"gRPC cannot listen on {address}: {exc}") from exc
    if bound == 0:
        raise RuntimeError(f"gRPC cannot listen on {address}")
    return server


@contextlib.asynccontextmanager
async def serving_grpc(
    handlers: ServeHandlers, metrics: ServeMetrics, config: GrpcConfig
) -> AsyncIterator[grpc.aio.Server]:
    """Serve gRPC in the running event loop until the block ends (then let calls finish)."""
    server = build_grpc_server(InferenceServicer(handlers, metrics), config)
    await server.start()
    log.info("gRPC (Open Inference Protocol) on %s:%d", config.host, config.port)
    try:
        yield server
    finally:
        await server.stop(config.grace_s)
