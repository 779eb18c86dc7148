"""The local control plane behaves like a cluster: node pools, the real job controller, and the
KWOK stages that play workload outcomes through the kubelet path."""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.cluster.conftest import Cluster

WAIT = "--timeout=90s"
KWOK_TAINT = ("kwok.x-k8s.io/node", "fake", "NoSchedule")
# These pods play their outcome on KWOK nodes: they tolerate the KWOK taint and select the
# fake nodes, so they never land on the real node (whose kubelet would try to pull the image).
ON_KWOK = {
    "tolerations": [
        {"key": KWOK_TAINT[0], "operator": "Equal", "value": KWOK_TAINT[1], "effect": KWOK_TAINT[2]}
    ],
    "nodeSelector": {"type": "kwok"},
}


def _job(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            # One try: a failed pod fails the Job at once instead of after backoff retries.
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "neuraxis/noop:1"}],
                    **ON_KWOK,
                },
            },
        },
    }


def _job_pod(cluster: Cluster, namespace: str, job: str) -> dict[str, Any]:
    pods = cluster.kubectl_json(
        "get", "pods", f"--namespace={namespace}", f"--selector=job-name={job}"
    )["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    pod: dict[str, Any] = pods[0]
    return pod


def test_node_pools_have_labels_taints_and_gpus(cluster: Cluster) -> None:
    from kubernetes import client

    with cluster.api_client() as api:
        listed = client.CoreV1Api(api).list_node(label_selector="type=kwok")
        nodes: list[dict[str, Any]] = api.sanitize_for_serialization(listed)["items"]
    pools = Counter(n["metadata"]["labels"]["neuraxis.dev/pool"] for n in nodes)
    assert pools == {"cpu": 4, "gpu": 2, "edge": 3}
    for node in nodes:
        name, labels = node["metadata"]["name"], node["metadata"]["labels"]
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", name
        assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
        taints = {(t["key"], t.get("value"), t["effect"]) for t in node["spec"].get("taints", [])}
        allocatable, capacity = node["status"]["allocatable"], node["status"]["capacity"]
        pool = labels["neuraxis.dev/pool"]
        if pool == "gpu":
            assert allocatable["nvidia.com/gpu"] == capacity["nvidia.com/gpu"] == "8", name
            assert taints == {("nvidia.com/gpu", "present", "NoSchedule"), KWOK_TAINT}, name
        else:
            assert "nvidia.com/gpu" not in allocatable, name
        if pool == "edge":
            assert taints == {("neuraxis.dev/edge", "true", "NoSchedule"), KWOK_TAINT}, name
        if pool == "cpu":
            assert taints == {KWOK_TAINT}, name
    sites = sorted(
        n["metadata"]["labels"]["neuraxis.dev/edge-site"]
        for n in nodes
        if n["metadata"]["labels"]["neuraxis.dev/pool"] == "edge"
    )
    assert sites == ["plant-a", "plant-a", "plant-b"]


def test_job_runs_on_cpu_nodes_and_completes(cluster: Cluster, namespace: str) -> None:
    cluster.apply(_job("ok"), namespace)
    cluster.kubectl("wait", "--for=condition=Complete", "job/ok", f"--namespace={namespace}", WAIT)
    job = cluster.kubectl_json("get", "job", "ok", f"--namespace={namespace}")
    assert job["status"]["succeeded"] == 1
    pod = _job_pod(cluster, namespace, "ok")
    # Tolerating only the KWOK taint, it can only land on the cpu pool.
    assert pod["spec"]["nodeName"].startswith("kwok-cpu-")
    assert pod["status"]["phase"] == "Succeeded"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0
    assert "running" not in pod["status"]["containerStatuses"][0]["state"]


def test_fail_annotation_fails_the_job(cluster: Cluster, namespace: str) -> None:
    cluster.apply(_job("bad", {"neuraxis.dev/kwok-fail": "true"}), namespace)
    cluster.kubectl("wait", "--for=condition=Failed", "job/bad", f"--namespace={namespace}", WAIT)
    pod = _job_pod(cluster, namespace, "bad")
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 1
    assert "message" not in terminated


def test_fail_annotation_value_is_the_message(cluster: Cluster, namespace: str) -> None:
    cluster.apply(_job("oom", {"neuraxis.dev/kwok-fail": "out of memory"}), namespace)
    cluster.kubectl("wait", "--for=condition=Failed", "job/oom", f"--namespace={namespace}", WAIT)
    terminated = _job_pod(cluster, namespace, "oom")["status"]["containerStatuses"][0]["state"]
    assert terminated["terminated"]["message"] == "out of memory"


def test_termination_message_reaches_the_container_status(cluster: Cluster, namespace: str) -> None:
    result = {"metrics": {"accuracy": 0.93}, "artifact": 's3://models/m/1 "quoted"'}
    message = json.dumps(result)
    annotations = {"neuraxis.dev/kwok-termination-message": message}
    cluster.apply(_job("msg", annotations), namespace)
    cluster.kubectl("wait", "--for=condition=Complete", "job/msg", f"--namespace={namespace}", WAIT)
    status = _job_pod(cluster, namespace, "msg")["status"]
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert terminated["message"] == message
    assert json.loads(terminated["message"]) == result


def test_deployment_pod_is_running_and_ready(cluster: Cluster, namespace: str) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "neuraxis/web:1"}], **ON_KWOK},
            },
        },
    }
    cluster.apply(deployment, namespace)
    cluster.kubectl("rollout", "status", "deployment/web", f"--namespace={namespace}", WAIT)
    pods = cluster.kubectl_json("get", "pods", f"--namespace={namespace}", "--selector=app=web")
    [pod] = pods["items"]
    assert pod["status"]["phase"] == "Running"
    conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    assert pod["status"]["containerStatuses"][0]["ready"] is True
    assert pod["status"].get("podIP")
