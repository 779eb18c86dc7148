"""The operator's canary analysis against real inference servers on loopback: a stable version
and a canary whose model fails on some inputs (the server answers 500), read over HTTP from
their /metrics exactly as the operator reads a predictor pod's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
import torch

from neuraxis.crds.modelversion import CanaryAnalysis
from neuraxis.lake import Lake
from neuraxis.operator.canary import ROLLED_BACK, analyze_canary, fetch_metrics

from .conftest import TinyClassifier, write_model

if TYPE_CHECKING:
    from pathlib import Path

    from tests.serve.conftest import ServerProcess, StartServer

pytestmark = pytest.mark.engine

SERVE = "neuraxis.workloads.serve"
GOOD = [[70.0, 0.5, 1.0]]
BROKEN = [[70.0, 0.5, -1.0]]  # valid input; the canary's defect fails on a negative pressure


class DefectiveClassifier(TinyClassifier):
    """A canary with a defect: its forward raises on a negative pressure (a model error, so
    the server answers 5xx, unlike a bad input's 4xx)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 2] < 0.0).any()):
            raise RuntimeError("defect: negative pressure")
        return torch.softmax(self.linear((x - self.mean) / self.std), dim=1)


def predict(server: ServerProcess, rows: list[list[float]]) -> int:
    # One connection per request: the server closes the connection after a model error.
    body = {"instances": rows}
    response = server.client.post(
        "/v1/models/tiny:predict", json=body, headers={"Connection": "close"}
    )
    return response.status_code


def test_the_analysis_rolls_back_a_failing_canary_from_real_metrics(
    start_server: StartServer, tmp_path: Path
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    write_model(lake, "models/default/tiny/v1", TinyClassifier(seed=1), "v1")
    write_model(lake, "models/default/tiny/v2", DefectiveClassifier(seed=2), "v2")
    stable = start_server(SERVE, "--model", f"file://{tmp_path}/lake/models/default/tiny/v1")
    canary = start_server(SERVE, "--model", f"file://{tmp_path}/lake/models/default/tiny/v2")
    urls = ([f"{stable.url}/metrics"], [f"{canary.url}/metrics"])
    analysis = CanaryAnalysis(max_error_ratio_increase=0.05, min_requests=50)
    now = datetime.now(UTC)

    for _ in range(60):
        assert predict(stable, GOOD) == 200
        assert predict(stable, BROKEN) == 200  # the stable version handles it
    for i in range(30):
        assert predict(canary, GOOD) == 200
        if i % 3 == 0:
            assert predict(canary, BROKEN) >= 500
    pending = analyze_canary(analysis, 2, {}, urls, now, fetch_metrics)
    assert not pending.rolled_back and pending.condition is not None
    assert pending.condition[2] == "CanaryAnalysisPending"  # 40 canary requests < 50

    for i in range(30):
        assert predict(canary, GOOD) == 200
        if i % 3 == 0:
            assert predict(canary, BROKEN) >= 500
    state = analyze_canary(analysis, 2, pending.split, urls, now + timedelta(minutes=1))
    assert state.rolled_back and state.condition is not None
    assert state.condition[2] == ROLLED_BACK
    assert state.split["canary"]["requests"] == 80  # type: ignore[index]
    assert state.split["canary"]["errorRatio"] == 0.25  # type: ignore[index]
    assert state.split["stable"]["errorRatio"] == 0.0  # type: ignore[index]
    assert "error ratio +0.2500 > 0.05" in state.condition[3]
