"""Scoped lake credentials for workload pods (setting `lake_credentials: scoped`).

For a run the operator builds the run's `LakeGrant` (`neuraxis.lake_access`: the role's
prefixes in the run's namespace), mints keys for exactly that with its own lake keys (STS
AssumeRole with the grant as session policy), writes them to a Secret owned by the resource,
and points the run's pods at that Secret instead of the shared one.

The operator never reads Secrets (its role may create and patch them, not get them): when the
keys expire and which policy they carry is stamped on the pod template of the child that uses
them. A child already applied with fresh stamps for the same policy keeps its keys; otherwise
new ones are minted and the new stamps change the pod template, so a predictor Deployment or an
agent DaemonSet rolls onto the new keys by itself before the old ones expire. A Job keeps the
keys it started with (its template is made once).

Decisions (which grant, which pods, whether to mint) are plain functions; `scope_children` is
the one place that talks to the API server and STS.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from neuraxis.crds import Dataset, EdgeDeployment, ModelVersion, Resource, TrainingJob
from neuraxis.crds.common import DatasetRef
from neuraxis.lake import Lake, S3Settings
from neuraxis.lake_access import (
    EXPIRES_ANNOTATION,
    POLICY_ANNOTATION,
    LakeGrant,
    LakeScopeError,
    artifact_folder,
    bundle_grant,
    custom_trainer_grant,
    edge_grant,
    etl_grant,
    evaluate_grant,
    mint,
    needs_refresh,
    scoped_secret,
    scoped_secret_name,
    serve_grant,
    train_grant,
)
from neuraxis.operator.builders.dataset import COMPONENT as DATASET_COMPONENT
from neuraxis.operator.builders.dataset import etl_children_name
from neuraxis.operator.builders.training import ResolvedDataset
from neuraxis.operator.children import owner_reference
from neuraxis.operator.errors import InputNotReadyError
from neuraxis.operator.settings import LAKE_SECRET_ENV, OperatorSettings

Obj = dict[str, Any]
COMPONENT_LABEL = "app.kubernetes.io/component"
# The pods that get scoped keys, by their component label (what the builders set).
ETL_COMPONENT = DATASET_COMPONENT
TRAIN_COMPONENT = "train"
TUNE_COMPONENT = "tune"  # a search's trials run in its one Job: the same grant
PREDICTOR_COMPONENT = "predictor"
AGENT_COMPONENT = "edge-agent"
STAMPS = (EXPIRES_ANNOTATION, POLICY_ANNOTATION)


def _ns(res: Resource) -> str:
    return res.metadata.namespace or "default"


def _relative(settings: OperatorSettings, uri: str) -> str:
    return Lake(settings.lake_uri).relative(uri.rstrip("/"))


def dataset_grant(
    ds: Dataset,
    upstream: ResolvedDataset | None,
    settings: OperatorSettings,
    run_id: str | None = None,
) -> LakeGrant:
    """An ETL run: its upstream table or its EdgeDeployment's raw logs (then it also writes
    the edge-logs table it ingests them into), its own table."""
    ns, inputs, outputs = _ns(ds), [], []
    source = ds.spec.source.from_
    if source is not None and source.edge_deployment_ref is not None:
        name = source.edge_deployment_ref.name
        inputs.append(Lake.inference_logs_path(ns, name))
        outputs.append(Lake.edge_logs_table_path(ns, name))
    elif upstream is not None:
        inputs.append(
            _relative(settings, upstream.uri)
            if upstream.uri
            else Lake.table_path(ns, upstream.name)
        )
    # The run's result folder: `run_id` (the local runner's), the Job's name, or the Jobs a
    # schedule's CronJob makes.
    name = run_id or etl_children_name(ds)
    scheduled = ds.spec.schedule and run_id is None
    run = f"{Lake.run_path(ns, name)}-*" if scheduled else Lake.run_path(ns, name)
    return etl_grant(ns, ds.metadata.name, inputs, outputs, run=run)


def training_grant(
    tj: TrainingJob, dataset: ResolvedDataset, run_id: str, settings: OperatorSettings
) -> LakeGrant:
    """The built-in trainer, or a user's image (`spec.custom`): its pinned Dataset table, its
    run folder and its run-unique artifact folder (the `spec.custom` env contract)."""
    ns = _ns(tj)
    table = _relative(settings, dataset.uri) if dataset.uri else Lake.table_path(ns, dataset.name)
    artifact = artifact_folder(tj, ns, run_id)
    if tj.spec.custom is not None:
        return custom_trainer_grant(ns, run_id, dataset_table=table, artifact=artifact)
    return train_grant(ns, table, run_id, artifact=artifact)


def heldout_table(ref: DatasetRef | None, namespace: str, lineage: Obj) -> str:
    """The table an evaluation or a bundle judges on: the evaluation Dataset's
    (spec.evaluation.datasetRef), else the training Dataset's (the lineage). An artifact
    registered by URI names its training Dataset only inside its model.pt: then the
    namespace's tables, read only."""
    if ref is not None:
        return Lake.table_path(ref.namespace or namespace, ref.name)
    if lineage.get("dataset"):
        return Lake.table_path(namespace, str(lineage["dataset"]))
    return Lake.table_path(namespace, "").rstrip("/")


def evaluation_grant(
    mv: ModelVersion, artifact_uri: str, lineage: Obj, run: str, settings: OperatorSettings
) -> LakeGrant:
    """An evaluation (`run`: its run folder) or its backtests (`runs/<ns>/<cron>-*`)."""
    ref = mv.spec.evaluation.dataset_ref if mv.spec.evaluation else None
    ns = _ns(mv)
    table = heldout_table(ref, ns, lineage)
    return evaluate_grant(ns, _relative(settings, artifact_uri), table, run)


def bundling_grant(
    ed: EdgeDeployment,
    model: str,
    run_id: str,
    artifact_uri: str,
    heldout: DatasetRef | None,
    lineage: Obj,
    settings: OperatorSettings,
) -> LakeGrant:
    """The bundle run `run_id` of the version `ed` rolls out (registered as `model`)."""
    ns = _ns(ed)
    return bundle_grant(
        ns,
        _relative(settings, artifact_uri),
        heldout_table(heldout, ns, lineage),
        Lake.bundle_path(ns, model, ed.spec.model_version_ref.name, run_id),
        Lake.run_path(ns, run_id),
    )


def serving_grant(
    res: Resource, artifact_uri: str, deployment: str, settings: OperatorSettings
) -> LakeGrant:
    return serve_grant(_ns(res), _relative(settings, artifact_uri), deployment)


def agent_grant(res: Resource, bundle_uri: str, settings: OperatorSettings) -> LakeGrant:
    return edge_grant(_ns(res), _relative(settings, bundle_uri), res.metadata.name)


def _pod_templates(manifest: Obj) -> Iterator[Obj]:
    spec = manifest.get("spec") or {}
    if manifest["kind"] == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    template = spec.get("template")
    if isinstance(template, dict):
        yield template


def pods_of(manifests: list[Obj], component: str) -> list[Obj]:
    """The pod templates of `component` among the children."""
    return [
        t
        for m in manifests
        for t in _pod_templates(m)
        if ((t.get("metadata") or {}).get("labels") or {}).get(COMPONENT_LABEL) == component
    ]


def with_lake_secret(
    manifests: list[Obj], component: str, shared: str, scoped: str, stamps: dict[str, str]
) -> list[Obj]:
    """The children with the pods of `component` reading `scoped` wherever they read the
    shared lake Secret (envFrom; and the Secret a Spark driver gives its executors), their
    templates stamped with the keys' expiry and policy digest."""
    out = copy.deepcopy(manifests)
    for template in pods_of(out, component):
        metadata = template.setdefault("metadata", {})
        metadata["annotations"] = {**(metadata.get("annotations") or {}), **stamps}
        for container in (template.get("spec") or {}).get("containers") or []:
            for source in container.get("envFrom") or []:
                ref = source.get("secretRef") or {}
                if ref.get("name") == shared:
                    # Not optional: a pod must not start without its keys.
                    source["secretRef"] = {"name": scoped}
            for var in container.get("env") or []:
                if var.get("name") == LAKE_SECRET_ENV and var.get("value") == shared:
                    var["value"] = scoped
    return out


def applied_stamps(cluster: Any, children: list[Obj], component: str) -> dict[str, str]:
    """The credential stamps on the pod template of the already applied child that runs
    `component` (empty when it is not applied yet or carries none)."""
    for child in children:
        if not pods_of([child], component):
            continue
        meta = child["metadata"]
        current = cluster.get(
            child["apiVersion"], child["kind"], meta.get("namespace"), meta["name"]
        )
        for template in _pod_templates(current or {"kind": child["kind"]}):
            annotations = (template.get("metadata") or {}).get("annotations") or {}
            return {k: annotations[k] for k in STAMPS if k in annotations}
    return {}


def mint_secret(
    res: Resource, name: str, grant: LakeGrant, settings: OperatorSettings, caller: S3Settings
) -> Obj:
    """A new Secret for `grant` (STS round trip)."""
    try:
        creds = mint(settings.lake_uri, grant, caller, duration_s=settings.lake_credentials_seconds)
    except LakeScopeError as exc:
        # The lake (or STS) may be down for a while: retried, shown as the reason.
        raise InputNotReadyError("LakeCredentialsUnavailable", str(exc)) from exc
    secret = scoped_secret(name, _ns(res), grant, settings.lake_uri, creds, caller)
    secret["metadata"]["ownerReferences"] = [owner_reference(res)]
    return secret


def scope_children(
    cluster: Any,
    res: Resource,
    children: list[Obj],
    component: str,
    owner: str,
    grant_of: Callable[[], LakeGrant],
    settings: OperatorSettings,
    *,
    now: datetime | None = None,
    caller: S3Settings | None = None,
) -> list[Obj]:
    """In scoped mode: the children with the `component` pods reading the Secret
    `neuraxis-lake-<role>-<owner>`, minted again when the applied stamps are missing, stale or
    for another policy. In shared mode the children as they are (`grant_of` is not called:
    a grant resolves lake paths that shared mode never needs)."""
    if settings.lake_credentials != "scoped" or not pods_of(children, component):
        return children
    grant = grant_of()
    name = scoped_secret_name(grant.role, owner)
    stamps = applied_stamps(cluster, children, component)
    moment = now or datetime.now(UTC)
    if needs_refresh(stamps, settings.lake_uri, grant, moment, settings.lake_credentials_seconds):
        secret = mint_secret(res, name, grant, settings, caller or S3Settings.from_env())
        cluster.apply(secret)
        stamps = {k: secret["metadata"]["annotations"][k] for k in STAMPS}
    return with_lake_secret(children, component, settings.lake_secret, name, stamps)
