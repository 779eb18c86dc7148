"""A bounded property-based fuzz of the inference server over both protocols: about 2,000
requests on loopback (REST: routes, methods, content types, valid and broken JSON, lone surrogates,
extreme numbers, wrong shapes and datatypes, binary tensor headers; gRPC: every method with valid,
mutated and random messages, invalid UTF-8). None may answer >= 500 (INTERNAL/UNKNOWN for gRPC),
every REST refusal is the `{"error", "field", "reason"}` JSON, and a fixed correct request answers
the same afterwards. Derandomized: the same requests on every run.

This module imports the server's own `inference.*` messages; no real client may be imported in
this pytest process (they run in subprocesses, see oip_clients.py)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuraxis.lake import Lake
from neuraxis.workloads.serve.oip import inference_pb2 as pb

from .conftest import REPO, ServerProcess, TinyClassifier, free_port, metric_value, write_model

pytestmark = pytest.mark.engine

FOLDER = "models/default/tiny/v1"
SERVICE = "/inference.GRPCInferenceService/"
REST_EXAMPLES = 1200
GRPC_EXAMPLES = 800


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# What a gRPC server answers for a client's mistake; INTERNAL, UNKNOWN, DATA_LOSS and
# UNAVAILABLE (the model is loaded) would be the server's fault.
CLIENT_ERRORS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
}
ROWS = [[70.0, 0.5, 1.0], [85.0, 0.9, 1.3]]
FLAT = [v for row in ROWS for v in row]


@dataclass
class Target:
    server: ServerProcess
    channel: grpc.Channel

    def grpc_call(self, method: str, data: bytes) -> tuple[grpc.StatusCode, bytes]:
        call = self.channel.unary_unary(SERVICE + method)
        try:
            return grpc.StatusCode.OK, call(data, timeout=30)
        except grpc.RpcError as exc:
            return exc.code(), b""


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    lake_dir = tmp_path_factory.mktemp("lake")
    write_model(Lake(str(lake_dir)), FOLDER, TinyClassifier(seed=1), version="v1")
    port, grpc_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("log") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "neuraxis.workloads.serve", "--model",
             f"file://{lake_dir}/{FOLDER}", "--port", str(port), "--grpc-port", str(grpc_port),
             "--max-body-bytes", "65536"],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
    server = ServerProcess(proc, port, log)
    server.wait_ready()
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    yield Target(server, channel)
    channel.close()
    server.stop()


# --- shared pieces -----------------------------------------------------------------------------

surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"])
# st.text() drops surrogates from a mixed alphabet: join characters instead.
texts = st.lists(st.characters() | surrogates, max_size=6).map("".join)
numbers = (
    st.floats(width=64)
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.sampled_from([1e308, -1e308, -0.0, 3.4028234e38, 3.5e38, 5e-324, 70.0, 0.5])
)
values: st.SearchStrategy[Any] = (
    numbers | st.sampled_from(["NaN", "Infinity", "1.0", None, True, [], {}]) | texts
)
good_values = st.floats(-1e3, 1e3) | st.sampled_from([-0.0, 3.4e38, -3.4e38, 1e-45, 0])
json_values = st.recursive(
    st.none() | st.booleans() | numbers | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


def mostly(draw: st.DrawFn, good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
    """Four times in five the valid choice: enough requests get deep into the server."""
    return draw(good if draw(st.integers(0, 4)) else bad)


# --- REST --------------------------------------------------------------------------------------

V2_PARTS = ["name", "shape", "datatype", "data", "drop", "binary", "inputs", "outputs", "params"]


@st.composite
def v2_bodies(draw: st.DrawFn) -> Any:
    """A v2 infer request: valid, or with one or two parts broken."""
    broken = draw(st.sets(st.sampled_from(V2_PARTS), max_size=2)) if draw(st.booleans()) else set()
    n = draw(st.integers(1, 4))
    data: Any = draw(
        st.lists(values if "data" in broken else good_values, min_size=3 * n, max_size=3 * n)
    )
    if draw(st.booleans()):
        data = [data[i : i + 3] for i in range(0, len(data), 3)]  # nested rows
    tensor: dict[str, Any] = {
        "name": draw(texts if "name" in broken else st.sampled_from(["input", "x", ""])),
        "shape": draw(
            st.lists(st.integers(-2, 2**70), max_size=3) | json_values
            if "shape" in broken
            else st.just([n, 3])
        ),
        "datatype": draw(
            st.sampled_from(["FP64", "INT64", "BYTES", "fp32"]) | json_values
            if "datatype" in broken
            else st.just("FP32")
        ),
        "data": data,
    }
    if "drop" in broken:
        del tensor[draw(st.sampled_from(list(tensor)))]
    if "binary" in broken:
        tensor["parameters"] = {"binary_data_size": draw(json_values)}
    inputs = (
        draw(st.lists(st.just(tensor), max_size=3) | json_values)
        if "inputs" in broken
        else [tensor]
    )
    body: dict[str, Any] = {"inputs": inputs}
    if draw(st.booleans()):
        body["id"] = draw(json_values if "params" in broken else texts)  # lone surrogates echoed
    if draw(st.booleans()) or "outputs" in broken:
        known = st.sampled_from(["probabilities", "label"])
        names = known | texts if "outputs" in broken else known
        body["outputs"] = draw(st.lists(st.fixed_dictionaries({"name": names}), max_size=3))
    if draw(st.booleans()):
        body["parameters"] = draw(
            json_values if "params" in broken else st.just({"binary_data_output": True})
        )
    return body


@st.composite
def v1_bodies(draw: st.DrawFn) -> Any:
    features = ["temperature", "vibration", "pressure"]
    row = st.lists(good_values, min_size=3, max_size=3)
    named = st.fixed_dictionaries(dict.fromkeys(features, good_values))
    bad_keys = st.sampled_from(features) | texts  # a lone surrogate as a feature name
    bad = st.lists(values, min_size=2, max_size=4) | st.dictionaries(bad_keys, values, max_size=4)
    instances = st.lists(row | named, min_size=1, max_size=3)
    return {"instances": mostly(draw, instances, st.lists(row | bad, max_size=3) | json_values)}


def _segment(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")  # lone surrogates: invalid UTF-8


@st.composite
def rest_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    route = draw(st.sampled_from(["infer"] * 5 + ["predict"] * 3 + ["model", "ready", "other"]))
    model = _segment(mostly(draw, st.just("tiny"), texts))
    versioned = (
        f"/versions/{_segment(mostly(draw, st.just('v1'), texts))}" if draw(st.booleans()) else ""
    )
    path, method = {
        "infer": (f"/v2/models/{model}{versioned}/infer", "POST"),
        "predict": (f"/v1/models/{model}:predict", "POST"),
        "model": (f"/v2/models/{model}{versioned}", "GET"),
        "ready": (f"/v2/models/{model}{versioned}/ready", "GET"),
        "other": (
            draw(st.sampled_from(["/v2", "/v2/health/live", "/v2/health/ready", "/readyz"])
                 | st.builds(lambda t: "/" + _segment(t), texts)),
            "GET",
        ),
    }[route]  # fmt: skip
    method = mostly(draw, st.just(method), st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
    kinds = ["json", "bytes", "binary"]
    body_kind = mostly(
        draw, st.just({"infer": "v2", "predict": "v1"}.get(route, "json")), st.sampled_from(kinds)
    )
    body: bytes
    headers: dict[str, str] = {}
    if body_kind in ("v2", "v1", "json"):
        doc = draw(
            v2_bodies() if body_kind == "v2" else v1_bodies() if body_kind == "v1" else json_values
        )
        body = json.dumps(doc).encode()  # ASCII: lone surrogates as \ud800 escapes, NaN literals
    elif body_kind == "bytes":
        body = draw(
            st.binary(max_size=80)
            | st.sampled_from([b"", b"{", b"[" * 3000, b'{"inputs": [\xff]}'])
        )
    else:  # binary tensor extension: a JSON header, then tensor bytes
        head = json.dumps(draw(v2_bodies())).encode()
        body = head + draw(st.binary(max_size=48))
        lengths = st.sampled_from([str(len(head)), str(len(head) + 3), "-1", "x"])
        headers["inference-header-content-length"] = draw(
            lengths | st.builds(str, st.integers(0, 10**6))
        )
    content_type = mostly(
        draw, st.sampled_from([None, "application/json"]),
        st.sampled_from(["application/octet-stream", "text/plain", "application/json; charset=x"]),
    )  # fmt: skip
    if content_type is not None:
        headers["content-type"] = content_type
    return method, path, headers, body


def check_rest(response: httpx.Response, request: Any) -> None:
    assert response.status_code < 500, (request, response.status_code, response.text)
    if response.status_code >= 400:
        error = response.json()
        assert set(error) == {"error", "field", "reason"}, (request, error)
        # "<field>: <reason>"; a route error names the path itself (its field is "path")
        assert error["error"].endswith(f": {error['reason']}") and error["field"], error


def fixed_rest_answer(target: Target) -> Any:
    tensor = {"name": "input", "shape": [2, 3], "datatype": "FP32", "data": ROWS}
    response = target.server.client.post("/v2/models/tiny/infer", json={"inputs": [tensor]})
    assert response.status_code == 200, response.text
    return response.json()


def test_rest_fuzz_never_answers_5xx_and_keeps_answering(target: Target) -> None:
    before = fixed_rest_answer(target)
    statuses: Counter[int] = Counter()

    @fuzz_settings(REST_EXAMPLES)
    @given(rest_requests())
    def one_request(request: tuple[str, str, dict[str, str], bytes]) -> None:
        method, path, headers, body = request
        content = body if method in ("POST", "PUT") else None
        response = target.server.client.request(method, path, headers=headers, content=content)
        statuses[response.status_code] += 1
        check_rest(response, request)

    one_request()
    # The requests reached the model as well as the validation: answers and refusals both.
    assert statuses[200] >= 100 and statuses[400] >= 100, statuses
    assert fixed_rest_answer(target) == before
    text = target.server.metrics()
    for code in ("500", "501", "502", "503", "504"):
        assert metric_value(text, "neuraxis_serve_requests_total", code=code) is None, text


# --- gRPC --------------------------------------------------------------------------------------

PLACEHOLDER = "ZZZZ"  # replaced on the wire by invalid UTF-8 of the same length


@st.composite
def infer_messages(draw: st.DrawFn) -> bytes:
    """A ModelInferRequest, valid or mostly valid part by part; data in fp32_contents or raw."""
    valid = draw(st.booleans())

    def pick(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
        return draw(good) if valid else mostly(draw, good, bad)

    n = draw(st.integers(1, 3))
    floats = st.floats(-1e3, 1e3, width=32) | st.sampled_from([3.4e38, -0.0, 1e-45])
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=pick(st.just("input"), st.sampled_from(["temperature", "", PLACEHOLDER])),
        datatype=pick(st.just("FP32"), st.sampled_from(["FP64", "INT64", "BYTES", ""])),
        shape=pick(st.just([n, 3]), st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3)),
    )
    count = pick(st.just(3 * n), st.integers(0, 3 * n + 1))
    values = draw(st.lists(floats | st.floats(width=32), min_size=count, max_size=count))
    raw: list[bytes] = []
    if draw(st.booleans()):
        tensor.contents.fp32_contents.extend(values)
    else:
        packed = struct.pack(f"<{len(values)}f", *values)
        raw.append(pick(st.just(packed), st.binary(max_size=4 * 3 * n + 2)))
    request = pb.ModelInferRequest(
        model_name=pick(st.just("tiny"), st.sampled_from(["nobody", PLACEHOLDER])),
        model_version=pick(st.sampled_from(["", "v1"]), st.sampled_from(["v2", "x"])),
        id=draw(st.sampled_from(["", "r", PLACEHOLDER])),
        inputs=pick(st.just([tensor]), st.lists(st.just(tensor), max_size=2)),
        raw_input_contents=pick(st.just(raw), st.lists(st.binary(max_size=12), max_size=2)),
    )
    known = st.sampled_from(["probabilities", "label"])
    outputs = mostly(
        draw,
        st.lists(known, max_size=2, unique=True),
        st.lists(known | st.text(max_size=3), max_size=3),
    )
    for name in outputs:
        request.outputs.add(name=name)
    data: bytes = request.SerializeToString()
    return data.replace(PLACEHOLDER.encode(), b"\xff\xfe\xc0\x80")


@st.composite
def grpc_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    method = draw(st.sampled_from(["ModelInfer"] * 10 + [
        "ModelReady", "ModelMetadata", "ServerLive", "ServerReady", "ServerMetadata",
        "ModelStreamInfer", "Nope",
    ]))  # fmt: skip
    if method == "ModelInfer" and draw(st.integers(0, 4)):
        return method, draw(infer_messages())
    if method in ("ModelReady", "ModelMetadata") and draw(st.booleans()):
        message = pb.ModelReadyRequest(
            name=draw(st.sampled_from(["tiny", "nobody", PLACEHOLDER])),
            version=draw(st.sampled_from(["", "v1", "v9"])),
        )  # same fields as ModelMetadataRequest
        return method, message.SerializeToString().replace(
            PLACEHOLDER.encode(), b"\xff\xff\xff\xff"
        )
    return method, draw(st.binary(max_size=64))


def fixed_grpc_answer(target: Target) -> bytes:
    request = pb.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[2, 3])
    tensor.contents.fp32_contents.extend(FLAT)
    code, answer = target.grpc_call("ModelInfer", request.SerializeToString())
    assert code == grpc.StatusCode.OK
    response = pb.ModelInferResponse.FromString(answer)
    assert [o.name for o in response.outputs] == ["probabilities", "label"]
    return answer


def test_grpc_fuzz_never_fails_on_the_servers_side_and_keeps_answering(target: Target) -> None:
    before = fixed_grpc_answer(target)
    codes: Counter[grpc.StatusCode] = Counter()

    @fuzz_settings(GRPC_EXAMPLES)
    @given(grpc_requests())
    def one_call(request: tuple[str, bytes]) -> None:
        code, _ = target.grpc_call(*request)
        codes[code] += 1
        assert code in CLIENT_ERRORS, (request, code)

    one_call()
    assert codes[grpc.StatusCode.OK] >= 50 and codes[grpc.StatusCode.INVALID_ARGUMENT] >= 100, codes
    assert fixed_grpc_answer(target) == before
    text = target.server.metrics()
    assert (
        metric_value(text, "neuraxis_serve_requests_total", route="grpc:ModelInfer", code="500")
        is None
    )
