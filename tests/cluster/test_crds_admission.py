"""The generated CRDs in a real API server: Established, every example admitted, every
bad-input case rejected at admission with the field and words the Python models use, printer
columns, `kubectl explain`, and the status subresource."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client as k8s

from neuraxis import API_GROUP, API_VERSION
from neuraxis.crds.kinds import KINDS
from neuraxis.resources import FieldError, ResourceError, check_update, parse_resource
from tests.cluster.conftest import Cluster
from tests.conftest import EXAMPLES, BadInput, GoodInput, load_bad_inputs, load_good_inputs

CASES = load_bad_inputs()
GOOD = load_good_inputs()


def test_every_crd_is_established(cluster: Cluster) -> None:
    for info in KINDS.values():
        crd = cluster.kubectl_json("get", "crd", info.crd_name)
        established = [c for c in crd["status"]["conditions"] if c["type"] == "Established"]
        assert established and established[0]["status"] == "True", info.crd_name


def test_every_example_is_admitted(cluster: Cluster, namespace: str) -> None:
    for folder in sorted(p for p in EXAMPLES.iterdir() if p.is_dir()):
        out = cluster.kubectl(
            "apply", "--namespace", namespace, "--validate=strict", "-k", str(folder)
        )
        assert "created" in out or "configured" in out, out
    names = cluster.kubectl("get", "neuraxis", "--namespace", namespace, "--output=name")
    assert "dataset.neuraxis.dev/sensor-readings" in names
    assert "edgedeployment.neuraxis.dev/anomaly-detector-plants" in names


def _custom(cluster: Cluster) -> tuple[Any, k8s.CustomObjectsApi]:
    api_client = cluster.api_client()
    return api_client, k8s.CustomObjectsApi(api_client)


def _rejection(api: k8s.CustomObjectsApi, namespace: str, case: BadInput) -> str:
    plural = KINDS[case.object["kind"]].plural
    body = json.loads(json.dumps(case.object))
    try:
        if case.before is not None:
            api.create_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, plural, case.before
            )
            current: dict[str, Any] = api.get_namespaced_custom_object(  # type: ignore[assignment]
                API_GROUP, API_VERSION, namespace, plural, case.before["metadata"]["name"]
            )
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            api.replace_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, plural, body["metadata"]["name"], body,
                field_validation="Strict",
            )  # fmt: skip
        else:
            api.create_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, plural, body, field_validation="Strict"
            )
    except k8s.exceptions.ApiException as exc:
        assert exc.status in (400, 422), exc
        return str(json.loads(exc.body or "{}").get("message", exc.body))
    pytest.fail(f"{case.name}: the API server admitted it ({case.why})")


@pytest.fixture(scope="module")
def corpus_namespace(cluster: Cluster) -> Any:
    name = "nx-bad-inputs"
    cluster.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=true", timeout=120)
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_rejected_at_admission(
    cluster: Cluster, corpus_namespace: str, case: BadInput
) -> None:
    api_client, api = _custom(cluster)
    with api_client:
        message = _rejection(api, corpus_namespace, case)
    assert case.field in message, f"{case.name}: field {case.field!r} not in: {message}"
    assert case.message in message, f"{case.name}: {case.message!r} not in: {message}"
    # Parity: the Python models word the same error exactly as the API server does.
    python_errors = [
        str(e) for e in _python_errors(case) if e.path == case.field or case.field in e.detail
    ]
    assert any(e in message for e in python_errors), f"{case.name}: {python_errors} vs {message}"


@pytest.mark.parametrize("case", GOOD, ids=[c.name for c in GOOD])
def test_valid_edge_case_is_admitted(
    cluster: Cluster, corpus_namespace: str, case: GoodInput
) -> None:
    # The rules are not stricter than the platform: what the models accept, the API server
    # admits too (tests/test_validation_rules.py checks the models' side).
    plural = KINDS[case.object["kind"]].plural
    api_client, api = _custom(cluster)
    with api_client:
        try:
            api.create_namespaced_custom_object(
                API_GROUP, API_VERSION, corpus_namespace, plural, case.object,
                field_validation="Strict",
            )  # fmt: skip
        except k8s.exceptions.ApiException as exc:
            pytest.fail(f"{case.name}: refused ({case.why}): {exc.body}")


def _python_errors(case: BadInput) -> list[FieldError]:
    try:
        new = parse_resource(case.object)
        if case.before is not None:
            check_update(parse_resource(case.before), new)
    except ResourceError as exc:
        return exc.errors
    return []


def test_printer_columns_and_status_subresource(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl(
        "apply", "--namespace", namespace, "--kustomize", str(EXAMPLES / "smart-manufacturing")
    )
    before = cluster.kubectl_json("get", "dataset", "sensor-readings", "--namespace", namespace)
    status = {
        "status": {
            "phase": "Ready",
            "version": 3,
            "rows": 4990,
            "qualityPassed": True,
            "observedGeneration": 1,
        }
    }
    cluster.kubectl(
        "patch", "dataset", "sensor-readings", "--namespace", namespace, "--subresource=status",
        "--type=merge", f"--patch={json.dumps(status)}",
    )  # fmt: skip
    after = cluster.kubectl_json("get", "dataset", "sensor-readings", "--namespace", namespace)
    assert after["status"]["version"] == 3
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    # The short names and the `neuraxis` category list the same resources.
    table = cluster.kubectl("get", "nxds,nxtj,nxmv,nxed", "--namespace", namespace)
    by_category = cluster.kubectl("get", "neuraxis", "--namespace", namespace)

    def without_age(text: str) -> list[str]:
        # AGE is the last column; the two calls may fall on either side of a second.
        return sorted(line.rsplit(None, 1)[0] for line in text.splitlines() if line.strip())

    assert without_age(table) == without_age(by_category)
    lines = table.splitlines()
    assert any(line.split()[:4] == ["NAME", "PHASE", "VERSION", "ROWS"] for line in lines), table
    row = next(line for line in lines if line.startswith("dataset.neuraxis.dev/sensor-readings"))
    assert row.split()[1:5] == ["Ready", "3", "4990", "true"], row
    assert any(line.split()[:4] == ["NAME", "PHASE", "DATASET", "PROGRESS"] for line in lines), (
        table
    )
    assert any(line.split()[:4] == ["NAME", "MODEL", "STAGE", "PHASE"] for line in lines), table
    assert any(
        line.split()[:5] == ["NAME", "MODEL", "PHASE", "TARGETED", "READY"] for line in lines
    ), table


def test_status_is_not_writable_through_the_main_resource(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl(
        "apply",
        "--namespace",
        namespace,
        "-f",
        str(EXAMPLES / "smart-manufacturing" / "01-sensor-readings.yaml"),
    )
    cluster.kubectl(
        "patch", "dataset", "sensor-readings", "--namespace", namespace, "--type=merge",
        '--patch={"status": {"phase": "Ready"}}',
    )  # fmt: skip
    got = cluster.kubectl_json("get", "dataset", "sensor-readings", "--namespace", namespace)
    assert "phase" not in (got.get("status") or {}), "status must only change through /status"


def test_kubectl_explain_prints_the_model_documentation(cluster: Cluster) -> None:
    out = cluster.kubectl("explain", "dataset.spec.quality")
    assert "Data-quality gate" in out
    assert "onFailure" in out and "expectations" in out
    assert "Quarantine: move failing rows" in cluster.kubectl(
        "explain", "dataset.spec.quality.onFailure"
    )


def test_short_names_are_unique_in_discovery(cluster: Cluster) -> None:
    """Every short name resolves to our kind alone: no built-in resource (ds = DaemonSets) or
    other CRD served by this API server uses it."""
    owners: dict[str, list[str]] = {}
    for line in cluster.kubectl("api-resources", "--no-headers", "-o", "wide").splitlines():
        fields = line.split()
        # NAME SHORTNAMES APIVERSION NAMESPACED KIND VERBS CATEGORIES: short names are the
        # comma-separated field before the group/version (absent for most resources).
        if len(fields) > 2 and "/" not in fields[1] and fields[1] not in ("v1",):
            for short in fields[1].split(","):
                owners.setdefault(short, []).append(fields[0])
    for info in KINDS.values():
        assert owners.get(info.short_name) == [info.plural], (info.short_name, owners)
    listed = cluster.kubectl("get", KINDS["Dataset"].short_name, "--all-namespaces", "-o", "name")
    assert all(line.startswith("dataset.neuraxis.dev/") for line in listed.splitlines())
