"""API keys and rate limits on the real server and the real edge agent, over real HTTP: 401
without or with a wrong key, 200 with either header, 429 with Retry-After past the burst, open
health routes, and metrics that carry the key id and never the key."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from neuraxis.lake import Lake

from .conftest import TinyClassifier, metric_value, write_model
from .test_auth import mount_secret

if TYPE_CHECKING:
    from tests.serve.conftest import ServerProcess, StartServer

pytestmark = pytest.mark.engine

KEYS = {"ci": "nx-ci-7f3a9c2e1b", "dashboard": "nx-dash-55d0e8a4"}
ROWS = {"instances": [[70.0, 0.5, 1.0]]}
BURST = 3
# Slow enough that no token comes back while the test sends its burst.
RATE = "0.01"


def auth_args(keys_dir: Path) -> list[str]:
    return [
        "--auth-mode", "apiKeys", "--api-keys-dir", str(keys_dir),
        "--rate-limit-rps", RATE, "--rate-limit-burst", str(BURST),
    ]  # fmt: skip


def check_auth(server: ServerProcess, predict: str, model: str) -> None:
    client = server.client
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics"):
        assert client.get(path).status_code == 200, path

    missing = client.post(predict, json=ROWS)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["field"] == "authorization"
    assert missing.json()["error"].startswith("authorization: ")
    wrong = client.post(predict, json=ROWS, headers={"Authorization": "Bearer nx-ci-7f3a9c2e1c"})
    assert wrong.status_code == 401 and wrong.json()["reason"] == "invalid credentials"
    meta = client.get(f"/v2/models/{model}")
    assert meta.status_code == 401  # every model route, not only predictions

    bearer = {"Authorization": f"Bearer {KEYS['ci']}"}
    other = {"X-API-Key": KEYS["dashboard"]}
    assert client.post(predict, json=ROWS, headers=bearer).status_code == 200
    assert client.post(predict, json=ROWS, headers=other).status_code == 200
    for _ in range(BURST - 1):
        assert client.post(predict, json=ROWS, headers=bearer).status_code == 200
    limited = client.post(predict, json=ROWS, headers=bearer)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["field"] == "authorization"
    # Another key has its own bucket.
    assert client.post(predict, json=ROWS, headers=other).status_code == 200

    text = server.metrics()
    route = "/v1/models/{name}:predict"
    total = "neuraxis_serve_requests_total"
    assert metric_value(text, total, route=route, code="200", key="ci") == BURST
    assert metric_value(text, total, route=route, code="429", key="ci") == 1
    assert metric_value(text, total, route=route, code="401", key="") == 2
    assert metric_value(text, total, route="/v2/models/{name}", code="401", key="") == 1
    assert metric_value(text, "neuraxis_serve_rate_limited_total", key="ci") == 1
    for secret in KEYS.values():
        assert secret not in text
        assert secret not in server.output()  # nor in the logs


def test_server_api_keys_and_rate_limit(start_server: StartServer, tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    write_model(lake, "models/default/tiny/v1", TinyClassifier(seed=1), version="v1")
    keys_dir = tmp_path / "keys"
    mount_secret(keys_dir, KEYS, "1")
    server = start_server(
        "neuraxis.workloads.serve",
        "--model", f"file://{tmp_path}/lake/models/default/tiny/v1",
        *auth_args(keys_dir),
    )  # fmt: skip
    check_auth(server, "/v1/models/tiny:predict", "tiny")


def test_edge_agent_api_keys_and_rate_limit(start_server: StartServer, tmp_path: Path) -> None:
    lake_dir = tmp_path / "lake"
    write_model(Lake(str(lake_dir)), "edge/default/tiny/v1", TinyClassifier(seed=1), "v1", True)
    keys_dir = tmp_path / "keys"
    mount_secret(keys_dir, KEYS, "1")
    agent = start_server(
        "neuraxis.workloads.edge",
        "--bundle", f"file://{lake_dir}/edge/default/tiny/v1", "--cache-dir", str(tmp_path / "c"),
        "--node", "n1", "--check-interval-s", "3600", "--sync-interval-s", "3600",
        *auth_args(keys_dir),
    )  # fmt: skip
    check_auth(agent, "/v1/models/tiny:predict", "tiny")


def test_apikeys_without_a_keys_folder_refuses_to_start(
    start_server: StartServer, tmp_path: Path
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    write_model(lake, "models/default/tiny/v1", TinyClassifier(seed=1), version="v1")
    server = start_server(
        "neuraxis.workloads.serve",
        "--model", f"file://{tmp_path}/lake/models/default/tiny/v1",
        "--auth-mode", "apiKeys", "--api-keys-dir", str(tmp_path / "absent"),
        ready=False,
    )  # fmt: skip
    assert server.proc.wait(120) == 2
    assert "auth mode apiKeys" in server.output()


def test_grpc_calls_go_through_the_same_gate(start_server: StartServer, tmp_path: Path) -> None:
    import grpc

    from neuraxis.workloads.serve.oip import inference_pb2 as pb

    from .conftest import free_port

    lake = Lake(str(tmp_path / "lake"))
    write_model(lake, "models/default/tiny/v1", TinyClassifier(seed=1), version="v1")
    keys_dir = tmp_path / "keys"
    mount_secret(keys_dir, KEYS, "1")
    grpc_port = free_port()
    server = start_server(
        "neuraxis.workloads.serve",
        "--model", f"file://{tmp_path}/lake/models/default/tiny/v1",
        "--grpc-port", str(grpc_port), *auth_args(keys_dir),
    )  # fmt: skip
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 3])
    request.inputs[0].contents.fp32_contents.extend([70.0, 0.5, 1.0])
    service = "/inference.GRPCInferenceService"
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        infer = channel.unary_unary(
            f"{service}/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        ready = channel.unary_unary(
            f"{service}/ServerReady",
            request_serializer=pb.ServerReadyRequest.SerializeToString,
            response_deserializer=pb.ServerReadyResponse.FromString,
        )
        assert ready(pb.ServerReadyRequest(), timeout=30).ready  # probes stay open
        with pytest.raises(grpc.RpcError) as missing:
            infer(request, timeout=30)
        assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: credentials required" in (missing.value.details() or "")
        with pytest.raises(grpc.RpcError) as wrong:
            infer(request, timeout=30, metadata=[("x-api-key", "nx-wrong")])
        assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
        bearer = [("authorization", f"Bearer {KEYS['ci']}")]
        for _ in range(BURST):
            assert infer(request, timeout=30, metadata=bearer).outputs
        with pytest.raises(grpc.RpcError) as limited:
            infer(request, timeout=30, metadata=bearer)
        assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = dict(limited.value.trailing_metadata() or ())
        assert int(trailers["retry-after"]) >= 1
    text = server.metrics()
    total = "neuraxis_serve_requests_total"
    assert metric_value(text, total, route="grpc:ModelInfer", code="200", key="ci") == BURST
    assert metric_value(text, total, route="grpc:ModelInfer", code="429", key="ci") == 1
    assert metric_value(text, total, route="grpc:ModelInfer", code="401", key="") == 2
    assert KEYS["ci"] not in text
