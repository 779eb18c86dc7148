"""The feature-drift alert: on the metric the servers export, at the threshold drift.py uses."""

from __future__ import annotations


def test_drift_alert_fires_above_the_psi_threshold_of_the_servers() -> None:
    from neuraxis.infra.monitoring import PSI_THRESHOLD, alert_rules
    from neuraxis.workloads.drift import PSI_THRESHOLD as SERVED_THRESHOLD
    from neuraxis.workloads.serve.metrics import ServeMetrics

    assert PSI_THRESHOLD == SERVED_THRESHOLD == 0.2
    rules = alert_rules("monitoring")["spec"]["groups"][0]["rules"]
    drift = next(r for r in rules if r["alert"] == "NeuraxisFeatureDrift")
    assert drift["expr"] == ("max by (namespace, model, feature) (neuraxis_feature_drift) > 0.2")
    assert drift["for"] == "15m" and drift["labels"]["severity"] == "warning"
    # The metric and its labels are the ones a server exposes.
    metrics = ServeMetrics()
    metrics.set_drift("detector", {"temperature": 0.5})
    assert b'neuraxis_feature_drift{feature="temperature",model="detector"} 0.5' in (
        metrics.exposition()
    )
