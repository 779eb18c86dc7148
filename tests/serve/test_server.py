"""The inference server as a real process on a real port, driven over HTTP."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import torch

from neuraxis.lake import Lake
from neuraxis.workloads.artifact import read_verified

from .conftest import FEATURES, REPO, TinyClassifier, load_scripted, metric_value, write_model

if TYPE_CHECKING:
    from tests.serve.conftest import ServerProcess, StartServer

pytestmark = pytest.mark.engine

SERVE = "neuraxis.workloads.serve"
FOLDER = "models/default/tiny/v1"
BODY_LIMIT = 4096


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake_dir = tmp_path_factory.mktemp("lake")
    write_model(Lake(str(lake_dir)), FOLDER, TinyClassifier(seed=1), version="v1")
    return lake_dir / FOLDER


@pytest.fixture(scope="module")
def server(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from tests.serve.conftest import ServerProcess, free_port

    port, log = free_port(), tmp_path_factory.mktemp("log") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", SERVE, "--model", f"file://{artifact}", "--port", str(port),
             "--max-batch-wait-ms", "20", "--max-body-bytes", str(BODY_LIMIT)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    srv = ServerProcess(proc, port, log)
    srv.wait_ready()
    yield srv
    srv.stop()


def direct_model(artifact: Path) -> Any:
    lake = Lake(str(artifact.parent))
    return load_scripted(read_verified(lake, artifact.name, ["model.ts"])["model.ts"])


def random_rows(rng: random.Random, n: int) -> list[list[float]]:
    return [[rng.gauss(70, 15), rng.gauss(0.5, 0.3), rng.gauss(1.0, 0.2)] for _ in range(n)]


def test_predictions_match_the_model_run_directly(server: ServerProcess, artifact: Path) -> None:
    rows = random_rows(random.Random(3), 20)
    expected = direct_model(artifact)(torch.tensor(rows, dtype=torch.float32))
    labels = ["ok" if p[0] >= p[1] else "failure" for p in expected.tolist()]

    v1 = server.client.post("/v1/models/tiny:predict", json={"instances": rows})
    assert v1.status_code == 200, v1.text
    assert torch.allclose(torch.tensor(v1.json()["probabilities"]), expected, atol=1e-6)
    assert v1.json()["predictions"] == labels and v1.json()["model_version"] == "v1"

    as_objects = [dict(zip(FEATURES, row, strict=True)) for row in rows]
    v1_obj = server.client.post("/v1/models/tiny:predict", json={"instances": as_objects})
    assert v1_obj.json()["probabilities"] == v1.json()["probabilities"]

    tensor = {"name": "input", "shape": [20, 3], "datatype": "FP32", "data": rows}
    v2 = server.client.post("/v2/models/tiny/infer", json={"id": "r1", "inputs": [tensor]})
    assert v2.status_code == 200, v2.text
    probs = torch.tensor(v2.json()["outputs"][0]["data"]).reshape(20, 2)
    assert torch.allclose(probs, expected, atol=1e-6)
    assert v2.json()["outputs"][1]["data"] == labels and v2.json()["id"] == "r1"


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(
    server: ServerProcess, artifact: Path
) -> None:
    rows = random_rows(random.Random(4), 64)
    expected = direct_model(artifact)(torch.tensor(rows, dtype=torch.float32)).tolist()
    before = metric_value(server.metrics(), "neuraxis_serve_batch_size_sum") or 0.0

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(
                *(client.post("/v1/models/tiny:predict", json={"instances": [r]}) for r in rows)
            )

    responses = asyncio.run(send_all())
    for response, probs in zip(responses, expected, strict=True):
        assert response.status_code == 200
        assert response.json()["probabilities"][0] == pytest.approx(probs, abs=1e-6)
    after = metric_value(server.metrics(), "neuraxis_serve_batch_size_sum")
    assert after == before + 64  # every row went through exactly one forward


def test_metadata_health_and_metrics(server: ServerProcess, artifact: Path) -> None:
    meta = server.client.get("/v2/models/tiny").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["parameters"]["features"] == FEATURES
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
        assert server.client.get(path).status_code == 200
    server.client.post("/v1/models/tiny:predict", json={"instances": [[1, 2]]})
    text = server.metrics()
    digest = json.loads((artifact / "manifest.json").read_text())["digest"]
    assert metric_value(text, "neuraxis_serve_model_info", model="tiny", version="v1") == 1.0
    assert f'digest="{digest}"' in text
    route = "/v1/models/{name}:predict"
    assert (metric_value(text, "neuraxis_serve_requests_total", route=route, code="400") or 0) >= 1
    assert (
        metric_value(text, "neuraxis_serve_request_duration_seconds_count", route=route) or 0
    ) > 0
    assert (metric_value(text, "neuraxis_serve_batch_size_count") or 0) > 0


def test_routing_errors_are_json_4xx(server: ServerProcess) -> None:
    unknown = server.client.post("/v1/models/other:predict", json={"instances": [[1, 2, 3]]})
    assert unknown.status_code == 404 and "'other' not found" in unknown.json()["error"]
    wrong_method = server.client.get("/v1/models/tiny:predict")
    assert wrong_method.status_code == 405 and "method GET" in wrong_method.json()["error"]
    assert server.client.get("/nowhere").status_code == 404
    big = server.client.post(
        "/v1/models/tiny:predict", content=b" " * (BODY_LIMIT + 1),
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert big.status_code == 413 and "limit of 4096 bytes" in big.json()["error"]


def chunked_body(data: bytes) -> Iterator[bytes]:
    """A body without Content-Length: the limit must be enforced while streaming."""
    for start in range(0, len(data), 1024):
        yield data[start : start + 1024]


Case = tuple[str, str, dict[str, str], Any, tuple[int, ...], str]


def fuzz_case(rng: random.Random) -> Case:
    """(method, path, headers, content, allowed statuses, text the error must contain)."""
    json_ct = {"content-type": "application/json"}
    v1, v2 = "/v1/models/tiny:predict", "/v2/models/tiny/infer"
    rows = random_rows(rng, rng.randint(1, 5))
    i, j = rng.randrange(len(rows)), rng.randrange(3)
    kind = rng.randrange(20)
    if kind == 0:
        rows[i] = (rows[i] * 2)[: rng.choice([0, 1, 2, 4, 5])]
        return "POST", v1, json_ct, json.dumps({"instances": rows}), (400,), f"instances[{i}]"
    if kind == 1:
        bad: list[Any] = [rng.choice(["x", None, True, {"a": 1}, [1, 2], ""])]
        body = {
            "instances": [r[:j] + bad + r[j + 1 :] if n == i else r for n, r in enumerate(rows)]
        }
        return "POST", v1, json_ct, json.dumps(body), (400,), f"instances[{i}][{j}]"
    if kind == 2:
        objs: list[dict[str, Any]] = [dict(zip(FEATURES, r, strict=True)) for r in rows]
        name = FEATURES[j]
        del objs[i][name]
        return (
            "POST",
            v1,
            json_ct,
            json.dumps({"instances": objs}),
            (400,),
            f"instances[{i}].{name}",
        )
    if kind == 3:
        objs = [dict(zip(FEATURES, r, strict=True)) for r in rows]
        objs[i]["humidity"] = 1.0
        return (
            "POST",
            v1,
            json_ct,
            json.dumps({"instances": objs}),
            (400,),
            f"instances[{i}].humidity",
        )
    if kind == 4:
        rows[i][j] = rng.choice([float("nan"), float("inf"), float("-inf")])
        return "POST", v1, json_ct, json.dumps({"instances": rows}), (400,), f"instances[{i}][{j}]"
    if kind == 5:
        huge = rng.choice(["1e39", "-3.5e300", "1" + "0" * 400, "1e999"])
        text = json.dumps({"instances": rows}).replace(repr(rows[i][j]), huge, 1)
        return "POST", v1, json_ct, text, (400,), "instances["
    if kind == 6:
        rows[i][j] = rng.choice([3.0e38, -3.0e38, 1e30])  # valid float32: 200, or 422 overflow
        return "POST", v1, json_ct, json.dumps({"instances": rows}), (200, 422), f"instances[{i}]"
    if kind == 7:
        body_any = rng.choice([{}, {"instance": rows}, {"instances": []}, {"instances": "abc"},
                               {"instances": {"a": 1}}, {"instances": None}])  # fmt: skip
        return "POST", v1, json_ct, json.dumps(body_any), (400,), "instances"
    if kind == 8:
        return "POST", v1, json_ct, json.dumps(rng.choice([[1, 2], "x", 3, None])), (400,), "body"
    if kind == 9:
        good = json.dumps({"instances": rows})
        noise = bytes(rng.randrange(256) for _ in range(40))
        cut = good[: rng.randrange(1, len(good))]
        garbage = rng.choice([cut, "{'instances': 1}", "", noise, "[" * 2000])
        return "POST", v1, json_ct, garbage, (400,), "body"
    if kind == 10:
        ct = rng.choice(["text/plain", "application/x-www-form-urlencoded", "application/xml"])
        return "POST", v1, {"content-type": ct}, json.dumps({"instances": rows}), (415,), ct
    if kind == 11:
        data = json.dumps({"instances": rows, "pad": "x" * BODY_LIMIT}).encode()
        content: Any = chunked_body(data) if rng.random() < 0.5 else data
        return "POST", rng.choice([v1, v2]), json_ct, content, (413,), "limit of"
    tensor: dict[str, Any]
    if kind == 12:
        tensor = {"name": "input", "shape": [len(rows), 3], "datatype": "FP32", "data": rows}
        key = rng.choice(["name", "shape", "datatype", "data"])
        del tensor[key]
        return "POST", v2, json_ct, json.dumps({"inputs": [tensor]}), (400,), f"inputs[0].{key}"
    if kind == 13:
        dtype = rng.choice(["FP64", "INT32", "BYTES", 7, None])
        tensor = {
            "name": "input",
            "shape": [len(rows), 3],
            "datatype": dtype,
            "data": rows,
        }
        return "POST", v2, json_ct, json.dumps({"inputs": [tensor]}), (400,), "inputs[0].datatype"
    if kind == 14:
        shape = rng.choice([[len(rows)], [len(rows), 4], [len(rows) + 1, 3], [0, 3], "3", [1.5, 3]])
        tensor = {"name": "input", "shape": shape, "datatype": "FP32", "data": rows}
        return "POST", v2, json_ct, json.dumps({"inputs": [tensor]}), (400,), "inputs[0]"
    if kind == 15:
        flat: list[Any] = [v for r in rows for v in r]
        k = rng.randrange(len(flat))
        flat[k] = rng.choice(["1", None, [1], {"v": 1}])
        tensor = {"name": "input", "shape": [len(rows), 3], "datatype": "FP32", "data": flat}
        return (
            "POST",
            v2,
            json_ct,
            json.dumps({"inputs": [tensor]}),
            (400,),
            f"inputs[0].data[{k}]" if k else "inputs[0].data",
        )
    if kind == 16:
        doc = rng.choice([{}, {"inputs": 5}, {"inputs": [1]}])
        return "POST", v2, json_ct, json.dumps(doc), (400,), "inputs"
    if kind == 17:
        name = rng.choice(["TINY", "tiny2", "..", "x" * 60])
        path = f"/v1/models/{name}:predict"
        return "POST", path, json_ct, json.dumps({"instances": rows}), (404,), "not found"
    if kind == 18:
        method = rng.choice(["GET", "PUT", "DELETE", "PATCH"])
        return method, rng.choice([v1, v2]), json_ct, None, (405,), f"method {method}"
    as_objects = [dict(zip(FEATURES, r, strict=True)) for r in rows]
    ok = rng.choice([{"instances": rows}, {"instances": as_objects}])
    return "POST", v1, json_ct, json.dumps(ok), (200,), ""


def test_fuzzed_malformed_requests_never_5xx_and_4xx_name_the_problem(
    server: ServerProcess,
) -> None:
    rng = random.Random(20261129)
    statuses: dict[int, int] = {}
    for n in range(1000):
        method, path, headers, content, allowed, fragment = fuzz_case(rng)
        response = server.client.request(method, path, headers=headers, content=content)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        sent = str(content)[:200]
        detail = (
            f"case {n}: {method} {path} {sent!r} -> {response.status_code} {response.text[:300]}"
        )
        assert response.status_code < 500, detail
        assert response.status_code in allowed, detail
        if response.status_code >= 400:
            assert fragment in response.json()["error"], detail
    assert sum(statuses.values()) == 1000
    assert sum(c for s, c in statuses.items() if s >= 400) > 900, statuses
    assert server.proc.poll() is None  # still up


def test_refuses_to_start_on_a_tampered_or_unexpected_artifact(
    tmp_path: Path, artifact: Path
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    ref = write_model(lake, FOLDER, TinyClassifier(seed=2), version="v9")
    good_digest = ref.digest
    cases = {"digest": (["--digest", "sha256:" + "0" * 64], "ArtifactChanged: refusing to serve")}
    served = lake.local_path(FOLDER) / "model.ts"
    for label, (extra, message) in cases.items():
        result = run_serve(lake.uri(FOLDER), extra)
        assert result.returncode == 2 and message in result.stderr, (label, result.stderr)
    served.write_bytes(served.read_bytes() + b"\0")
    tampered = run_serve(lake.uri(FOLDER), ["--digest", good_digest])
    assert tampered.returncode == 2 and "sha256 mismatch" in tampered.stderr, tampered.stderr
    assert "ArtifactChanged" in tampered.stderr  # a changed file under a pinned digest
    (lake.local_path(FOLDER) / "manifest.json").unlink()
    incomplete = run_serve(lake.uri(FOLDER), [])
    assert incomplete.returncode == 2 and "incomplete" in incomplete.stderr, incomplete.stderr


def run_serve(uri: str, extra: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", SERVE, "--model", uri, "--port", "1", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def raw_request(port: int, body: bytes, send_bytes: int) -> socket.socket:
    """Open a connection and send the headers and the first `send_bytes` of the body."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = (
        f"POST /v1/models/tiny:predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[:send_bytes])
    return sock


def read_response(sock: socket.socket) -> tuple[int, Any]:
    data = b""
    while chunk := sock.recv(65536):  # the server closes after answering (it is shutting down)
        data += chunk
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_sigterm_finishes_in_flight_requests(start_server: StartServer, artifact: Path) -> None:
    server = start_server(SERVE, "--model", str(artifact), "--max-batch-wait-ms", "300")
    body = json.dumps({"instances": [[70.0, 0.5, 1.0]]}).encode()
    partial = [raw_request(server.port, body, len(body) // 2) for _ in range(3)]
    complete = [raw_request(server.port, body, len(body)) for _ in range(2)]
    deadline = time.monotonic() + 60
    while (metric_value(server.metrics(), "neuraxis_serve_requests_in_flight") or 0) < 3:
        assert time.monotonic() < deadline, "the requests never reached the server"
        time.sleep(0.05)
    server.proc.send_signal(signal.SIGTERM)
    while True:  # wait until the server has stopped accepting: shutdown is under way
        assert time.monotonic() < deadline, "the server kept accepting connections"
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            time.sleep(0.05)
        except OSError:
            break
    for sock in partial:
        sock.sendall(body[len(body) // 2 :])
    results = [read_response(sock) for sock in partial + complete]
    assert [status for status, _ in results] == [200] * 5
    assert all(doc["model_version"] == "v1" for _, doc in results)
    # uvicorn re-raises the captured SIGTERM once its graceful shutdown is complete.
    assert server.proc.wait(60) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.output()
