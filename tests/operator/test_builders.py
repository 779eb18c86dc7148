"""The operator's pure decisions: resource -> child manifests, observed children -> status."""

from __future__ import annotations

import json
from typing import Any

import pytest

from neuraxis.crds import Dataset, EdgeDeployment, ModelVersion, TrainingJob
from neuraxis.operator.builders.dataset import build_dataset_children
from neuraxis.operator.builders.edge import build_edge_daemon_sets, matching_nodes
from neuraxis.operator.builders.modelversion import (
    ClusterFeatures,
    build_serving_children,
    canary_replicas,
    effective_percent,
)
from neuraxis.operator.builders.training import ResolvedDataset, build_training_children
from neuraxis.operator.children import POD_ANNOTATIONS
from neuraxis.operator.errors import InvalidSpecError
from neuraxis.operator.observe import observe_run
from neuraxis.operator.outcomes import Draft, status_from_draft
from neuraxis.operator.settings import OperatorSettings
from neuraxis.resources import load_resources, parse_resource
from tests.conftest import EXAMPLES

SETTINGS = OperatorSettings()


def _example(kind: str, index: int = 0) -> Any:
    found = [r for r in load_resources([EXAMPLES / "smart-manufacturing"]) if r.kind == kind]
    res = found[index]
    res.metadata.namespace = "ml"
    res.metadata.uid = f"uid-{res.metadata.name}"
    res.metadata.generation = 2
    return res


def _by_kind(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["kind"]: c for c in children}


def test_dataset_children_are_a_config_map_and_a_job_named_by_generation() -> None:
    ds: Dataset = _example("Dataset")
    children = _by_kind(build_dataset_children(ds, SETTINGS))
    job = children["Job"]
    assert job["metadata"]["name"] == "sensor-readings-etl-g2"
    assert children["ConfigMap"]["metadata"]["name"] == job["metadata"]["name"]
    owner = job["metadata"]["ownerReferences"][0]
    assert owner["uid"] == "uid-sensor-readings" and owner["controller"] is True
    assert job["metadata"]["labels"]["neuraxis.dev/dataset"] == "sensor-readings"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["neuraxis", "workload", "etl"]
    salt = [e for e in container["env"] if e["name"] == "NEURAXIS_SECRET_LAKE_SALT_SALT"]
    assert salt and salt[0]["valueFrom"]["secretKeyRef"] == {"name": "lake-salt", "key": "salt"}
    assert container["securityContext"]["runAsNonRoot"] is True
    assert parse_resource(_yaml(children["ConfigMap"]["data"]["resource.yaml"])).kind == "Dataset"


def _yaml(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def test_scheduled_dataset_gets_a_cron_job() -> None:
    ds: Dataset = _example("Dataset")
    ds.spec.schedule = "@daily"
    children = _by_kind(build_dataset_children(ds, SETTINGS))
    assert "Job" not in children
    assert children["CronJob"]["spec"]["schedule"] == "@daily"
    assert children["CronJob"]["spec"]["concurrencyPolicy"] == "Forbid"


def test_pod_annotations_are_passed_through_and_validated() -> None:
    ds: Dataset = _example("Dataset")
    ds.metadata.annotations[POD_ANNOTATIONS] = json.dumps({"sidecar.istio.io/inject": "false"})
    job = _by_kind(build_dataset_children(ds, SETTINGS))["Job"]
    assert job["spec"]["template"]["metadata"]["annotations"] == {
        "sidecar.istio.io/inject": "false"
    }
    ds.metadata.annotations[POD_ANNOTATIONS] = "{not json"
    with pytest.raises(
        InvalidSpecError, match=r"metadata.annotations\[neuraxis.dev/pod-annotations\]"
    ):
        build_dataset_children(ds, SETTINGS)


def test_training_without_tuning_is_an_indexed_job_with_torchrun() -> None:
    tj: TrainingJob = _example("TrainingJob")
    tj.spec.tuning = None
    children = _by_kind(
        build_training_children(tj, ResolvedDataset("sensor-features", 4), SETTINGS)
    )
    job = children["Job"]["spec"]
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] == 2
    pod = job["template"]["spec"]
    assert (
        pod["subdomain"]
        == children["Service"]["metadata"]["name"]
        == "anomaly-detector-train-workers"
    )
    command = pod["containers"][0]["command"]
    assert command[0] == "torchrun" and "--nnodes=2" in command
    assert any(c.startswith("--master-addr=anomaly-detector-train-train-g2-0.") for c in command)
    assert children["Service"]["spec"]["clusterIP"] == "None"
    pinned = _yaml(children["ConfigMap"]["data"]["resource.yaml"])
    assert pinned["spec"]["datasetRef"]["version"] == 4  # lineage: the run reads what was resolved


def test_gpu_workers_get_limits_toleration_and_pool() -> None:
    tj: TrainingJob = _example("TrainingJob")
    tj.spec.tuning = None
    tj.spec.resources.gpus_per_worker = 2
    pod = _by_kind(build_training_children(tj, ResolvedDataset("d", 1), SETTINGS))["Job"]["spec"][
        "template"
    ]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["nodeSelector"] == {"neuraxis.dev/pool": "gpu"}
    assert {
        "key": "nvidia.com/gpu",
        "operator": "Equal",
        "value": "present",
        "effect": "NoSchedule",
    } in pod["tolerations"]


def test_tuning_runs_one_driver_or_a_ray_job() -> None:
    tj: TrainingJob = _example("TrainingJob")
    tj.spec.suspend = True
    driver = _by_kind(build_training_children(tj, ResolvedDataset("d", 1), SETTINGS))
    assert driver["Job"]["spec"]["completions"] == 1 and driver["Job"]["spec"]["suspend"] is True
    command = driver["Job"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[0] == "python" and "torchrun" not in command  # one driver; Ray runs trials
    assert driver["Job"]["metadata"]["name"] == "anomaly-detector-train-tune-g2"
    ray = _by_kind(build_training_children(tj, ResolvedDataset("d", 1), SETTINGS, kuberay=True))
    assert ray["RayJob"]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 2


def test_canary_replicas_track_the_traffic_share() -> None:
    assert canary_replicas(9, 10) == 1
    assert effective_percent(9, 1) == 10
    assert canary_replicas(3, 50) == 3
    assert canary_replicas(0, 10) == 1


def test_serving_children_with_canary_and_optional_apis() -> None:
    mv: ModelVersion = _example("ModelVersion")
    stable = mv.model_copy(deep=True)
    stable.metadata.name = "anomaly-detector-v0"
    assert stable.spec.serving is not None
    stable.spec.serving.canary = None
    stable.spec.serving.replicas = 9
    assert mv.spec.serving is not None
    plain = _by_kind(
        build_serving_children(
            mv, mv.spec.serving, "s3://l/m", SETTINGS, ClusterFeatures(), stable=stable
        )
    )
    assert plain["Deployment"]["spec"]["replicas"] == 1  # 10% next to 9 stable replicas
    assert "HTTPRoute" not in plain and "ServiceMonitor" not in plain
    everything = build_serving_children(
        mv, mv.spec.serving, "s3://l/m", SETTINGS,
        ClusterFeatures(gateway_api=True, prometheus_operator=True), stable=stable,
    )  # fmt: skip
    kinds = [c["kind"] for c in everything]
    assert kinds.count("Service") == 2  # the version's own and the model-level one
    route = _by_kind(everything)["HTTPRoute"]
    weights = [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]]
    assert weights == [90, 10]


def test_edge_canary_nodes_first_then_the_rest() -> None:
    ed: EdgeDeployment = _example("EdgeDeployment")
    nodes = [
        {"name": "edge-2", "labels": {"neuraxis.dev/edge-site": "plant-b"}},
        {"name": "edge-0", "labels": {"neuraxis.dev/edge-site": "plant-a"}},
        {"name": "edge-1", "labels": {"neuraxis.dev/edge-site": "plant-a"}},
        {"name": "cpu-0", "labels": {}},
    ]
    targeted = matching_nodes(ed, nodes, SETTINGS.edge_site_label)
    assert targeted == ["edge-0", "edge-1", "edge-2"]
    first = build_edge_daemon_sets(ed, "s3://b", targeted, SETTINGS, canary_ready=False)
    assert [d["metadata"]["name"] for d in first] == ["anomaly-detector-plants-canary"]
    fields = first[0]["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"][0]["matchFields"]
    assert fields == [{"key": "metadata.name", "operator": "In", "values": ["edge-0"]}]
    both = build_edge_daemon_sets(ed, "s3://b", targeted, SETTINGS, canary_ready=True)
    assert len(both) == 2
    ed.spec.rollout.pause = True
    assert len(build_edge_daemon_sets(ed, "s3://b", targeted, SETTINGS, canary_ready=True)) == 1


def _job(condition: str | None, suspend: bool = False) -> dict[str, Any]:
    conds = (
        [{"type": condition, "status": "True", "reason": "X", "message": "m"}] if condition else []
    )
    return {"spec": {"suspend": suspend}, "status": {"conditions": conds}}


def _pod(message: str, index: str = "0", created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    return {
        "metadata": {
            "labels": {"batch.kubernetes.io/job-completion-index": index},
            "creationTimestamp": created,
        },
        "status": {"containerStatuses": [{"state": {"terminated": {"message": message}}}]},
    }


def test_observe_run_reads_the_rank_zero_result() -> None:
    result = json.dumps({"outcome": "Succeeded", "reason": "Done", "version": 3})
    other = json.dumps({"outcome": "Succeeded", "reason": "Done", "version": 99})
    run = observe_run(_job("Complete"), [_pod(other, "1"), _pod(result, "0")])
    assert run.state == "Succeeded" and run.result is not None and run.result["version"] == 3
    assert observe_run(_job("Failed"), []).state == "Failed"
    assert observe_run(_job(None, suspend=True), []).state == "Suspended"
    assert observe_run(None, []).state == "Missing"
    assert observe_run(_job(None), [_pod("plain log text")]).result is None


def test_status_keeps_transition_time_while_condition_holds() -> None:
    first = status_from_draft(Draft("Running", "Running"), {}, 1, now="2026-01-01T00:00:00Z")
    again = status_from_draft(Draft("Running", "Running"), first, 1, now="2026-01-01T00:05:00Z")
    ready = next(c for c in again["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    done = status_from_draft(
        Draft("Ready", "Succeeded", ready=True), again, 2, now="2026-01-01T00:09:00Z"
    )
    ready = next(c for c in done["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["lastTransitionTime"], ready["observedGeneration"]) == (
        "True",
        "2026-01-01T00:09:00Z",
        2,
    )
    assert done["observedGeneration"] == 2


def test_spark_on_kubernetes_driver_gets_its_address_and_ports() -> None:
    ds: Dataset = _example("Dataset")
    ds.spec.engine.executors = 4
    container = _by_kind(build_dataset_children(ds, SETTINGS))["Job"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["NEURAXIS_SPARK_IMAGE"]["value"] == SETTINGS.image
    assert [p["containerPort"] for p in container["ports"]] == [7078, 7079]
