"""Edge fleet: per-site counts from node and pod state, what the caches keep for them, and the
load flags the agent DaemonSet passes (parsed by the agent's own command line)."""

from __future__ import annotations

from typing import Any

import typer

from neuraxis.crds import EdgeDeployment
from neuraxis.operator.builders.edge import build_edge_daemon_sets, load_flags, matching_nodes
from neuraxis.operator.edge_sites import NO_SITE, site_counts
from neuraxis.operator.informer import keep_node, keep_pod
from neuraxis.operator.settings import OperatorSettings
from neuraxis.resources import parse_resource
from neuraxis.workloads.edge.cli import edge_command

SITE = "neuraxis.dev/edge-site"

DIGEST = "sha256:" + "cd" * 32  # the bundle every agent is pinned to


def _node(name: str, site: str | None, ready: str = "True") -> dict[str, Any]:
    labels = {SITE: site} if site else {}
    return {
        "metadata": {"name": name, "labels": labels},
        "status": {"conditions": [{"type": "Ready", "status": ready}]},
    }


def _pod(
    node: str, group: str, generation: int, ready: bool = True, deleting: bool = False
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": f"{group}-{node}",
        "labels": {"neuraxis.dev/edge-group": group, "pod-template-generation": str(generation)},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": node},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def _ds(name: str, generation: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "generation": generation}}


def test_sites_count_desired_ready_updated_and_offline_nodes() -> None:
    nodes = [
        _node("a0", "plant-a"),
        _node("a1", "plant-a", ready="False"),  # the kubelet stopped reporting
        _node("a2", "plant-a", ready="Unknown"),
        _node("b0", "plant-b"),
        _node("x0", None),
        _node("other", "plant-c"),  # not targeted
    ]
    pods = [
        _pod("a0", "ed-canary", 2),  # ready, current template
        _pod("a1", "ed", 1, ready=False),  # an old template on an offline node
        _pod("a2", "ed", 3, deleting=True),  # going away: neither ready nor updated
        _pod("b0", "ed", 3, ready=False),  # updated, not ready yet
        _pod("x0", "ed", 3),
        _pod("other", "ed", 3),
        {"metadata": {"name": "pending"}, "spec": {}},  # not scheduled yet
    ]
    daemon_sets = [_ds("ed-canary", 2), _ds("ed", 3)]
    sites = site_counts(["a0", "a1", "a2", "b0", "x0"], nodes, pods, daemon_sets, SITE)
    assert sites == [
        {"name": NO_SITE, "desired": 1, "ready": 1, "updated": 1, "offline": 0},
        {"name": "plant-a", "desired": 3, "ready": 1, "updated": 1, "offline": 2},
        {"name": "plant-b", "desired": 1, "ready": 0, "updated": 1, "offline": 0},
    ]


def test_a_node_missing_from_the_cache_counts_as_offline_in_no_site() -> None:
    assert site_counts(["gone"], [], [], [], SITE) == [
        {"name": NO_SITE, "desired": 1, "ready": 0, "updated": 0, "offline": 1}
    ]


def test_caches_keep_node_readiness_and_agent_pod_placement_only() -> None:
    node = {
        "metadata": {"name": "n", "labels": {SITE: "a"}, "annotations": {"big": "x" * 1000}},
        "spec": {"taints": [], "podCIDR": "10.0.0.0/24"},
        "status": {
            "conditions": [
                {"type": "Ready", "status": "False", "lastHeartbeatTime": "2026-01-01T00:00:00Z"},
                {"type": "MemoryPressure", "status": "False"},
            ],
            "images": [{"names": ["busybox"]}],
        },
    }
    assert keep_node(node) == {
        "metadata": {"name": "n", "labels": {SITE: "a"}},
        "spec": {"taints": []},
        "status": {"conditions": [{"type": "Ready", "status": "False"}]},
    }
    pod = _pod("n", "ed", 4)
    pod["metadata"]["labels"]["controller-revision-hash"] = "abc"
    pod["status"]["conditions"].append({"type": "PodScheduled", "status": "True"})
    pod["spec"]["containers"] = [{"name": "agent"}]
    kept = keep_pod(pod)
    assert kept["spec"] == {"nodeName": "n"}
    assert kept["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    assert kept["metadata"]["labels"] == {
        "neuraxis.dev/edge-group": "ed",
        "pod-template-generation": "4",
    }


def _edge(load: dict[str, Any], sync: dict[str, Any] | None = None) -> EdgeDeployment:
    res = parse_resource(
        {
            "apiVersion": "neuraxis.dev/v1alpha1",
            "kind": "EdgeDeployment",
            "metadata": {"name": "ed", "namespace": "ml", "uid": "u", "generation": 1},
            "spec": {
                "modelVersionRef": {"name": "m-v1"},
                "target": {"sites": ["plant-a"]},
                "load": load,
                "auth": {"mode": "none"},
                "sync": sync or {},
            },
        }
    )
    assert isinstance(res, EdgeDeployment)
    return res


def _parsed_by_the_agent(command: list[str]) -> dict[str, Any]:
    """The agent's own command line parses what the DaemonSet runs (without running it)."""
    app = typer.Typer()
    app.command()(edge_command)
    click_command = typer.main.get_command(app)
    assert command[:3] == ["neuraxis", "workload", "edge"]
    params: dict[str, Any] = click_command.make_context("edge", command[3:]).params
    return params


def test_spec_load_reaches_the_agent_as_flags_it_parses() -> None:
    ed = _edge(
        {"maxInFlight": 5, "retryAfterSeconds": 3, "maxBatchSize": 48, "minBatchSize": 4,
         "latencyTargetMs": 25},
        {"healthIntervalSeconds": 30, "maxBufferedSnapshots": 99},
    )  # fmt: skip
    [daemon_set] = build_edge_daemon_sets(
        ed,
        "s3://lake/edge/ml/m/v1",
        ["edge-0"],
        OperatorSettings(),
        canary_ready=False,
        bundle_digest=DIGEST,
    )
    [agent] = daemon_set["spec"]["template"]["spec"]["containers"]
    params = _parsed_by_the_agent(agent["command"])
    assert (params["max_in_flight"], params["retry_after_s"]) == (5, 3)
    assert (params["max_batch_size"], params["min_batch_size"]) == (48, 4)
    assert params["latency_target_ms"] == 25.0
    assert (params["health_interval_s"], params["max_buffered_snapshots"]) == (30.0, 99)


def test_without_a_latency_target_the_batch_size_stays_fixed() -> None:
    flags = load_flags(_edge({}))
    assert "--latency-target-ms" not in flags
    params = _parsed_by_the_agent(
        ["neuraxis", "workload", "edge", "--bundle", "b", "--cache-dir", "/c", *flags]
    )
    assert params["latency_target_ms"] is None
    assert (params["max_in_flight"], params["max_batch_size"]) == (64, 32)  # the spec defaults


def test_a_node_tainted_for_its_state_stays_targeted() -> None:
    """not-ready/unreachable taints come and go with the node's health: the DaemonSet keeps its
    pod there, so the node stays in the fleet (counted offline) and the canary stays put."""
    ed = _edge({})
    edge_taint = {"key": "neuraxis.dev/edge", "value": "true", "effect": "NoSchedule"}
    states = (("not-ready", "NoExecute"), ("not-ready", "NoSchedule"),
              ("unreachable", "NoExecute"), ("unschedulable", "NoSchedule"))  # fmt: skip
    dark = [{"key": f"node.kubernetes.io/{k}", "effect": e} for k, e in states]
    nodes = [
        {"name": "e0", "labels": {SITE: "plant-a"}, "taints": [edge_taint, *dark]},
        {"name": "e1", "labels": {SITE: "plant-a"}, "taints": [edge_taint,
            {"key": "example.com/dedicated", "value": "x", "effect": "NoSchedule"}]},
    ]  # fmt: skip
    assert matching_nodes(ed, nodes, OperatorSettings()) == ["e0"]
