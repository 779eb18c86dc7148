"""Every object a built pod template names (ConfigMap, Secret, ServiceAccount, volume) must
exist when the pod starts: it is among the children built for the same resource, one of the
namespace's accounts the operator ensures for it, or documented below as provided by someone
else. A pod that names a missing ConfigMap never starts on a real kubelet (KWOK did not care)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from neuraxis.crds import Dataset, EdgeDeployment, ModelVersion, Resource, TrainingJob
from neuraxis.crds.common import DatasetRef
from neuraxis.operator.builders.accounts import accounts_for
from neuraxis.operator.builders.dataset import build_dataset_children
from neuraxis.operator.builders.edge import build_bundle_children, build_edge_agent_children
from neuraxis.operator.builders.modelversion import (
    ClusterFeatures,
    build_backtest_children,
    build_evaluation_children,
    build_serving_children,
)
from neuraxis.operator.builders.training import ResolvedDataset, build_training_children
from neuraxis.operator.settings import OperatorSettings
from tests.operator.test_builders import _example

PIN = "sha256:" + "cd" * 32
# Names that differ from the defaults, so a hard-coded name cannot pass by accident.
SETTINGS = OperatorSettings(
    service_account="wl-account", spark_service_account="spark-account", lake_secret="lake-creds"
)
Ref = tuple[str, str, bool]  # (kind, name, optional)
Manifest = dict[str, Any]


def provided_elsewhere(res: Resource, settings: OperatorSettings) -> dict[tuple[str, str], str]:
    """What pods may name without the operator creating it, and who provides it."""
    out = {
        ("Secret", settings.lake_secret): "lake credentials, from the platform (optional ref)",
    }
    if isinstance(res, Dataset) and res.spec.privacy and res.spec.privacy.salt_secret_ref:
        out[("Secret", res.spec.privacy.salt_secret_ref.name)] = "named by the user in the spec"
    serving = res.spec.serving if isinstance(res, ModelVersion) else None
    auth = serving.auth if serving else res.spec.auth if isinstance(res, EdgeDeployment) else None
    if auth is not None and auth.secret_ref is not None:
        out[("Secret", auth.secret_ref.name)] = API_KEYS
    return out


API_KEYS = "API keys named by the user in the spec (optional: the server reports ApiKeysMissing)"
MUST_BE_OPTIONAL = {"lake credentials, from the platform (optional ref)", API_KEYS}


def pod_templates(manifest: Manifest) -> list[Manifest]:
    spec = manifest.get("spec") or {}
    if manifest["kind"] in ("Job", "Deployment", "DaemonSet", "StatefulSet", "ReplicaSet"):
        return [spec["template"]]
    if manifest["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]]
    if manifest["kind"] == "Pod":
        return [manifest]
    return []


def _volume_refs(volume: Manifest) -> Iterator[Ref]:
    if "configMap" in volume:
        yield "ConfigMap", volume["configMap"]["name"], bool(volume["configMap"].get("optional"))
    if "secret" in volume:
        yield "Secret", volume["secret"]["secretName"], bool(volume["secret"].get("optional"))
    for source in (volume.get("projected") or {}).get("sources") or []:
        for key, kind in (("configMap", "ConfigMap"), ("secret", "Secret")):
            if key in source:
                yield kind, source[key]["name"], bool(source[key].get("optional"))


def _container_refs(container: Manifest) -> Iterator[Ref]:
    for env in container.get("env") or []:
        source = env.get("valueFrom") or {}
        for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
            if key in source:
                yield kind, source[key]["name"], bool(source[key].get("optional"))
    for env_from in container.get("envFrom") or []:
        for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
            if key in env_from:
                yield kind, env_from[key]["name"], bool(env_from[key].get("optional"))


def references(template: Manifest) -> list[Ref]:
    spec = template["spec"]
    refs: list[Ref] = [("ServiceAccount", spec.get("serviceAccountName") or "default", False)]
    refs += [("Secret", s["name"], False) for s in spec.get("imagePullSecrets") or []]
    for volume in spec.get("volumes") or []:
        refs += list(_volume_refs(volume))
    for container in [*(spec.get("initContainers") or []), *spec["containers"]]:
        refs += list(_container_refs(container))
    return refs


def unmounted_volumes(template: Manifest) -> list[str]:
    """volumeMounts naming no volume of the pod (the API server refuses such a pod)."""
    spec = template["spec"]
    volumes = {v["name"] for v in spec.get("volumes") or []}
    return [
        f"{c['name']}: {m['name']}"
        for c in [*(spec.get("initContainers") or []), *spec["containers"]]
        for m in c.get("volumeMounts") or []
        if m["name"] not in volumes
    ]


def dangling_references(
    res: Resource, children: list[Manifest], settings: OperatorSettings
) -> list[str]:
    built = {(c["kind"], c["metadata"]["name"]) for c in [*children, *accounts_for(res, settings)]}
    elsewhere = provided_elsewhere(res, settings)
    problems = []
    for manifest in children:
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        for template in pod_templates(manifest):
            problems += [f"{where}: no volume {v}" for v in unmounted_volumes(template)]
            for kind, name, optional in references(template):
                if (kind, name) in built:
                    continue
                reason = elsewhere.get((kind, name))
                if reason is None:
                    problems.append(f"{where} names {kind} {name}, which nothing creates")
                elif reason in MUST_BE_OPTIONAL and not optional:
                    problems.append(f"{where} needs {kind} {name} ({reason}) but it may be absent")
    return problems


def _dataset(variant: str) -> Dataset:
    ds: Dataset = _example("Dataset")
    if variant == "scheduled":
        ds.spec.schedule = "@hourly"
    if variant == "spark-on-kubernetes":
        ds.spec.engine.executors = 3
    return ds


def _training(variant: str) -> TrainingJob:
    tj: TrainingJob = _example("TrainingJob")
    if variant != "tuning":
        tj.spec.tuning = None
    if variant == "gpus":
        tj.spec.resources.gpus_per_worker = 4
    return tj


def _backtested(mv: ModelVersion) -> ModelVersion:
    """The version with a backtest schedule on the sensor-features Dataset."""
    out = mv.model_copy(deep=True)
    assert out.spec.evaluation is not None
    out.spec.evaluation.dataset_ref = DatasetRef(name="sensor-features")
    out.spec.evaluation.schedule = "0 6 * * *"
    return out


def _all_children() -> Iterator[tuple[str, Resource, list[Manifest]]]:
    for variant in ("once", "scheduled", "spark-on-kubernetes"):
        ds = _dataset(variant)
        yield f"Dataset/{variant}", ds, build_dataset_children(ds, SETTINGS)
    for variant in ("distributed", "tuning", "gpus"):
        tj = _training(variant)
        dataset = ResolvedDataset("sensor-features", 3, digest="sha256:" + "0" * 64)
        yield f"TrainingJob/{variant}", tj, build_training_children(tj, dataset, SETTINGS)
    mv: ModelVersion = _example("ModelVersion")
    stable = mv.model_copy(deep=True)
    stable.metadata.name = "anomaly-detector-v0"
    pin = "sha256:" + "a" * 64  # the pinned digests travel as flags the CLIs must accept
    yield "ModelVersion/evaluation", mv, build_evaluation_children(mv, "s3://l/m", SETTINGS, pin)
    yield (
        "ModelVersion/backtest",
        mv,
        build_backtest_children(_backtested(mv), "s3://l/m", SETTINGS),
    )
    assert mv.spec.serving is not None
    everything = ClusterFeatures(gateway_api=True, prometheus_operator=True)
    serving = build_serving_children(
        mv, mv.spec.serving, "s3://l/m", SETTINGS, everything, stable=stable, artifact_digest=pin
    )
    yield "ModelVersion/serving", mv, serving
    ed: EdgeDeployment = _example("EdgeDeployment")
    bundle = build_bundle_children(ed, "anomaly-detector", SETTINGS, "s3://l/m", pin)
    yield "EdgeDeployment/bundle", ed, bundle
    # Judged on the ModelVersion's evaluation Dataset (a federated artifact has no test split).
    holdout = DatasetRef(name="tumour-holdout", namespace="clinic", version=3)
    bundle = build_bundle_children(ed, "anomaly-detector", SETTINGS, "s3://l/m", pin, holdout)
    yield "EdgeDeployment/bundle-heldout", ed, bundle
    agents = build_edge_agent_children(
        ed,
        "s3://l/b",
        ["edge-0", "edge-1", "edge-2"],
        SETTINGS,
        canary_ready=True,
        bundle_digest=pin,
    )
    yield "EdgeDeployment/agents", ed, agents


CASES = list(_all_children())


@pytest.mark.parametrize(("case", "res", "children"), CASES, ids=[c[0] for c in CASES])
def test_every_reference_of_a_built_pod_exists(
    case: str, res: Resource, children: list[Manifest]
) -> None:
    templates = [t for c in children for t in pod_templates(c)]
    assert templates, f"{case}: no pod template built (the check would pass vacuously)"
    assert dangling_references(res, children, SETTINGS) == []


def test_all_four_kinds_are_covered() -> None:
    assert {case.split("/")[0] for case, _, _ in CASES} == {
        "Dataset",
        "TrainingJob",
        "ModelVersion",
        "EdgeDeployment",
    }


def test_the_check_finds_a_config_map_nothing_creates() -> None:
    """The edge agents once mounted a ConfigMap named after their DaemonSet that no builder
    made: the check must flag exactly that kind of mistake."""
    ed: EdgeDeployment = _example("EdgeDeployment")
    children = build_edge_agent_children(
        ed, "s3://l/b", ["edge-0"], SETTINGS, canary_ready=True, bundle_digest=PIN
    )
    without_config = [c for c in children if c["kind"] != "ConfigMap"]
    problems = dangling_references(ed, without_config, SETTINGS)
    assert problems and all("ConfigMap anomaly-detector-plants-agent" in p for p in problems)


def test_the_check_finds_a_required_platform_secret_and_a_foreign_account() -> None:
    ds = _dataset("once")
    children = build_dataset_children(ds, SETTINGS)
    [job] = [c for c in children if c["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    pod["containers"][0]["envFrom"][0]["secretRef"]["optional"] = False
    pod["serviceAccountName"] = "someone-elses"
    problems = dangling_references(ds, children, SETTINGS)
    assert any("lake-creds" in p and "may be absent" in p for p in problems), problems
    assert any("ServiceAccount someone-elses" in p for p in problems), problems
