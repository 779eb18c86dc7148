"""The operator when the API server fails requests: a real kube-apiserver answering 500 (an
admission webhook that cannot be reached) makes the operator retry with backoff, then report
`Degraded` with the API's error, keep retrying slowly, and converge once the API answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.cluster.conftest import Cluster
from tests.cluster.operator_fixtures import (
    condition,
    example,
    get,
    names,
    phase,
    running_operator,
    wait_for,
    with_result,
)

ETL_OK = {"outcome": "Succeeded", "reason": "Succeeded", "version": 0, "rows": 10}


def unreachable_webhook(name: str, namespace: str) -> dict[str, Any]:
    """Job creation in `namespace` goes through a webhook nobody serves: the API server
    answers 500 ("failed calling webhook"), as when a policy engine is down."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "deny-jobs.neuraxis.dev",
                "clientConfig": {"url": "https://127.0.0.1:9/validate"},
                "rules": [
                    {
                        "apiGroups": ["batch"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["jobs"],
                    }
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 1,
            }
        ],
    }


def test_api_errors_are_retried_then_reported_as_degraded_until_they_stop(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    webhook = f"{ns}-deny-jobs"
    cluster.kubectl(
        "apply", "--filename=-", input_text=json.dumps(unreachable_webhook(webhook, ns))
    )
    settings = {
        "NEURAXIS_API_RETRIES": "2",
        "NEURAXIS_API_RETRY_CAP_SECONDS": "0.5",
        "NEURAXIS_DEGRADED_RETRY_SECONDS": "2",
    }
    try:
        with running_operator(cluster, ns, tmp_path, settings, fake_nodes=True) as op:
            cluster.apply(with_result(example("01-sensor-readings.yaml"), ETL_OK), ns)

            def degraded() -> Any:
                found = condition(get(cluster, "datasets", "sensor-readings", ns), "Degraded")
                return found if (found or {}).get("status") == "True" else None

            found = wait_for(degraded, "Degraded=True", timeout=60, op=op)
            assert found["reason"] == "ApiUnavailable"
            assert "failed calling webhook" in found["message"], found
            assert "retrying every 2s" in found["message"]
            assert names(cluster, "jobs", ns, "neuraxis.dev/dataset=sensor-readings") == []
            # The operator keeps retrying (slowly): once the API accepts Jobs, it converges.
            cluster.kubectl("delete", "validatingwebhookconfiguration", webhook)
            wait_for(
                lambda: phase(cluster, "datasets", "sensor-readings", ns) == "Ready",
                "Ready after the outage",
                timeout=60,
                op=op,
            )
            log = op.log_path.read_text()
    finally:
        cluster.kubectl("delete", "validatingwebhookconfiguration", webhook, "--ignore-not-found")
    recovered = condition(get(cluster, "datasets", "sensor-readings", ns), "Degraded")
    assert recovered is not None and recovered["status"] == "False", recovered
    assert recovered["reason"] == "ApiAvailable"
    assert "Traceback" not in log, log[-3000:]
