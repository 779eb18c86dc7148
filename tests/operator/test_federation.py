"""A federated TrainingJob's children (the operator's pure decisions), the TLS material it
generates, and the status it reads from the server app's result."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from neuraxis.crds import TrainingJob
from neuraxis.operator.builders.federation import (
    ResolvedSite,
    build_federation_children,
    federation_run_name,
    superlink_service_name,
    tls_secret_name,
)
from neuraxis.operator.builders.training import ResolvedDataset
from neuraxis.operator.children import SPEC_FILE
from neuraxis.operator.errors import InputNotReadyError
from neuraxis.operator.inputs import resolve_sites
from neuraxis.operator.outcomes import federation_outcome, sites_ready_condition
from neuraxis.operator.settings import (
    FEDERATION_LAKE_EGRESS_ENV,
    OperatorSettings,
    SettingsError,
)
from neuraxis.resources import parse_resource
from neuraxis.workloads.federation_contract import (
    CA_CERT_FILE,
    SERVER_KEY_FILE,
    SUPERLINK_PORT,
    TLS_MOUNT,
)
from tests.conftest import REPO

SETTINGS = OperatorSettings()
UID = "3f2a9c1b-7d4e-4f60-9a1b-2c3d4e5f6a7b"
DIGEST = "sha256:" + "ab" * 32


def _job() -> TrainingJob:
    doc = yaml.safe_load((REPO / "tests/good_inputs/30-tj-federated-hospitals.yaml").read_text())
    body = doc["object"]
    body["metadata"].update(namespace="ml", uid=UID, generation=2)
    tj = parse_resource(body)
    assert isinstance(tj, TrainingJob)
    return tj


def _sites(tj: TrainingJob) -> list[ResolvedSite]:
    assert tj.spec.federation is not None
    return [
        ResolvedSite(s.name, ResolvedDataset(s.dataset_ref.name, i + 3, None, DIGEST), s.selector())
        for i, s in enumerate(tj.spec.federation.sites)
    ]


def _children(tj: TrainingJob) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (c["kind"], c["metadata"]["name"]): c
        for c in build_federation_children(tj, _sites(tj), SETTINGS)
    }


def _env(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0]["env"]}


def _role(children: dict[tuple[str, str], dict[str, Any]], role: str) -> list[dict[str, Any]]:
    return [
        c
        for c in children.values()
        if c["kind"] in ("Deployment", "Job")
        and c["spec"]["template"]["metadata"]["labels"]["neuraxis.dev/federation-role"] == role
    ]


def test_each_site_gets_a_supernode_on_its_edge_nodes_with_its_dataset_only() -> None:
    tj = _job()
    nodes = _role(_children(tj), "supernode")
    assert len(nodes) == 3
    by_site = {_env(n["spec"]["template"])["NEURAXIS_FED_SITE"]: n for n in nodes}
    assert sorted(by_site) == ["hospital-a", "hospital-b", "hospital-c"]
    for version, site in enumerate(["hospital-a", "hospital-b", "hospital-c"], start=3):
        pod = by_site[site]["spec"]["template"]
        env = _env(pod)
        assert env["NEURAXIS_DATASET"] == f"{site}-records"
        assert env["NEURAXIS_DATASET_VERSION"] == str(version)
        assert env["NEURAXIS_FED_SUPERLINK"] == (
            f"{superlink_service_name(tj)}.ml.svc:{SUPERLINK_PORT}"
        )
        assert {"key": "neuraxis.dev/edge", "operator": "Equal", "value": "true",
                "effect": "NoSchedule"} in pod["spec"]["tolerations"]  # fmt: skip
        # Only one dataset in the environment: no other site's name appears.
        others = {s for s in by_site if s != site}
        assert not any(o in v for o in others for v in env.values())
    # The default selector is the edge-site label; an explicit one replaces it.
    assert by_site["hospital-b"]["spec"]["template"]["spec"]["nodeSelector"] == {
        "neuraxis.dev/edge-site": "hospital-b"
    }
    assert by_site["hospital-a"]["spec"]["template"]["spec"]["nodeSelector"] == {"zone": "north"}


def test_supernodes_and_server_mount_the_ca_only_and_the_superlink_its_key() -> None:
    tj = _job()
    children = _children(tj)

    def tls_items(obj: dict[str, Any]) -> list[str]:
        pod = obj["spec"]["template"]["spec"]
        [volume] = [v for v in pod["volumes"] if "secret" in v]
        assert volume["secret"]["secretName"] == tls_secret_name(tj)
        mounts = pod["containers"][0]["volumeMounts"]
        assert {"name": volume["name"], "mountPath": TLS_MOUNT, "readOnly": True} in mounts
        return sorted(i["key"] for i in volume["secret"]["items"])

    for obj in _role(children, "supernode") + _role(children, "server"):
        assert tls_items(obj) == [CA_CERT_FILE]
    [link] = _role(children, "superlink")
    assert SERVER_KEY_FILE in tls_items(link)


def test_server_app_is_the_run_job_and_comes_last() -> None:
    tj = _job()
    built = build_federation_children(tj, _sites(tj), SETTINGS)
    assert built[-1]["kind"] == "Job"
    assert built[-1]["metadata"]["name"] == federation_run_name(tj)
    assert federation_run_name(tj).endswith("-fed-3f2a9c1b-g2")
    env = _env(built[-1]["spec"]["template"])
    # Flower serves Control (the server's `flwr run`) on the SuperLink's one port.
    assert "NEURAXIS_FED_SUPERLINK" not in env
    assert env["NEURAXIS_FED_CONTROL"] == f"{superlink_service_name(tj)}.ml.svc:{SUPERLINK_PORT}"
    command = built[-1]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == [
        "python", "-m", "neuraxis.cli", "workload", "federated", "server", "--spec", SPEC_FILE,
        "--namespace", "ml", "--run-id", "$(NEURAXIS_RUN_ID)",
    ]  # fmt: skip
    # The servers take no spec: the run config the server submits carries the job.
    for role in ("superlink", "supernode"):
        pod = _role(_children(tj), role)[0]["spec"]["template"]["spec"]
        assert pod["containers"][0]["command"][-2:] == ["federated", role]
    # The spec the pods read has each site's Dataset version pinned.
    [config] = [c for c in built if c["kind"] == "ConfigMap"]
    sites = yaml.safe_load(config["data"]["resource.yaml"])["spec"]["federation"]["sites"]
    assert [s["datasetRef"]["version"] for s in sites] == [3, 4, 5]


def test_network_policies_let_supernodes_reach_the_superlink_only() -> None:
    tj = _job()
    run = federation_run_name(tj)
    children = _children(tj)
    nodes = children[("NetworkPolicy", f"{run}-supernodes")]["spec"]
    link = children[("NetworkPolicy", f"{run}-superlink")]["spec"]
    role = "neuraxis.dev/federation-role"
    assert nodes["podSelector"]["matchLabels"][role] == "supernode"
    assert nodes["policyTypes"] == ["Ingress", "Egress"] and nodes["ingress"] == []
    to_link, dns, *lake = nodes["egress"]
    assert to_link["to"] == [
        {"podSelector": {"matchLabels": {"neuraxis.dev/run": run, role: "superlink"}}}
    ]
    assert to_link["ports"] == [{"protocol": "TCP", "port": SUPERLINK_PORT}]
    assert {p["port"] for p in dns["ports"]} == {53} and "to" not in dns
    assert lake == list(SETTINGS.federation_lake_egress)
    assert link["podSelector"]["matchLabels"][role] == "superlink"
    sources = {
        r["from"][0]["podSelector"]["matchLabels"][role]: r["ports"] for r in link["ingress"]
    }
    assert sources == {
        "supernode": [{"protocol": "TCP", "port": SUPERLINK_PORT}],
        "server": [{"protocol": "TCP", "port": SUPERLINK_PORT}],
    }


def test_lake_egress_setting_is_checked() -> None:
    rule = '[{"to": [{"ipBlock": {"cidr": "10.0.0.7/32"}}], "ports": [{"port": 9000}]}]'
    settings = OperatorSettings.from_env({FEDERATION_LAKE_EGRESS_ENV: rule})
    assert settings.federation_lake_egress[0]["to"][0]["ipBlock"]["cidr"] == "10.0.0.7/32"
    with pytest.raises(SettingsError, match=rf"{FEDERATION_LAKE_EGRESS_ENV}\[0\]: needs"):
        OperatorSettings.from_env({FEDERATION_LAKE_EGRESS_ENV: "[{}]"})
    with pytest.raises(SettingsError, match=r"unknown field\(s\) from"):
        OperatorSettings.from_env({FEDERATION_LAKE_EGRESS_ENV: '[{"from": []}]'})


class _Store:
    def __init__(self, datasets: dict[str, dict[str, Any]]):
        self.datasets = datasets

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Any:
        return self.datasets.get(name)

    def list(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []

    def create(self, manifest: Any) -> None:
        return None


def _dataset(phase: str) -> dict[str, Any]:
    return {"status": {"phase": phase, "version": 1, "table": {"uri": "s3://x", "digest": DIGEST}}}


def test_a_site_whose_dataset_is_not_ready_names_the_site() -> None:
    tj = _job()
    store = _Store(
        {"hospital-a-records": _dataset("Ready"), "hospital-b-records": _dataset("Running")}
    )
    with pytest.raises(InputNotReadyError) as waiting:
        resolve_sites(tj, store)
    assert waiting.value.reason == "WaitingForDataset"
    assert "site hospital-b: Dataset hospital-b-records is Running" in waiting.value.message
    assert "site hospital-c: Dataset hospital-c-records does not exist" in waiting.value.message
    assert "hospital-a" not in waiting.value.message
    store.datasets.update(
        {"hospital-b-records": _dataset("Ready"), "hospital-c-records": _dataset("Ready")}
    )
    sites = resolve_sites(tj, store)
    assert [(s.name, s.dataset.version, s.dataset.digest) for s in sites] == [
        ("hospital-a", 1, DIGEST), ("hospital-b", 1, DIGEST), ("hospital-c", 1, DIGEST),
    ]  # fmt: skip


RESULT: dict[str, Any] = {
    "outcome": "Succeeded",
    "reason": "BudgetExhausted",
    "federation": {
        "roundsCompleted": 2,
        "rounds": [
            {"round": 1, "sitesActive": ["a", "b"], "sitesDropped": [], "metrics": {"loss": 0.5}},
            {"round": 2, "sitesActive": ["a"], "sitesDropped": ["b"], "metrics": {"loss": 0.4}},
        ],
        "privacy": {"epsilonSpent": 7.6, "delta": 1e-5, "clippingNorm": 1.0, "noiseMultiplier": 1},
    },
}


def test_status_from_the_server_result_has_rounds_sites_and_epsilon() -> None:
    sites = [{"site": "a", "dataset": "da"}, {"site": "b", "dataset": "db"}]
    fields, conditions = federation_outcome(RESULT, sites)
    assert fields["federation"]["roundsCompleted"] == 2
    assert fields["federation"]["rounds"][1]["sitesDropped"] == ["b"]
    assert fields["federation"]["privacy"]["epsilonSpent"] == 7.6
    assert fields["lineage"]["sites"] == [
        {"site": "a", "dataset": "da", "rounds": [1, 2]},
        {"site": "b", "dataset": "db", "rounds": [1]},
    ]
    [(type_, status, reason, message)] = conditions
    assert (type_, status, reason) == ("Federated", True, "BudgetExhausted")
    assert "epsilon spent 7.6" in message
    failed = {"outcome": "Failed", "reason": "NotEnoughSites", "message": "1 of 2 sites"}
    _, [condition] = federation_outcome({**failed, "federation": {"roundsCompleted": 0}}, sites)
    assert condition == ("Federated", False, "NotEnoughSites", "1 of 2 sites")
    bad = {**RESULT, "federation": {"roundsCompleted": -1}}
    fields, [condition] = federation_outcome(bad, sites)
    assert "federation" not in fields and condition[2] == "ResultInvalid"


def test_server_certificate_verifies_against_the_ca_for_the_service_name() -> None:
    # cryptography comes with flwr in the lock (an ImportError here: the venv predates it).
    from cryptography import x509
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    from neuraxis.operator.tls import generate_server_tls, service_dns_names

    names = service_dns_names("tj-superlink-3f2a9c1b", "ml")
    tls = generate_server_tls("test CA", names)
    ca = x509.load_pem_x509_certificate(tls.ca_cert)
    cert = x509.load_pem_x509_certificate(tls.server_cert)
    now = dt.datetime.now(dt.UTC)
    verifier = PolicyBuilder().store(Store([ca])).time(now)
    for name in ("tj-superlink-3f2a9c1b.ml.svc", "tj-superlink-3f2a9c1b.ml.svc.cluster.local"):
        chain = verifier.build_server_verifier(x509.DNSName(name)).verify(cert, [])
        assert chain[-1] == ca
    with pytest.raises(VerificationError):
        verifier.build_server_verifier(x509.DNSName("other.ml.svc")).verify(cert, [])
    # Another run's CA does not vouch for this certificate.
    other = x509.load_pem_x509_certificate(generate_server_tls("other CA", names).ca_cert)
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store([other])).time(now).build_server_verifier(
            x509.DNSName(names[2])
        ).verify(cert, [])
    # Loopback (`neuraxis run`): an IP address in the certificate.
    local = x509.load_pem_x509_certificate(generate_server_tls("ca", ["127.0.0.1"]).server_cert)
    names_in = local.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names_in.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # The key is the certificate's.
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(tls.server_key, None)
    public = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert key.public_key().public_numbers() == public.public_numbers()


def test_resource_names_of_the_kinds_the_operator_writes() -> None:
    from neuraxis.operator.cluster import plural

    assert plural("NetworkPolicy") == "networkpolicies"
    assert plural("Gateway") == "gateways"
    assert plural("Deployment") == "deployments"
    assert plural("Secret") == "secrets"


def test_a_sites_dataset_becoming_ready_finds_the_federated_job() -> None:
    from neuraxis.operator.runtime import _indexes

    body = {"metadata": {"namespace": "ml"}, "spec": _job().to_wire()["spec"]}
    index = _indexes("TrainingJob")["sitedataset"]
    assert sorted(index(body)) == [
        "ml/hospital-a-records", "ml/hospital-b-records", "ml/hospital-c-records",
    ]  # fmt: skip
    assert list(_indexes("TrainingJob")["dataset"](body)) == []


def test_a_site_whose_supernode_is_not_ready_is_named() -> None:
    down = sites_ready_condition({"plant-a": True, "plant-b": True, "plant-c": False})
    assert down[:3] == ("SitesReady", False, "SiteNotReady")
    assert "at plant-c (2/3 sites ready" in down[3]
    assert sites_ready_condition({"plant-a": True}) == (
        "SitesReady", True, "AllSitesReady", "1/1 sites ready",
    )  # fmt: skip


def test_a_suspended_job_runs_no_servers() -> None:
    tj = _job()
    tj.spec.suspend = True
    built = build_federation_children(tj, _sites(tj), SETTINGS)
    assert {c["spec"]["replicas"] for c in built if c["kind"] == "Deployment"} == {0}
    assert built[-1]["spec"]["suspend"] is True
    tj.spec.suspend = False
    built = build_federation_children(tj, _sites(tj), SETTINGS)
    assert {c["spec"]["replicas"] for c in built if c["kind"] == "Deployment"} == {1}


def test_the_compact_federation_block_keeps_the_latest_rounds_that_fit() -> None:
    from neuraxis.workloads.federation_contract import COMPACT_FEDERATION_BYTES, compact_federation

    rounds = [
        {"round": r, "sitesActive": ["hospital-a", "hospital-b"], "sitesDropped": ["hospital-c"],
         "metrics": {"accuracy": 0.9, "loss": 0.25}}
        for r in range(1, 101)
    ]  # fmt: skip
    full = {"roundsCompleted": 100, "rounds": rounds, "privacy": RESULT["federation"]["privacy"]}
    compact = compact_federation(full)
    assert len(json.dumps(compact, separators=(",", ":")).encode()) <= COMPACT_FEDERATION_BYTES
    kept = [r["round"] for r in compact["rounds"]]
    assert kept and kept[-1] == 100 and kept == list(range(kept[0], 101)) and kept[0] > 1
    assert compact["roundsCompleted"] == 100 and compact["privacy"] == full["privacy"]
    # What the operator reads of it is a valid status block.
    fields, conditions = federation_outcome({**RESULT, "federation": compact}, [])
    assert fields["federation"]["rounds"][-1]["round"] == 100
    assert conditions[0][2] == "BudgetExhausted"
    small = {**full, "rounds": rounds[:2]}
    assert compact_federation(small) == small


def test_the_spec_the_pods_read_loads_back_as_the_pinned_job(tmp_path: Path) -> None:
    # The ConfigMap is JSON; json.dumps writes privacy.delta (1e-5) as 1e-05, which YAML 1.1
    # would read as a string and the server would refuse as an invalid spec.
    from neuraxis.resources import load_resources

    tj = _job()
    [config] = [
        c for c in build_federation_children(tj, _sites(tj), SETTINGS) if c["kind"] == "ConfigMap"
    ]
    text = config["data"]["resource.yaml"]
    assert "1e-05" in text
    (tmp_path / "resource.yaml").write_text(text)
    [loaded] = load_resources([tmp_path / "resource.yaml"])
    assert isinstance(loaded, TrainingJob) and loaded.spec.federation is not None
    assert loaded.spec.federation.privacy.delta == 1e-5
    assert [s.dataset_ref.version for s in loaded.spec.federation.sites] == [3, 4, 5]
