"""A real Prometheus scrapes the running operator and evaluates the Monitoring component's
rules: after a Dataset fails (its pod fails on a KWOK node: fault injection),
`neuraxis_resources{kind="Dataset",phase="Failed"}` arrives and `NeuraxisDatasetQualityFailed`
fires. Alert `for` durations are shortened to 0s here; the promtool unit tests check them."""

from __future__ import annotations

import json
from pathlib import Path

from neuraxis.dev.prometheus import rule_file, running_prometheus
from neuraxis.infra.grafana import dashboards
from neuraxis.infra.monitoring import alert_rules
from tests.cluster.conftest import Cluster
from tests.cluster.operator_fixtures import example, phase, running_operator, wait_for, with_result

FAILED = {"outcome": "Failed", "reason": "MissingSalt", "message": "no salt in the Secret"}


def test_prometheus_scrapes_the_operator_and_fires_dataset_failed(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    groups = alert_rules("monitoring")["spec"]["groups"]
    with running_operator(cluster, namespace, tmp_path, fake_nodes=True) as op:
        target = f"127.0.0.1:{op.metrics_port}"
        rules = rule_file(groups, "0s")
        with running_prometheus(tmp_path / "prom", {"operator": [target]}, rules) as prom:
            prom.wait_for("the operator's reconcile metrics", lambda: prom.query(
                "neuraxis_caches_synced == 1"))  # fmt: skip
            assert "NeuraxisDatasetQualityFailed" not in prom.firing()
            failing = with_result(example("01-sensor-readings.yaml"), FAILED, fail=True)
            cluster.apply(failing, namespace)
            wait_for(
                lambda: phase(cluster, "datasets", "sensor-readings", namespace) == "Failed",
                "Dataset Failed",
                op=op,
            )
            alert = "NeuraxisDatasetQualityFailed"
            firing = prom.wait_for(alert, lambda: prom.firing().get(alert))
            assert firing[0]["severity"] == "warning"
            failed = prom.query('neuraxis_resources{kind="Dataset",phase="Failed"}')
            assert [float(s["value"][1]) for s in failed] == [1.0]
            # The operator's dashboards query what it exports.
            panels = json.loads(dashboards()["datasets.json"])["panels"]
            by_phase = prom.query(panels[0]["targets"][0]["expr"])
            assert {s["metric"]["phase"]: float(s["value"][1]) for s in by_phase} == {"Failed": 1}
