"""A real Prometheus scrapes a real `neuraxis workload serve` process and evaluates the
Monitoring component's rules: the serving metrics arrive, every dashboard query runs, and
`NeuraxisServingErrors` fires after injected faults (a model that raises on a marker input, so
the server answers 500). Alert `for` durations are shortened to 0s; their timing is covered by
the promtool unit tests in tests/infra/test_prometheus_rules.py."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn

from neuraxis.dev.prometheus import rule_file, running_prometheus
from neuraxis.infra.grafana import queries
from neuraxis.infra.monitoring import alert_rules
from neuraxis.lake import Lake

from .conftest import TinyClassifier, write_model

if TYPE_CHECKING:
    from tests.serve.conftest import StartServer

pytestmark = pytest.mark.engine
FOLDER = "models/default/faulty/v1"
FAULT_MARKER = 1.0e6  # a temperature this high makes the model raise


class FaultInjected(nn.Module):
    """The tiny classifier, failing (RuntimeError inside the model) on the marker input."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = TinyClassifier(seed=1)
        self.marker = FAULT_MARKER  # an attribute: TorchScript keeps it as a constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] >= self.marker).any()):
            raise RuntimeError("injected fault")
        return self.inner(x)  # type: ignore[no-any-return]


def test_prometheus_scrapes_the_server_and_fires_serving_errors(
    start_server: StartServer, tmp_path: Path
) -> None:
    lake_dir = tmp_path / "lake"
    write_model(Lake(str(lake_dir)), FOLDER, FaultInjected(), version="v1")
    server = start_server(
        "neuraxis.workloads.serve", "--model", f"file://{lake_dir / FOLDER}",
        "--max-batch-wait-ms", "1",
    )  # fmt: skip
    good = {"instances": [[70.0, 0.5, 1.0]]}
    bad = {"instances": [[FAULT_MARKER, 0.5, 1.0]]}
    groups = alert_rules("monitoring")["spec"]["groups"]
    target = f"127.0.0.1:{server.port}"
    with running_prometheus(tmp_path / "prom", {"serving": [target]}, rule_file(groups, "0s")) as p:
        for _ in range(20):
            assert server.client.post("/v1/models/faulty:predict", json=good).status_code == 200
        p.wait_for("the server's request counter", lambda: p.query(
            'sum(neuraxis_serve_requests_total{code="200"}) >= 20'))  # fmt: skip
        assert "NeuraxisServingErrors" not in p.firing()
        # rate() sees only increases after a series' first sample: let Prometheus see the
        # first error before the rest.
        assert server.client.post("/v1/models/faulty:predict", json=bad).status_code == 500
        p.wait_for("the first 500", lambda: p.query('neuraxis_serve_requests_total{code="500"}'))
        for _ in range(10):
            failed = server.client.post("/v1/models/faulty:predict", json=bad)
            assert failed.status_code == 500 and failed.json()["field"] == "model"
        v2 = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32",
                          "data": [FAULT_MARKER, 0.5, 1.0]}]}  # fmt: skip
        assert server.client.post("/v2/models/faulty/infer", json=v2).status_code == 500
        for _ in range(10):
            assert server.client.post("/v1/models/faulty:predict", json=good).status_code == 200
        firing = p.wait_for(
            "NeuraxisServingErrors", lambda: p.firing().get("NeuraxisServingErrors")
        )
        assert firing[0]["severity"] == "critical"
        assert len(firing) == 1  # one server (no namespace/pod labels on a static target)
        latency = p.query(
            "histogram_quantile(0.99, sum by (le) (rate("
            'neuraxis_serve_request_duration_seconds_bucket{route=~"/v.*"}[1m])))'
        )
        assert latency and float(latency[0]["value"][1]) > 0
        # Every dashboard panel's query runs on the real Prometheus (a bad one raises).
        answered = [p.query(expr) for expr in queries()]
        assert len(answered) >= 20 and any(answered)  # the serving panels have data
