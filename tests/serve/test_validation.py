"""Request validation and response shaping (pure functions)."""

from __future__ import annotations

import pytest

from neuraxis.workloads.artifact import FeatureSpec, Signature
from neuraxis.workloads.serve.metrics import route_label
from neuraxis.workloads.serve.model_loader import lake_root_of, model_name_of, split_artifact_uri
from neuraxis.workloads.serve.responses import check_finite_outputs, v1_response, v2_response
from neuraxis.workloads.serve.validation import (
    InvalidInputError,
    parse_json_body,
    parse_v1,
    parse_v2,
)

SIG = Signature(
    features=[FeatureSpec(name=n) for n in ("temperature", "vibration", "pressure")],
    task="classification",
    classes=["ok", "failure"],
    label="failure",
    architecture="linear",
    model_version="v1",
)


def refusal(fn: object, *args: object) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value


def test_v1_accepts_arrays_and_objects_in_feature_order() -> None:
    body = {"instances": [[1, 2.5, 3], {"pressure": 6, "temperature": 4, "vibration": 5}]}
    assert parse_v1(body, SIG) == [[1.0, 2.5, 3.0], [4.0, 5.0, 6.0]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"instances": [[1, 2, 3], [1, 2]]}, "instances[1]: expected 3 features, got 2"),
        ({"instances": [{"temperature": "hot", "vibration": 1, "pressure": 1}]},
         "instances[0].temperature: not a number (got string)"),
        ({"instances": [{"temperature": 1, "vibration": 1}]}, "instances[0].pressure: missing"),
        ({"instances": [{"temperature": 1, "vibration": 1, "pressure": 1, "x": 2}]},
         "instances[0].x: unknown feature"),
        ({"instances": [[1, float("nan"), 3]]}, "instances[0][1]: not a finite number"),
        ({"instances": [[1, 2, float("inf")]]}, "instances[0][2]: not a finite number"),
        ({"instances": [[1e39, 2, 3]]}, "instances[0][0]: 1e+39 is out of float32 range"),
        ({"instances": [[10**400, 2, 3]]}, "instances[0][0]: out of float32 range"),
        ({"instances": [[True, 2, 3]]}, "instances[0][0]: not a number (got boolean)"),
        ({"instances": [[None, 2, 3]]}, "instances[0][0]: not a number (got null)"),
        ({"instances": []}, "instances: empty"),
        ({"instances": "1,2,3"}, "instances: expected an array, got string"),
        ({"inputs": []}, "instances: missing"),
        ([1, 2, 3], "body: expected a JSON object, got array"),
        ({"instances": [7]}, "instances[0]: expected an array of 3 numbers or an object"),
    ],
)  # fmt: skip
def test_v1_refusals_name_the_field_and_reason(body: object, message: str) -> None:
    exc = refusal(parse_v1, body, SIG)
    assert str(exc).startswith(message)
    assert exc.status == 400


def test_v2_single_tensor_flat_and_nested() -> None:
    flat = {
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]
    }
    nested = {
        "inputs": [
            {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5, 6]]}
        ]
    }
    assert parse_v2(flat, SIG) == parse_v2(nested, SIG) == [[1, 2, 3], [4, 5, 6]]


def test_v2_one_input_per_feature() -> None:
    body = {
        "inputs": [
            {"name": "pressure", "shape": [2], "datatype": "FP32", "data": [3, 6]},
            {"name": "temperature", "shape": [2, 1], "datatype": "FP32", "data": [1, 4]},
            {"name": "vibration", "shape": [2], "datatype": "FP32", "data": [2, 5]},
        ]
    }
    assert parse_v2(body, SIG) == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([{"name": "x", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]}],
         "inputs[0].datatype: expected FP32, got 'INT64'"),
        ([{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
         "inputs[0].shape: expected [n, 3], got [1, 4]"),
        ([{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3]}],
         "inputs[0].data: shape [2, 3] needs 6 values, got 3"),
        ([{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, "2", 3]}],
         "inputs[0].data[1]: not a number (got string)"),
        ([{"name": "x", "shape": [1, -3], "datatype": "FP32", "data": [1, 2, 3]}],
         "inputs[0].shape[1]: expected a positive integer"),
        ([{"name": "x", "datatype": "FP32", "data": [1, 2, 3]}], "inputs[0].shape: missing"),
        ([{"name": "temperature", "shape": [1], "datatype": "FP32", "data": [1]},
          {"name": "vibration", "shape": [1], "datatype": "FP32", "data": [1]}],
         "inputs: feature 'pressure' missing"),
        ([{"name": "temperature", "shape": [1], "datatype": "FP32", "data": [1]},
          {"name": "vibration", "shape": [2], "datatype": "FP32", "data": [1, 2]}],
         "inputs[1].shape: expected 1 rows like inputs[0]"),
    ],
)  # fmt: skip
def test_v2_refusals_name_the_field_and_reason(inputs: list[object], message: str) -> None:
    assert str(refusal(parse_v2, {"inputs": inputs}, SIG)).startswith(message)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "body: empty"),
        (b'{"instances": [', "body: malformed JSON"),
        (b"\xff\xfe\x00garbage", "body: malformed JSON"),
        (b"[" * 5000 + b"]" * 5000, "body: malformed JSON"),
    ],
)
def test_malformed_json_is_a_body_error(raw: bytes, message: str) -> None:
    assert str(refusal(parse_json_body, raw)).startswith(message)


def test_responses_carry_labels_probabilities_and_version() -> None:
    outputs = [[0.9, 0.1], [0.2, 0.8]]
    v1 = v1_response("m", SIG, outputs)
    assert v1["predictions"] == ["ok", "failure"]
    assert v1["probabilities"] == outputs and v1["model_version"] == "v1"
    v2 = v2_response("m", SIG, outputs, "req-1")
    assert v2["outputs"][0] == {
        "name": "probabilities", "datatype": "FP32", "shape": [2, 2], "data": [0.9, 0.1, 0.2, 0.8]
    }  # fmt: skip
    assert v2["outputs"][1]["data"] == ["ok", "failure"] and v2["id"] == "req-1"


def test_non_finite_model_output_is_a_422_naming_the_row() -> None:
    exc = refusal(check_finite_outputs, [[0.5, 0.5], [float("nan"), 1.0]], "instances[{i}]")
    assert exc.field == "instances[1]" and exc.status == 422


@pytest.mark.parametrize(
    ("uri", "root", "folder", "lake_root", "name"),
    [
        ("/data/lake/models/ns/m/v1", "/data/lake/models/ns/m", "v1", "/data/lake", "m"),
        ("file:///l/edge/ns/m/v2/", "file:///l/edge/ns/m", "v2", "file:///l", "m"),
        ("s3://bucket/models/ns/m/v1", "s3://bucket/models/ns/m", "v1", "s3://bucket", "m"),
        ("s3://b/p/edge/ns/m/v1", "s3://b/p/edge/ns/m", "v1", "s3://b/p", "m"),
        ("./some/artifact", "./some", "artifact", None, "artifact"),
    ],
)
def test_artifact_uri_parsing(
    uri: str, root: str, folder: str, lake_root: str | None, name: str
) -> None:
    assert split_artifact_uri(uri) == (root, folder)
    assert lake_root_of(uri) == lake_root
    assert model_name_of(uri) == name


def test_route_labels_are_templates() -> None:
    assert route_label("/v1/models/anything:predict") == "/v1/models/{name}:predict"
    assert route_label("/v2/models/x/infer") == "/v2/models/{name}/infer"
    assert route_label("/random/path/123") == "other"
