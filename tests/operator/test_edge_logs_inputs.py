"""The edge-to-lake contract on the operator's side, without a cluster: the agent DaemonSet
carries the hard-example threshold and (for one site) the site; a Dataset over an
EdgeDeployment's logs waits for that EdgeDeployment, in a cluster and under `neuraxis run`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from neuraxis.crds import Dataset, EdgeDeployment
from neuraxis.lake import EDGE_SITE_ENV, NODE_SITES_FILE
from neuraxis.local.runner import references
from neuraxis.local.state import LocalStore
from neuraxis.operator.builders.edge import (
    build_edge_agent_children,
    build_edge_daemon_sets,
    node_sites,
)
from neuraxis.operator.children import SPEC_MOUNT
from neuraxis.operator.errors import InputNotReadyError
from neuraxis.operator.inputs import CR_VERSION, pin_upstream, resolve_upstream
from neuraxis.operator.runtime import INPUT_INDEXES, _ref
from neuraxis.operator.settings import OperatorSettings
from neuraxis.resources import parse_resource

SETTINGS = OperatorSettings(image="registry.local/neuraxis:test")

DIGEST = "sha256:" + "ef" * 32  # the bundle every agent is pinned to


def edge(sites: list[str], logging: dict[str, Any] | None = None) -> EdgeDeployment:
    spec: dict[str, Any] = {
        "modelVersionRef": {"name": "v1"},
        "target": {"sites": sites},
        "auth": {"mode": "none"},
    }
    if logging is not None:
        spec["logging"] = logging
    doc = {
        "apiVersion": "neuraxis.dev/v1alpha1",
        "kind": "EdgeDeployment",
        "metadata": {"name": "gw", "namespace": "ml", "uid": "u1", "generation": 1},
        "spec": spec,
    }
    res = parse_resource(doc)
    assert isinstance(res, EdgeDeployment)
    return res


def agent_container(ed: EdgeDeployment) -> dict[str, Any]:
    [daemon_set] = build_edge_daemon_sets(
        ed, "s3://b/edge/ml/m/v1", [], SETTINGS, canary_ready=True, bundle_digest=DIGEST
    )
    container: dict[str, Any] = daemon_set["spec"]["template"]["spec"]["containers"][0]
    return container


def test_agent_gets_the_threshold_and_the_site_of_a_one_site_deployment() -> None:
    container = agent_container(edge(["clinic-north"], {"hardExampleThreshold": 0.6}))
    command = container["command"]
    assert command[command.index("--hard-example-threshold") + 1] == "0.6"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[EDGE_SITE_ENV] == "clinic-north"


def test_no_threshold_flag_unless_set_and_no_site_for_many_sites() -> None:
    container = agent_container(edge(["plant-a", "plant-b"]))
    assert "--hard-example-threshold" not in container["command"]
    assert EDGE_SITE_ENV not in {e["name"] for e in container["env"]}


def test_several_sites_the_agents_look_their_node_up_in_the_config_map() -> None:
    ed = edge(["plant-a", "plant-b"])
    label = SETTINGS.edge_site_label
    nodes = [
        {"name": "e-1", "labels": {label: "plant-b"}},
        {"name": "e-0", "labels": {label: "plant-a"}},
        {"name": "other", "labels": {label: "plant-c"}},  # not targeted: left out
        {"name": "bare", "labels": {}},
    ]
    sites = node_sites(nodes, SETTINGS)
    assert sites == {"e-0": "plant-a", "e-1": "plant-b", "other": "plant-c"}
    children = build_edge_agent_children(
        ed, "s3://b/edge/ml/m/v1", ["e-0", "e-1"], SETTINGS, canary_ready=True,
        bundle_digest=DIGEST, sites=sites,
    )  # fmt: skip
    config_map = next(c for c in children if c["kind"] == "ConfigMap")
    assert config_map["data"][NODE_SITES_FILE] == '{"e-0": "plant-a", "e-1": "plant-b"}'
    for daemon_set in (c for c in children if c["kind"] == "DaemonSet"):
        command = daemon_set["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[command.index("--node-sites") + 1] == f"{SPEC_MOUNT}/{NODE_SITES_FILE}"


def dataset_over(edge_name: str) -> Dataset:
    doc = {
        "apiVersion": "neuraxis.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "cases", "namespace": "ml"},
        "spec": {"source": {"from": {"edgeDeploymentRef": {"name": edge_name}}}},
    }
    res = parse_resource(doc)
    assert isinstance(res, Dataset)
    return res


def test_dataset_over_edge_logs_waits_for_its_edge_deployment(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "state")
    ds = dataset_over("gw")
    with pytest.raises(InputNotReadyError) as info:
        resolve_upstream(ds, store)
    assert info.value.reason == "EdgeDeploymentNotFound"
    store.save({**edge(["clinic-north"]).to_wire(), "apiVersion": CR_VERSION})
    assert resolve_upstream(ds, store) is None  # nothing to pin: the run reads the latest logs
    assert pin_upstream(ds, None) is ds


def test_dataset_over_edge_logs_is_ordered_and_reconciled_after_its_edge_deployment() -> None:
    ds = dataset_over("gw")
    assert references(ds) == [("EdgeDeployment", "gw")]
    [(_, path, _)] = [e for e in INPUT_INDEXES["Dataset"] if e[2] == "EdgeDeployment"]
    assert _ref(ds.to_wire(), *path) == ["ml/gw"]
