"""Scoped lake credentials in the operator, the pure part: which grant a run gets, and how its
pods are pointed at their Secret (minting against the real MinIO: tests/test_lake_isolation)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from neuraxis.crds import Dataset, EdgeDeployment, ModelVersion, TrainingJob
from neuraxis.crds.common import DatasetRef
from neuraxis.lake import Lake
from neuraxis.lake_access import EXPIRES_ANNOTATION, POLICY_ANNOTATION, LakeGrant
from neuraxis.operator.builders.dataset import build_dataset_children
from neuraxis.operator.builders.edge import (
    BUNDLE_COMPONENT,
    build_bundle_children,
    build_edge_agent_children,
)
from neuraxis.operator.builders.modelversion import (
    BACKTEST_COMPONENT,
    EVALUATE_COMPONENT,
    ClusterFeatures,
    build_backtest_children,
    build_evaluation_children,
    build_serving_children,
)
from neuraxis.operator.builders.training import ResolvedDataset, build_training_children
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
    pods_of,
    scope_children,
    serving_grant,
    training_grant,
    with_lake_secret,
)
from neuraxis.operator.settings import OperatorSettings, SettingsError
from neuraxis.resources import load_resources
from tests.conftest import EXAMPLES

SETTINGS = OperatorSettings(lake_uri="s3://lake-bucket/lake")
STAMPS = {EXPIRES_ANNOTATION: "2030-01-01T00:00:00+00:00", POLICY_ANNOTATION: "abc"}


def _example(kind: str, index: int = 0) -> Any:
    found = [r for r in load_resources([EXAMPLES / "smart-manufacturing"]) if r.kind == kind]
    res = found[index]
    res.metadata.namespace = "ml"
    res.metadata.uid = "3f2a9c1b-7d4e-4f60-9a1b-2c3d4e5f6a7b"
    res.metadata.generation = 2
    return res


def test_an_etl_run_reads_its_upstream_and_writes_its_own_table() -> None:
    ds: Dataset = _example("Dataset", 1)  # sensor-features, derived from sensor-readings
    upstream = ResolvedDataset(
        "sensor-readings", 3, "s3://lake-bucket/lake/tables/ml/sensor-readings"
    )
    grant = dataset_grant(ds, upstream, SETTINGS)
    assert grant.read == ("tables/ml/sensor-readings",)
    assert grant.write[:2] == ("tables/ml/sensor-features", "quarantine/ml/sensor-features")
    assert grant.write[2].startswith("runs/ml/sensor-features-etl-")  # the Job's result
    assert grant.append == ("lineage/ml",)
    first = dataset_grant(_example("Dataset", 0), None, SETTINGS)  # a built-in source
    assert first.read == () and first.write[0] == "tables/ml/sensor-readings"


def test_an_etl_run_over_edge_logs_reads_the_raw_logs_and_writes_the_log_table() -> None:
    ds: Dataset = _example("Dataset", 1)
    source = ds.spec.source.from_
    assert source is not None
    edge = {"edgeDeploymentRef": {"name": "plants"}}
    ds = ds.model_validate({**ds.model_dump(by_alias=True, exclude_none=True),
                            "spec": {**ds.model_dump(by_alias=True, exclude_none=True)["spec"],
                                     "source": {"from": edge}}})  # fmt: skip
    grant = dataset_grant(ds, None, SETTINGS)
    assert grant.read == (Lake.inference_logs_path("ml", "plants"),)
    assert Lake.edge_logs_table_path("ml", "plants") in grant.write


def test_training_reaches_its_dataset_run_and_artifact_and_a_custom_image_as_much() -> None:
    tj: TrainingJob = _example("TrainingJob")
    dataset = ResolvedDataset(
        "sensor-features", 4, "s3://lake-bucket/lake/tables/ml/sensor-features"
    )
    grant = training_grant(tj, dataset, "run-1", SETTINGS)
    assert grant.role == "train"
    assert grant.read == ("tables/ml/sensor-features",)
    assert grant.write[0] == "runs/ml/run-1"
    assert all(w.split("/")[1] == "ml" and w.endswith("run-1") for w in grant.write)
    body = tj.model_dump(by_alias=True, exclude_none=True)
    for key in ("model", "tuning"):
        body["spec"].pop(key, None)
    body["spec"]["custom"] = {"image": "registry.example/trainer:1.0", "command": ["train"]}
    custom = TrainingJob.model_validate(body)
    assert training_grant(custom, dataset, "run-1", SETTINGS) == dataclasses.replace(
        grant, role="custom-trainer"
    )


def test_serving_and_edge_grants_name_one_artifact_and_their_log_prefixes() -> None:
    mv: ModelVersion = _example("ModelVersion")
    grant = serving_grant(mv, "s3://lake-bucket/lake/models/ml/detector/v1/run-1", "pred", SETTINGS)
    assert grant.read == ("models/ml/detector/v1/run-1",)
    assert grant.append == ("inference-logs/ml/pred",) and grant.write == ()
    ed: EdgeDeployment = _example("EdgeDeployment")
    grant = agent_grant(ed, "s3://lake-bucket/lake/edge/ml/detector/v1/b-1", SETTINGS)
    assert grant.read == ("edge/ml/detector/v1/b-1",)
    assert grant.append == (
        f"inference-logs/ml/{ed.metadata.name}",
        f"edge-health/ml/{ed.metadata.name}",
    )


def test_evaluation_reads_its_artifact_and_held_out_table_and_writes_only_the_card() -> None:
    mv: ModelVersion = _example("ModelVersion")
    artifact = "s3://lake-bucket/lake/models/ml/detector/v1/run-1"
    mv.spec.evaluation = None  # no datasetRef: the training Dataset of the lineage
    grant = evaluation_grant(mv, artifact, {"dataset": "features"}, "runs/ml/e-1", SETTINGS)
    assert grant.role == "evaluate"
    assert grant.read == ("models/ml/detector/v1/run-1", "tables/ml/features")
    assert grant.write == ("models/ml/detector/v1/run-1/card", "runs/ml/e-1")
    assert grant.write_files == ("models/ml/detector/v1/run-1/manifest.json",)
    # A model registered by URI, no lineage: the namespace's tables, read only.
    assert "tables/ml" in evaluation_grant(mv, artifact, {}, "runs/ml/e-2", SETTINGS).read


def test_a_bundle_reads_the_evaluation_dataset_and_writes_its_own_bundle_folder() -> None:
    ed: EdgeDeployment = _example("EdgeDeployment")
    artifact = "s3://lake-bucket/lake/models/ml/detector/v1/run-1"
    heldout = DatasetRef(name="holdout", namespace="shared-data")
    grant = bundling_grant(ed, "detector", "b-1", artifact, heldout, {}, SETTINGS)
    version = ed.spec.model_version_ref.name
    assert grant.role == "bundle"
    assert grant.read == ("models/ml/detector/v1/run-1", "tables/shared-data/holdout")
    assert f"edge/ml/detector/{version}/b-1" in grant.write
    assert "runs/ml/b-1" in grant.write
    assert not any(w.startswith("tables/") for w in grant.write)


def test_policies_of_example_sized_names_fit_sts_and_an_oversize_one_is_named() -> None:
    """STS refuses session policies over 2 048 characters: a bundle of the healthcare example
    (the longest grant, with run ids as the operator makes them) fits; one that cannot is
    refused before any request, with the reason."""
    from neuraxis import lake_access
    from neuraxis.lake import S3Settings

    ns, run = "team-a", "diagnosis-clinic-bundle-20261203t164512-3f2a9c1b"
    artifact = Lake.model_path(ns, "diagnosis", "diagnosis-v1") + "/diagnosis-train-2026120-3f2a"
    grant = lake_access.bundle_grant(
        ns,
        artifact,
        Lake.table_path(ns, "tumour-measurements"),
        Lake.bundle_path(ns, "diagnosis", "diagnosis-v1", run),
        Lake.run_path(ns, run),
    )
    policy = lake_access.policy_json("s3://neuraxis-lake-bucket/lake", grant)
    assert len(policy) <= lake_access.MAX_POLICY_CHARS, len(policy)
    huge = dataclasses.replace(
        grant, read=(*grant.read, *(f"tables/{ns}/t{i:060d}" for i in range(20)))
    )
    caller = S3Settings("http://127.0.0.1:1", "k", "s", "us-east-1")
    with pytest.raises(lake_access.LakeScopeError, match=r"bundle in team-a is \d+ characters"):
        lake_access.mint("s3://neuraxis-lake-bucket/lake", huge, caller)


def test_only_roles_that_may_run_spark_get_folder_keys() -> None:
    """s3a HEADs a folder's own key; other roles are granted only what is inside folders."""
    from neuraxis import lake_access

    def resources(grant: LakeGrant) -> list[str]:
        policy = lake_access.session_policy("s3://b/lake", grant)
        return [r for st in policy["Statement"] for r in st.get("Resource", []) if "/" in r]

    etl = lake_access.etl_grant("ml", "t", ["tables/ml/raw"], run="runs/ml/r")
    assert "arn:aws:s3:::b/lake/tables/ml/raw" in resources(etl)
    train = lake_access.train_grant("ml", "tables/ml/raw", "r")
    assert all(r.endswith("/*") for r in resources(train))


def _secrets_read(manifests: list[dict[str, Any]], component: str) -> set[str]:
    return {
        src["secretRef"]["name"]
        for t in pods_of(manifests, component)
        for c in t["spec"]["containers"]
        for src in c.get("envFrom") or []
        if "secretRef" in src
    }


@pytest.mark.parametrize(
    ("kind", "component"),
    [("Dataset", ETL_COMPONENT), ("TrainingJob", TRAIN_COMPONENT),
     ("TrainingJob", TUNE_COMPONENT), ("ModelVersion", PREDICTOR_COMPONENT),
     ("EdgeDeployment", AGENT_COMPONENT), ("ModelVersion", EVALUATE_COMPONENT),
     ("ModelVersion", BACKTEST_COMPONENT), ("EdgeDeployment", BUNDLE_COMPONENT)],
)  # fmt: skip
def test_the_pods_of_the_component_read_their_scoped_secret_and_carry_the_stamps(
    kind: str, component: str
) -> None:
    res = _example(kind)
    if kind == "Dataset":
        children = build_dataset_children(res, SETTINGS)
    elif kind == "TrainingJob":
        if component == TRAIN_COMPONENT:
            res.spec.tuning = None  # the example searches; without tuning it is one training
        children = build_training_children(res, ResolvedDataset("d", 1), SETTINGS)
    elif component in (EVALUATE_COMPONENT, BACKTEST_COMPONENT):
        build = (
            build_evaluation_children
            if component == EVALUATE_COMPONENT
            else (build_backtest_children)
        )
        children = build(res, "s3://lake-bucket/lake/models/ml/m/v/r", SETTINGS)
    elif component == BUNDLE_COMPONENT:
        children = build_bundle_children(
            res, "m", SETTINGS, "s3://lake-bucket/lake/models/ml/m/v/r"
        )
    elif kind == "ModelVersion":
        children = build_serving_children(
            res,
            res.spec.serving,
            "s3://lake-bucket/lake/models/ml/m/v/r",
            SETTINGS,
            ClusterFeatures(),
        )
    else:
        children = build_edge_agent_children(
            res,
            "s3://lake-bucket/lake/edge/ml/m/v/b",
            ["edge-0", "edge-1"],
            SETTINGS,
            canary_ready=True,
            bundle_digest="sha256:" + "a" * 64,
        )
    assert pods_of(children, component), f"the {kind} builders label no pod {component!r}"
    assert _secrets_read(children, component) == {SETTINGS.lake_secret}
    scoped = with_lake_secret(children, component, SETTINGS.lake_secret, "neuraxis-lake-x", STAMPS)
    assert _secrets_read(scoped, component) == {"neuraxis-lake-x"}
    for template in pods_of(scoped, component):
        assert STAMPS.items() <= template["metadata"]["annotations"].items()
        for container in template["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env") or []}
            assert env.get("NEURAXIS_LAKE_SECRET") in (None, "neuraxis-lake-x")
    assert _secrets_read(children, component) == {SETTINGS.lake_secret}  # input untouched


def test_shared_mode_changes_nothing_and_the_lifetime_is_bounded() -> None:
    ds: Dataset = _example("Dataset")
    children = build_dataset_children(ds, SETTINGS)
    asked: list[str] = []

    def grant() -> LakeGrant:
        asked.append("grant")
        return dataset_grant(ds, None, SETTINGS)

    # Shared mode: not even a look at the cluster, nor at the lake paths of a grant.
    assert scope_children(None, ds, children, ETL_COMPONENT, "x", grant, SETTINGS) == children
    assert asked == []
    with pytest.raises(SettingsError, match="NEURAXIS_LAKE_CREDENTIALS: 'per-run' is not one of"):
        OperatorSettings.from_env({"NEURAXIS_LAKE_CREDENTIALS": "per-run"})
    with pytest.raises(SettingsError, match="NEURAXIS_LAKE_CREDENTIALS_SECONDS"):
        OperatorSettings.from_env({"NEURAXIS_LAKE_CREDENTIALS_SECONDS": "600"})
    with pytest.raises(SettingsError, match=r"outside 900\.\.31536000"):
        dataclasses.replace(SETTINGS, lake_credentials_seconds=400 * 86400)
    scoped = OperatorSettings.from_env({"NEURAXIS_LAKE_CREDENTIALS": "scoped"})
    assert (scoped.lake_credentials, scoped.lake_credentials_seconds) == ("scoped", 43200)
