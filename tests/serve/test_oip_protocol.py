"""The Open Inference Protocol pieces as pure functions: the committed protoc output against the
.proto, gRPC message <-> REST body conversion, v2 request options (outputs, id, parameters), the
binary tensor extension, and answers that stay writable with lone surrogates."""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from neuraxis.workloads.artifact import FeatureSpec, Signature
from neuraxis.workloads.serve.app import JSONAnswer, ServeConfig, ServeHandlers
from neuraxis.workloads.serve.grpc_server import (
    GrpcConfig,
    body_of,
    raw_tensor,
    response_of,
    serving_grpc,
)
from neuraxis.workloads.serve.metrics import ServeMetrics
from neuraxis.workloads.serve.oip import generate
from neuraxis.workloads.serve.oip import inference_pb2 as pb
from neuraxis.workloads.serve.responses import v2_response
from neuraxis.workloads.serve.runtime import BatchingConfig, ModelSlot
from neuraxis.workloads.serve.validation import (
    InvalidInputError,
    attach_binary_inputs,
    parse_v2_request,
    refuse_binary_inputs,
    split_binary_body,
)

from .conftest import free_port

SIG = Signature(
    features=[FeatureSpec(name=n) for n in ("a", "b", "c")],
    task="classification",
    classes=["ok", "failure"],
    label="y",
    architecture="linear",
    model_version="v1",
)
ROWS = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.5]]


def tensor(**extra: object) -> dict[str, object]:
    return {"name": "input", "shape": [2, 3], "datatype": "FP32", "data": ROWS, **extra}


def refused(call: object, *args: object) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as info:
        call(*args)  # type: ignore[operator]
    return info.value


def test_committed_grpc_modules_are_what_protoc_makes_of_the_proto(tmp_path: Path) -> None:
    generated = generate.generate(tmp_path)
    for name, data in generated.items():
        assert (generate.HERE / name).read_bytes() == data, (
            f"{name} is stale: run python -m neuraxis.workloads.serve.oip.generate"
        )
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert pb.DESCRIPTOR.package == "inference"
    assert [m.name for m in service.methods] == [
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
    ]  # fmt: skip


def test_outputs_are_selected_in_the_order_asked_and_the_id_is_echoed() -> None:
    request = parse_v2_request(
        {"inputs": [tensor()], "id": "r-\ud800", "outputs": [{"name": "label"}]}, SIG
    )
    assert request.rows == ROWS and request.outputs == ("label",)
    body = v2_response("m", SIG, [[0.9, 0.1], [0.2, 0.8]], request.request_id, request.outputs)
    assert [t["name"] for t in body["outputs"]] == ["label"] and body["id"] == "r-\ud800"
    assert body["outputs"][0]["data"] == ["ok", "failure"]


@pytest.mark.parametrize(
    ("extra", "field", "reason"),
    [
        ({"id": 7}, "id", "expected a string, got number"),
        ({"outputs": [{"name": "x"}]}, "outputs[0].name", "unknown output 'x'"),
        ({"outputs": [{"name": "label"}, {"name": "label"}]}, "outputs[1].name", "asked twice"),
        ({"outputs": {"name": "label"}}, "outputs", "expected an array"),
        ({"outputs": [{}]}, "outputs[0].name", "expected a string, got null"),
        ({"parameters": []}, "parameters", "expected a JSON object"),
    ],
)
def test_bad_request_options_name_the_field(
    extra: dict[str, object], field: str, reason: str
) -> None:
    error = refused(parse_v2_request, {"inputs": [tensor()], **extra}, SIG)
    assert error.field == field and reason in error.reason and error.status == 400


def test_binary_tensor_extension_reads_fp32_inputs() -> None:
    binary = {k: v for k, v in tensor(parameters={"binary_data_size": 24}).items() if k != "data"}
    header = {"inputs": [binary]}
    head = json.dumps(header).encode()
    body = head + struct.pack("<6f", *ROWS[0], *ROWS[1])
    json_part, tail = split_binary_body(body, str(len(head)))
    doc = json.loads(json_part)
    attach_binary_inputs(doc, tail)
    assert parse_v2_request(doc, SIG).rows == ROWS

    assert refused(split_binary_body, body, "x").field == "Inference-Header-Content-Length"
    assert "exceeds" in refused(split_binary_body, body, str(len(body) + 1)).reason
    short = json.loads(json_part)
    assert "bytes past the end" in refused(attach_binary_inputs, short, tail[:20]).reason
    extra = json.loads(json_part)
    assert (
        "no input's binary_data_size claims"
        in refused(attach_binary_inputs, extra, tail + b"1234").reason
    )
    odd = json.loads(json_part)
    odd["inputs"][0]["parameters"]["binary_data_size"] = 22
    assert (
        "not a whole number of FP32 values" in refused(attach_binary_inputs, odd, tail[:22]).reason
    )
    json_only = json.loads(json_part)
    error = refused(refuse_binary_inputs, json_only)
    assert error.field == "inputs[0].parameters.binary_data_size"
    assert "Inference-Header-Content-Length" in error.reason


def test_grpc_request_becomes_the_rest_body_raw_or_typed() -> None:
    typed = pb.ModelInferRequest(model_name="m", id="r1")
    t = typed.inputs.add(name="input", datatype="FP32", shape=[2, 3])
    t.contents.fp32_contents.extend([v for row in ROWS for v in row])
    typed.outputs.add(name="probabilities")
    body = body_of(typed)
    assert body["id"] == "r1" and body["outputs"] == [{"name": "probabilities"}]
    assert parse_v2_request(body, SIG).rows == ROWS

    raw = pb.ModelInferRequest(model_name="m")
    raw.inputs.add(name="input", datatype="FP32", shape=[2, 3])
    raw.raw_input_contents.append(np.asarray(ROWS, dtype="<f4").tobytes())
    assert parse_v2_request(body_of(raw), SIG).rows == ROWS

    raw.raw_input_contents.append(b"")
    assert refused(body_of, raw).field == "raw_input_contents"
    wrong_type = pb.ModelInferRequest(model_name="m")
    wrong_type.inputs.add(name="input", datatype="INT64", shape=[2, 3])
    error = refused(parse_v2_request, body_of(wrong_type), SIG)
    assert error.field == "inputs[0].datatype" and "expected FP32, got 'INT64'" in error.reason


def test_grpc_answer_carries_raw_little_endian_outputs() -> None:
    body = v2_response("m", SIG, [[0.9, 0.1], [0.2, 0.8]], "r1")
    response = response_of(body)
    assert response.id == "r1" and [o.name for o in response.outputs] == ["probabilities", "label"]
    probabilities = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(2, 2)
    assert np.allclose(probabilities, [[0.9, 0.1], [0.2, 0.8]])
    assert response.raw_output_contents[1] == b"\x02\x00\x00\x00ok\x07\x00\x00\x00failure"
    assert raw_tensor("BYTES", ["\ud800"]) == b"\x06\x00\x00\x00\\ud800"


def test_answers_with_lone_surrogates_are_ascii_json() -> None:
    answer = JSONAnswer({"error": "instances[0].\ud800: unknown feature", "n": -0.0})
    assert answer.body == b'{"error":"instances[0].\\ud800: unknown feature","n":-0.0}'
    assert json.loads(bytes(answer.body))["error"].startswith("instances[0].\ud800")


class RequireKey(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """What an authentication interceptor does: let a call through or refuse it before any
    handler runs."""

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        if ("x-api-key", "k1") in tuple(details.invocation_metadata or ()):
            return await continuation(details)

        async def deny(request: bytes, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "x-api-key: missing or unknown")

        return grpc.unary_unary_rpc_method_handler(deny)


def test_interceptors_in_the_grpc_config_guard_every_method() -> None:
    metrics = ServeMetrics()
    handlers = ServeHandlers(ModelSlot(BatchingConfig(), metrics), ServeConfig())
    config = GrpcConfig(port=free_port(), interceptors=[RequireKey()])

    async def calls() -> tuple[bool, grpc.StatusCode, str]:
        address = f"127.0.0.1:{config.port}"
        async with (
            serving_grpc(handlers, metrics, config),
            grpc.aio.insecure_channel(address) as channel,
        ):
            live = channel.unary_unary(
                "/inference.GRPCInferenceService/ServerLive",
                request_serializer=pb.ServerLiveRequest.SerializeToString,
                response_deserializer=pb.ServerLiveResponse.FromString,
            )
            answer = await live(pb.ServerLiveRequest(), metadata=(("x-api-key", "k1"),))
            try:
                await live(pb.ServerLiveRequest())
            except grpc.aio.AioRpcError as exc:
                return answer.live, exc.code(), exc.details()
        raise AssertionError("the call without a key went through")

    live, code, details = asyncio.run(calls())
    assert live is True
    assert code == grpc.StatusCode.UNAUTHENTICATED and details == "x-api-key: missing or unknown"
