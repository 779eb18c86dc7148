"""ModelVersion -> evaluation Job; once Approved and serving is asked for: predictor Deployment
+ Service, the model-level Service that splits traffic by replicas (canary), an HPA, and where
the cluster has them, an HTTPRoute with exact weights and a ServiceMonitor."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from neuraxis.crds import ModelVersion
from neuraxis.crds.modelversion import Serving
from neuraxis.operator.builders.accounts import PREDICTOR_ACCOUNT
from neuraxis.operator.builders.auth import auth_args, mount_api_keys
from neuraxis.operator.builders.common import RUN_ID_ENV, job, spec_config_map
from neuraxis.operator.children import (
    SPEC_FILE,
    child_metadata,
    fixed_name,
    run_name,
    standard_labels,
)
from neuraxis.operator.pods import pod_template, resource_limits, workload_container
from neuraxis.operator.settings import OperatorSettings

MODEL_LABEL = "neuraxis.dev/model"
ROUTED_LABEL = "neuraxis.dev/routed"
TRACK_LABEL = "neuraxis.dev/track"
# On a backtest Job (kept in the operator's Job cache, as every neuraxis.dev/ label is).
BACKTEST_LABEL = "neuraxis.dev/backtest"
BACKTEST_COMPONENT = "backtest"
EVALUATE_COMPONENT = "evaluate"


@dataclass(frozen=True)
class ClusterFeatures:
    """Optional APIs found in the cluster; children that need them are made only then."""

    gateway_api: bool = False
    prometheus_operator: bool = False


def digest_flag(flag: str, digest: str | None) -> list[str]:
    """`[flag, digest]` when the digest is known: the workload refuses any other artifact."""
    return [flag, digest] if digest else []


def build_evaluation_children(
    mv: ModelVersion,
    artifact_uri: str,
    settings: OperatorSettings,
    artifact_digest: str | None = None,
) -> list[dict[str, Any]]:
    name = run_name(mv, "eval")
    command = [
        "neuraxis", "workload", "evaluate", "--spec", SPEC_FILE,
        "--namespace", mv.metadata.namespace or "default",
        "--run-id", "$(NEURAXIS_RUN_ID)", "--artifact-uri", artifact_uri,
        *digest_flag("--artifact-digest", artifact_digest),
    ]  # fmt: skip
    container = workload_container(
        mv, settings, command, resources=resource_limits("1", "2Gi"), extra_env=[RUN_ID_ENV]
    )
    template = pod_template(mv, settings, EVALUATE_COMPONENT, container, name)
    return [spec_config_map(mv, name, "evaluate"), job(mv, name, "evaluate", template)]


def predictor_name(mv: ModelVersion) -> str:
    return f"{mv.metadata.name}-predictor"


def canary_replicas(stable_replicas: int, percent: int) -> int:
    """Replicas that give the canary about `percent` of the traffic next to the stable pods."""
    if stable_replicas <= 0:
        return 1
    return max(1, math.ceil(stable_replicas * percent / (100 - percent)))


def effective_percent(stable_replicas: int, canary: int) -> int:
    return round(100 * canary / (stable_replicas + canary)) if stable_replicas + canary else 0


@dataclass(frozen=True)
class TrafficPlan:
    """How a canary's traffic is split. `gateway`: exact HTTPRoute weights on that Gateway (the
    canary's pods are then outside the model-level Service); `replicas`: the model-level
    Service spreads requests over the pods of both versions, so the share follows the pod
    counts. A rolled-back canary gets 0: weight 0, or no pods in replica mode."""

    mode: Literal["gateway", "replicas"]
    canary_percent: int  # in force (replica mode: the share the pod counts give)
    canary_replicas: int
    parent_ref: dict[str, str] | None = None  # the HTTPRoute's parentRefs entry
    note: str = ""  # why replica mode, for the status

    def gateway_text(self) -> str | None:
        """namespace/name[/section] of the Gateway, as status reports it."""
        if self.parent_ref is None:
            return None
        ref = self.parent_ref
        section = f"/{ref['sectionName']}" if "sectionName" in ref else ""
        return f"{ref['namespace']}/{ref['name']}{section}"


def gateway_parent_ref(mv: ModelVersion, settings: OperatorSettings) -> dict[str, str] | None:
    """spec.serving.gateway, else the operator's NEURAXIS_GATEWAY, as an HTTPRoute parentRef."""
    ref = mv.spec.serving.gateway if mv.spec.serving else None
    if ref is not None:
        namespace = ref.namespace or mv.metadata.namespace or "default"
        name, section = ref.name, ref.section_name or ""
    elif settings.gateway is not None:
        namespace, name, section = settings.gateway
    else:
        return None
    parent = {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "namespace": namespace,
        "name": name,
    }
    return {**parent, "sectionName": section} if section else parent


def plan_traffic(
    mv: ModelVersion,
    serving: Serving,
    stable: ModelVersion,
    settings: OperatorSettings,
    features: ClusterFeatures,
    *,
    rolled_back: bool = False,
) -> TrafficPlan:
    """The split of a canary next to `stable`: Gateway weights when the cluster serves
    HTTPRoutes and a Gateway is named, else replica weighting."""
    assert serving.canary is not None
    asked = 0 if rolled_back else serving.canary.traffic_percent
    parent = gateway_parent_ref(mv, settings)
    if features.gateway_api and parent is not None:
        return TrafficPlan("gateway", asked, serving.replicas, parent)
    if not features.gateway_api:
        note = "the cluster serves no Gateway API HTTPRoute"
    else:
        note = "no Gateway named (spec.serving.gateway or the operator's NEURAXIS_GATEWAY)"
    stable_replicas = stable.spec.serving.replicas if stable.spec.serving else 0
    if rolled_back:
        return TrafficPlan("replicas", 0, 0, note=note)
    replicas = canary_replicas(stable_replicas, asked)
    share = effective_percent(stable_replicas, replicas)
    return TrafficPlan("replicas", share, replicas, note=note)


def build_serving_children(
    mv: ModelVersion,
    serving: Serving,
    artifact_uri: str,
    settings: OperatorSettings,
    features: ClusterFeatures,
    *,
    stable: ModelVersion | None = None,
    artifact_digest: str | None = None,
    rolled_back: bool = False,
) -> list[dict[str, Any]]:
    """Children that serve an Approved version. `stable` is the version the canary splits
    traffic with (None when there is no canary or no stable version); `artifact_digest` the
    digest the version pinned (the server refuses any other artifact); `rolled_back`: the
    canary analysis took the canary's traffic away for this generation."""
    name = predictor_name(mv)
    model = mv.spec.model
    is_canary = serving.canary is not None
    routed = is_canary or mv.spec.stage == "production"
    replicas = serving.replicas
    plan = None
    if is_canary and stable is not None:
        plan = plan_traffic(mv, serving, stable, settings, features, rolled_back=rolled_back)
        replicas = plan.canary_replicas
        # Through the Gateway only: the model-level Service would add a replica-weighted share.
        routed = plan.mode == "replicas"
    pod_labels = {
        MODEL_LABEL: model,
        ROUTED_LABEL: str(routed).lower(),
        TRACK_LABEL: "canary" if is_canary else "stable",
    }
    port, grpc_port = settings.serving_port, settings.serving_grpc_port
    command = [
        "neuraxis", "workload", "serve", "--model", artifact_uri, "--name", model,
        "--host", "0.0.0.0", "--port", str(port), "--grpc-port", str(grpc_port),
        "--max-batch-size", str(serving.max_batch_size),
        "--max-batch-wait-ms", str(serving.max_batch_wait_ms),
        *digest_flag("--digest", artifact_digest),
        *auth_args(serving.auth),
    ]  # fmt: skip
    container = workload_container(
        mv,
        settings,
        command,
        resources=resource_limits(serving.resources.cpu, serving.resources.memory),
        ports=[
            {"name": "http", "containerPort": port},
            {"name": "grpc", "containerPort": grpc_port},
        ],
    )
    probe = {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5}
    container["readinessProbe"] = probe
    container["livenessProbe"] = {**probe, "httpGet": {"path": "/healthz", "port": "http"}}
    # ServiceAccount tokens: the predictor reviews them as its own account (TokenReview).
    reviews_tokens = serving.auth is not None and serving.auth.mode == "serviceAccountToken"
    template = pod_template(
        mv,
        settings,
        "predictor",
        container,
        name,
        labels=pod_labels,
        restart_policy="Always",
        service_account=PREDICTOR_ACCOUNT if reviews_tokens else None,
        api_token=reviews_tokens,
    )
    mount_api_keys(template, serving.auth)
    selector = {
        "neuraxis.dev/modelversion": mv.metadata.name,
        "app.kubernetes.io/component": "predictor",
    }
    children: list[dict[str, Any]] = [
        spec_config_map(mv, name, "predictor"),
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": child_metadata(mv, name, "predictor"),
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": selector},
                "template": template,
            },
        },
        _service(mv, name, selector, port, grpc_port),
    ]
    if routed:
        routed_pods = {MODEL_LABEL: model, ROUTED_LABEL: "true"}
        children.append(_service(mv, model, routed_pods, port, grpc_port))
    if serving.autoscaling is not None and not is_canary:
        children.append(_hpa(mv, name, serving))
    if plan is not None and plan.parent_ref is not None and stable is not None:
        children.append(_http_route(mv, stable, plan.canary_percent, plan.parent_ref))
    if features.prometheus_operator:
        children.append(_service_monitor(mv, name))
    return children


def _service(
    mv: ModelVersion, name: str, selector: dict[str, str], port: int, grpc_port: int
) -> dict[str, Any]:
    # h2c: plaintext HTTP/2, so a Gateway or mesh routes the gRPC port as gRPC.
    grpc = {
        "name": "grpc",
        "port": grpc_port,
        "targetPort": grpc_port,
        "appProtocol": "kubernetes.io/h2c",
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(mv, name, "predictor"),
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": 80, "targetPort": port}, grpc],
        },
    }


def _hpa(mv: ModelVersion, name: str, serving: Serving) -> dict[str, Any]:
    assert serving.autoscaling is not None
    scaling = serving.autoscaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": child_metadata(mv, name, "predictor"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": scaling.target_cpu_utilization,
                        },
                    },
                }
            ],
        },
    }


def _http_route(
    mv: ModelVersion, stable: ModelVersion, percent: int, parent: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": child_metadata(mv, f"{mv.spec.model}-canary", "predictor"),
        "spec": {
            "parentRefs": [parent],
            "rules": [
                {
                    "backendRefs": [
                        {"name": predictor_name(stable), "port": 80, "weight": 100 - percent},
                        {"name": predictor_name(mv), "port": 80, "weight": percent},
                    ]
                }
            ],
        },
    }


def _service_monitor(mv: ModelVersion, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": child_metadata(mv, name, "predictor"),
        "spec": {
            "selector": {"matchLabels": {"neuraxis.dev/modelversion": mv.metadata.name}},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}],
        },
    }


# A backtest that runs longer than this is stuck (it scores one table once).
BACKTEST_DEADLINE_S = 3600
# What a suspended backtest CronJob shows as its schedule (it never fires while suspended).
SUSPENDED_SCHEDULE = "@yearly"


def backtest_cron_job_name(mv: ModelVersion) -> str:
    return fixed_name(mv, "backtest")


def build_backtest_children(
    mv: ModelVersion,
    artifact_uri: str,
    settings: OperatorSettings,
    artifact_digest: str | None = None,
) -> list[dict[str, Any]]:
    """The spec ConfigMap and the CronJob of spec.evaluation.schedule. Its pods run the
    evaluation's own command line (derived from the evaluation Job, so both modes take the
    same flags) with `--backtest`, as the same least-privileged workload account. Without a
    schedule (removed from the spec) the CronJob is suspended: the operator deletes no
    CronJobs (its one deletion right is a superseded run's Job); the ModelVersion's deletion
    takes it away."""
    schedule = mv.spec.evaluation.schedule if mv.spec.evaluation else None
    name = backtest_cron_job_name(mv)
    evaluation_job = build_evaluation_children(mv, artifact_uri, settings, artifact_digest)[-1]
    evaluation_container = evaluation_job["spec"]["template"]["spec"]["containers"][0]
    container = workload_container(
        mv,
        settings,
        [*evaluation_container["command"], "--backtest"],
        resources=resource_limits("1", "2Gi"),
        extra_env=[RUN_ID_ENV],
    )
    template = pod_template(mv, settings, BACKTEST_COMPONENT, container, name)
    cron = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": child_metadata(mv, name, BACKTEST_COMPONENT),
        "spec": {
            "schedule": schedule or SUSPENDED_SCHEDULE,
            "suspend": schedule is None,
            "concurrencyPolicy": "Forbid",  # one backtest at a time: history stays in order
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            # The owner label on the Jobs lets the operator find (and watch) them; the
            # backtest label tells them from the evaluation's Job.
            "jobTemplate": {
                "metadata": {
                    "labels": {**standard_labels(mv, BACKTEST_COMPONENT), BACKTEST_LABEL: "true"}
                },
                "spec": {
                    "backoffLimit": 0,
                    "activeDeadlineSeconds": BACKTEST_DEADLINE_S,
                    "template": template,
                },
            },
        },
    }
    return [spec_config_map(mv, name, BACKTEST_COMPONENT), cron]
