"""A federated TrainingJob on the real control plane: the operator makes the SuperLink, one
SuperNode per site on that site's KWOK edge nodes, the TLS Secret, the NetworkPolicies and the
server app Job; it waits for every site's Dataset, shows a site whose SuperNode is not Ready,
reads the server app's result (KWOK's termination message) into status.federation, removes a
superseded or finished run's servers, and the garbage collector takes the rest on deletion.
(SitesReady, a site whose SuperNode is not Ready, is decided by a pure function tested in
tests/operator/test_federation.py: on KWOK the server app finishes within a second.)"""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from neuraxis.workloads.federation_contract import CA_CERT_FILE, SERVER_KEY_FILE, SUPERLINK_PORT
from tests.cluster.conftest import Cluster
from tests.cluster.operator_fixtures import (
    OperatorProcess,
    condition,
    example,
    get,
    names,
    phase,
    running_operator,
    wait_for,
    with_result,
)
from tests.conftest import REPO

DIGEST = "sha256:" + "ef" * 32
ETL_OK = {
    "outcome": "Succeeded",
    "reason": "Succeeded",
    "version": 0,
    "rows": 100,
    "quarantinedRows": 0,
    "qualityPassed": True,
    "digest": DIGEST,
}
# What the server app reports: two rounds, plant-c never joined, stopped by the epsilon budget.
FED_RESULT = {
    "outcome": "Succeeded",
    "reason": "BudgetExhausted",
    "metrics": {"accuracy": 0.95},
    "artifact": {"uri": "s3://lake/models/ml/fed/tj-fed", "digest": DIGEST},
    "federation": {
        "roundsCompleted": 2,
        "rounds": [
            {"round": 1, "sitesActive": ["plant-a", "plant-b"], "sitesDropped": ["plant-c"],
             "metrics": {"accuracy": 0.9}},
            {"round": 2, "sitesActive": ["plant-a", "plant-b"], "sitesDropped": ["plant-c"],
             "metrics": {"accuracy": 0.95}},
        ],
        "privacy": {"epsilonSpent": 7.5, "delta": 1e-5, "clippingNorm": 1.0,
                    "noiseMultiplier": 1.0},
    },
}  # fmt: skip
TJ = "tj-fed"
SITES = ["plant-a", "plant-b", "plant-c"]  # plant-c: a site without nodes in the test cluster


@pytest.fixture
def operator(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    with running_operator(cluster, namespace, tmp_path, fake_nodes=True) as op:
        yield op


def _dataset(site: str) -> dict[str, Any]:
    doc = copy.deepcopy(example("01-sensor-readings.yaml"))
    doc["metadata"]["name"] = f"{site}-records"
    return with_result(doc, ETL_OK)


def _training_job() -> dict[str, Any]:
    good = yaml.safe_load((REPO / "tests/good_inputs/30-tj-federated-hospitals.yaml").read_text())
    tj: dict[str, Any] = good["object"]
    tj["metadata"]["name"] = TJ
    tj["spec"].pop("register", None)
    tj["spec"]["suspend"] = True  # the server app waits: the servers can be looked at
    tj["spec"]["federation"]["sites"] = [
        {"name": s, "datasetRef": {"name": f"{s}-records"}} for s in SITES
    ]
    return with_result(tj, FED_RESULT)


def _tj(cluster: Cluster, ns: str) -> dict[str, Any]:
    return get(cluster, "trainingjobs", TJ, ns) or {}


def _deployments(cluster: Cluster, ns: str) -> dict[str, dict[str, Any]]:
    items = cluster.kubectl_json(
        "get", "deployments", "--namespace", ns, "-l", f"neuraxis.dev/trainingjob={TJ}"
    )["items"]
    return {d["metadata"]["name"]: d for d in items if not d["metadata"].get("deletionTimestamp")}


def _role(deployments: dict[str, dict[str, Any]], role: str) -> list[dict[str, Any]]:
    key = "neuraxis.dev/federation-role"
    return [
        d for d in deployments.values() if d["spec"]["template"]["metadata"]["labels"][key] == role
    ]


def _wait_ready(cluster: Cluster, ns: str, dataset: str, op: OperatorProcess) -> None:
    wait_for(lambda: phase(cluster, "datasets", dataset, ns) == "Ready", f"{dataset} Ready", op=op)


def test_federated_run_objects_status_and_cleanup(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    for site in SITES[:2]:
        cluster.apply(_dataset(site), ns)
    for site in SITES[:2]:
        _wait_ready(cluster, ns, f"{site}-records", operator)
    cluster.apply(_training_job(), ns)

    # plant-c's Dataset does not exist: the job waits and says which site.
    def waiting() -> Any:
        inputs = condition(_tj(cluster, ns), "InputsReady") or {}
        return inputs.get("status") == "False" and "site plant-c" in inputs.get("message", "")

    wait_for(waiting, "InputsReady False naming site plant-c", op=operator)
    inputs = condition(_tj(cluster, ns), "InputsReady") or {}
    assert inputs["reason"] == "DatasetNotFound"
    assert "plant-a" not in inputs["message"] and "plant-b" not in inputs["message"]
    assert _deployments(cluster, ns) == {}

    cluster.apply(_dataset("plant-c"), ns)
    wait_for(lambda: len(_role(_deployments(cluster, ns), "supernode")) == 3, "3 SuperNodes",
             op=operator)  # fmt: skip
    uid = _tj(cluster, ns)["metadata"]["uid"]
    run1 = f"{TJ}-fed-{uid[:8]}-g1"
    deployments = _deployments(cluster, ns)
    [link] = _role(deployments, "superlink")
    assert link["metadata"]["name"] == f"{run1}-link"
    for node in _role(deployments, "supernode"):
        pod = node["spec"]["template"]["spec"]
        site = node["spec"]["template"]["metadata"]["labels"]["neuraxis.dev/federation-site"]
        assert pod["nodeSelector"]["neuraxis.dev/edge-site"] == site
        assert {"key": "neuraxis.dev/edge", "operator": "Equal", "value": "true",
                "effect": "NoSchedule"} in pod["tolerations"]  # fmt: skip
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["NEURAXIS_DATASET"] == f"{site}-records"
        [tls] = [v for v in pod["volumes"] if "secret" in v]
        assert [i["key"] for i in tls["secret"]["items"]] == [CA_CERT_FILE]

    # The TLS Secret: the CA, the SuperLink's certificate and key; owned by the job.
    [secret_name] = [v["secret"]["secretName"] for v in link["spec"]["template"]["spec"]["volumes"]
                     if "secret" in v]  # fmt: skip
    secret = cluster.kubectl_json("get", "secret", secret_name, "--namespace", ns)
    assert secret["metadata"]["ownerReferences"][0]["uid"] == uid
    cert = base64.b64decode(secret["data"]["tls.crt"])
    assert cert.startswith(b"-----BEGIN CERTIFICATE-----")
    assert base64.b64decode(secret["data"][SERVER_KEY_FILE]).startswith(b"-----BEGIN PRIVATE KEY")

    # NetworkPolicies: SuperNodes reach the SuperLink's Fleet port, and the SuperLink takes
    # SuperNodes and the server app only.
    policy = cluster.kubectl_json("get", "networkpolicy", f"{run1}-supernodes", "--namespace", ns)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    to_link = policy["spec"]["egress"][0]
    assert to_link["to"][0]["podSelector"]["matchLabels"]["neuraxis.dev/federation-role"] == (
        "superlink"
    )
    assert to_link["ports"] == [{"protocol": "TCP", "port": SUPERLINK_PORT}]
    link_policy = cluster.kubectl_json(
        "get", "networkpolicy", f"{run1}-superlink", "--namespace", ns
    )
    sources = sorted(
        r["from"][0]["podSelector"]["matchLabels"]["neuraxis.dev/federation-role"]
        for r in link_policy["spec"]["ingress"]
    )
    assert sources == ["server", "supernode"]

    # Suspended: the server app waits, and no pod runs (the servers have no replicas).
    assert {d["spec"]["replicas"] for d in deployments.values()} == {0}
    assert _tj(cluster, ns)["status"]["phase"] == "Suspended"

    # A new generation (unsuspended) supersedes run 1: its servers go, run 2's server app
    # reports, and status.federation comes from that result; then run 2's servers go too.
    cluster.kubectl("patch", "trainingjob", TJ, "--namespace", ns, "--type=merge",
                    '--patch={"spec": {"suspend": false}}')  # fmt: skip

    def succeeded() -> Any:
        tj = _tj(cluster, ns)
        return (tj.get("status") or {}).get("phase") == "Succeeded" and tj

    tj = wait_for(succeeded, "TrainingJob Succeeded", timeout=120, op=operator)
    status = tj["status"]
    assert status["federation"]["roundsCompleted"] == 2
    assert status["federation"]["rounds"][0]["sitesDropped"] == ["plant-c"]
    assert status["federation"]["privacy"]["epsilonSpent"] == 7.5
    federated = condition(tj, "Federated") or {}
    assert federated["reason"] == "BudgetExhausted", federated
    lineage = {s["site"]: s for s in status["lineage"]["sites"]}
    assert lineage["plant-a"]["rounds"] == [1, 2] and lineage["plant-c"].get("rounds", []) == []
    assert lineage["plant-b"]["dataset"] == "plant-b-records"
    assert status["runs"][0]["id"] == f"{TJ}-fed-{uid[:8]}-g2"
    wait_for(lambda: _deployments(cluster, ns) == {}, "finished run's servers removed",
             op=operator)  # fmt: skip
    assert names(cluster, "networkpolicies", ns, f"neuraxis.dev/trainingjob={TJ}") == []

    # Deleting the job collects the rest (the Service and the TLS Secret) through owners.
    cluster.kubectl("delete", "trainingjob", TJ, "--namespace", ns)
    selector = f"neuraxis.dev/trainingjob={TJ}"
    wait_for(lambda: names(cluster, "secrets", ns, selector) == [], "Secret collected",
             timeout=60, op=operator)  # fmt: skip
    wait_for(lambda: names(cluster, "services", ns, selector) == [], "Service collected",
             timeout=60, op=operator)  # fmt: skip


def test_a_run_without_enough_sites_fails_with_the_reason(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    for site in SITES:
        cluster.apply(_dataset(site), ns)
    for site in SITES:
        _wait_ready(cluster, ns, f"{site}-records", operator)
    too_few = {
        "outcome": "Failed",
        "reason": "NotEnoughSites",
        "message": "round 1: 2 of 3 sites answered, minSites is 3",
        "federation": {"roundsCompleted": 0},
    }
    tj = _training_job()
    tj["spec"].update(suspend=False, backoffLimit=0)
    tj["spec"]["federation"]["minSites"] = 3
    cluster.apply(with_result(tj, too_few, fail=True), ns)

    def failed() -> Any:
        obj = _tj(cluster, ns)
        return (obj.get("status") or {}).get("phase") == "Failed" and obj

    obj = wait_for(failed, "TrainingJob Failed", timeout=120, op=operator)
    ready = condition(obj, "Ready") or {}
    assert ready.get("reason") == "NotEnoughSites", ready
    federated = condition(obj, "Federated") or {}
    assert (federated.get("status"), federated.get("reason")) == ("False", "NotEnoughSites")
    assert "minSites is 3" in federated.get("message", "")
    assert obj["status"]["federation"]["roundsCompleted"] == 0
    wait_for(lambda: _deployments(cluster, ns) == {}, "failed run's servers removed",
             op=operator)  # fmt: skip
