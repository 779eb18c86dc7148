"""References across namespaces on the real control plane: a TrainingJob's datasetRef and a
Dataset's source.uri into another namespace wait with ReferenceNotPermitted until the referenced
Dataset's grant annotation lists the reader's namespace; then they run."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from neuraxis.operator.settings import OperatorSettings
from neuraxis.references import GRANT_ANNOTATION
from tests.cluster.conftest import Cluster
from tests.cluster.operator_fixtures import (
    OperatorProcess,
    condition,
    example,
    get,
    names,
    running_operator,
    wait_for,
    with_result,
)

pytestmark = pytest.mark.cluster
DIGEST = "sha256:" + "cd" * 32
TRAIN_OK = {
    "outcome": "Succeeded",
    "reason": "Succeeded",
    "metrics": {"accuracy": 0.9},
    "artifact": {"uri": "s3://neuraxis-lake/lake/models/a/m/v1/run", "digest": DIGEST},
}
ETL_OK = {
    "outcome": "Succeeded",
    "reason": "Succeeded",
    "version": 0,
    "rows": 10,
    "qualityPassed": True,
    "digest": DIGEST,
}


@pytest.fixture
def owner_namespace(cluster: Cluster) -> Iterator[str]:
    """The namespace that owns the shared Dataset (the operator under test does not watch it:
    the reader's reconcile reads it from the API)."""
    name = f"nx-owner-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


@pytest.fixture
def operator(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    with running_operator(cluster, namespace, tmp_path, fake_nodes=True) as op:
        yield op


def _shared_dataset(cluster: Cluster, owner: str) -> None:
    """A Ready Dataset in the owner's namespace, its status written as its operator would."""
    ds = example("02-sensor-features.yaml")
    ds["metadata"] = {"name": "shared"}
    ds["spec"] = {"source": {"builtin": {"name": "sensors"}}}
    cluster.apply(ds, owner)
    table = f"{OperatorSettings().lake_uri}/tables/{owner}/shared"
    status = {
        "phase": "Ready",
        "version": 0,
        "qualityPassed": True,
        "table": {"uri": table, "digest": DIGEST},
    }
    cluster.kubectl(
        "patch", "dataset", "shared", f"--namespace={owner}", "--subresource=status",
        "--type=merge", f"--patch={json.dumps({'status': status})}",
    )  # fmt: skip


def _grant(cluster: Cluster, owner: str, reader: str) -> None:
    cluster.kubectl(
        "annotate", "dataset", "shared", f"--namespace={owner}", f"{GRANT_ANNOTATION}={reader}"
    )


def _inputs(cluster: Cluster, kind: str, name: str, ns: str) -> dict[str, Any]:
    return condition(get(cluster, kind, name, ns), "InputsReady") or {}


def test_cross_namespace_dataset_ref_needs_a_grant(
    cluster: Cluster, namespace: str, owner_namespace: str, operator: OperatorProcess
) -> None:
    ns, owner = namespace, owner_namespace
    _shared_dataset(cluster, owner)
    tj = with_result(example("03-anomaly-detector-train.yaml"), TRAIN_OK)
    tj["spec"]["datasetRef"] = {"name": "shared", "namespace": owner}
    tj["spec"].pop("register", None)
    cluster.apply(tj, ns)
    name = tj["metadata"]["name"]
    refused = wait_for(
        lambda: (
            _inputs(cluster, "trainingjobs", name, ns).get("reason") == "ReferenceNotPermitted"
            and _inputs(cluster, "trainingjobs", name, ns)
        ),
        "ReferenceNotPermitted",
        op=operator,
    )
    assert refused["status"] == "False"
    assert refused["message"].startswith(
        f"spec.datasetRef: Dataset shared is in namespace {owner}, not {ns}"
    )
    ready = condition(get(cluster, "trainingjobs", name, ns), "Ready") or {}
    assert (ready.get("status"), ready.get("reason")) == ("False", "ReferenceNotPermitted")
    assert names(cluster, "jobs", ns, f"neuraxis.dev/trainingjob={name}") == []

    _grant(cluster, owner, ns)
    wait_for(
        lambda: names(cluster, "jobs", ns, f"neuraxis.dev/trainingjob={name}"),
        "the training Job once granted",
        op=operator,
    )


def test_source_uri_into_another_namespace_needs_a_grant(
    cluster: Cluster, namespace: str, owner_namespace: str, operator: OperatorProcess
) -> None:
    ns, owner = namespace, owner_namespace
    _shared_dataset(cluster, owner)
    table = f"{OperatorSettings().lake_uri}/tables/{owner}/shared"
    copy = with_result(example("02-sensor-features.yaml"), ETL_OK)
    copy["metadata"]["name"] = "copy"
    copy["spec"] = {"source": {"uri": table, "format": "delta"}}
    cluster.apply(copy, ns)
    refused = wait_for(
        lambda: (
            _inputs(cluster, "datasets", "copy", ns).get("reason") == "ReferenceNotPermitted"
            and _inputs(cluster, "datasets", "copy", ns)
        ),
        "ReferenceNotPermitted",
        op=operator,
    )
    assert refused["message"].startswith(
        f"spec.source.uri: {table} (lake area tables) is in namespace {owner}, not {ns}"
    )
    assert names(cluster, "jobs", ns, "neuraxis.dev/dataset=copy") == []

    _grant(cluster, owner, ns)
    wait_for(
        lambda: names(cluster, "jobs", ns, "neuraxis.dev/dataset=copy"),
        "the ETL Job once granted",
        op=operator,
    )
