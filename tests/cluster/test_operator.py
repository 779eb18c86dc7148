"""The operator end to end on the real control plane: KWOK runs the pods, the real Job,
Deployment and DaemonSet controllers drive them, and workload results arrive through the
termination-message path a kubelet uses."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import Cluster
from tests.cluster.operator_fixtures import (
    OperatorProcess,
    can_i,
    condition,
    example,
    get,
    names,
    phase,
    running_operator,
    wait_for,
    with_result,
)

DIGEST = "sha256:" + "ab" * 32
ETL_OK = {
    "outcome": "Succeeded",
    "reason": "Succeeded",
    "version": 0,
    "rows": 4990,
    "quarantinedRows": 10,
    "qualityPassed": True,
    "digest": DIGEST,
}
TRAIN_OK = {
    "outcome": "Succeeded",
    "reason": "Succeeded",
    "metrics": {"val_loss": 0.21, "accuracy": 0.93},
    "artifact": {
        "uri": "s3://lake/models/ml/anomaly-detector/anomaly-detector-v1",
        "digest": DIGEST,
    },
    "bestTrial": {"id": "t2", "metric": 0.21, "hyperparameters": {"learningRate": 0.01}},
}
EVAL_OK = {
    "outcome": "Succeeded",
    "reason": "GatesPassed",
    "passed": True,
    "metrics": {"accuracy": 0.93, "roc_auc": 0.97},
    "gates": [{"metric": "accuracy", "value": 0.93, "min": 0.8, "passed": True}],
    "cardUri": "s3://lake/models/ml/anomaly-detector/anomaly-detector-v1/card/card.md",
}
EVAL_BAD = {
    "outcome": "Succeeded",
    "reason": "GatesFailed",
    "passed": False,
    "message": "accuracy 0.61 < min 0.80",
    "metrics": {"accuracy": 0.61},
    "gates": [{"metric": "accuracy", "value": 0.61, "min": 0.8, "passed": False}],
}
BUNDLE_OK = {
    "outcome": "Succeeded",
    "reason": "Bundled",
    "bundle": {"uri": "s3://lake/edge/ml/anomaly-detector/anomaly-detector-v1", "digest": DIGEST},
}


@pytest.fixture
def operator(cluster: Cluster, namespace: str, tmp_path: Path) -> Any:
    with running_operator(cluster, namespace, tmp_path, fake_nodes=True) as op:
        yield op


def _apply(cluster: Cluster, namespace: str, *docs: dict[str, Any]) -> None:
    for doc in docs:
        cluster.apply(doc, namespace)


def test_full_chain_reaches_its_final_phases(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    _apply(
        cluster, ns,
        with_result(example("01-sensor-readings.yaml"), ETL_OK),
        with_result(example("02-sensor-features.yaml"), {**ETL_OK, "version": 0, "rows": 4990}),
        with_result(example("03-anomaly-detector-train.yaml"), TRAIN_OK),
        with_result(example("04-anomaly-detector-v1.yaml"), EVAL_OK),
        with_result(example("05-anomaly-detector-edge.yaml"), BUNDLE_OK),
    )  # fmt: skip
    ds = wait_for(
        lambda: phase(cluster, "datasets", "sensor-readings", ns) == "Ready",
        "Dataset Ready",
        op=operator,
    )
    assert ds
    readings = get(cluster, "datasets", "sensor-readings", ns)
    assert readings is not None
    assert readings["status"]["rows"] == 4990 and readings["status"]["qualityPassed"] is True
    assert condition(readings, "Ready")["status"] == "True"  # type: ignore[index]
    # The ETL Job: the spec in a pod annotation, owner reference, labels, salt from the Secret.
    [job_name] = names(cluster, "jobs", ns, "neuraxis.dev/dataset=sensor-readings")
    job = cluster.kubectl_json("get", job_name, "--namespace", ns)
    assert job["metadata"]["ownerReferences"][0]["kind"] == "Dataset"
    assert job["status"]["conditions"][0]["type"] in ("Complete", "SuccessCriteriaMet")

    wait_for(
        lambda: phase(cluster, "trainingjobs", "anomaly-detector-train", ns) == "Succeeded",
        "TrainingJob Succeeded",
        op=operator,
    )
    tj = get(cluster, "trainingjobs", "anomaly-detector-train", ns)
    assert tj is not None
    assert tj["status"]["lineage"]["dataset"] == "sensor-features"
    assert tj["status"]["lineage"]["datasetVersion"] == 0
    assert tj["status"]["artifact"]["digest"] == DIGEST
    assert tj["status"]["modelVersion"] == "anomaly-detector-v1"

    wait_for(
        lambda: phase(cluster, "modelversions", "anomaly-detector-v1", ns) == "Serving",
        "ModelVersion Serving",
        timeout=120,
        op=operator,
    )
    mv = get(cluster, "modelversions", "anomaly-detector-v1", ns)
    assert mv is not None
    assert mv["status"]["evaluation"]["passed"] is True
    assert mv["status"]["endpoint"].startswith("http://anomaly-detector-v1-predictor.")
    services = names(cluster, "services", ns, "neuraxis.dev/modelversion=anomaly-detector-v1")
    assert services == ["service/anomaly-detector", "service/anomaly-detector-v1-predictor"]
    # The model-level Service routes to every routed version of the model (the canary split).
    model_service = get(cluster, "services", "anomaly-detector", ns)
    assert model_service is not None
    assert model_service["spec"]["selector"] == {
        "neuraxis.dev/model": "anomaly-detector",
        "neuraxis.dev/routed": "true",
    }
    assert (
        names(cluster, "hpa", ns, "neuraxis.dev/modelversion=anomaly-detector-v1") == []
    )  # canary: no HPA

    wait_for(
        lambda: phase(cluster, "edgedeployments", "anomaly-detector-plants", ns) == "Available",
        "EdgeDeployment Available",
        timeout=120,
        op=operator,
    )
    ed = get(cluster, "edgedeployments", "anomaly-detector-plants", ns)
    assert ed is not None
    assert (ed["status"]["targetedNodes"], ed["status"]["readyNodes"]) == (3, 3)
    assert ed["status"]["bundle"]["digest"] == DIGEST
    assert ed["status"]["lineage"]["modelVersion"] == "anomaly-detector-v1"
    canary = cluster.kubectl_json(
        "get", "daemonset", "anomaly-detector-plants-canary", "--namespace", ns
    )
    terms = canary["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms[0]["matchFields"][0]["values"] == ["kwok-edge-0"]

    # Events on transitions, and the operator's metrics.
    events = cluster.kubectl_json("get", "events.events.k8s.io", "--namespace", ns)["items"]
    notes = [
        e.get("note", "") for e in events if e.get("reportingController") == "neuraxis.dev/operator"
    ]
    assert any("-> Ready" in n for n in notes) and any("-> Serving" in n for n in notes), notes
    body = (
        urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    assert 'neuraxis_reconcile_total{kind="Dataset",outcome="ok"}' in body
    assert "neuraxis_reconcile_duration_seconds_bucket" in body


def test_training_waits_for_its_dataset(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    _apply(cluster, ns, with_result(example("03-anomaly-detector-train.yaml"), TRAIN_OK))
    tj = wait_for(
        lambda: condition(
            get(cluster, "trainingjobs", "anomaly-detector-train", ns), "InputsReady"
        ),
        "InputsReady condition",
        op=operator,
    )
    assert (tj["status"], tj["reason"]) == ("False", "DatasetNotFound")
    warned = with_result(
        example("02-sensor-features.yaml"),
        {**ETL_OK, "qualityPassed": False, "message": "notNull failure: 12 rows"},
    )
    warned["spec"]["source"] = {"builtin": {"name": "sensors"}}
    warned["spec"]["quality"]["onFailure"] = "Warn"
    _apply(cluster, ns, warned)

    def inputs_reason() -> Any:
        tj = get(cluster, "trainingjobs", "anomaly-detector-train", ns)
        return (condition(tj, "InputsReady") or {}).get("reason")

    wait_for(lambda: inputs_reason() == "DatasetQualityFailed", "DatasetQualityFailed", op=operator)
    assert names(cluster, "jobs", ns, "neuraxis.dev/trainingjob=anomaly-detector-train") == []
    assert names(cluster, "pods", ns, "neuraxis.dev/trainingjob=anomaly-detector-train") == []


def test_failing_pod_fails_the_dataset_with_a_reason(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    failing = with_result(
        example("01-sensor-readings.yaml"),
        {
            "outcome": "Failed",
            "reason": "MissingSalt",
            "message": "no salt in NEURAXIS_SECRET_LAKE_SALT_SALT",
        },
        fail=True,
    )
    _apply(cluster, ns, failing)
    wait_for(
        lambda: phase(cluster, "datasets", "sensor-readings", ns) == "Failed",
        "Dataset Failed",
        op=operator,
    )
    ds = get(cluster, "datasets", "sensor-readings", ns)
    ready = condition(ds, "Ready")
    assert ready is not None and ready["status"] == "False" and ready["reason"] == "MissingSalt"
    assert "NEURAXIS_SECRET_LAKE_SALT_SALT" in ready["message"]


def test_rejected_model_blocks_the_edge_rollout(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    mv = with_result(example("04-anomaly-detector-v1.yaml"), EVAL_BAD)
    mv["spec"]["source"] = {"uri": "s3://lake/models/ml/anomaly-detector/v0", "digest": DIGEST}
    _apply(cluster, ns, mv, with_result(example("05-anomaly-detector-edge.yaml"), BUNDLE_OK))
    wait_for(
        lambda: phase(cluster, "modelversions", "anomaly-detector-v1", ns) == "Rejected",
        "Rejected",
        op=operator,
    )
    ready = condition(get(cluster, "modelversions", "anomaly-detector-v1", ns), "Ready")
    assert ready is not None and "accuracy 0.61 < min 0.80" in ready["message"]
    edge = wait_for(
        lambda: condition(
            get(cluster, "edgedeployments", "anomaly-detector-plants", ns), "InputsReady"
        ),
        "edge condition",
        op=operator,
    )
    assert edge["reason"] == "ModelVersionRejected"
    assert (
        names(cluster, "daemonsets", ns, "neuraxis.dev/edgedeployment=anomaly-detector-plants")
        == []
    )


def test_children_are_restored_finished_runs_are_history_and_deletion_collects(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    mv = with_result(example("04-anomaly-detector-v1.yaml"), EVAL_OK)
    mv["spec"]["source"] = {"uri": "s3://lake/models/ml/anomaly-detector/v0", "digest": DIGEST}
    mv["spec"]["serving"].pop("canary")
    _apply(cluster, ns, with_result(example("01-sensor-readings.yaml"), ETL_OK), mv)
    wait_for(
        lambda: phase(cluster, "modelversions", "anomaly-detector-v1", ns) == "Serving",
        "Serving",
        timeout=120,
        op=operator,
    )
    wait_for(
        lambda: phase(cluster, "datasets", "sensor-readings", ns) == "Ready", "Ready", op=operator
    )
    assert names(cluster, "hpa", ns, "neuraxis.dev/modelversion=anomaly-detector-v1") == [
        "horizontalpodautoscaler.autoscaling/anomaly-detector-v1-predictor"
    ]
    # A deleted Service and an edited Deployment come back as the operator wants them.
    cluster.kubectl("delete", "service", "anomaly-detector-v1-predictor", "--namespace", ns)
    cluster.kubectl(
        "scale", "deployment", "anomaly-detector-v1-predictor", "--replicas=7", "--namespace", ns
    )
    wait_for(
        lambda: get(cluster, "services", "anomaly-detector-v1-predictor", ns),
        "Service restored",
        op=operator,
    )

    def replicas() -> Any:
        deploy = get(cluster, "deployments", "anomaly-detector-v1-predictor", ns) or {}
        return deploy.get("spec", {}).get("replicas")

    wait_for(lambda: replicas() == 2, "Deployment replicas restored", op=operator)
    # A finished run's Job, once deleted, is not run again.
    [job] = names(cluster, "jobs", ns, "neuraxis.dev/dataset=sensor-readings")
    cluster.kubectl("delete", job, "--namespace", ns)
    import time

    time.sleep(8)  # more than two resync periods of the operator
    assert names(cluster, "jobs", ns, "neuraxis.dev/dataset=sensor-readings") == []
    assert phase(cluster, "datasets", "sensor-readings", ns) == "Ready"
    # A spec change starts a new run under a new name.
    cluster.kubectl(
        "patch",
        "dataset",
        "sensor-readings",
        "--namespace",
        ns,
        "--type=merge",
        '--patch={"spec": {"output": {"mode": "append"}}}',
    )
    uid = cluster.kubectl_json("get", "dataset", "sensor-readings", "--namespace", ns)["metadata"][
        "uid"
    ]
    wait_for(
        lambda: (
            names(cluster, "jobs", ns, "neuraxis.dev/dataset=sensor-readings")
            == [f"job.batch/sensor-readings-etl-{uid[:8]}-g2"]
        ),
        "second run",
        op=operator,
    )
    # Deleting the resource garbage-collects its children through owner references.
    cluster.kubectl("delete", "modelversion", "anomaly-detector-v1", "--namespace", ns)
    wait_for(
        lambda: (
            names(cluster, "deployments", ns, "neuraxis.dev/modelversion=anomaly-detector-v1") == []
        ),
        "Deployment collected",
        timeout=60,
        op=operator,
    )
    wait_for(
        lambda: (
            names(cluster, "services", ns, "neuraxis.dev/modelversion=anomaly-detector-v1") == []
        ),
        "Services collected",
        timeout=60,
        op=operator,
    )


def test_invalid_annotation_lands_in_status(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    doc = example("01-sensor-readings.yaml")
    doc["metadata"]["annotations"] = {"neuraxis.dev/pod-annotations": "{broken"}
    _apply(cluster, ns, doc)
    wait_for(
        lambda: phase(cluster, "datasets", "sensor-readings", ns) == "Failed", "Failed", op=operator
    )
    ready = condition(get(cluster, "datasets", "sensor-readings", ns), "Ready")
    assert ready is not None and ready["reason"] == "InvalidAnnotation"
    assert "metadata.annotations[neuraxis.dev/pod-annotations]" in ready["message"]


def test_kwok_annotations_are_refused_by_an_operator_for_real_nodes(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    with running_operator(cluster, ns, tmp_path) as op:  # no test-only settings
        _apply(cluster, ns, with_result(example("01-sensor-readings.yaml"), ETL_OK))
        wait_for(
            lambda: phase(cluster, "datasets", "sensor-readings", ns) == "Failed",
            "Failed",
            op=op,
        )
    ready = condition(get(cluster, "datasets", "sensor-readings", ns), "Ready")
    assert ready is not None and ready["reason"] == "InvalidAnnotation"
    assert "neuraxis.dev/kwok-termination-message" in ready["message"]
    assert "NEURAXIS_ALLOW_KWOK_ANNOTATIONS" in ready["message"]
    assert names(cluster, "jobs", ns, "neuraxis.dev/dataset=sensor-readings") == []


def test_spark_driver_runs_as_an_account_that_may_start_executors(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    doc = with_result(example("01-sensor-readings.yaml"), ETL_OK)
    doc["spec"]["engine"] = {"executors": 2}
    _apply(cluster, ns, doc)
    wait_for(
        lambda: phase(cluster, "datasets", "sensor-readings", ns) == "Ready", "Ready", op=operator
    )
    [job_name] = names(cluster, "jobs", ns, "neuraxis.dev/dataset=sensor-readings")
    pod = cluster.kubectl_json("get", job_name, "--namespace", ns)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "neuraxis-spark"
    assert pod["automountServiceAccountToken"] is True
    account = get(cluster, "serviceaccounts", "neuraxis-spark", ns)
    assert account is not None and account["automountServiceAccountToken"] is False
    spark = f"--as=system:serviceaccount:{ns}:neuraxis-spark"
    for verb, resource in [
        ("create", "pods"), ("watch", "pods"), ("delete", "pods"), ("deletecollection", "pods"),
        ("create", "configmaps"), ("delete", "configmaps"), ("create", "services"),
    ]:  # fmt: skip
        assert can_i(cluster, verb, resource, "--namespace", ns, spark), f"{verb} {resource}"
    assert not can_i(cluster, "get", "secrets", "--namespace", ns, spark)
    assert not can_i(cluster, "create", "pods", "--namespace", "default", spark)
    workload = f"--as=system:serviceaccount:{ns}:neuraxis-workload"
    assert not can_i(cluster, "create", "pods", "--namespace", ns, workload)


def test_operator_rbac_is_least_privilege(cluster: Cluster) -> None:
    from neuraxis.operator.builders.accounts import AUTH_DELEGATOR_ROLE, SPARK_DRIVER_ROLE
    from neuraxis.operator.manifests import OPERATOR, build_manifests

    for manifest in build_manifests():
        if manifest["kind"] != "Deployment":
            cluster.apply(manifest, manifest["metadata"].get("namespace", "default"))
    who = f"--as=system:serviceaccount:neuraxis-system:{OPERATOR}"

    def can(*args: str) -> bool:
        return can_i(cluster, *args, who)

    for verb, resource in [
        ("create", "jobs.batch"), ("watch", "pods"), ("patch", "datasets.neuraxis.dev/status"),
        ("create", "modelversions.neuraxis.dev"), ("patch", "daemonsets.apps"), ("list", "nodes"),
        ("create", "events.events.k8s.io"), ("delete", "jobs.batch"),
        # Federated runs: the TLS Secret (create only), the servers and their policies.
        ("create", "secrets"), ("delete", "deployments.apps"),
        ("create", "networkpolicies.networking.k8s.io"),
        ("delete", "networkpolicies.networking.k8s.io"),
        # Scoped lake credentials: it writes (server-side apply) the Secrets it mints, whose
        # names depend on the run, so no resourceNames can narrow it; it still cannot read,
        # list or delete any Secret.
        ("patch", "secrets"),
    ]:  # fmt: skip
        assert can(verb, resource, "--all-namespaces"), f"operator cannot {verb} {resource}"
    for verb, resource in [
        ("get", "secrets"), ("list", "secrets"), ("watch", "secrets"), ("delete", "secrets"),
        ("delete", "pods"), ("create", "pods"),
        ("delete", "cronjobs.batch"), ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("patch", "nodes"), ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "roles.rbac.authorization.k8s.io"),
        ("escalate", "clusterroles.rbac.authorization.k8s.io"),
        ("bind", "clusterroles.rbac.authorization.k8s.io/cluster-admin"),
        ("bind", "clusterroles.rbac.authorization.k8s.io/edit"),
    ]:  # fmt: skip
        assert not can(verb, resource, "--all-namespaces"), f"operator may {verb} {resource}"
    # The leader Lease: in the operator's own namespace only.
    assert can("update", "leases.coordination.k8s.io", "--namespace", "neuraxis-system")
    assert not can("update", "leases.coordination.k8s.io", "--namespace", "default")
    # Spark drivers: the operator binds their ClusterRole (and only that one) per namespace.
    assert can("create", "rolebindings.rbac.authorization.k8s.io", "--all-namespaces")
    assert can("bind", f"clusterroles.rbac.authorization.k8s.io/{SPARK_DRIVER_ROLE}")
    # Predictors checking ServiceAccount tokens: a ClusterRoleBinding to system:auth-delegator.
    assert can("create", "clusterrolebindings.rbac.authorization.k8s.io")
    assert can("bind", f"clusterroles.rbac.authorization.k8s.io/{AUTH_DELEGATOR_ROLE}")
    assert not can("bind", "clusterroles.rbac.authorization.k8s.io/system:node")


def test_restarts_converge_without_duplicates(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    docs = []
    for i in range(50):
        doc = with_result(example("01-sensor-readings.yaml"), {**ETL_OK, "version": i})
        doc["metadata"]["name"] = f"readings-{i:02d}"
        docs.append(doc)
    op = OperatorProcess(cluster, ns, tmp_path, fake_nodes=True)
    cluster.kubectl(
        "apply",
        "--namespace",
        ns,
        "--filename=-",
        input_text="\n---\n".join(json.dumps(d) for d in docs),
    )
    import random
    import time

    rng = random.Random(7)
    for _ in range(10):
        op.start()
        time.sleep(rng.uniform(1.0, 3.0))
        op.kill()
    op.start()
    try:

        def converged() -> bool:
            items = cluster.kubectl_json("get", "datasets", "--namespace", ns)["items"]
            return all((i.get("status") or {}).get("phase") == "Ready" for i in items)

        wait_for(converged, "all 50 Datasets Ready", timeout=240, op=op)
    finally:
        op.stop()
    jobs = names(cluster, "jobs", ns, "app.kubernetes.io/managed-by=neuraxis")
    configmaps = names(cluster, "configmaps", ns, "app.kubernetes.io/managed-by=neuraxis")
    assert len(jobs) == 50 and len(set(jobs)) == 50
    assert configmaps == []  # each run's spec travels in its Job (a pod annotation)
    items = cluster.kubectl_json("get", "datasets", "--namespace", ns)["items"]
    assert sorted(i["status"]["version"] for i in items) == list(range(50))


def test_service_account_token_serving_gets_a_reviewer_account_and_binding(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    from neuraxis.operator.builders.accounts import AUTH_DELEGATOR_ROLE, PREDICTOR_ACCOUNT

    ns = namespace
    mv = with_result(example("04-anomaly-detector-v1.yaml"), EVAL_OK)
    mv["spec"]["source"] = {"uri": "s3://lake/models/ml/anomaly-detector/v0", "digest": DIGEST}
    mv["spec"]["serving"] = {"replicas": 1, "auth": {"mode": "serviceAccountToken"}}
    _apply(cluster, ns, mv)
    wait_for(
        lambda: phase(cluster, "modelversions", "anomaly-detector-v1", ns) == "Serving",
        "Serving",
        timeout=120,
        op=operator,
    )
    binding = cluster.kubectl_json("get", "clusterrolebinding", f"{PREDICTOR_ACCOUNT}-{ns}")
    try:
        assert binding["roleRef"]["name"] == AUTH_DELEGATOR_ROLE
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": PREDICTOR_ACCOUNT, "namespace": ns}
        ]
        cluster.kubectl("get", "serviceaccount", PREDICTOR_ACCOUNT, "--namespace", ns)
        deployment = cluster.kubectl_json(
            "get", "deployment", "anomaly-detector-v1-predictor", "--namespace", ns
        )
        pod = deployment["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == PREDICTOR_ACCOUNT
        assert pod["automountServiceAccountToken"] is True
        command = pod["containers"][0]["command"]
        assert command[command.index("--auth-mode") + 1] == "serviceAccountToken"
    finally:
        # Cluster-scoped: the namespace's deletion does not take it away.
        cluster.kubectl("delete", "clusterrolebinding", f"{PREDICTOR_ACCOUNT}-{ns}")
