"""The operator's pure decisions: resource -> child manifests, observed children -> status."""

from __future__ import annotations

import json
from typing import Any

import pytest

from neuraxis.crds import Dataset, EdgeDeployment, ModelVersion, TrainingJob
from neuraxis.crds.modelversion import GatewayRef
from neuraxis.operator.builders.accounts import (
    SPARK_DRIVER_ROLE,
    accounts_for,
    spark_driver_rules,
)
from neuraxis.operator.builders.dataset import build_dataset_children
from neuraxis.operator.builders.edge import (
    build_bundle_children,
    build_edge_agent_children,
    build_edge_daemon_sets,
    matching_nodes,
)
from neuraxis.operator.builders.modelversion import (
    ClusterFeatures,
    build_evaluation_children,
    build_serving_children,
    canary_replicas,
    effective_percent,
    plan_traffic,
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
PIN = "sha256:" + "ab" * 32  # the bundle digest every agent is pinned to
UID = "3f2a9c1b-7d4e-4f60-9a1b-2c3d4e5f6a7b"  # short uid: 3f2a9c1b


def _example(kind: str, index: int = 0) -> Any:
    found = [r for r in load_resources([EXAMPLES / "smart-manufacturing"]) if r.kind == kind]
    res = found[index]
    res.metadata.namespace = "ml"
    res.metadata.uid = UID
    res.metadata.generation = 2
    return res


def _by_kind(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["kind"]: c for c in children}


def test_dataset_children_are_a_config_map_and_a_job_named_by_generation() -> None:
    ds: Dataset = _example("Dataset")
    children = _by_kind(build_dataset_children(ds, SETTINGS))
    job = children["Job"]
    assert job["metadata"]["name"] == "sensor-readings-etl-3f2a9c1b-g2"
    assert children["ConfigMap"]["metadata"]["name"] == job["metadata"]["name"]
    owner = job["metadata"]["ownerReferences"][0]
    assert owner["uid"] == UID and owner["controller"] is True
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
    assert any(
        c.startswith("--master-addr=anomaly-detector-train-train-3f2a9c1b-g2-0.") for c in command
    )
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


def test_tuning_runs_one_driver_job_with_ray_inside() -> None:
    tj: TrainingJob = _example("TrainingJob")
    tj.spec.suspend = True
    children = build_training_children(tj, ResolvedDataset("d", 1), SETTINGS)
    assert [c["kind"] for c in children] == ["ConfigMap", "Job"]  # no RayJob, no Service
    driver = _by_kind(children)
    assert driver["Job"]["spec"]["completions"] == 1 and driver["Job"]["spec"]["suspend"] is True
    command = driver["Job"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[0] == "python" and "torchrun" not in command  # one driver; Ray runs trials
    assert driver["Job"]["metadata"]["name"] == "anomaly-detector-train-tune-3f2a9c1b-g2"


def test_canary_replicas_track_the_traffic_share() -> None:
    assert canary_replicas(9, 10) == 1
    assert effective_percent(9, 1) == 10
    assert canary_replicas(3, 50) == 3
    assert canary_replicas(0, 10) == 1


def _canary_and_stable() -> tuple[ModelVersion, ModelVersion]:
    mv: ModelVersion = _example("ModelVersion")
    stable = mv.model_copy(deep=True)
    stable.metadata.name = "anomaly-detector-v0"
    assert stable.spec.serving is not None and mv.spec.serving is not None
    assert mv.spec.serving.canary is not None and mv.spec.serving.canary.traffic_percent == 10
    stable.spec.serving.canary = None
    stable.spec.serving.replicas = 9
    return mv, stable


GATEWAY_API = ClusterFeatures(gateway_api=True, prometheus_operator=True)
WITH_GATEWAY = OperatorSettings(gateway=("infra", "edge-gw", ""))


def test_serving_children_with_canary_and_optional_apis() -> None:
    mv, stable = _canary_and_stable()
    assert mv.spec.serving is not None
    plain = _by_kind(
        build_serving_children(
            mv, mv.spec.serving, "s3://l/m", SETTINGS, ClusterFeatures(), stable=stable
        )
    )
    assert plain["Deployment"]["spec"]["replicas"] == 1  # 10% next to 9 stable replicas
    assert "HTTPRoute" not in plain and "ServiceMonitor" not in plain
    everything = build_serving_children(
        mv, mv.spec.serving, "s3://l/m", WITH_GATEWAY, GATEWAY_API, stable=stable
    )
    kinds = [c["kind"] for c in everything]
    assert kinds.count("Service") == 1  # the version's own: the canary is reached by the route
    assert "ServiceMonitor" in kinds
    route = _by_kind(everything)["HTTPRoute"]
    backends = route["spec"]["rules"][0]["backendRefs"]
    assert [(b["name"], b["weight"]) for b in backends] == [
        ("anomaly-detector-v0-predictor", 90),
        ("anomaly-detector-v1-predictor", 10),
    ]


def test_the_route_attaches_to_the_settings_gateway_or_the_specs() -> None:
    mv, stable = _canary_and_stable()
    assert mv.spec.serving is not None
    children = build_serving_children(
        mv, mv.spec.serving, "s3://l/m", WITH_GATEWAY, GATEWAY_API, stable=stable
    )
    route = _by_kind(children)["HTTPRoute"]
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra",
         "name": "edge-gw"}
    ]  # fmt: skip
    deployment = _by_kind(children)["Deployment"]
    # Exact weights: the canary runs its own replica count and stays out of the model Service.
    assert deployment["spec"]["replicas"] == mv.spec.serving.replicas
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["neuraxis.dev/routed"] == "false" and labels["neuraxis.dev/track"] == "canary"

    mv.spec.serving.gateway = GatewayRef(name="team-gw", section_name="https")
    route = _by_kind(
        build_serving_children(
            mv, mv.spec.serving, "s3://l/m", WITH_GATEWAY, GATEWAY_API, stable=stable
        )
    )["HTTPRoute"]
    (parent,) = route["spec"]["parentRefs"]
    assert (parent["namespace"], parent["name"], parent["sectionName"]) == (
        "ml",
        "team-gw",
        "https",
    )
    plan = plan_traffic(mv, mv.spec.serving, stable, WITH_GATEWAY, GATEWAY_API)
    assert (plan.mode, plan.canary_percent, plan.gateway_text()) == (
        "gateway",
        10,
        "ml/team-gw/https",
    )


@pytest.mark.parametrize(
    ("features", "note"),
    [
        (GATEWAY_API, "no Gateway named"),
        (ClusterFeatures(), "serves no Gateway API HTTPRoute"),
    ],
)
def test_without_a_gateway_the_split_falls_back_to_replicas(
    features: ClusterFeatures, note: str
) -> None:
    mv, stable = _canary_and_stable()
    assert mv.spec.serving is not None
    settings = SETTINGS if features.gateway_api else WITH_GATEWAY
    children = _by_kind(
        build_serving_children(mv, mv.spec.serving, "s3://l/m", settings, features, stable=stable)
    )
    assert "HTTPRoute" not in children  # a route attached to nothing would route nothing
    plan = plan_traffic(mv, mv.spec.serving, stable, settings, features)
    assert (plan.mode, plan.canary_percent, plan.canary_replicas) == ("replicas", 10, 1)
    assert note in plan.note and plan.gateway_text() is None


def test_a_rolled_back_canary_gets_no_traffic() -> None:
    mv, stable = _canary_and_stable()
    assert mv.spec.serving is not None
    routed = _by_kind(
        build_serving_children(
            mv, mv.spec.serving, "s3://l/m", WITH_GATEWAY, GATEWAY_API, stable=stable,
            rolled_back=True,
        )
    )  # fmt: skip
    weights = [b["weight"] for b in routed["HTTPRoute"]["spec"]["rules"][0]["backendRefs"]]
    assert weights == [100, 0]
    replicas = _by_kind(
        build_serving_children(
            mv, mv.spec.serving, "s3://l/m", SETTINGS, ClusterFeatures(), stable=stable,
            rolled_back=True,
        )
    )  # fmt: skip
    assert replicas["Deployment"]["spec"]["replicas"] == 0


def test_edge_canary_nodes_first_then_the_rest() -> None:
    ed: EdgeDeployment = _example("EdgeDeployment")
    nodes = [
        {"name": "edge-2", "labels": {"neuraxis.dev/edge-site": "plant-b"}},
        {"name": "edge-0", "labels": {"neuraxis.dev/edge-site": "plant-a"}},
        {"name": "edge-1", "labels": {"neuraxis.dev/edge-site": "plant-a"}},
        {"name": "cpu-0", "labels": {}},
    ]
    targeted = matching_nodes(ed, nodes, SETTINGS)
    assert targeted == ["edge-0", "edge-1", "edge-2"]
    first = build_edge_daemon_sets(
        ed, "s3://b", targeted, SETTINGS, canary_ready=False, bundle_digest=PIN
    )
    assert [d["metadata"]["name"] for d in first] == ["anomaly-detector-plants-canary"]
    fields = first[0]["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"][0]["matchFields"]
    assert fields == [{"key": "metadata.name", "operator": "In", "values": ["edge-0"]}]
    both = build_edge_daemon_sets(
        ed, "s3://b", targeted, SETTINGS, canary_ready=True, bundle_digest=PIN
    )
    assert len(both) == 2
    ed.spec.rollout.pause = True
    assert (
        len(
            build_edge_daemon_sets(
                ed, "s3://b", targeted, SETTINGS, canary_ready=True, bundle_digest=PIN
            )
        )
        == 1
    )


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


def _pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return spec


def test_edge_agents_mount_a_spec_config_map_that_is_built_with_them() -> None:
    ed: EdgeDeployment = _example("EdgeDeployment")
    children = build_edge_agent_children(
        ed, "s3://b", ["edge-0", "edge-1"], SETTINGS, canary_ready=True, bundle_digest=PIN
    )
    assert [c["kind"] for c in children] == ["ConfigMap", "DaemonSet", "DaemonSet"]
    config = children[0]
    assert config["metadata"]["name"] == "anomaly-detector-plants-agent"
    assert parse_resource(_yaml(config["data"]["resource.yaml"])).kind == "EdgeDeployment"
    for daemon_set in children[1:]:
        volumes = {v["name"]: v for v in _pod_spec(daemon_set)["volumes"]}
        assert volumes["spec"]["configMap"]["name"] == "anomaly-detector-plants-agent"
    ed.spec.rollout.canary_nodes = 0
    ed.spec.rollout.pause = True
    assert (
        build_edge_agent_children(
            ed, "s3://b", ["edge-0"], SETTINGS, canary_ready=True, bundle_digest=PIN
        )
        == []
    )


def test_edge_cache_is_handed_to_the_agent_uid_by_a_minimal_init_container() -> None:
    ed: EdgeDeployment = _example("EdgeDeployment")
    [daemon_set] = build_edge_daemon_sets(
        ed, "s3://b", ["edge-0"], SETTINGS, canary_ready=False, bundle_digest=PIN
    )
    pod = _pod_spec(daemon_set)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cache"]["hostPath"] == {
        "path": "/var/lib/neuraxis/anomaly-detector-plants",
        "type": "DirectoryOrCreate",
    }
    [init] = pod["initContainers"]
    assert init["command"] == [
        "install", "-d", "-o", "10001", "-g", "10001", "-m", "0700", "/var/cache/neuraxis",
    ]  # fmt: skip
    ctx = init["securityContext"]
    assert (ctx["runAsUser"], ctx["runAsNonRoot"]) == (0, False)
    assert ctx["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
    assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
    assert init["volumeMounts"] == [{"name": "cache", "mountPath": "/var/cache/neuraxis"}]
    # The agent itself stays unprivileged and writes where the init container prepared.
    [agent] = pod["containers"]
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsUser"] == 10001 and "runAsUser" not in agent.get(
        "securityContext", {}
    )
    assert {"name": "cache", "mountPath": "/var/cache/neuraxis"} in agent["volumeMounts"]
    assert "/var/cache/neuraxis" in agent["command"]


def test_spark_driver_runs_as_the_spark_account_with_a_token() -> None:
    ds: Dataset = _example("Dataset")
    local = _pod_spec(_by_kind(build_dataset_children(ds, SETTINGS))["Job"])
    assert local["serviceAccountName"] == SETTINGS.service_account
    assert local["automountServiceAccountToken"] is False
    ds.spec.engine.executors = 2
    driver = _pod_spec(_by_kind(build_dataset_children(ds, SETTINGS))["Job"])
    assert driver["serviceAccountName"] == SETTINGS.spark_service_account == "neuraxis-spark"
    assert driver["automountServiceAccountToken"] is True
    env = {e["name"]: e.get("value") for e in driver["containers"][0]["env"]}
    assert env["NEURAXIS_SPARK_SERVICE_ACCOUNT"] == "neuraxis-spark"


def test_the_namespace_gets_the_spark_account_and_binding_only_when_needed() -> None:
    ds: Dataset = _example("Dataset")
    assert [a["kind"] for a in accounts_for(ds, SETTINGS)] == ["ServiceAccount"]
    ds.spec.engine.executors = 2
    workload, spark, binding = accounts_for(ds, SETTINGS)
    assert workload["metadata"]["name"] == "neuraxis-workload"
    # Executors run under the same account: it mounts no token, only the driver pod asks.
    assert (spark["metadata"], spark["automountServiceAccountToken"]) == (
        {
            "name": "neuraxis-spark",
            "namespace": "ml",
            "labels": {"app.kubernetes.io/managed-by": "neuraxis"},
        },
        False,
    )
    assert binding["kind"] == "RoleBinding" and binding["metadata"]["namespace"] == "ml"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": SPARK_DRIVER_ROLE,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "neuraxis-spark", "namespace": "ml"}
    ]
    rules = {r: set(rule["verbs"]) for rule in spark_driver_rules() for r in rule["resources"]}
    assert {"create", "delete", "watch", "list"} <= rules["pods"]
    assert {"create", "delete"} <= rules["configmaps"] and "services" in rules
    assert not {"secrets", "persistentvolumeclaims"} & set(rules)


@pytest.mark.parametrize(("gpus", "processes"), [(0, 1), (1, 1), (4, 4), (8, 8)])
def test_torchrun_starts_one_process_per_gpu(gpus: int, processes: int) -> None:
    tj: TrainingJob = _example("TrainingJob")
    tj.spec.tuning = None
    tj.spec.resources.gpus_per_worker = gpus
    pod = _pod_spec(_by_kind(build_training_children(tj, ResolvedDataset("d", 1), SETTINGS))["Job"])
    command = pod["containers"][0]["command"]
    assert command[:3] == ["torchrun", "--nnodes=2", f"--nproc-per-node={processes}"]
    assert "--node-rank=$(JOB_COMPLETION_INDEX)" in command
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits.get("nvidia.com/gpu", 0) == gpus


def test_kwok_annotations_are_refused_unless_the_operator_allows_them() -> None:
    ds: Dataset = _example("Dataset")
    ds.metadata.annotations[POD_ANNOTATIONS] = json.dumps(
        {"prometheus.io/scrape": "true", "neuraxis.dev/kwok-termination-message": "{}"}
    )
    with pytest.raises(InvalidSpecError) as refused:
        build_dataset_children(ds, SETTINGS)
    assert refused.value.reason == "InvalidAnnotation"
    assert "neuraxis.dev/kwok-termination-message" in refused.value.message
    assert "NEURAXIS_ALLOW_KWOK_ANNOTATIONS=true" in refused.value.message
    allowed = OperatorSettings(allow_kwok_annotations=True)
    job = _by_kind(build_dataset_children(ds, allowed))["Job"]
    assert job["spec"]["template"]["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "neuraxis.dev/kwok-termination-message": "{}",
    }


KWOK_TOLERATION = {
    "key": "kwok.x-k8s.io/node",
    "operator": "Equal",
    "value": "fake",
    "effect": "NoSchedule",
}
PLATFORM = OperatorSettings(
    workload_tolerations=(KWOK_TOLERATION,), workload_node_selector={"type": "kwok"}
)


def _every_pod_template(settings: OperatorSettings) -> dict[str, dict[str, Any]]:
    ds: Dataset = _example("Dataset")
    tj: TrainingJob = _example("TrainingJob")
    tj.spec.tuning = None
    tj.spec.resources.gpus_per_worker = 2
    mv: ModelVersion = _example("ModelVersion")
    ed: EdgeDeployment = _example("EdgeDeployment")
    assert mv.spec.serving is not None
    children = [
        *build_dataset_children(ds, settings),
        *build_training_children(tj, ResolvedDataset("d", 1), settings),
        *build_evaluation_children(mv, "s3://m", settings),
        *build_serving_children(mv, mv.spec.serving, "s3://m", settings, ClusterFeatures()),
        *build_bundle_children(ed, "anomaly-detector", settings),
        *build_edge_agent_children(
            ed, "s3://b", ["e-0"], settings, canary_ready=True, bundle_digest=PIN
        ),
    ]
    return {
        f"{c['kind']}/{c['metadata']['name']}": _pod_spec(c)
        for c in children
        if c["kind"] in ("Job", "Deployment", "DaemonSet")
    }


def test_platform_scheduling_reaches_every_workload_pod_and_keeps_each_kinds_own() -> None:
    pods = _every_pod_template(PLATFORM)
    assert len(pods) == 7
    for name, pod in pods.items():
        assert KWOK_TOLERATION in pod["tolerations"], name
        assert pod["nodeSelector"]["type"] == "kwok", name
    gpu = pods["Job/anomaly-detector-train-train-3f2a9c1b-g2"]
    assert gpu["nodeSelector"] == {"type": "kwok", "neuraxis.dev/pool": "gpu"}
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    edge = pods["DaemonSet/anomaly-detector-plants-canary"]
    assert any(t["key"] == "neuraxis.dev/edge" for t in edge["tolerations"])
    assert edge["affinity"]["nodeAffinity"]  # the site/node pinning is still there
    # Without platform settings nothing is added.
    plain = _every_pod_template(SETTINGS)
    assert "nodeSelector" not in plain["Job/sensor-readings-etl-3f2a9c1b-g2"]
    assert "tolerations" not in plain["Job/sensor-readings-etl-3f2a9c1b-g2"]


def test_edge_targets_only_nodes_the_agents_can_land_on() -> None:
    ed: EdgeDeployment = _example("EdgeDeployment")
    site = {"neuraxis.dev/edge-site": "plant-a"}
    fake_taint = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
    nodes: list[dict[str, Any]] = [
        {"name": "real-0", "labels": site},
        {"name": "kwok-edge-0", "labels": {**site, "type": "kwok"}, "taints": [fake_taint]},
        {
            "name": "kwok-edge-1",
            "labels": {**site, "type": "kwok"},
            "taints": [{"key": "neuraxis.dev/edge", "value": "true", "effect": "NoSchedule"}],
        },
        {
            "name": "soft",
            "labels": site,
            "taints": [{"key": "x", "value": "y", "effect": "PreferNoSchedule"}],
        },
    ]
    # No platform toleration: the fake node's taint keeps the agents (and the count) off it.
    assert matching_nodes(ed, nodes, SETTINGS) == ["kwok-edge-1", "real-0", "soft"]
    # KWOK tests: tolerate the fake taint and select fake nodes only.
    assert matching_nodes(ed, nodes, PLATFORM) == ["kwok-edge-0", "kwok-edge-1"]


def test_edge_agent_listens_on_the_pod_ip_and_logs_under_its_node() -> None:
    ed: EdgeDeployment = _example("EdgeDeployment")
    [daemon_set] = build_edge_daemon_sets(
        ed, "s3://b", ["edge-0"], SETTINGS, canary_ready=False, bundle_digest=PIN
    )
    [agent] = _pod_spec(daemon_set)["containers"]
    command = agent["command"]

    def flag(name: str) -> str:
        return str(command[command.index(name) + 1])

    # The kubelet probes the pod IP: an agent on 127.0.0.1 would never become ready.
    assert flag("--host") == "0.0.0.0"
    assert flag("--deployment") == "anomaly-detector-plants"
    assert flag("--sync-interval-s") == str(ed.spec.sync.interval_seconds)
    assert flag("--digest") == PIN  # the agent serves this bundle only
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_predictor_and_edge_agent_expose_the_grpc_port() -> None:
    """The Open Inference Protocol's gRPC port: a `grpc` container port the workload listens on
    (--grpc-port) and, for the predictor, a `grpc` port on both Services."""
    mv: ModelVersion = _example("ModelVersion")
    assert mv.spec.serving is not None
    mv.spec.serving.canary = None
    mv.spec.stage = "production"  # routed: the model-level Service too
    children = build_serving_children(mv, mv.spec.serving, "s3://l/m", SETTINGS, ClusterFeatures())
    [deployment] = [c for c in children if c["kind"] == "Deployment"]
    [server] = deployment["spec"]["template"]["spec"]["containers"]
    grpc_port = SETTINGS.serving_grpc_port
    assert {"name": "grpc", "containerPort": grpc_port} in server["ports"]
    command = server["command"]
    assert command[command.index("--grpc-port") + 1] == str(grpc_port)
    services = [c for c in children if c["kind"] == "Service"]
    assert len(services) == 2
    for service in services:
        [grpc] = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
        assert grpc["targetPort"] == grpc_port and grpc["appProtocol"] == "kubernetes.io/h2c"

    ed: EdgeDeployment = _example("EdgeDeployment")
    [daemon_set] = build_edge_daemon_sets(
        ed, "s3://b", ["edge-0"], SETTINGS, canary_ready=False, bundle_digest=PIN
    )
    [agent] = _pod_spec(daemon_set)["containers"]
    edge_port = SETTINGS.edge_grpc_port
    assert {"name": "grpc", "containerPort": edge_port} in agent["ports"]
    assert agent["command"][agent["command"].index("--grpc-port") + 1] == str(edge_port)


def test_a_bundle_without_a_digest_is_no_bundle() -> None:
    from neuraxis.operator.outcomes import bundle_outcome

    ok = {"outcome": "Succeeded", "bundle": {"uri": "s3://l/edge/b", "digest": PIN}}
    assert bundle_outcome(ok) == ok["bundle"]
    refused = bundle_outcome({"outcome": "Succeeded", "bundle": {"uri": "s3://l/edge/b"}})
    assert isinstance(refused, Draft) and refused.reason == "BundleFailed"
    assert "no bundle digest" in refused.message
