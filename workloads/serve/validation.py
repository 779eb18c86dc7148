"""Request validation against the model signature (pure functions, no I/O).

Every refusal is an `InvalidInputError` naming the field (a JSON path such as `instances[3]` or
`inputs[0].data[5]`) and the reason, so a client can fix its request without reading server logs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from neuraxis.workloads.artifact import Signature

FLOAT32_MAX = 3.4028234663852886e38

Rows = list[list[float]]


class InvalidInputError(Exception):
    """A request the server answers with an error: `status` is the HTTP status (4xx for input
    the signature refuses; 500 when the model itself failed, see `app.forward`)."""

    def __init__(self, field: str, reason: str, status: int = 400):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.status = status

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def parse_json_body(body: bytes) -> Any:
    """Decode a JSON body; NaN/Infinity literals decode to floats and are refused per field."""
    if not body.strip():
        raise InvalidInputError("body", "empty (expected a JSON object)")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidInputError("body", f"malformed JSON ({exc})") from None


def check_number(value: Any, field: str) -> float:
    """A finite number that fits float32, or an InvalidInputError naming `field`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(field, f"not a number (got {json_type(value)})")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidInputError(field, "out of float32 range") from None
    if not math.isfinite(number):
        raise InvalidInputError(
            field, f"not a finite number ({number}; NaN and infinity are refused)"
        )
    if abs(number) > FLOAT32_MAX:
        raise InvalidInputError(field, f"{number:g} is out of float32 range")
    return number


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInputError(field, f"expected a JSON object, got {json_type(value)}")
    return value


def _nonempty_list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidInputError(field, f"expected an array, got {json_type(value)}")
    if not value:
        raise InvalidInputError(field, "empty (expected at least one)")
    return value


def _row(instance: Any, field: str, signature: Signature) -> list[float]:
    names = signature.feature_names
    if isinstance(instance, list):
        if len(instance) != len(names):
            raise InvalidInputError(field, f"expected {len(names)} features, got {len(instance)}")
        return [check_number(v, f"{field}[{i}]") for i, v in enumerate(instance)]
    if isinstance(instance, dict):
        for key in instance:
            if key not in names:
                raise InvalidInputError(f"{field}.{key}", f"unknown feature (expected {names})")
        row = []
        for name in names:
            if name not in instance:
                raise InvalidInputError(f"{field}.{name}", "missing")
            row.append(check_number(instance[name], f"{field}.{name}"))
        return row
    raise InvalidInputError(
        field, f"expected an array of {len(names)} numbers or an object, got {json_type(instance)}"
    )


def parse_v1(body: Any, signature: Signature) -> Rows:
    """KServe v1: `{"instances": [[x1, ...] | {feature: x, ...}, ...]}` -> rows in feature order."""
    doc = _object(body, "body")
    if "instances" not in doc:
        raise InvalidInputError("instances", "missing")
    instances = _nonempty_list(doc["instances"], "instances")
    return [_row(inst, f"instances[{i}]", signature) for i, inst in enumerate(instances)]


def _shape(value: Any, field: str) -> list[int]:
    if not isinstance(value, list) or not value:
        raise InvalidInputError(field, "expected a non-empty array of dimensions")
    for i, dim in enumerate(value):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InvalidInputError(f"{field}[{i}]", f"expected a positive integer, got {dim!r}")
    return list(value)


def _flat_data(value: Any, field: str, shape: list[int]) -> list[float]:
    data = _nonempty_list(value, field)
    if isinstance(data[0], list):  # row-major nested form [[...], ...]
        flat: list[Any] = []
        for i, row in enumerate(data):
            if not isinstance(row, list):
                raise InvalidInputError(f"{field}[{i}]", f"expected an array, got {json_type(row)}")
            flat.extend(row)
        data = flat
    expected = math.prod(shape)
    if len(data) != expected:
        raise InvalidInputError(field, f"shape {shape} needs {expected} values, got {len(data)}")
    return [check_number(v, f"{field}[{i}]") for i, v in enumerate(data)]


def _tensor(spec: Any, field: str) -> tuple[str, list[int], Any]:
    doc = _object(spec, field)
    for key in ("name", "shape", "datatype", "data"):
        if key not in doc:
            raise InvalidInputError(f"{field}.{key}", "missing")
    if not isinstance(doc["name"], str):
        raise InvalidInputError(f"{field}.name", f"expected a string, got {json_type(doc['name'])}")
    if doc["datatype"] != "FP32":
        raise InvalidInputError(f"{field}.datatype", f"expected FP32, got {doc['datatype']!r}")
    return doc["name"], _shape(doc["shape"], f"{field}.shape"), doc["data"]


def parse_v2(body: Any, signature: Signature) -> Rows:
    """Open Inference Protocol v2. Either one input of shape [n, n_features] (any name), or one
    input per feature, named after it, of shape [n] or [n, 1]."""
    doc = _object(body, "body")
    if "inputs" not in doc:
        raise InvalidInputError("inputs", "missing")
    specs = _nonempty_list(doc["inputs"], "inputs")
    names = signature.feature_names
    tensors = [_tensor(spec, f"inputs[{i}]") for i, spec in enumerate(specs)]
    if len(tensors) == 1 and (tensors[0][0] not in names or len(names) == 1):
        _, shape, data = tensors[0]
        if len(shape) != 2 or shape[1] != len(names):
            raise InvalidInputError("inputs[0].shape", f"expected [n, {len(names)}], got {shape}")
        flat = _flat_data(data, "inputs[0].data", shape)
        width = len(names)
        return [flat[r * width : (r + 1) * width] for r in range(shape[0])]
    columns: dict[str, list[float]] = {}
    n_rows: int | None = None
    for i, (name, shape, data) in enumerate(tensors):
        field = f"inputs[{i}]"
        if name not in names:
            raise InvalidInputError(f"{field}.name", f"unknown feature {name!r} (expected {names})")
        if name in columns:
            raise InvalidInputError(f"{field}.name", f"feature {name!r} given twice")
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise InvalidInputError(f"{field}.shape", f"expected [n] or [n, 1], got {shape}")
        if n_rows is not None and shape[0] != n_rows:
            raise InvalidInputError(f"{field}.shape", f"expected {n_rows} rows like inputs[0]")
        n_rows = shape[0]
        columns[name] = _flat_data(data, f"{field}.data", shape)
    for name in names:
        if name not in columns:
            raise InvalidInputError("inputs", f"feature {name!r} missing")
    assert n_rows is not None
    return [[columns[name][r] for name in names] for r in range(n_rows)]


def v2_output_names(signature: Signature) -> list[str]:
    """The output tensors an infer answers (see responses.v2_response), in answer order."""
    if signature.task == "classification":
        return ["probabilities", "label"]
    return ["prediction"]


@dataclass(frozen=True)
class V2Request:
    rows: Rows
    request_id: str | None  # echoed back
    outputs: tuple[str, ...] | None  # the requested outputs, in order; None: all of them


def _requested_outputs(value: Any, signature: Signature) -> tuple[str, ...]:
    known = v2_output_names(signature)
    names: list[str] = []
    for i, spec in enumerate(_nonempty_list(value, "outputs")):
        name = _object(spec, f"outputs[{i}]").get("name")
        if not isinstance(name, str):
            raise InvalidInputError(
                f"outputs[{i}].name", f"expected a string, got {json_type(name)}"
            )
        if name not in known:
            raise InvalidInputError(
                f"outputs[{i}].name", f"unknown output {name!r} (expected {known})"
            )
        if name in names:
            raise InvalidInputError(f"outputs[{i}].name", f"output {name!r} asked twice")
        names.append(name)
    return tuple(names)


def parse_v2_request(body: Any, signature: Signature) -> V2Request:
    """A whole v2 infer request: the rows (parse_v2), the `id` to echo and the outputs asked
    for by `outputs: [{"name": ...}]`. Request `parameters` must be an object; none changes the
    answer (a JSON answer is always given, so `binary_data_output` is read as a preference)."""
    rows = parse_v2(body, signature)
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInputError("id", f"expected a string, got {json_type(request_id)}")
    if "parameters" in body:
        _object(body["parameters"], "parameters")
    outputs = _requested_outputs(body["outputs"], signature) if "outputs" in body else None
    return V2Request(rows, request_id, outputs)


def fp32_values(raw: bytes, field: str) -> list[float]:
    """Little-endian FP32 tensor bytes (the binary tensor extension, gRPC raw contents)."""
    if len(raw) % 4:
        raise InvalidInputError(field, f"{len(raw)} bytes is not a whole number of FP32 values")
    values: list[float] = np.frombuffer(raw, dtype="<f4").astype(float).tolist()
    return values


def split_binary_body(body: bytes, header_length: str) -> tuple[bytes, bytes]:
    """The binary tensor extension: the first `Inference-Header-Content-Length` bytes are the
    JSON request, the rest the binary tensors."""
    field = "Inference-Header-Content-Length"
    if not header_length.isdigit():
        raise InvalidInputError(field, f"expected a byte count, got {header_length!r}")
    n = int(header_length)
    if n > len(body):
        raise InvalidInputError(field, f"{n} exceeds the body's {len(body)} bytes")
    return body[:n], body[n:]


def attach_binary_inputs(doc: Any, tail: bytes) -> None:
    """Give each input with `parameters.binary_data_size` its slice of `tail` (in input order)
    as `data`; the sizes must add up to the whole tail. Only FP32 inputs can be binary."""
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        return  # parse_v2 names what is wrong
    offset = 0
    for i, spec in enumerate(doc["inputs"]):
        params = spec.get("parameters") if isinstance(spec, dict) else None
        if not isinstance(params, dict) or "binary_data_size" not in params:
            continue
        field = f"inputs[{i}].parameters.binary_data_size"
        size = params["binary_data_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInputError(field, f"expected a byte count, got {size!r}")
        if offset + size > len(tail):
            raise InvalidInputError(field, f"{size} bytes past the end of the binary data")
        if spec.get("datatype") != "FP32":
            raise InvalidInputError(
                f"inputs[{i}].datatype", f"expected FP32, got {spec.get('datatype')!r}"
            )
        spec["data"] = fp32_values(tail[offset : offset + size], field)
        offset += size
    if offset != len(tail):
        raise InvalidInputError(
            "body",
            f"{len(tail) - offset} bytes of binary data that no input's binary_data_size claims",
        )


def refuse_binary_inputs(doc: Any) -> None:
    """A JSON-only body whose inputs claim binary data (no Inference-Header-Content-Length)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        return
    for i, spec in enumerate(doc["inputs"]):
        params = spec.get("parameters") if isinstance(spec, dict) else None
        if isinstance(params, dict) and "binary_data_size" in params:
            raise InvalidInputError(
                f"inputs[{i}].parameters.binary_data_size",
                "binary data needs the Inference-Header-Content-Length header",
            )
