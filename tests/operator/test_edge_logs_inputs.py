"""The edge-to-lake contract on the operator's side, without a cluster: the agent DaemonSet
carries the hard-example threshold and (for one site) the site; a Dataset over an
EdgeDeployment's logs waits for that EdgeDeployment, in a cluster and under `neuraxis run`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from neuraxis.crds import Dataset, EdgeDeployment
from neuraxis.lake import EDGE_SITE_ENV
from neuraxis.local.runner import references
from neuraxis.local.state import LocalStore
from neuraxis.operator.builders.edge import build_edge_daemon_sets
from neuraxis.operator.errors import InputNotReadyError
from neuraxis.operator.inputs import CR_VERSION, pin_upstream, resolve_upstream
from neuraxis.operator.runtime import INPUT_INDEXES, _ref
from neuraxis.operator.settings import OperatorSettings
from neuraxis.resources import parse_resource

SETTINGS = OperatorSettings(image="registry.local/neuraxis:test")


def edge(sites: list[str], logging: dict[str, Any] | None = None) -> EdgeDeployment:
    spec: dict[str, Any] = {"modelVersionRef": {"name": "v1"}, "target": {"sites": sites}}
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
        ed, "s3://b/edge/ml/m/v1", [], SETTINGS, canary_ready=True
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
