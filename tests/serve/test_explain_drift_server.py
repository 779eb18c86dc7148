"""`:explain` and feature drift through the real server and edge agent processes, on a model
trained by the train workload (so the artifact carries its training profile)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from neuraxis.lake import Lake
from neuraxis.resources import parse_resource
from neuraxis.workloads.artifact import read_verified, write_artifact
from neuraxis.workloads.drift import PSI_THRESHOLD, parse_profile

from .conftest import REPO, TinyClassifier, metric_value, write_model

if TYPE_CHECKING:
    from tests.serve.conftest import ServerProcess, StartServer

pytestmark = pytest.mark.engine

SERVE = "neuraxis.workloads.serve"
EDGE = "neuraxis.workloads.edge"
FEATURES = ["temperature", "vibration", "pressure"]
WINDOW = 500  # --drift-window of the server under test
# IG completeness: attributions sum to output - baseline_output up to the quadrature error
# (128 Gauss-Legendre steps; about 0.01 of a probability at most on this ReLU MLP).
COMPLETENESS_TOLERANCE = 0.02


def write_training_table(lake: Lake, rows: int = 2000) -> None:
    """Standard-normal features; failure when temperature + vibration > 0."""
    import pyarrow as pa
    from deltalake import CommitProperties, write_deltalake

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 3))
    columns: dict[str, Any] = {name: x[:, j] for j, name in enumerate(FEATURES)}
    columns["failure"] = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    # As a Dataset run commits: the version's content digest in the commit (training reads it).
    meta = {"neuraxisRun": "test", "digest": "sha256:" + hashlib.sha256(x.tobytes()).hexdigest()}
    write_deltalake(
        lake.uri(Lake.table_path("ml", "features")),
        pa.table(columns),
        commit_properties=CommitProperties(custom_metadata={"userMetadata": json.dumps(meta)}),
    )


def train(lake: Lake) -> str:
    from neuraxis.workloads.train.run import run_training

    job = parse_resource(
        {
            "apiVersion": "neuraxis.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "detector-train"},
            "spec": {
                "datasetRef": {"name": "features"},
                "task": {"type": "classification", "label": "failure", "features": FEATURES},
                "model": {"architecture": "mlp", "epochs": 4, "learningRate": 0.02},
                "register": {"model": "detector", "versionName": "v1"},
            },
        }
    )
    result = run_training(job, lake, "ml", "train-v1")  # type: ignore[arg-type]
    assert result is not None
    return str(result["artifact"]["uri"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, str]:
    lake = Lake(str(tmp_path_factory.mktemp("lake")))
    write_training_table(lake)
    return lake, train(lake)


@pytest.fixture(scope="module")
def server(
    trained: tuple[Lake, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    from tests.serve.conftest import ServerProcess, free_port

    port, log = free_port(), tmp_path_factory.mktemp("log") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", SERVE, "--model", trained[1], "--name", "detector",
             "--port", str(port), "--drift-window", str(WINDOW)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    srv = ServerProcess(proc, port, log)
    srv.wait_ready()
    yield srv
    srv.stop()


def folder_of(lake: Lake, uri: str) -> str:
    return uri[len(lake.root.rstrip("/")) + 1 :]


def training_means(lake: Lake, uri: str) -> dict[str, float]:
    data = read_verified(lake, folder_of(lake, uri), ["profile.json"])["profile.json"]
    return {f.name: f.mean for f in parse_profile(data).features}


def explain(srv: ServerProcess, rows: list[list[float]], model: str = "detector") -> Any:
    return srv.client.post(f"/v1/models/{model}:explain", json={"instances": rows})


def check_completeness(body: dict[str, Any]) -> None:
    for item in body["explanations"]:
        assert set(item["attributions"]) == set(FEATURES)
        change = item["output"] - item["baseline_output"]
        residual = sum(item["attributions"].values()) - change
        assert abs(residual) < COMPLETENESS_TOLERANCE, item
        assert abs(item["convergence_delta"] - residual) < 1e-4, item


def test_explain_attributions_sum_to_prediction_minus_baseline(
    server: ServerProcess, trained: tuple[Lake, str]
) -> None:
    rows = np.random.default_rng(11).normal(size=(20, 3)).round(4).tolist()
    response = explain(server, rows)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "integrated_gradients" and body["n_steps"] == 128
    assert body["baseline"]["kind"] == "training-mean"
    means = training_means(*trained)
    assert body["baseline"]["values"] == pytest.approx(means)
    check_completeness(body)
    predicted = server.client.post("/v1/models/detector:predict", json={"instances": rows}).json()
    classes = predicted["classes"]
    for item, label, probs in zip(
        body["explanations"], predicted["predictions"], predicted["probabilities"], strict=True
    ):
        assert item["prediction"] == item["target"] == label
        assert item["output"] == pytest.approx(probs[classes.index(label)], abs=1e-6)
    # The label ignores pressure: it gets the smallest attributions overall.
    total = {f: sum(abs(i["attributions"][f]) for i in body["explanations"]) for f in FEATURES}
    assert total["pressure"] < min(total["temperature"], total["vibration"]), total


BAD_BODIES: list[tuple[bytes, str, int, str]] = [
    (b'{"rows": []}', "application/json", 400, "instances"),
    (b'{"instances": []}', "application/json", 400, "instances"),
    (b'{"instances": [[1, 2]]}', "application/json", 400, "instances[0]"),
    (b'{"instances": [[1, "x", 3]]}', "application/json", 400, "instances[0][1]"),
    (b'{"instances": [[1, NaN, 3]]}', "application/json", 400, "instances[0][1]"),
    (b'{"instances": [{"temperature": 1, "vibration": 2}]}', "application/json", 400,
     "instances[0].pressure"),
    (b'{"instances": [[1, 2, 3]]', "application/json", 400, "body"),
    (b"[1, 2, 3]", "application/json", 400, "body"),
    (b'{"instances": [[1, 2, 3]]}', "text/plain", 415, "content-type"),
    (json.dumps({"instances": [[0.0, 0.0, 0.0]] * 65}).encode(), "application/json", 400,
     "instances"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "content_type", "status", "field"), BAD_BODIES)
def test_explain_refuses_bad_bodies_with_4xx_naming_the_field(
    server: ServerProcess, body: bytes, content_type: str, status: int, field: str
) -> None:
    response = server.client.post(
        "/v1/models/detector:explain", content=body, headers={"content-type": content_type}
    )
    assert response.status_code == status, response.text
    assert response.json()["field"] == field and response.json()["error"].startswith(field)


def test_explain_unknown_model_and_wrong_method(server: ServerProcess) -> None:
    missing = explain(server, [[0.0, 0.0, 0.0]], model="other")
    assert missing.status_code == 404 and missing.json()["field"] == "model"
    get = server.client.get("/v1/models/detector:explain")
    assert get.status_code == 405 and "POST" in get.json()["reason"]


def feed(srv: ServerProcess, rows: np.ndarray[Any, Any], batch: int = 100) -> None:
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch].round(5).tolist()
        response = srv.client.post("/v1/models/detector:predict", json={"instances": chunk})
        assert response.status_code == 200, response.text


def drift(srv: ServerProcess) -> dict[str, float | None]:
    text = srv.metrics()
    return {
        f: metric_value(text, "neuraxis_feature_drift", model="detector", feature=f)
        for f in FEATURES
    }


def test_psi_crosses_the_threshold_for_a_shifted_stream_only(server: ServerProcess) -> None:
    # Unshifted: fresh draws from the training distribution, 3 seeds x 2 windows x 3 features.
    seen: list[float] = []
    for seed in (21, 22, 23):
        rng = np.random.default_rng(seed)
        for _ in range(2):
            feed(server, rng.normal(size=(WINDOW, 3)))
            values = drift(server)
            assert all(v is not None for v in values.values()), values
            seen += [v for v in values.values() if v is not None]
    false_positives = sum(v > PSI_THRESHOLD for v in seen)
    print(f"unshifted PSI over {len(seen)} window-features: max {max(seen):.4f}, "
          f"mean {np.mean(seen):.4f}; false positives {false_positives}")  # fmt: skip
    assert len(seen) == 18 and false_positives == 0
    # Shifted: temperature one training standard deviation higher; the others unchanged.
    shifted = np.random.default_rng(31).normal(size=(WINDOW, 3))
    shifted[:, 0] += 1.0
    feed(server, shifted)
    values = drift(server)
    print(f"shifted PSI: {values}")
    assert values["temperature"] is not None and values["temperature"] > PSI_THRESHOLD
    assert all(v is not None and v < PSI_THRESHOLD for f, v in values.items() if f != "temperature")
    # The window slides: a window of unshifted rows brings temperature back under the threshold.
    feed(server, np.random.default_rng(41).normal(size=(WINDOW, 3)))
    recovered = drift(server)["temperature"]
    assert recovered is not None and recovered < PSI_THRESHOLD


def edge_args(lake: Lake, folder: str, cache: Path, window: int) -> list[str]:
    return [
        "--bundle", lake.uri(folder), "--cache-dir", str(cache), "--node", "n1",
        "--check-interval-s", "3600", "--sync-interval-s", "3600",
        "--drift-window", str(window),
    ]  # fmt: skip


def test_edge_agent_explains_an_fp32_bundle_and_exports_drift(
    start_server: StartServer, trained: tuple[Lake, str], tmp_path: Path
) -> None:
    lake, uri = trained
    files = read_verified(
        lake, folder_of(lake, uri), ["model.ts", "signature.json", "profile.json"]
    )
    folder = "edge/ml/detector/v1/bundle-1"
    write_artifact(lake, folder, files)  # an fp32 bundle, as the bundler ships a tiny MLP
    agent = start_server(EDGE, *edge_args(lake, folder, tmp_path / "agent", window=50))
    response = explain(agent, [[0.5, -0.2, 0.1], [-1.0, 0.3, 2.0]])
    assert response.status_code == 200, response.text
    check_completeness(response.json())
    shifted = np.random.default_rng(5).normal(size=(50, 3))
    shifted[:, 1] += 2.0
    feed(agent, shifted, batch=25)
    values = drift(agent)
    print(f"edge PSI (vibration +2 sd, window 50): {values}")
    assert values["vibration"] is not None and values["vibration"] > PSI_THRESHOLD


def test_edge_agent_answers_501_for_an_int8_bundle(
    start_server: StartServer, tmp_path: Path
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    write_model(lake, "edge/default/tiny/v1", TinyClassifier(seed=1), "v1", quantize=True)
    agent = start_server(EDGE, *edge_args(lake, "edge/default/tiny/v1", tmp_path / "a", 50))
    response = explain(agent, [[70.0, 0.5, 1.0]], model="tiny")
    assert response.status_code == 501, response.text
    assert response.json()["field"] == "model"
    assert "no gradient" in response.json()["reason"]
    predicted = agent.client.post("/v1/models/tiny:predict", json={"instances": [[70.0, 0.5, 1.0]]})
    assert predicted.status_code == 200
    # No training profile in this bundle: no drift series rather than a made-up one.
    assert "neuraxis_feature_drift{" not in agent.metrics()
