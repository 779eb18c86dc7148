"""References stay in their namespace unless the referenced object grants it: the rule
(neuraxis/references.py) and its check (operator/inputs.py check_references), which the operator
and `neuraxis run` both call, against a real store of objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from neuraxis.crds import Resource
from neuraxis.local.state import LocalStore
from neuraxis.operator.errors import InputNotReadyError
from neuraxis.operator.inputs import CR_VERSION, check_references
from neuraxis.references import (
    GRANT_ANNOTATION,
    REFERENCE_NOT_PERMITTED,
    LakeOwner,
    granted_namespaces,
    lake_owner,
)
from neuraxis.resources import parse_resource

LAKE = "s3://neuraxis-lake/lake"
DIGEST = "sha256:" + "0" * 64


def _obj(kind: str, name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": CR_VERSION,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def _resource(kind: str, name: str, namespace: str, spec: dict[str, Any]) -> Resource:
    return parse_resource(_obj(kind, name, namespace, spec))


def _save(store: LocalStore, body: dict[str, Any], grant: str | None = None) -> None:
    if grant is not None:
        body["metadata"]["annotations"] = {GRANT_ANNOTATION: grant}
    store.save(body)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "state")


def _orders(store: LocalStore, grant: str | None) -> None:
    spec = {"source": {"builtin": {"name": "sensors"}}}
    _save(store, _obj("Dataset", "orders", "team-b", spec), grant)


def _training(namespace: str | None) -> Resource:
    ref: dict[str, Any] = {"name": "orders"}
    if namespace:
        ref["namespace"] = namespace
    spec = {
        "datasetRef": ref,
        "task": {"type": "classification", "label": "failure"},
        "model": {"architecture": "mlp"},
    }
    return _resource("TrainingJob", "train", "team-a", spec)


def _refusal(res: Resource, store: LocalStore) -> str:
    with pytest.raises(InputNotReadyError) as info:
        check_references(res, LAKE, store)
    assert info.value.reason == REFERENCE_NOT_PERMITTED
    return info.value.message


@pytest.mark.parametrize(
    ("uri", "owner"),
    [
        (f"{LAKE}/tables/team-b/orders", LakeOwner("tables", "team-b", "Dataset", "orders")),
        (
            "s3a://neuraxis-lake/lake/tables/team-b/orders/",
            LakeOwner("tables", "team-b", "Dataset", "orders"),
        ),
        (f"{LAKE}/edge-logs/b/det", LakeOwner("edge-logs", "b", "EdgeDeployment", "det")),
        (f"{LAKE}/models/b/m/v1/run", LakeOwner("models", "b", "ModelVersion", None)),
        (f"{LAKE}/runs/b/run-1/model", LakeOwner("runs", "b", None, None)),
        (f"{LAKE}/quarantine/b/t", LakeOwner("quarantine", "b", None, None)),
        (f"{LAKE}/lineage/events.jsonl", None),
        ("s3://neuraxis-lake/raw/b/x.csv", None),
        ("s3://neuraxis-lake/lake-other/tables/b/t", None),
    ],
)
def test_lake_owner_follows_the_layout(uri: str, owner: LakeOwner | None) -> None:
    assert lake_owner(uri, LAKE) == owner


def test_local_lake_paths() -> None:
    owner = lake_owner("/home/u/.neuraxis/lake/tables/b/t", "file:///home/u/.neuraxis/lake")
    assert owner == LakeOwner("tables", "b", "Dataset", "t")


def test_grant_annotation_lists_namespaces() -> None:
    assert granted_namespaces({GRANT_ANNOTATION: " team-a, team-c ,,"}) == {"team-a", "team-c"}
    assert granted_namespaces({GRANT_ANNOTATION: "*"}) == {"*"}  # no wildcard meaning
    assert granted_namespaces(None) == frozenset()


def test_same_namespace_needs_no_grant(store: LocalStore) -> None:
    check_references(_training(None), LAKE, store)
    check_references(_training("team-a"), LAKE, store)


def test_cross_namespace_dataset_ref_refused_without_grant(store: LocalStore) -> None:
    _orders(store, grant=None)
    message = _refusal(_training("team-b"), store)
    assert message.startswith("spec.datasetRef: Dataset orders is in namespace team-b, not team-a")
    assert GRANT_ANNOTATION in message


def test_grant_for_another_namespace_does_not_help(store: LocalStore) -> None:
    _orders(store, grant="team-c")
    _refusal(_training("team-b"), store)


def test_missing_dataset_elsewhere_is_refused_the_same_way(store: LocalStore) -> None:
    assert "Dataset orders is in namespace team-b" in _refusal(_training("team-b"), store)


def test_granted_dataset_ref_passes(store: LocalStore) -> None:
    _orders(store, grant="team-c,team-a")
    check_references(_training("team-b"), LAKE, store)


def test_derived_dataset_and_evaluation_refs_are_checked(store: LocalStore) -> None:
    derived = {"source": {"from": {"datasetRef": {"name": "orders", "namespace": "team-b"}}}}
    ds = _resource("Dataset", "mine", "team-a", derived)
    assert _refusal(ds, store).startswith("spec.source.from.datasetRef: ")
    evaluation = {
        "model": "m",
        "source": {"trainingJobRef": {"name": "train"}},
        "evaluation": {
            "datasetRef": {"name": "orders", "namespace": "team-b"},
            "gates": [{"metric": "accuracy", "min": 0.5}],
        },
    }
    mv = _resource("ModelVersion", "m-1", "team-a", evaluation)
    assert _refusal(mv, store).startswith("spec.evaluation.datasetRef: ")


def _uri_dataset(uri: str) -> Resource:
    spec = {"source": {"uri": uri, "format": "delta"}}
    return _resource("Dataset", "copy", "team-a", spec)


def test_source_uri_into_another_namespace_table(store: LocalStore) -> None:
    uri = f"{LAKE}/tables/team-b/orders"
    message = _refusal(_uri_dataset(uri), store)
    assert message.startswith(f"spec.source.uri: {uri} (lake area tables) is in namespace team-b")
    _orders(store, grant="team-a")
    check_references(_uri_dataset(uri), LAKE, store)
    # Its own tables and raw data outside the namespaced areas are not references.
    check_references(_uri_dataset(f"{LAKE}/tables/team-a/orders"), LAKE, store)
    check_references(_uri_dataset("s3://raw-bucket/orders/"), LAKE, store)


def test_run_folders_are_never_granted(store: LocalStore) -> None:
    _orders(store, grant="team-a")
    message = _refusal(_uri_dataset(f"{LAKE}/runs/team-b/run-1/result"), store)
    assert "(lake area runs) is in namespace team-b" in message


def test_model_uri_granted_by_the_model_version_that_owns_it(store: LocalStore) -> None:
    artifact = f"{LAKE}/models/team-b/detector/v1/run-1"
    mv = _resource(
        "ModelVersion",
        "copy",
        "team-a",
        {"model": "d", "source": {"uri": artifact, "digest": DIGEST}},
    )
    assert _refusal(mv, store).startswith(f"spec.source.uri: {artifact}")
    owner = _obj("ModelVersion", "detector-v1", "team-b", {"model": "detector"})
    owner["status"] = {"artifact": {"uri": artifact, "digest": DIGEST}}
    _save(store, owner, grant="team-a")
    check_references(mv, LAKE, store)
    other = _resource(
        "ModelVersion",
        "copy2",
        "team-a",
        {"model": "d", "source": {"uri": artifact + "-other", "digest": DIGEST}},
    )
    _refusal(other, store)


def _federated(second_site_namespace: str) -> Resource:
    site_b: dict[str, Any] = {"name": "orders", "namespace": second_site_namespace}
    spec = {
        "task": {"type": "classification", "label": "failure"},
        "model": {"architecture": "mlp"},
        "federation": {
            "sites": [
                {"name": "plant-a", "datasetRef": {"name": "local-orders"}},
                {"name": "plant-b", "datasetRef": site_b},
            ],
            "rounds": 1,
            "minSites": 2,
            "privacy": {"mode": "none"},
            "secureAggregation": {"enabled": False},
        },
    }
    return _resource("TrainingJob", "fed", "team-a", spec)


def test_a_federated_sites_dataset_refs_are_checked(store: LocalStore) -> None:
    _orders(store, grant=None)
    message = _refusal(_federated("team-b"), store)
    assert message.startswith("spec.federation.sites[1].datasetRef: Dataset orders is in")
    _orders(store, grant="team-a")
    check_references(_federated("team-b"), LAKE, store)
