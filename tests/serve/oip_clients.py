"""Drive a server with one unmodified real Open Inference Protocol client and print what it saw
as JSON: `python oip_clients.py <client> <address> <model> <version> <rows as JSON>`.

Clients: triton-http, triton-grpc (tritonclient), kserve-rest, kserve-grpc (kserve). Each runs in
its own process: tritonclient.grpc and kserve both register the protocol's `inference.*` protobuf
messages, and one process cannot hold both (nor the server's own copy)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np


def _tensors(result: Any, names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        array = result.as_numpy(name)
        if array is None:
            continue
        values = array.tolist()
        if array.dtype == object:  # BYTES: bytes from binary answers, str from JSON ones
            values = [v.decode() if isinstance(v, bytes) else v for v in values]
        out[name] = values
    return out


def _error(call: Any) -> str:
    """`<status> <message>` of the InferenceServerException a call raises (it must fail)."""
    from tritonclient.utils import InferenceServerException

    try:
        call()
    except InferenceServerException as exc:
        return f"{exc.status()} {exc.message()}"
    raise AssertionError("the call succeeded")


def triton(kind: str, address: str, model: str, version: str, x: np.ndarray) -> dict[str, Any]:
    if kind == "http":
        import tritonclient.http as client_module
    else:
        import tritonclient.grpc as client_module
    client = client_module.InferenceServerClient(address)
    extra = {"as_json": True} if kind == "grpc" else {}

    def request(shape: list[int], data: np.ndarray, binary: bool) -> Any:
        tensor = client_module.InferInput("input", shape, "FP32")
        if kind == "http":
            tensor.set_data_from_numpy(data, binary_data=binary)
        else:
            tensor.set_data_from_numpy(data)
        return tensor

    seen: dict[str, Any] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "model_ready_version": client.is_model_ready(model, version),
        "server_metadata": client.get_server_metadata(**extra),
        "model_metadata": client.get_model_metadata(model, **extra),
    }
    names = ["probabilities", "label"]
    # The client's defaults: binary tensors over HTTP (the binary tensor extension), raw over gRPC.
    default = client.infer(model, [request(list(x.shape), x, True)])
    seen["infer"] = _tensors(default, names)
    # JSON-only data, one output asked for by name, an id to echo, the versioned path.
    asked = [
        client_module.InferRequestedOutput(
            "probabilities", **({"binary_data": False} if kind == "http" else {})
        )
    ]
    chosen = client.infer(
        model, [request(list(x.shape), x, False)], model_version=version,
        outputs=asked, request_id="req-42",
    )  # fmt: skip
    seen["infer_chosen"] = _tensors(chosen, names)
    response = chosen.get_response(**extra)
    seen["infer_chosen_id"] = response.get("id") if isinstance(response, dict) else response.id
    wrong = x.reshape(x.shape[1], x.shape[0])
    seen["errors"] = {
        "unknown_version": _error(
            lambda: client.infer(model, [request(list(x.shape), x, True)], model_version="nope")
        ),
        "bad_shape": _error(lambda: client.infer(model, [request(list(wrong.shape), wrong, True)])),
        "unknown_model": _error(lambda: client.get_model_metadata("nobody")),
    }
    client.close()
    return seen


async def kserve(kind: str, address: str, model: str, x: np.ndarray) -> dict[str, Any]:
    from kserve import (
        InferenceGRPCClient,
        InferenceRESTClient,
        InferInput,
        InferRequest,
        RESTConfig,
    )

    def request(data: np.ndarray, binary: bool, request_id: str = "") -> Any:
        tensor = InferInput("input", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data, binary_data=binary)
        return InferRequest(model, infer_inputs=[tensor], request_id=request_id or None)

    def tensors(result: Any) -> dict[str, Any]:
        out = {}
        for output in result.outputs:
            values = output.as_numpy().tolist()
            if output.datatype == "BYTES":
                values = [v.decode() if isinstance(v, bytes) else v for v in values]
            out[output.name] = values
        return out

    wrong = x.reshape(x.shape[1], x.shape[0])
    seen: dict[str, Any] = {}
    if kind == "rest":
        rest = InferenceRESTClient(RESTConfig(protocol="v2"))
        seen["live"] = await rest.is_server_live(address)
        seen["ready"] = await rest.is_server_ready(address)
        seen["model_ready"] = await rest.is_model_ready(address, model)
        for name, binary in (("infer", True), ("infer_json", False)):
            result = await rest.infer(address, request(x, binary, "k-1"), model_name=model)
            seen[name], seen[f"{name}_id"] = tensors(result), result.id
        try:
            await rest.infer(address, request(wrong, False), model_name=model)
            seen["errors"] = {"bad_shape": "succeeded"}
        except Exception as exc:
            seen["errors"] = {"bad_shape": str(exc)}
        await rest.close()
        return seen
    grpc_client = InferenceGRPCClient(address)
    seen["live"] = await grpc_client.is_server_live()
    seen["ready"] = await grpc_client.is_server_ready()
    seen["model_ready"] = await grpc_client.is_model_ready(model)
    for name, binary in (("infer", True), ("infer_json", False)):
        result = await grpc_client.infer(request(x, binary, "k-1"))
        seen[name], seen[f"{name}_id"] = tensors(result), result.id
    try:
        await grpc_client.infer(request(wrong, False))
        seen["errors"] = {"bad_shape": "succeeded"}
    except Exception as exc:
        seen["errors"] = {"bad_shape": f"{exc.code()} {exc.details()}"}  # type: ignore[attr-defined]
    await grpc_client.close()
    return seen


def main() -> None:
    client, address, model, version, rows = sys.argv[1:6]
    x = np.asarray(json.loads(rows), dtype=np.float32)
    family, _, kind = client.partition("-")
    if family == "triton":
        seen = triton(kind, address, model, version, x)
    else:
        seen = asyncio.run(kserve(kind, address, model, x))
    print(json.dumps(seen, default=str))


if __name__ == "__main__":
    main()
