"""The real node (`neuraxis.dev.node`): real containers on kubelet + containerd + runc + CNI.

The images are built offline from Debian's static busybox (and, for the API test, the
toolset's static kubectl), so these tests need nothing from a registry. The last test stops
the session's node, starts it again, runs a pod, stops it again and compares what is left on
the host with what was there before, then leaves the node running for the rest of the session.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from neuraxis.dev import cluster as dev_cluster
from neuraxis.dev import node as dev_node
from neuraxis.dev import toolchain
from tests.cluster.conftest import Cluster

BUSYBOX = dev_node.BUSYBOX_IMAGE
KUBECTL_IMAGE = "neuraxis.local/kubectl:v1.36.3"
POD_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def kubectl_image(cluster: Cluster) -> str:
    """busybox plus the toolset's static kubectl, imported into the node once."""
    if not dev_node.has_image(KUBECTL_IMAGE):
        kubectl = toolchain.tool_path("kubectl")
        archive = dev_node.busybox_archive(KUBECTL_IMAGE, {"kubectl": kubectl})
        dev_node.import_archive(archive)
    return KUBECTL_IMAGE


def _pod(name: str, command: str, *, image: str = BUSYBOX, **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", command],
        **spec.pop("container", {}),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": spec.pop("labels", {"app": name})},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            **spec,
        },
    }


def _finished(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """The pod once it Succeeded or Failed (raises with its status when it does not)."""
    deadline = time.monotonic() + POD_TIMEOUT_S
    while True:
        pod: dict[str, Any] = cluster.kubectl_json("get", "pod", name, f"--namespace={namespace}")
        if pod["status"].get("phase") in ("Succeeded", "Failed"):
            return pod
        if time.monotonic() > deadline:
            raise AssertionError(f"pod {name} did not finish: {json.dumps(pod['status'])}")
        time.sleep(0.3)


def _terminated(pod: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = pod["status"]["containerStatuses"][0]["state"]
    assert "terminated" in state, state
    terminated: dict[str, Any] = state["terminated"]
    return terminated


def _logs(cluster: Cluster, namespace: str, name: str) -> str:
    return cluster.kubectl("logs", name, f"--namespace={namespace}")


def test_real_node_is_ready_and_kwok_pools_are_tainted(cluster: Cluster) -> None:
    node = cluster.kubectl_json("get", "node", dev_node.NODE_NAME)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    assert node["metadata"]["labels"]["neuraxis.dev/pool"] == "real"
    assert "kwok.x-k8s.io/node" not in node["metadata"].get("annotations", {})
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == dev_node.NODE_IP
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"] == "containerd://2.4.2"
    fake = cluster.kubectl_json("get", "nodes", "--selector=type=kwok")["items"]
    assert len(fake) == 9
    for kwok_node in fake:
        taints = {(t["key"], t.get("value"), t["effect"]) for t in kwok_node["spec"]["taints"]}
        assert ("kwok.x-k8s.io/node", "fake", "NoSchedule") in taints


def test_nonroot_readonly_pod_runs_and_returns_its_message(
    cluster: Cluster, namespace: str
) -> None:
    # The message is what the workload writes last; writing / must fail, the emptyDir works.
    command = (
        "touch /probe 2>/dev/null && root=writable || root=readonly; "
        "echo ok > /scratch/probe && scratch=$(cat /scratch/probe); "
        'printf \'{"uid": "%s", "root": "%s", "scratch": "%s"}\' '
        '"$(id -u)" "$root" "$scratch" > /dev/termination-log'
    )
    pod = _pod(
        "nonroot",
        command,
        securityContext={"runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": True},
        volumes=[{"name": "scratch", "emptyDir": {}}],
        container={
            "securityContext": {
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
        },
    )
    cluster.apply(pod, namespace)
    finished = _finished(cluster, namespace, "nonroot")
    assert finished["spec"]["nodeName"] == dev_node.NODE_NAME
    assert finished["status"]["phase"] == "Succeeded", finished["status"]
    message = json.loads(_terminated(finished)["message"])
    assert message == {"uid": "10001", "root": "readonly", "scratch": "ok"}


def _web_deployment() -> dict[str, Any]:
    serve = "echo hello-from-$(hostname) > /tmp/index.html && exec httpd -f -p 8080 -h /tmp"
    template = _pod("web", serve, restartPolicy="Always")
    template["spec"]["containers"][0]["readinessProbe"] = {
        "tcpSocket": {"port": 8080},
        "periodSeconds": 1,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": template["metadata"], "spec": template["spec"]},
        },
    }


def _service(name: str, selector: str, port: int, target: int, *, headless: bool = False) -> Any:
    spec: dict[str, Any] = {
        "selector": {"app": selector},
        "ports": [{"port": port, "targetPort": target}],
    }
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def test_deployment_answers_through_its_cluster_ip_and_dns_name(
    cluster: Cluster, namespace: str
) -> None:
    cluster.apply(_web_deployment(), namespace)
    cluster.apply(_service("web", "web", 80, 8080), namespace)
    cluster.kubectl("rollout", "status", "deployment/web", f"--namespace={namespace}",
                    "--timeout=60s", timeout=75)  # fmt: skip
    cluster_ip = cluster.kubectl(
        "get", "service", "web", f"--namespace={namespace}", "--output=jsonpath={.spec.clusterIP}"
    )
    backends = cluster.kubectl_json("get", "pods", f"--namespace={namespace}", "--selector=app=web")
    names = {p["metadata"]["name"] for p in backends["items"]}
    # Several requests: kube-proxy picks a backend at random, each answer names one of them.
    fqdn = f"web.{namespace}.svc.cluster.local"
    command = (
        f"for i in 1 2 3 4; do wget -qO- http://{cluster_ip}/ || exit 1; done; "
        f"wget -qO- http://{fqdn}/ && wget -qO- http://web/"
    )
    cluster.apply(_pod("client", command), namespace)
    finished = _finished(cluster, namespace, "client")
    logs = _logs(cluster, namespace, "client")
    assert finished["status"]["phase"] == "Succeeded", logs
    answers = logs.split()
    assert len(answers) == 6, logs
    assert {a.removeprefix("hello-from-") for a in answers} <= names


def test_headless_service_pod_hostname_resolves(cluster: Cluster, namespace: str) -> None:
    """torchrun's rendezvous: workers reach worker 0 as <hostname>.<subdomain>.<ns>.svc."""
    serve = "echo rendezvous > /tmp/index.html && exec httpd -f -p 29500 -h /tmp"
    worker = _pod("worker-0", serve, labels={"app": "workers"}, hostname="worker-0",
                  subdomain="workers")  # fmt: skip
    worker["spec"]["containers"][0]["readinessProbe"] = {
        "tcpSocket": {"port": 29500},
        "periodSeconds": 1,
    }
    cluster.apply(_service("workers", "workers", 29500, 29500, headless=True), namespace)
    cluster.apply(worker, namespace)
    cluster.kubectl("wait", "--for=condition=Ready", "pod/worker-0", f"--namespace={namespace}",
                    "--timeout=60s", timeout=75)  # fmt: skip
    short = f"worker-0.workers.{namespace}.svc"
    command = (
        f"nslookup {short}.cluster.local | grep -A1 'Name:' | tail -1; "
        f"wget -qO- http://{short}:29500/"
    )
    cluster.apply(_pod("peer", command), namespace)
    finished = _finished(cluster, namespace, "peer")
    logs = _logs(cluster, namespace, "peer")
    assert finished["status"]["phase"] == "Succeeded", logs
    worker_ip = cluster.kubectl(
        "get", "pod", "worker-0", f"--namespace={namespace}", "--output=jsonpath={.status.podIP}"
    )
    address_line, answer = logs.strip().splitlines()
    assert address_line.split()[-1] == worker_ip
    assert answer == "rendezvous"


def test_pod_reaches_the_api_server_through_the_kubernetes_service(
    cluster: Cluster, namespace: str, kubectl_image: str
) -> None:
    # In-cluster kubectl: KUBERNETES_SERVICE_HOST (the ClusterIP) and the pod's SA token.
    command = (
        'echo "$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"; '
        "kubectl get --raw /version; "
        "kubectl auth whoami --output=jsonpath='{.status.userInfo.username}'"
    )
    cluster.apply(_pod("api", command, image=kubectl_image), namespace)
    finished = _finished(cluster, namespace, "api")
    logs = _logs(cluster, namespace, "api")
    assert finished["status"]["phase"] == "Succeeded", logs
    service_line, rest = logs.split("\n", 1)
    assert service_line == f"{dev_node.KUBERNETES_SERVICE_IP}:443"
    version_text, _, user = rest.rpartition("}")
    assert json.loads(version_text + "}")["gitVersion"] == "v1.36.3"
    assert user.strip() == f"system:serviceaccount:{namespace}:default"


def test_failing_pods_fail_with_their_message(cluster: Cluster, namespace: str) -> None:
    cluster.apply(_pod("exit1", "echo 'boom: config missing' > /dev/termination-log; exit 1"),
                  namespace)  # fmt: skip
    # 200 MiB buffer under a 32 MiB limit: the kernel's OOM killer ends it.
    oom = _pod("oom", "dd if=/dev/zero of=/dev/null bs=200M count=1",
               container={"resources": {"limits": {"memory": "32Mi"}}})  # fmt: skip
    cluster.apply(oom, namespace)
    exit1 = _finished(cluster, namespace, "exit1")
    assert exit1["status"]["phase"] == "Failed"
    terminated = _terminated(exit1)
    assert (terminated["exitCode"], terminated["message"].strip()) == (1, "boom: config missing")
    killed = _finished(cluster, namespace, "oom")
    assert killed["status"]["phase"] == "Failed"
    terminated = _terminated(killed)
    assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137)


# ---------------------------------------------------------------------------------------------
# teardown: nothing of the node is left on the host


def _leftovers(node_dir: Path, original_sysctls: Mapping[str, str]) -> dict[str, Any]:
    """What of the node is still on the host; every value is empty when nothing is."""
    snapshot = dev_node.host_snapshot(node_dir)
    ours = (str(dev_node.RUN_DIR), str(node_dir), str(dev_node.containerd_root()))
    chains = {
        table: [c for c in rules if c.startswith(dev_node.CHAIN_PREFIXES) or "KUBE-" in c]
        for table, rules in snapshot["iptables"].items()
    }
    return {
        "processes": snapshot["processes"],
        "mounts": [m for m in snapshot["mounts"] if m.startswith(ours)],
        "interfaces": [i for i in snapshot["interfaces"] if i == dev_node.BRIDGE or "veth" in i],
        "netns": [n for n in snapshot["netns"] if n.startswith("cni-")],
        "cgroups": snapshot["cgroups"],
        "iptables": {table: found for table, found in chains.items() if found},
        "sysctls": {
            key: value
            for key, value in snapshot["sysctls"].items()
            if original_sysctls.get(key, value) != value
        },
        "state": dev_node.read_host_state(),
    }


def _is_clean(leftovers: Mapping[str, Any]) -> bool:
    return not any(leftovers.values())


@pytest.fixture
def node_restarted(cluster: Cluster) -> Iterator[dev_node.NodeRequest]:
    """The session's node request; the node is running again when the test ends."""
    request = dev_cluster.node_request()
    try:
        yield request
    finally:
        dev_node.up(request)


def test_teardown_leaves_nothing_on_the_host(
    cluster: Cluster, namespace: str, node_restarted: dev_node.NodeRequest
) -> None:
    node_dir = dev_node.NodePaths(node_restarted.home).node_dir
    original = dict(dev_node.read_host_state()["sysctls"])
    assert dev_node.down()
    clean = dev_node.host_snapshot(node_dir)
    assert _is_clean(left := _leftovers(node_dir, original)), left

    started = time.monotonic()
    dev_node.up(node_restarted)
    start_s = time.monotonic() - started
    # A running pod with a volume: mounts, a veth, cgroups and conntrack entries to undo.
    cluster.apply(_pod("sleeper", "sleep 3600", volumes=[{"name": "v", "emptyDir": {}}],
                       container={"volumeMounts": [{"name": "v", "mountPath": "/v"}]}),
                  namespace)  # fmt: skip
    cluster.kubectl("wait", "--for=condition=Ready", "pod/sleeper", f"--namespace={namespace}",
                    "--timeout=60s", timeout=75)  # fmt: skip
    running = _leftovers(node_dir, original)
    # The check can see the node: otherwise "clean" below would prove nothing.
    for kind in ("processes", "mounts", "interfaces", "cgroups", "iptables", "sysctls"):
        assert running[kind], f"no {kind} seen while the node runs: {running}"

    started = time.monotonic()
    assert dev_node.down()
    down_s = time.monotonic() - started
    assert _is_clean(left := _leftovers(node_dir, original)), left
    after = dev_node.host_snapshot(node_dir)
    for kind in ("processes", "interfaces", "netns", "cgroups", "iptables", "sysctls"):
        assert after[kind] == clean[kind], kind
    # Other work on the machine mounts under /tmp and the image cache; nothing else may appear.
    foreign = ("/tmp/", str(Path.home() / ".cache" / "neuraxis" / "images"))
    new_mounts = [m for m in after["mounts"] if m not in clean["mounts"]]
    assert [m for m in new_mounts if not m.startswith(foreign)] == []
    assert after["fixed_paths"] == clean["fixed_paths"]
    print(f"node start {start_s:.1f}s, teardown with one pod {down_s:.1f}s")
