"""Immutable versions in the operator: the evaluation pins the artifact digest, every later
workload gets that digest on its command line, and a predictor pod that refused a changed
artifact (its termination message says ArtifactChanged) makes the version Failed."""

from __future__ import annotations

import json
from typing import Any

from neuraxis.crds import EdgeDeployment, ModelVersion
from neuraxis.crds.common import DatasetRef
from neuraxis.operator.builders.edge import build_bundle_children, build_edge_agent_children
from neuraxis.operator.builders.modelversion import (
    ClusterFeatures,
    build_evaluation_children,
    build_serving_children,
)
from neuraxis.operator.informer import keep_pod
from neuraxis.operator.inputs import pinned_artifact
from neuraxis.operator.outcomes import evaluation_outcome, serving_refusal
from neuraxis.workloads.result import compact_json
from tests.operator.test_builders import _example
from tests.operator.test_pod_references import SETTINGS

PIN = "sha256:" + "b" * 64
URI = "s3://lake/models/ml/anomaly-detector/anomaly-detector-v1/run-1"


def _command(children: list[dict[str, Any]], kind: str) -> list[str]:
    [workload] = [c for c in children if c["kind"] == kind]
    containers = workload["spec"]["template"]["spec"]["containers"]
    return list(containers[0]["command"])


def _flag(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


def _predictor_pod(message: str | None, *, job: bool = False) -> dict[str, Any]:
    """A pod as the informer keeps it (labels, phase, termination messages)."""
    labels = {"neuraxis.dev/modelversion": "anomaly-detector-v1"}
    if job:
        labels["batch.kubernetes.io/job-name"] = "anomaly-detector-v1-eval-0a1b2c3d-g1"
    terminated = {"terminated": {"exitCode": 2, "message": message}} if message else {}
    return keep_pod(
        {
            "metadata": {"name": "p", "namespace": "ml", "labels": labels},
            "status": {
                "phase": "Running",
                "containerStatuses": [{"name": "workload", "lastState": terminated}],
            },
        }
    )


def test_the_evaluation_result_pins_the_artifact_it_verified() -> None:
    result = {
        "outcome": "Succeeded",
        "passed": True,
        "metrics": {"accuracy": 0.97},
        "gates": [],
        "artifact": {"uri": URI, "digest": PIN},
    }
    verdict, fields = evaluation_outcome(result)
    assert verdict is None
    assert fields["artifact"] == {"uri": URI, "digest": PIN}


def test_a_pinned_artifact_holds_for_its_generation_only() -> None:
    mv: ModelVersion = _example("ModelVersion")
    mv.metadata.generation = 2
    status = {
        "observedGeneration": 2,
        "evaluation": {"passed": True},
        "artifact": {"uri": URI, "digest": PIN},
    }
    assert pinned_artifact(mv, status) == (URI, PIN)
    assert pinned_artifact(mv, {**status, "observedGeneration": 1}) is None  # spec changed
    assert pinned_artifact(mv, {**status, "evaluation": {}}) is None  # not evaluated yet
    assert pinned_artifact(mv, {**status, "artifact": {"uri": URI}}) is None


def test_every_workload_that_loads_the_model_gets_the_pinned_digest() -> None:
    mv: ModelVersion = _example("ModelVersion")
    assert mv.spec.serving is not None
    evaluation = _command(build_evaluation_children(mv, URI, SETTINGS, PIN), "Job")
    assert (_flag(evaluation, "--artifact-uri"), _flag(evaluation, "--artifact-digest")) == (
        URI,
        PIN,
    )
    serving = build_serving_children(
        mv, mv.spec.serving, URI, SETTINGS, ClusterFeatures(), artifact_digest=PIN
    )
    predictor = _command(serving, "Deployment")
    assert (_flag(predictor, "--model"), _flag(predictor, "--digest")) == (URI, PIN)
    ed: EdgeDeployment = _example("EdgeDeployment")
    bundle = _command(build_bundle_children(ed, "anomaly-detector", SETTINGS, URI, PIN), "Job")
    assert (_flag(bundle, "--artifact-uri"), _flag(bundle, "--artifact-digest")) == (URI, PIN)
    assert "--heldout-dataset" not in bundle  # the training job's test split
    holdout = DatasetRef(name="tumour-holdout", version=3)
    judged = _command(build_bundle_children(ed, "m", SETTINGS, URI, PIN, holdout), "Job")
    assert (_flag(judged, "--heldout-dataset"), _flag(judged, "--heldout-version")) == (
        "tumour-holdout",
        "3",
    )
    assert "--heldout-namespace" not in judged  # the EdgeDeployment's own
    bundle_pin = "sha256:" + "c" * 64
    agents = build_edge_agent_children(
        ed, "s3://lake/edge/b", ["edge-0"], SETTINGS, canary_ready=True, bundle_digest=bundle_pin
    )
    for daemon_set in [c for c in agents if c["kind"] == "DaemonSet"]:
        command = daemon_set["spec"]["template"]["spec"]["containers"][0]["command"]
        assert _flag(command, "--digest") == bundle_pin
    # Without a known digest nothing is pinned (an unevaluated version is never served).
    assert "--artifact-digest" not in _command(build_evaluation_children(mv, URI, SETTINGS), "Job")


def test_a_predictor_that_refused_a_changed_artifact_fails_the_version() -> None:
    refused = compact_json(
        {
            "outcome": "Failed",
            "reason": "ArtifactChanged",
            "message": f"refusing to serve: {URI}: digest sha256:9 is not the pinned {PIN}",
        }
    )
    draft = serving_refusal([_predictor_pod(None), _predictor_pod(refused)])
    assert draft is not None
    assert (draft.phase, draft.reason, draft.ready) == ("Failed", "ArtifactChanged", False)
    assert PIN in draft.message and draft.message.startswith("never served")


def test_other_predictor_failures_are_left_to_the_deployment() -> None:
    other = json.dumps({"outcome": "Failed", "reason": "ModelLoadFailed", "message": "x"})
    assert serving_refusal([_predictor_pod(other)]) is None
    assert serving_refusal([_predictor_pod("Traceback (most recent call last): ...")]) is None
    assert serving_refusal([_predictor_pod(None)]) is None
    assert serving_refusal([]) is None


class ApiServerDouble:
    """The few Cluster calls reconcile_model_version makes, over an in-memory object store
    (the reconciler itself runs unchanged)."""

    def __init__(self, objects: list[dict[str, Any]]):
        self.objects = {self._key(o): o for o in objects}

    @staticmethod
    def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
        meta = obj["metadata"]
        return obj["kind"], meta.get("namespace") or "", meta["name"]

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Any:
        return self.objects.get((kind, namespace or "", name))

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        labels: dict[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        return [
            o
            for (k, ns, _), o in sorted(self.objects.items())
            if k == kind
            and (namespace is None or ns == namespace)
            and all(o["metadata"].get("labels", {}).get(a) == b for a, b in (labels or {}).items())
        ]

    def ensure(self, manifest: dict[str, Any]) -> None:
        self.objects.setdefault(self._key(manifest), manifest)

    def has_kind(self, api_version: str, kind: str) -> bool:
        return False


def _served_after_retraining(pod_message: str | None) -> tuple[Any, ApiServerDouble]:
    """An Approved, serving version pinned to run 1 whose TrainingJob has since retrained."""
    from neuraxis.operator.reconcile import reconcile_model_version

    mv: ModelVersion = _example("ModelVersion")
    assert mv.spec.source.training_job_ref is not None
    training_job = {
        "kind": "TrainingJob",
        "metadata": {"name": mv.spec.source.training_job_ref.name, "namespace": "ml"},
        "status": {
            "phase": "Succeeded",
            "artifact": {"uri": URI.replace("run-1", "run-2"), "digest": "sha256:" + "d" * 64},
        },
    }
    pod = {
        **_predictor_pod(pod_message),
        "kind": "Pod",
        "metadata": {**_predictor_pod(pod_message)["metadata"], "name": "p0", "namespace": "ml"},
    }
    pod["metadata"]["labels"] = {"neuraxis.dev/modelversion": mv.metadata.name}
    cluster = ApiServerDouble([training_job, pod])
    status = {
        "observedGeneration": mv.metadata.generation,
        "evaluation": {"passed": True, "metrics": {"accuracy": 0.9}, "gates": []},
        "artifact": {"uri": URI, "digest": PIN},
    }
    return reconcile_model_version(mv, status, cluster, SETTINGS), cluster  # type: ignore[arg-type]


def test_serving_uses_the_pinned_artifact_not_the_retrained_one() -> None:
    draft, cluster = _served_after_retraining(None)
    assert draft.phase == "Approved" and draft.fields["artifact"] == {"uri": URI, "digest": PIN}
    [deployment] = cluster.list("apps/v1", "Deployment", "ml")
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert (_flag(command, "--model"), _flag(command, "--digest")) == (URI, PIN)


def test_a_refusing_predictor_makes_the_approved_version_failed() -> None:
    refused = compact_json(
        {"outcome": "Failed", "reason": "ArtifactChanged", "message": f"{URI}: not {PIN}"}
    )
    draft, _cluster = _served_after_retraining(refused)
    assert (draft.phase, draft.reason, draft.ready) == ("Failed", "ArtifactChanged", False)
    assert draft.fields["artifact"] == {"uri": URI, "digest": PIN}
