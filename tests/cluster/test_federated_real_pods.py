"""The federated-hospitals example on real pods: the operator runs the four Datasets' Spark Jobs,
the Flower SuperLink, one SuperNode per hospital and the server Job on the real kubelet node
from the offline-built workload image, TLS between them with the operator's certificates,
against a real MinIO lake on the node's bridge; then the evaluation, the bundle and an edge
agent. Nothing is fabricated: every status checked here was written by a workload that ran.

Differences from the example as committed, and why:
- The dev cluster has one real node, so it stands in for all three hospitals: it joins site
  hospital-a (the default node selection), and hospital-b and hospital-c name it by hostname.
- Smaller CPU requests: the node has 2 cores and requests are reserved, not used.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from neuraxis.workloads.artifact import MANIFEST
from neuraxis.workloads.federated.privacy import epsilon_after
from tests.cluster.conftest import Cluster, NodeLake
from tests.cluster.operator_fixtures import (
    example,
    get,
    node_in_site,
    phase,
    running_operator,
    wait_for,
)
from tests.conftest import EXAMPLES

FOLDER = "federated-hospitals"
SITES = ("hospital-a", "hospital-b", "hospital-c")
SALT = "federated-test-salt"


@pytest.fixture(scope="module")
def hospital_node(cluster: Cluster, real_node: str) -> Iterator[str]:
    """The real node, added to site hospital-a for the duration of the module."""
    with node_in_site(cluster, real_node, "hospital-a") as node:
        yield node


def _resources(node: str) -> list[dict[str, Any]]:
    docs = [example(f.name, FOLDER) for f in sorted((EXAMPLES / FOLDER).glob("0*.yaml"))]
    train = next(d for d in docs if d["kind"] == "TrainingJob")
    train["spec"]["resources"] = {"cpu": "200m", "memory": "1536Mi"}
    for site in train["spec"]["federation"]["sites"][1:]:
        site["nodeSelector"] = {"kubernetes.io/hostname": node}
    return docs


def _finished(cluster: Cluster, ns: str, plural: str, name: str, done: tuple[str, ...]) -> bool:
    return phase(cluster, plural, name, ns) in (*done, "Failed", "Rejected")


def test_federated_hospitals_example_runs_on_real_pods(
    cluster: Cluster,
    namespace: str,
    hospital_node: str,
    workload_image: str,
    node_lake: NodeLake,
    tmp_path: Path,
) -> None:
    ns = namespace
    server = node_lake.server
    cluster.apply(server.secret_manifest(ns), ns)
    salt = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "lake-salt"},
            "stringData": {"salt": SALT}}  # fmt: skip
    cluster.apply(salt, ns)
    env = {"NEURAXIS_IMAGE": workload_image, "NEURAXIS_LAKE_URI": server.lake_uri}
    with running_operator(cluster, ns, tmp_path, env=env) as op:
        for doc in _resources(hospital_node):
            cluster.apply(doc, ns)
        steps = [
            *[("datasets", f"{s}-records", ("Ready",)) for s in SITES],
            ("datasets", "tumour-holdout", ("Ready",)),
            ("trainingjobs", "tumour-federated", ("Succeeded",)),
            ("modelversions", "tumour-classifier-v1", ("Approved", "Serving")),
            ("edgedeployments", "tumour-classifier-hospitals", ("Available",)),
        ]
        for plural, name, done in steps:
            wait_for(
                lambda p=plural, n=name, d=done: _finished(cluster, ns, p, n, d),  # type: ignore[misc]
                f"{plural}/{name} finished",
                timeout=900,
                op=op,
            )
            body = get(cluster, plural, name, ns)
            assert body is not None
            assert body["status"]["phase"] in done, json.dumps(body["status"], indent=1)

        lake = node_lake.client()
        datasets = {s: get(cluster, "datasets", f"{s}-records", ns) for s in SITES}
        for site, ds in datasets.items():
            assert ds is not None
            table = DeltaTable(ds["status"]["table"]["uri"], storage_options=lake.storage_options())
            ids = table.to_pyarrow_table().column("patient_id").to_pylist()
            assert len(ids) == ds["status"]["rows"] > 0, site
            assert not any(str(v).startswith("MRN-") for v in ids)  # masked in the lake
        tj = get(cluster, "trainingjobs", "tumour-federated", ns)
        assert tj is not None
        status = tj["status"]
        fed = status["federation"]
        assert fed["roundsCompleted"] == 2, json.dumps(status, indent=1)
        assert fed["privacy"]["epsilonSpent"] == pytest.approx(epsilon_after(2, 0.5, 1.0, 1e-5))
        for r in fed["rounds"]:
            assert r["sitesActive"] == list(SITES) and r["sitesDropped"] == []
        by_site = {s["site"]: s for s in status["lineage"]["sites"]}
        for site, ds in datasets.items():
            assert ds is not None
            assert by_site[site]["datasetDigest"] == ds["status"]["table"]["digest"]
            assert by_site[site]["rounds"] == [1, 2]
        folder = status["artifact"]["uri"].removeprefix(server.lake_uri + "/")
        assert lake.exists(f"{folder}/{MANIFEST}"), status["artifact"]
        # Every SuperNode ran on the real node, under its own site's label.
        events = cluster.kubectl_json("get", "events", "--namespace", ns)["items"]
        scheduled = [
            e["message"] for e in events
            if e.get("reason") == "Scheduled" and "-site" in e["involvedObject"]["name"]
        ]  # fmt: skip
        assert len(scheduled) >= len(SITES) and all(hospital_node in m for m in scheduled), (
            scheduled
        )
        mv = get(cluster, "modelversions", "tumour-classifier-v1", ns)
        assert mv is not None and mv["status"]["evaluation"]["passed"] is True
        ed = get(cluster, "edgedeployments", "tumour-classifier-hospitals", ns)
        assert ed is not None
        assert ed["status"]["readyNodes"] >= 1, ed["status"]  # the agent on hospital-a's node
