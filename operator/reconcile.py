"""Level-based reconciliation of the four kinds. Each `reconcile_<kind>` looks at the resource,
its inputs and its children, applies the children that should exist now, and returns a Draft
of the status; `reconcile` turns the Draft into the shared status contract and writes it only
when it changed. Running it twice in a row changes nothing."""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from neuraxis.crds import Dataset, EdgeDeployment, ModelVersion, Resource, TrainingJob
from neuraxis.lake import Lake
from neuraxis.operator import conditions as cond
from neuraxis.operator.backtests import backtest_entry, degraded_condition, record_backtest
from neuraxis.operator.builders.accounts import (
    SPARK_DRIVER_ROLE,
    accounts_for,
    spark_driver_cluster_role,
)
from neuraxis.operator.builders.auth import API_KEYS_MISSING, missing_keys_message
from neuraxis.operator.builders.common import inline_specs
from neuraxis.operator.builders.dataset import build_dataset_children, etl_children_name
from neuraxis.operator.builders.edge import (
    BUNDLE_COMPONENT,
    build_bundle_children,
    build_edge_agent_children,
    canary_daemon_set_name,
    canary_nodes,
    matching_nodes,
    node_sites,
)
from neuraxis.operator.builders.federation import (
    ResolvedSite,
    build_federation_children,
    federation_run_name,
    network_policy_names,
    superlink_service_name,
    supernode_name,
    tls_secret,
    tls_secret_name,
)
from neuraxis.operator.builders.modelversion import (
    BACKTEST_COMPONENT,
    BACKTEST_LABEL,
    EVALUATE_COMPONENT,
    ClusterFeatures,
    backtest_cron_job_name,
    build_backtest_children,
    build_evaluation_children,
    build_serving_children,
    plan_traffic,
    predictor_name,
)
from neuraxis.operator.builders.training import build_training_children
from neuraxis.operator.caches import TTLCache
from neuraxis.operator.canary import ROLLED_BACK, CanaryState, analyze_canary, pod_metrics_url
from neuraxis.operator.children import RUN_LABEL, owner_label, run_name
from neuraxis.operator.cluster import Cluster, Obj
from neuraxis.operator.edge_sites import site_counts
from neuraxis.operator.errors import InputNotReadyError, InvalidSpecError
from neuraxis.operator.inputs import (
    approved_artifact_digest,
    approved_evaluation_dataset,
    artifact_to_evaluate,
    check_references,
    ensure_registered,
    find_stable,
    ns_of,
    pin_upstream,
    pinned_artifact,
    resolve_approved_model,
    resolve_dataset,
    resolve_sites,
    resolve_upstream,
    status_of,
)
from neuraxis.operator.kube import ApiError, ApiUnavailableError, RetryPolicy
from neuraxis.operator.lake_credentials import (
    AGENT_COMPONENT,
    ETL_COMPONENT,
    PREDICTOR_COMPONENT,
    TRAIN_COMPONENT,
    TUNE_COMPONENT,
    agent_grant,
    bundling_grant,
    dataset_grant,
    evaluation_grant,
    scope_children,
    serving_grant,
    training_grant,
)
from neuraxis.operator.observe import JOB_NAME_LABEL, RunObservation, observe_run
from neuraxis.operator.outcomes import (
    Condition,
    Draft,
    add_federation,
    auth_refusal,
    bundle_outcome,
    dataset_outcome,
    evaluation_outcome,
    failed,
    serving_refusal,
    sites_ready_condition,
    status_from_draft,
    training_outcome,
    update_runs,
)
from neuraxis.operator.settings import OperatorSettings
from neuraxis.resources import ResourceError, parse_resource
from neuraxis.workloads.result import now_rfc3339

log = logging.getLogger("neuraxis.operator")
TERMINAL = {"Ready", "Succeeded", "Failed", "Approved", "Rejected"}


def _finished_for_generation(res: Resource, status: Obj) -> bool:
    """A run that ended for the current spec is history: nothing is re-created for it."""
    return status.get("observedGeneration") == res.metadata.generation and status.get("phase") in (
        "Ready",
        "Succeeded",
        "Failed",
    )


# The shared accounts (not owned) made or found recently: looked at again (in the watch cache,
# else with a create that is a no-op when present) once their entry expires, so one deleted by
# someone comes back; bounded by the namespaces in use.
_accounts_made: TTLCache[tuple[str, str, str], bool] = TTLCache(4096, 600.0)
_cluster_roles: TTLCache[str, bool] = TTLCache(16, 600.0)


def ensure_accounts(cluster: Cluster, res: Resource, settings: OperatorSettings) -> None:
    """The accounts the resource's pods run as (shared by the namespace: no owner)."""
    for manifest in accounts_for(res, settings):
        meta = manifest["metadata"]
        key = (manifest["kind"], meta.get("namespace", ""), meta["name"])
        if _accounts_made.get(key):
            continue
        version, kind = manifest["apiVersion"], manifest["kind"]
        watched = cluster.cache(version, kind) is not None
        if watched and cluster.get(version, kind, meta.get("namespace"), meta["name"]):
            continue  # present now (a deletion shows up in the cache at once)
        if manifest["kind"] == "RoleBinding":
            ensure_spark_driver_role(cluster)
        cluster.create(manifest)
        _accounts_made.put(key, True)


def ensure_spark_driver_role(cluster: Cluster) -> None:
    """The ClusterRole Spark drivers are bound to comes with the operator's manifests. An
    operator run with broader rights (a dev cluster) creates it when missing; one with the
    shipped rights cannot, and the Dataset waits for it."""
    if _cluster_roles.get(SPARK_DRIVER_ROLE):
        return
    if cluster.get("rbac.authorization.k8s.io/v1", "ClusterRole", None, SPARK_DRIVER_ROLE):
        _cluster_roles.put(SPARK_DRIVER_ROLE, True)
        return
    try:
        cluster.create(spark_driver_cluster_role())
    except ApiError as exc:
        if exc.status != 403:
            raise
        raise InputNotReadyError(
            "SparkRoleMissing",
            f"ClusterRole {SPARK_DRIVER_ROLE} is missing (Spark drivers with "
            "spec.engine.executors > 0 create executor pods with it): apply operator/deploy "
            "(kubectl apply -k operator/deploy)",
        ) from exc


def _apply_all(cluster: Cluster, manifests: list[Obj]) -> None:
    # A run's spec travels in its Job (a pod annotation) unless it is large: no ConfigMap.
    for manifest in inline_specs(manifests):
        cluster.ensure(manifest)


def _run_finished(job: Obj) -> bool:
    """A Job that ended and whose pods stopped: it writes nothing any more."""
    status = job.get("status") or {}
    ended = any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return ended and not status.get("active") and not status.get("terminating")


def stop_previous_runs(cluster: Cluster, res: Resource, current: str) -> list[str]:
    """Delete (foreground: the Job goes only after its pods) every unfinished run Job of this
    resource other than `current`, including those of an earlier resource of the same name;
    returns the names still present. A new run starts only when this is empty, so two runs
    never write one table or model folder at once. Finished runs are history and stay."""
    ns = ns_of(res)
    stopping = []
    for job in cluster.list("batch/v1", "Job", ns, {owner_label(res.kind): res.metadata.name}):
        name = job["metadata"]["name"]
        if name == current or _run_finished(job):
            continue
        if not job["metadata"].get("deletionTimestamp"):
            cluster.delete("batch/v1", "Job", ns, name)
        stopping.append(name)
    return sorted(stopping)


def _start_run(cluster: Cluster, res: Resource, children: list[Obj], job_name: str) -> Draft | None:
    """Apply a run's children; None when applied, else the Pending Draft while earlier runs of
    the resource are still stopping (nothing of the new run is applied before that)."""
    if cluster.get("batch/v1", "Job", ns_of(res), job_name) is None:
        stopping = stop_previous_runs(cluster, res, job_name)
        if stopping:
            return Draft(
                "Pending",
                "StoppingPreviousRun",
                f"run {job_name} starts once {', '.join(stopping)} stopped (Job deleted, "
                "waiting for its pods to be gone)",
                superseded=stopping,
            )
    _apply_all(cluster, children)
    return None


def _run_phase(run: RunObservation) -> str:
    """The run's phase in status.runs, from its Job."""
    return run.state if run.state in ("Succeeded", "Failed") else "Running"


# How long a finished Job's result may lag behind it in the pod cache (the Job and Pod watches
# are separate streams): past this, a missing result is missing.
RESULT_LAG_S = 30.0


def _observe_job(cluster: Cluster, namespace: str, name: str) -> RunObservation:
    job = cluster.get("batch/v1", "Job", namespace, name)
    pods = (
        cluster.list("v1", "Pod", namespace, {"batch.kubernetes.io/job-name": name}) if job else []
    )
    run = observe_run(job, pods)
    finished = run.state in ("Succeeded", "Failed")
    if job is not None and finished and run.result is None and _pods_behind(job, pods):
        return RunObservation("Active", "Finishing", "waiting for the pods' final state", None)
    return run


def seconds_since(stamp: str) -> float:
    """Seconds since an RFC 3339 time such as the API server writes (0 when unreadable)."""
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (datetime.now(UTC) - then).total_seconds()


def _pods_behind(job: Obj, pods: list[Obj]) -> bool:
    """Whether the cached pods may not show the finished Job's end yet: a pod still running,
    or none at all, shortly after the Job finished."""
    if any((p.get("status") or {}).get("phase") not in ("Succeeded", "Failed") for p in pods):
        return True
    if pods:
        return False
    finished = (job.get("status") or {}).get("completionTime") or next(
        (
            c.get("lastTransitionTime")
            for c in (job.get("status") or {}).get("conditions") or []
            if c.get("type") == "Failed"
        ),
        None,
    )
    return finished is not None and seconds_since(str(finished)) < RESULT_LAG_S


def _failed_run(run: RunObservation) -> Draft:
    return failed(run.result, run.reason, run.message)


# ---- Dataset ----------------------------------------------------------------------------------
def reconcile_dataset(
    ds: Dataset, status: Obj, cluster: Cluster, settings: OperatorSettings
) -> Draft:
    ns = ns_of(ds)
    if _finished_for_generation(ds, status) and not ds.spec.schedule:
        return _keep(status)
    upstream = resolve_upstream(ds, cluster)
    children = build_dataset_children(pin_upstream(ds, upstream), settings)
    name = etl_children_name(ds)
    children = scope_children(
        cluster, ds, children, ETL_COMPONENT, ds.metadata.name,
        lambda: dataset_grant(ds, upstream, settings), settings,
    )  # fmt: skip
    if ds.spec.schedule:
        _apply_all(cluster, children)  # the CronJob forbids concurrent runs itself
        jobs = cluster.list("batch/v1", "Job", ns, {owner_label("Dataset"): ds.metadata.name})
        jobs.sort(key=lambda j: str(j["metadata"].get("creationTimestamp")))
        if not jobs:
            return Draft("Pending", "Scheduled", f"waiting for schedule {ds.spec.schedule!r}")
        name = jobs[-1]["metadata"]["name"]
    else:
        waiting = _start_run(cluster, ds, children, name)
        if waiting is not None:
            return waiting
    run = _observe_job(cluster, ns, name)
    draft = _dataset_draft(ds, run, name, settings)
    draft.run = (name, _run_phase(run))
    return draft


def _dataset_draft(
    ds: Dataset, run: RunObservation, name: str, settings: OperatorSettings
) -> Draft:
    if run.state in ("Missing", "Active", "Suspended"):
        return Draft("Running" if run.state == "Active" else "Pending", run.reason, f"Job {name}")
    if run.state == "Failed":
        return _failed_run(run)
    result = run.result
    if result is None:
        return Draft("Failed", "ResultMissing", f"Job {name} succeeded but reported no result")
    return dataset_outcome(result, table_uri(ds, settings))


def table_uri(ds: Dataset, settings: OperatorSettings) -> str:
    return Lake(settings.lake_uri).uri(Lake.table_path(ns_of(ds), ds.metadata.name))


def _keep(status: Obj) -> Draft:
    """The finished run's status, as it is."""
    conditions = status.get("conditions") or []
    ready = cond.condition(conditions, "Ready") or {}
    return Draft(
        str(status.get("phase")),
        str(ready.get("reason") or "Finished"),
        str(status.get("message") or ""),
        ready=ready.get("status") == "True",
        fields={
            k: v
            for k, v in status.items()
            if k not in ("phase", "conditions", "message", "observedGeneration")
        },
    )


# ---- TrainingJob ------------------------------------------------------------------------------
def reconcile_training(
    tj: TrainingJob, status: Obj, cluster: Cluster, settings: OperatorSettings
) -> Draft:
    ns = ns_of(tj)
    if _finished_for_generation(tj, status):
        draft = _keep(status)
        if tj.spec.federation is not None:
            stop_federation_servers(cluster, tj, keep=None)
        if status.get("phase") == "Succeeded":
            ensure_registered(tj, status, cluster)
        return draft
    if tj.spec.federation is not None:
        return reconcile_federated(tj, status, cluster, settings)
    dataset = resolve_dataset(tj, cluster)
    children = build_training_children(tj, dataset, settings)
    name = children[-1]["metadata"]["name"]
    children = scope_children(
        cluster, tj, children, TRAIN_COMPONENT if tj.spec.tuning is None else TUNE_COMPONENT,
        name, lambda: training_grant(tj, dataset, name, settings), settings,
    )  # fmt: skip
    waiting = _start_run(cluster, tj, children, name)
    if waiting is not None:
        return waiting
    inputs = (
        "InputsReady",
        True,
        "DatasetReady",
        f"Dataset {dataset.name} version {dataset.version}",
    )
    lineage = {
        "dataset": dataset.name,
        "datasetVersion": dataset.version,
        "datasetDigest": dataset.digest,
        "trainingJob": tj.metadata.name,
        "trainingJobUid": tj.metadata.uid,
    }
    lineage = {k: v for k, v in lineage.items() if v is not None}
    run = _observe_job(cluster, ns, name)
    draft = _training_draft(tj, status, run, name, lineage, inputs, cluster)
    if run.state != "Suspended":
        draft.run = (name, _run_phase(run))
    return draft


def _training_draft(
    tj: TrainingJob,
    status: Obj,
    run: RunObservation,
    name: str,
    lineage: Obj,
    inputs: Condition,
    cluster: Cluster,
) -> Draft:
    if run.state == "Suspended":
        return Draft("Suspended", "Suspended", "spec.suspend is true", conditions=[inputs])
    if run.state in ("Missing", "Active"):
        return Draft(
            "Running", run.reason, f"Job {name}", fields={"lineage": lineage}, conditions=[inputs]
        )
    if run.state == "Failed" or not run.result or run.result.get("outcome") != "Succeeded":
        draft = (
            _failed_run(run)
            if run.state == "Failed" or run.result
            else Draft("Failed", "ResultMissing", f"Job {name} reported no result")
        )
        draft.conditions.append(inputs)
        return draft
    draft = training_outcome(run.result, lineage, inputs)
    if tj.spec.register_ is not None:
        draft.fields["modelVersion"] = ensure_registered(tj, {**status, **draft.fields}, cluster)
    return draft


# ---- TrainingJob with spec.federation -------------------------------------------------------
# TLS Secrets created (or found present) recently, by (namespace, name, owner uid): created
# again (a no-op 409 when present) once the entry expires, so a deleted one comes back. The
# operator may create Secrets but never read them.
_tls_made: TTLCache[tuple[str, str, str], bool] = TTLCache(4096, 600.0)


def ensure_federation_tls(cluster: Cluster, tj: TrainingJob) -> None:
    """The SuperLink's CA, certificate and key, generated once per resource (for its Service's
    DNS names) and never read back."""
    key = (ns_of(tj), tls_secret_name(tj), tj.metadata.uid or "")
    if _tls_made.get(key):
        return
    # Imported here: `cryptography` comes with flwr's lock, and an operator without it still
    # reconciles every other resource.
    from neuraxis.operator.tls import LOOPBACK_NAMES, generate_server_tls, service_dns_names

    tls = generate_server_tls(
        f"neuraxis federation {ns_of(tj)}/{tj.metadata.name}",
        service_dns_names(superlink_service_name(tj), ns_of(tj)) + LOOPBACK_NAMES,
    )
    cluster.create(tls_secret(tj, tls.ca_cert, tls.server_cert, tls.server_key))
    _tls_made.put(key, True)


def stop_federation_servers(cluster: Cluster, tj: TrainingJob, keep: str | None) -> list[str]:
    """Delete the SuperLink and SuperNode Deployments (and the NetworkPolicies) of every run
    of the job but `keep`: a finished or superseded run's servers serve nobody. Returns the
    runs whose servers were deleted now."""
    ns = ns_of(tj)
    deployments = cluster.list(
        "apps/v1", "Deployment", ns, {owner_label(tj.kind): tj.metadata.name}
    )
    runs = sorted(
        {
            str(d["metadata"]["labels"][RUN_LABEL])
            for d in deployments
            if RUN_LABEL in (d["metadata"].get("labels") or {})
            and d["metadata"]["labels"][RUN_LABEL] != keep
            and not d["metadata"].get("deletionTimestamp")
        }
    )
    for d in deployments:
        if (d["metadata"].get("labels") or {}).get(RUN_LABEL) in runs:
            cluster.delete("apps/v1", "Deployment", ns, d["metadata"]["name"], "Background")
    for run in runs:
        for name in network_policy_names(run):
            cluster.delete("networking.k8s.io/v1", "NetworkPolicy", ns, name, "Background")
    return runs


def site_lineage(sites: list[ResolvedSite]) -> list[Obj]:
    return [
        {
            k: v
            for k, v in {
                "site": s.name,
                "dataset": s.dataset.name,
                "datasetVersion": s.dataset.version,
                "datasetDigest": s.dataset.digest,
            }.items()
            if v is not None
        }
        for s in sites
    ]


def sites_condition(
    cluster: Cluster, tj: TrainingJob, run: str, sites: list[ResolvedSite]
) -> Condition:
    """SitesReady from each site's SuperNode Deployment (its ready replicas)."""
    ready = {}
    for index, site in enumerate(sites):
        deployment = cluster.get("apps/v1", "Deployment", ns_of(tj), supernode_name(run, index))
        ready[site.name] = bool(
            int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)
        )
    return sites_ready_condition(ready)


def reconcile_federated(
    tj: TrainingJob, status: Obj, cluster: Cluster, settings: OperatorSettings
) -> Draft:
    """One run: every site's Dataset resolved (else waits, naming the sites), the TLS Secret,
    then the SuperLink, the SuperNodes and the server app Job (the run, whose result is read
    like a training Job's)."""
    ns = ns_of(tj)
    sites = resolve_sites(tj, cluster)
    name = federation_run_name(tj)
    if cluster.get("batch/v1", "Job", ns, name) is None:
        stop_federation_servers(cluster, tj, keep=name)
    ensure_federation_tls(cluster, tj)
    children = build_federation_children(tj, sites, settings)
    waiting = _start_run(cluster, tj, children, name)
    if waiting is not None:
        return waiting
    described = "; ".join(
        f"{s.name}: Dataset {s.dataset.name} version {s.dataset.version}" for s in sites
    )
    inputs: Condition = ("InputsReady", True, "DatasetsReady", described)
    lineage: Obj = {"trainingJob": tj.metadata.name, "trainingJobUid": tj.metadata.uid}
    lineage["sites"] = site_lineage(sites)
    run = _observe_job(cluster, ns, name)
    draft = _training_draft(tj, status, run, name, lineage, inputs, cluster)
    if run.state != "Suspended":
        draft.run = (name, _run_phase(run))
    if run.state == "Suspended":
        return draft
    if run.state in ("Missing", "Active"):
        draft.conditions.append(sites_condition(cluster, tj, name, sites))
        return draft
    if run.result is not None:
        if not draft.fields.get("lineage"):
            draft.fields["lineage"] = lineage
        add_federation(draft, run.result, lineage["sites"])
    if run.state in ("Succeeded", "Failed"):
        stop_federation_servers(cluster, tj, keep=None)
    return draft


# ---- ModelVersion -----------------------------------------------------------------------------
def cluster_features(cluster: Cluster) -> ClusterFeatures:
    return ClusterFeatures(
        gateway_api=cluster.has_kind("gateway.networking.k8s.io/v1", "HTTPRoute"),
        prometheus_operator=cluster.has_kind("monitoring.coreos.com/v1", "ServiceMonitor"),
    )


def _evaluate(
    mv: ModelVersion,
    status: Obj,
    artifact: tuple[str, str | None],
    lineage: Obj,
    cluster: Cluster,
    settings: OperatorSettings,
) -> Draft | None:
    """None when the evaluation for this generation approved the model; else the Draft."""
    evaluation = status.get("evaluation") or {}
    if (
        status.get("observedGeneration") == mv.metadata.generation
        and evaluation.get("passed") is not None
    ):
        if evaluation["passed"]:
            return None
        return Draft(
            "Rejected",
            "GatesFailed",
            str(status.get("message") or "gates failed"),
            fields={"evaluation": evaluation},
        )
    name = run_name(mv, "eval")
    folder = Lake.run_path(ns_of(mv), name)
    children = scope_children(
        cluster, mv, build_evaluation_children(mv, artifact[0], settings, artifact[1]),
        EVALUATE_COMPONENT, name,
        lambda: evaluation_grant(mv, artifact[0], lineage, folder, settings), settings,
    )  # fmt: skip
    waiting = _start_run(cluster, mv, children, name)
    if waiting is not None:
        return waiting
    run = _observe_job(cluster, ns_of(mv), name)
    status["runs"] = update_runs(
        status.get("runs") or [], mv.metadata.generation, (name, _run_phase(run)), [], now_rfc3339()
    )
    if run.state in ("Missing", "Active", "Suspended"):
        return Draft("Evaluating", "EvaluationRunning", f"Job {name}")
    if run.state == "Failed" and not (run.result and "passed" in run.result):
        return _failed_run(run)
    verdict, fields = evaluation_outcome(run.result or {})
    status.update(fields)
    return verdict


def reconcile_model_version(
    mv: ModelVersion, status: Obj, cluster: Cluster, settings: OperatorSettings
) -> Draft:
    uri, expected, lineage = artifact_to_evaluate(mv, cluster)
    # Evaluated for this generation: the pinned artifact, whatever its TrainingJob made since.
    pinned = pinned_artifact(mv, status)
    if pinned is not None:
        uri, expected = pinned
    base_fields: Obj = {"artifact": {"uri": uri}, "lineage": lineage}
    if status.get("evaluationHistory"):
        base_fields["evaluationHistory"] = status["evaluationHistory"]
    verdict = _evaluate(mv, status, (uri, expected), lineage, cluster, settings)
    if verdict is not None:
        verdict.fields = {**base_fields, **verdict.fields}
        return verdict
    # Approved: the artifact this generation's evaluation verified (status.artifact, pinned by
    # evaluation_outcome, also on the pass that sees the evaluation finish).
    evaluated = status.get("artifact") or {}
    artifact_uri = str(evaluated.get("uri") or uri)
    digest = str(evaluated["digest"]) if evaluated.get("digest") else expected
    fields = {
        **base_fields,
        "artifact": {"uri": artifact_uri, "digest": digest},
        "evaluation": status.get("evaluation"),
        "cardUri": status.get("cardUri"),
    }
    history = _backtests(mv, status, (artifact_uri, digest), lineage, cluster, settings)
    fields["evaluationHistory"] = history or None
    fields = {k: v for k, v in fields.items() if v is not None}
    degraded = degraded_condition(history)
    draft = _approved_draft(mv, fields, cluster, settings, (artifact_uri, digest), status)
    if degraded is not None:
        draft.conditions.append(degraded)
    return draft


def predictor_pods(cluster: Cluster, mv: ModelVersion) -> list[Obj]:
    """The version's serving pods (its pods that belong to no Job)."""
    pods = cluster.list("v1", "Pod", ns_of(mv), {owner_label("ModelVersion"): mv.metadata.name})
    return [p for p in pods if JOB_NAME_LABEL not in (p.get("metadata") or {}).get("labels", {})]


def _backtests(
    mv: ModelVersion,
    status: Obj,
    artifact: tuple[str, str | None],
    lineage: Obj,
    cluster: Cluster,
    settings: OperatorSettings,
) -> list[Obj]:
    """Keep the backtest CronJob (scoring the pinned artifact, `artifact` = uri and digest) as
    the spec asks (made, updated or suspended) and add each
    finished backtest Job not yet recorded to the history. Jobs and pods come from the watch
    caches; a recorded Job is skipped by name, so steady state sends no request."""
    ns = ns_of(mv)
    schedule = mv.spec.evaluation.schedule if mv.spec.evaluation else None
    cron_name = backtest_cron_job_name(mv)
    if schedule is not None or cluster.get("batch/v1", "CronJob", ns, cron_name) is not None:
        # Each scheduled Job's run folder is `<cron>-<suffix>`; the keys are refreshed on the
        # CronJob's template at a resync, so later Jobs start with fresh ones.
        runs = f"{Lake.run_path(ns, cron_name)}-*"
        children = scope_children(
            cluster, mv, build_backtest_children(mv, artifact[0], settings, artifact[1]),
            BACKTEST_COMPONENT, cron_name,
            lambda: evaluation_grant(mv, artifact[0], lineage, runs, settings), settings,
        )  # fmt: skip
        _apply_all(cluster, children)
    history: list[Obj] = list(status.get("evaluationHistory") or [])
    recorded = {e.get("runId") for e in history}
    jobs = cluster.list("batch/v1", "Job", ns, {owner_label("ModelVersion"): mv.metadata.name})
    for job in jobs:
        name = job["metadata"]["name"]
        if (job["metadata"].get("labels") or {}).get(BACKTEST_LABEL) != "true" or name in recorded:
            continue
        run = _observe_job(cluster, ns, name)
        if run.state not in ("Succeeded", "Failed"):
            continue
        entry = backtest_entry(name, run.result, _finish_time(job), run.message)
        history = record_backtest(history, entry)
    return history


def _finish_time(job: Obj) -> str:
    status = job.get("status") or {}
    failed_at = next(
        (
            c.get("lastTransitionTime")
            for c in status.get("conditions") or []
            if c.get("type") == "Failed" and c.get("status") == "True"
        ),
        None,
    )
    return str(status.get("completionTime") or failed_at or now_rfc3339())


def _canary_state(
    mv: ModelVersion,
    stable: ModelVersion,
    status: Obj,
    cluster: Cluster,
    settings: OperatorSettings,
) -> CanaryState:
    """The canary analysis over the predictor pods' /metrics (stable side, canary side)."""
    assert mv.spec.serving is not None and mv.spec.serving.canary is not None
    kwok = settings.allow_kwok_annotations

    def urls(version: ModelVersion) -> list[str]:
        found = (
            pod_metrics_url(p, settings.serving_port, kwok)
            for p in predictor_pods(cluster, version)
        )
        return sorted(u for u in found if u is not None)

    analysis = mv.spec.serving.canary.analysis
    pods = (urls(stable), urls(mv)) if analysis is not None else ([], [])
    old_split = status.get("trafficSplit") or {}
    now = datetime.now(UTC)
    return analyze_canary(analysis, mv.metadata.generation, old_split, pods, now)


def _approved_draft(
    mv: ModelVersion,
    fields: Obj,
    cluster: Cluster,
    settings: OperatorSettings,
    artifact: tuple[str, str | None],
    status: Obj,
) -> Draft:
    """Approved, or Serving once the predictor answers (when serving is asked for); Failed
    (ArtifactChanged) when the predictor refuses the artifact: it is not the pinned one. A
    canary next to a stable version: its traffic split in status.trafficSplit, and a rollback
    (weight 0) when its analysis finds it worse than the stable version."""
    serving = mv.spec.serving
    if serving is None or not serving.enabled:
        return Draft("Approved", "GatesPassed", "every gate passed", ready=True, fields=fields)
    stable = find_stable(mv, cluster)
    features = cluster_features(cluster)
    canary_state = None
    conditions: list[Condition] = []
    if serving.canary is not None and stable is not None:
        canary_state = _canary_state(mv, stable, status, cluster, settings)
        plan = plan_traffic(
            mv, serving, stable, settings, features, rolled_back=canary_state.rolled_back
        )
        split: Obj = {
            "mode": plan.mode,
            "gateway": plan.gateway_text(),
            "canaryPercent": plan.canary_percent,
            # The schema's defaults, written out: the stored status has them, and a status
            # without them would differ from it on every pass (a patch per resync).
            "rolledBack": False,
            "message": "",
            **canary_state.split,
        }
        if plan.note:
            split["message"] = f"split by replicas: {plan.note}" + (
                f"; {split['message']}" if split.get("message") else ""
            )
        fields["trafficSplit"] = {k: v for k, v in split.items() if v is not None}
        if canary_state.condition is not None:
            conditions.append(canary_state.condition)
    children = build_serving_children(
        mv,
        serving,
        artifact[0],
        settings,
        features,
        stable=stable,
        artifact_digest=artifact[1],
        rolled_back=canary_state is not None and canary_state.rolled_back,
    )
    children = scope_children(
        cluster, mv, children, PREDICTOR_COMPONENT, predictor_name(mv),
        lambda: serving_grant(mv, artifact[0], predictor_name(mv), settings), settings,
    )  # fmt: skip
    _apply_all(cluster, children)
    deployment = cluster.get("apps/v1", "Deployment", ns_of(mv), predictor_name(mv)) or {}
    available = int((deployment.get("status") or {}).get("availableReplicas") or 0)
    if canary_state is not None and canary_state.rolled_back:
        message = str(fields["trafficSplit"].get("message") or "")
        return Draft(
            "Approved",
            ROLLED_BACK,
            f"canary weight 0 until the spec changes: {message}",
            ready=True,
            fields=fields,
            conditions=conditions,
        )
    if available == 0:
        refusal = serving_refusal(predictor_pods(cluster, mv))
        if refusal is not None:
            refusal.fields = fields
            return refusal
    fields["endpoint"] = (
        f"http://{predictor_name(mv)}.{ns_of(mv)}.svc/v1/models/{mv.spec.model}:predict"
    )
    serving_cond = (
        "Serving",
        available > 0,
        "PredictorAvailable" if available else "PredictorNotAvailable",
        f"{available} replica(s) available",
    )
    waiting = "waiting for the predictor to become available"
    blocked = auth_refusal(predictor_pods(cluster, mv)) if available == 0 else None
    if blocked is not None:
        # The predictor would not start for its auth settings: say why, not just "waiting".
        waiting = (
            missing_keys_message(serving.auth, ns_of(mv))
            if blocked == API_KEYS_MISSING
            else "the predictor refused its spec.serving.auth settings (see its pods' logs)"
        )
        serving_cond = ("Serving", False, blocked, waiting)
    conditions.append(serving_cond)
    if available == 0:
        return Draft(
            "Approved",
            "GatesPassed",
            waiting,
            ready=True,
            fields=fields,
            conditions=conditions,
        )
    note = ""
    if serving.canary is not None:
        asked = serving.canary.traffic_percent
        note = "; canary without a stable version serves all traffic"
        split = fields.get("trafficSplit") or {}
        if stable is not None and split:
            # Replica weighting can only approximate the asked share: report the real one.
            share = split["canaryPercent"]
            via = f"through Gateway {split['gateway']}" if split.get("gateway") else "by replicas"
            note = f"; canary gets {share}% (asked {asked}%) {via} next to {stable.metadata.name}"
    return Draft(
        "Serving",
        "PredictorAvailable",
        f"{available} replica(s) available{note}",
        ready=True,
        fields=fields,
        conditions=conditions,
    )


# ---- EdgeDeployment ---------------------------------------------------------------------------
def reconcile_edge(
    ed: EdgeDeployment, status: Obj, cluster: Cluster, settings: OperatorSettings
) -> Draft:
    ns = ns_of(ed)
    model, artifact_uri, lineage = resolve_approved_model(ed, cluster)
    bundle = (
        status.get("bundle") if status.get("observedGeneration") == ed.metadata.generation else None
    )
    if not bundle:
        name = run_name(ed, "bundle")
        digest = approved_artifact_digest(ed, cluster)
        heldout = approved_evaluation_dataset(ed, cluster)
        children = scope_children(
            cluster, ed, build_bundle_children(ed, model, settings, artifact_uri, digest, heldout),
            BUNDLE_COMPONENT, name,
            lambda: bundling_grant(ed, model, name, artifact_uri, heldout, lineage, settings),
            settings,
        )  # fmt: skip
        waiting = _start_run(cluster, ed, children, name)
        if waiting is not None:
            return waiting
        run = _observe_job(cluster, ns, name)
        phase = (name, _run_phase(run))
        if run.state in ("Missing", "Active", "Suspended"):
            return Draft(
                "Pending", "BuildingBundle", f"Job {name}", fields={"lineage": lineage}, run=phase
            )
        if run.state == "Failed":
            draft = _failed_run(run)
            draft.run = phase
            return draft
        outcome = bundle_outcome(run.result or {})
        if isinstance(outcome, Draft):
            outcome.run = phase
            return outcome
        bundle = outcome
        status["runs"] = update_runs(
            status.get("runs") or [], ed.metadata.generation, phase, [], now_rfc3339()
        )
    node_objs = cluster.list("v1", "Node", None)
    nodes = [
        {
            "name": n["metadata"]["name"],
            "labels": n["metadata"].get("labels") or {},
            "taints": (n.get("spec") or {}).get("taints") or [],
        }
        for n in node_objs
    ]
    targeted = matching_nodes(ed, nodes, settings)
    fields: dict[str, Any] = {"bundle": bundle, "lineage": lineage, "targetedNodes": len(targeted)}
    if not targeted:
        return Draft(
            "Pending",
            "NoMatchingNodes",
            "no node matches spec.target",
            fields={**fields, "updatedNodes": 0, "readyNodes": 0, "offlineNodes": 0, "sites": []},
        )
    canary = cluster.get("apps/v1", "DaemonSet", ns, canary_daemon_set_name(ed))
    canary_ready = _daemon_set_done(canary, len(canary_nodes(ed, targeted)))
    children = build_edge_agent_children(
        ed,
        str(bundle["uri"]),
        targeted,
        settings,
        canary_ready=canary_ready,
        bundle_digest=str(bundle["digest"]),
        sites=node_sites(nodes, settings),
    )
    children = scope_children(
        cluster, ed, children, AGENT_COMPONENT, ed.metadata.name,
        lambda: agent_grant(ed, str(bundle["uri"]), settings), settings,
    )  # fmt: skip
    _apply_all(cluster, children)
    sets = [c for c in children if c["kind"] == "DaemonSet"]
    observed = [cluster.get("apps/v1", "DaemonSet", ns, s["metadata"]["name"]) or {} for s in sets]
    updated = sum(int((d.get("status") or {}).get("updatedNumberScheduled") or 0) for d in observed)
    ready = sum(int((d.get("status") or {}).get("numberReady") or 0) for d in observed)
    fields.update(updatedNodes=updated, readyNodes=ready)
    agents = cluster.list("v1", "Pod", ns, {owner_label("EdgeDeployment"): ed.metadata.name})
    sites = site_counts(targeted, node_objs, agents, observed, settings.edge_site_label)
    fields.update(sites=sites, offlineNodes=sum(s["offline"] for s in sites))
    if ready >= len(targeted):
        return Draft(
            "Available",
            "AllNodesReady",
            f"{ready}/{len(targeted)} nodes ready",
            ready=True,
            fields=fields,
        )
    agents = cluster.list("v1", "Pod", ns, {owner_label("EdgeDeployment"): ed.metadata.name})
    agents = [
        p for p in agents if JOB_NAME_LABEL not in (p.get("metadata") or {}).get("labels", {})
    ]
    blocked = auth_refusal(agents)
    if blocked is not None:
        # Agents that will not start for their auth settings: say why, not only "rolling out".
        message = (
            missing_keys_message(ed.spec.auth, ns)
            if blocked == API_KEYS_MISSING
            else "the edge agents refused their spec.auth settings (see their pods' logs)"
        )
        return Draft("RollingOut", blocked, message, fields=fields)
    if ed.spec.rollout.pause and canary_ready:
        return Draft(
            "Paused",
            "PausedAfterCanary",
            "spec.rollout.pause: the canary nodes are updated",
            fields=fields,
        )
    return Draft("RollingOut", "RollingOut", f"{ready}/{len(targeted)} nodes ready", fields=fields)


def _daemon_set_done(ds: Obj | None, expected: int) -> bool:
    if ds is None or expected == 0:
        return expected == 0
    st = ds.get("status") or {}
    return (
        int(st.get("desiredNumberScheduled") or 0) >= expected
        and int(st.get("numberReady") or 0) >= expected
        and int(st.get("updatedNumberScheduled") or 0) >= expected
    )


# ---- the shared status contract ---------------------------------------------------------------
Reconciler = Callable[[Any, Obj, Cluster, OperatorSettings], Draft]
RECONCILERS: dict[str, Reconciler] = {
    "Dataset": reconcile_dataset,
    "TrainingJob": reconcile_training,
    "ModelVersion": reconcile_model_version,
    "EdgeDeployment": reconcile_edge,
}
# One resource is reconciled by one thread at a time: a fixed set of locks, picked by hash
# (bounded, unlike a lock per resource ever seen).
_locks = [threading.Lock() for _ in range(256)]


def _lock_for(kind: str, namespace: str, name: str) -> threading.Lock:
    return _locks[hash((kind, namespace, name)) % len(_locks)]


def _comparable(status: Obj) -> Obj:
    return {k: v for k, v in status.items() if v is not None}


def finished_and_quiet(body: Obj) -> bool:
    """A run that ended for the current spec and needs nothing more: a Dataset without a
    schedule that is Ready or Failed, a TrainingJob that failed or succeeded without a
    ModelVersion to register. Read from the body alone (no parsing: resyncs stay cheap)."""
    status = body.get("status") or {}
    spec = body.get("spec") or {}
    if status.get("observedGeneration") != body["metadata"].get("generation"):
        return False
    if (cond.condition(status.get("conditions") or [], "Degraded") or {}).get("status") == "True":
        return False
    phase = status.get("phase")
    if body["kind"] == "Dataset":
        return phase in ("Ready", "Failed") and not spec.get("schedule")
    if body["kind"] == "TrainingJob":
        return phase == "Failed" or (phase == "Succeeded" and not spec.get("register"))
    return False


def reconcile(body: Obj, cluster: Cluster, settings: OperatorSettings) -> Obj:
    """Reconcile one resource given its current body; returns the status it now has.

    Raises InvalidSpecError for specs that cannot work (after recording it in status)."""
    kind = body["kind"]
    meta = body["metadata"]
    if finished_and_quiet(body):
        return status_of(body)
    with _lock_for(kind, meta["namespace"], meta["name"]):
        old = status_of(body)
        # The reconcilers may note what they learn in `work` (an evaluation, a finished run);
        # `old` stays as read, so that the comparison below sees every change.
        work = copy.deepcopy(old)
        generation = meta.get("generation")
        invalid: InvalidSpecError | None = None
        try:
            res = parse_resource(body)
            ensure_accounts(cluster, res, settings)
            check_references(res, settings.lake_uri, cluster)
            draft = RECONCILERS[kind](res, work, cluster, settings)
        except ResourceError as exc:
            invalid = InvalidSpecError("InvalidSpec", str(exc))
            draft = Draft("Failed", "InvalidSpec", str(exc))
        except InvalidSpecError as exc:
            invalid = exc
            draft = Draft("Failed", exc.reason, exc.message)
        except InputNotReadyError as exc:
            draft = Draft(
                "Pending",
                exc.reason,
                exc.message,
                fields=_kept_fields(old),
                conditions=[("InputsReady", False, exc.reason, exc.message)],
            )
        except ApiUnavailableError as exc:
            report_degraded(cluster, body, old, exc, settings)
            raise
        was = cond.condition(old.get("conditions") or [], "Degraded") or {}
        # Only the API outage's Degraded is cleared here; a backtest's follows the history.
        if (
            was.get("status") == "True"
            and was.get("reason") == "ApiUnavailable"
            and not any(c[0] == "Degraded" for c in draft.conditions)
        ):
            draft.conditions.append(("Degraded", False, "ApiAvailable", "the API server answers"))
        new = status_from_draft(draft, work, generation)
        if _comparable(new) != _comparable(old):
            cluster.patch_status(
                kind,
                meta["namespace"],
                meta["name"],
                new,
                resource_version=meta.get("resourceVersion"),
            )
            if new.get("phase") != old.get("phase"):
                bad = new["phase"] in ("Failed", "Rejected") or draft.reason == ROLLED_BACK
                type_ = "Warning" if bad else "Normal"
                cluster.event(
                    body,
                    type_,
                    draft.reason,
                    f"{old.get('phase', 'New')} -> {new['phase']}: {draft.message}",
                )
        if invalid is not None:
            raise invalid
        return new


# The Degraded condition is written with one try: the API server may be the thing that is down.
DEGRADED_WRITE = RetryPolicy(attempts=1)


def report_degraded(
    cluster: Cluster,
    body: Obj,
    old: Obj,
    error: ApiUnavailableError,
    settings: OperatorSettings,
) -> None:
    """Record that the API server kept failing (condition `Degraded`, the error) and that the
    operator retries every `degraded_retry_seconds`; the phase stays as it was."""
    meta = body["metadata"]
    message = f"{error.short()}; retrying every {settings.degraded_retry_seconds:g}s"
    was = cond.condition(old.get("conditions") or [], "Degraded") or {}
    conditions = cond.set_condition(
        list(old.get("conditions") or []),
        "Degraded",
        True,
        "ApiUnavailable",
        message,
        meta.get("generation"),
    )
    try:
        cluster.patch_status(
            body["kind"],
            meta["namespace"],
            meta["name"],
            {"conditions": conditions},
            retry=DEGRADED_WRITE,
            resource_version=meta.get("resourceVersion"),
        )
    except ApiError as exc:
        log.warning("could not record Degraded on %s/%s: %s", body["kind"], meta["name"], exc)
        return
    if was.get("status") != "True":
        cluster.event(body, "Warning", "ApiUnavailable", message)


def _kept_fields(old: Obj) -> Obj:
    return {k: v for k, v in old.items() if k in ("lineage",)}
