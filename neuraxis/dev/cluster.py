"""The local control plane: real kube-apiserver, etcd, controller manager and scheduler, with
KWOK playing the kubelets (`kwokctl create cluster --runtime binary`), plus one real node
(`neuraxis.dev.node`: kubelet, containerd, CoreDNS, kube-proxy) where pods really run.

Everything runs from the pinned binaries that `neuraxis.dev.toolchain` builds; nothing is
downloaded. State lives under `$NEURAXIS_HOME` (default `./.neuraxis`): the kwok work dir in
`kwok/`, the kubeconfig in `kubeconfig`. Standard library only, like the toolchain.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuraxis.dev import node as real_node
from neuraxis.dev import toolchain

CLUSTER_NAME = "neuraxis"
HOME_ENV = "NEURAXIS_HOME"
STAGES_FILE = Path(__file__).with_name("kwok_stages.yaml")
# The toolset tables the cluster runs from.
CLUSTER_TOOLS = ("kubernetes", "etcd", "kwok")
# The checkout's crds/ folder (the package is installed editable from the checkout).
DEFAULT_CRDS_DIR = Path(__file__).resolve().parents[2] / "crds"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_SELECTOR = f"{KWOK_NODE_ANNOTATION}=fake"
POOL_LABEL = "neuraxis.dev/pool"
EDGE_SITE_LABEL = "neuraxis.dev/edge-site"
GPU_RESOURCE = "nvidia.com/gpu"
CREATE_TIMEOUT_S = 180.0
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0

Progress = Callable[[str], None]


class ClusterError(RuntimeError):
    """The local cluster could not be started, reached or stopped; the message says which step."""


# ---------------------------------------------------------------------------------------------
# locations


@dataclass(frozen=True)
class ClusterPaths:
    home: Path

    @property
    def kwok_home(self) -> Path:
        return self.home / "kwok"

    @property
    def cluster_dir(self) -> Path:
        return self.kwok_home / "clusters" / CLUSTER_NAME

    @property
    def kubeconfig(self) -> Path:
        return self.home / "kubeconfig"

    @property
    def kwokctl_config(self) -> Path:
        return self.home / "kwokctl.yaml"

    @property
    def state_file(self) -> Path:
        return self.home / "cluster.json"

    @property
    def lock_file(self) -> Path:
        return self.home / "cluster.lock"


def neuraxis_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.cwd() / ".neuraxis").resolve()


def cluster_paths(home: Path | None = None) -> ClusterPaths:
    return ClusterPaths(home or neuraxis_home())


def kubeconfig_path(home: Path | None = None) -> Path:
    return cluster_paths(home).kubeconfig


# ---------------------------------------------------------------------------------------------
# fake nodes


@dataclass(frozen=True)
class NodePool:
    name: str
    count: int
    taints: tuple[tuple[str, str, str], ...] = ()
    extra_resources: dict[str, str] = field(default_factory=dict)
    # One entry per node: extra labels of that node (edge sites).
    node_labels: tuple[dict[str, str], ...] = ()


# The local cluster's KWOK pools carry this taint besides their own, so pods without the
# toleration land on the real node only; pods meant for the fake pools (the operator's, in the
# cluster tests) tolerate it.
KWOK_NODE_TAINT = (KWOK_NODE_ANNOTATION, "fake", "NoSchedule")

NODE_POOLS: tuple[NodePool, ...] = (
    NodePool("cpu", 4, taints=(KWOK_NODE_TAINT,)),
    NodePool(
        "gpu",
        2,
        taints=((GPU_RESOURCE, "present", "NoSchedule"), KWOK_NODE_TAINT),
        extra_resources={GPU_RESOURCE: "8"},
    ),
    NodePool(
        "edge",
        3,
        taints=(("neuraxis.dev/edge", "true", "NoSchedule"), KWOK_NODE_TAINT),
        node_labels=(
            {EDGE_SITE_LABEL: "plant-a"},
            {EDGE_SITE_LABEL: "plant-a"},
            {EDGE_SITE_LABEL: "plant-b"},
        ),
    ),
)
BASE_RESOURCES = {"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "500Gi"}


def node_manifests(pools: Sequence[NodePool] = NODE_POOLS) -> list[dict[str, Any]]:
    """Node objects for the pools; kwok manages them because of the `kwok.x-k8s.io/node` mark."""
    nodes: list[dict[str, Any]] = []
    for pool in pools:
        for index in range(pool.count):
            extra = pool.node_labels[index] if index < len(pool.node_labels) else {}
            nodes.append(_node(pool, f"kwok-{pool.name}-{index}", extra))
    return nodes


def _node(pool: NodePool, name: str, extra_labels: dict[str, str]) -> dict[str, Any]:
    resources = {**BASE_RESOURCES, **pool.extra_resources}
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        POOL_LABEL: pool.name,
        **extra_labels,
    }
    spec: dict[str, object] = {}
    if pool.taints:
        spec["taints"] = [{"key": k, "value": v, "effect": e} for k, v, e in pool.taints]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {KWOK_NODE_ANNOTATION: "fake"}},
        "spec": spec,
        # A Node may carry status on create; the kwok node stage keeps these numbers.
        "status": {"allocatable": dict(resources), "capacity": dict(resources)},
    }


# ---------------------------------------------------------------------------------------------
# commands


def _stderr_progress(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


def _run(
    argv: Sequence[str | Path],
    *,
    env: dict[str, str] | None = None,
    input_text: str | None = None,
    timeout: float = 60.0,
    what: str,
) -> str:
    """Run a command; raises ClusterError naming `what` with the output's tail on failure."""
    try:
        proc = subprocess.run(
            [str(a) for a in argv],
            env=env,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if input_text is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{what}: timed out after {timeout:.0f}s") from exc
    except OSError as exc:
        raise ClusterError(f"{what}: could not run {argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise ClusterError(f"{what}: `{Path(str(argv[0])).name}` exited {proc.returncode}\n{tail}")
    return proc.stdout


def kubectl(
    *args: str,
    kubeconfig: Path | None = None,
    input_text: str | None = None,
    timeout: float = 60.0,
) -> str:
    """Run the pinned kubectl against the local cluster and return its stdout."""
    config = kubeconfig or kubeconfig_path()
    argv: list[str | Path] = [toolchain.tool_path("kubectl"), f"--kubeconfig={config}", *args]
    return _run(argv, input_text=input_text, timeout=timeout, what=f"kubectl {' '.join(args[:2])}")


def _kwokctl_env(paths: ClusterPaths) -> dict[str, str]:
    toolset = toolchain.load_toolset()
    env = dict(os.environ)
    env["KWOK_WORKDIR"] = str(paths.kwok_home)
    env["KWOK_KUBE_VERSION"] = toolset.tool("kubernetes").version
    env["KWOK_RUNTIME"] = "binary"
    # kwokctl looks kubectl up on PATH before it would try to download one.
    env["PATH"] = f"{toolchain.bin_dir(toolset)}{os.pathsep}{env.get('PATH', '')}"
    return env


def _kwokctl(paths: ClusterPaths, *args: str, what: str, timeout: float = 60.0) -> str:
    argv: list[str | Path] = [toolchain.tool_path("kwokctl"), *args, f"--name={CLUSTER_NAME}"]
    return _run(argv, env=_kwokctl_env(paths), timeout=timeout, what=what)


# ---------------------------------------------------------------------------------------------
# state


@dataclass(frozen=True)
class ClusterInfo:
    kubeconfig: Path
    server: str
    reused: bool
    elapsed_s: float


def fingerprint(home: Path | None = None) -> str:
    """What a running cluster must have been made from to be reused as it is.

    Only the pins of the tools the cluster runs count: adding, say, prometheus to the toolset
    must not restart a cluster that other test sessions are using.
    """
    toolset = toolchain.load_toolset()
    # Build pins leave the binaries map out: adding kubelet to the table keeps the cluster.
    pins = [toolset.tool(name).build_pins() for name in CLUSTER_TOOLS]
    digest = hashlib.sha256(json.dumps(pins, sort_keys=True).encode())
    digest.update(STAGES_FILE.read_bytes())
    digest.update(_kwokctl_configuration(cluster_paths(home)).encode())
    return digest.hexdigest()[:12]


def _read_state(paths: ClusterPaths) -> dict[str, object]:
    try:
        data = json.loads(paths.state_file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_healthy(home: Path | None = None) -> bool:
    """True when the apiserver behind our kubeconfig answers /readyz."""
    paths = cluster_paths(home)
    if not paths.kubeconfig.is_file():
        return False
    try:
        kubectl("get", "--raw=/readyz", kubeconfig=paths.kubeconfig, timeout=10)
    except (ClusterError, toolchain.ToolchainError):
        return False
    return True


def is_running(home: Path | None = None) -> bool:
    """A healthy cluster made from the current toolset and stages."""
    paths = cluster_paths(home)
    return _read_state(paths).get("fingerprint") == fingerprint(paths.home) and is_healthy(
        paths.home
    )


@contextlib.contextmanager
def _locked(paths: ClusterPaths) -> Iterator[None]:
    # `make cluster` and a test session at once must not create the same cluster twice.
    paths.home.mkdir(parents=True, exist_ok=True)
    with paths.lock_file.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# up / down


def up(
    *,
    bare: bool = False,
    home: Path | None = None,
    crds_dir: Path | None = None,
    real: bool = True,
    node_labels: Mapping[str, str] | None = None,
    node_taints: Sequence[tuple[str, str, str]] = (),
    progress: Progress = _stderr_progress,
) -> ClusterInfo:
    """Start the cluster (or reuse a healthy one) and return where to reach it.

    `bare`: only the control plane and the kwok controller, no CRDs and no nodes.
    `real`: also the real node (`neuraxis.dev.node`) with these labels and taints; without
    it, a real node this home started is stopped.
    """
    start = time.monotonic()
    paths = cluster_paths(home)
    with _locked(paths):
        toolchain.build(only=CLUSTER_TOOLS, progress=progress)
        reused = is_running(paths.home)
        if reused:
            progress("reusing the running cluster")
        else:
            _clean_stale(paths, progress)
            _create(paths, progress, start)
        if not bare:
            _apply_crds(paths, crds_dir or DEFAULT_CRDS_DIR, progress, start)
            _register_nodes(paths, progress, start)
        if real and not bare:
            request = node_request(paths.home, node_labels, node_taints)
            real_node.up(request, progress=progress)
        else:
            _stop_own_node(paths, progress)
    elapsed = time.monotonic() - start
    progress(f"ready in {elapsed:.1f}s; kubeconfig: {paths.kubeconfig}")
    return ClusterInfo(paths.kubeconfig, _server(paths), reused, elapsed)


def down(*, home: Path | None = None, progress: Progress = _stderr_progress) -> None:
    """Stop the cluster and its real node; afterwards none of their processes, listening
    ports or host changes are left."""
    start = time.monotonic()
    paths = cluster_paths(home)
    with _locked(paths):
        _clean_stale(paths, progress)
    progress(f"stopped in {time.monotonic() - start:.1f}s")


def _create(paths: ClusterPaths, progress: Progress, start: float) -> None:
    bins = toolchain.bin_dir()
    paths.kwokctl_config.write_text(_kwokctl_configuration(paths))
    progress("starting etcd, kube-apiserver, controller manager, scheduler and kwok")
    _kwokctl(
        paths,
        "create",
        "cluster",
        "--runtime=binary",
        f"--config={STAGES_FILE}",
        f"--config={paths.kwokctl_config}",
        f"--kubeconfig={paths.kubeconfig}",
        f"--kube-apiserver-binary={bins / 'kube-apiserver'}",
        f"--kube-controller-manager-binary={bins / 'kube-controller-manager'}",
        f"--kube-scheduler-binary={bins / 'kube-scheduler'}",
        f"--kwok-controller-binary={bins / 'kwok'}",
        f"--etcd-binary={bins / 'etcd'}",
        # The binary runtime makes kwok manage every node; manage only the marked fake ones.
        "--extra-args=kwok-controller=manage-all-nodes=false",
        f"--extra-args=kwok-controller=manage-nodes-with-annotation-selector={KWOK_NODE_SELECTOR}",
        f"--timeout={CREATE_TIMEOUT_S:.0f}s",
        "--wait=60s",
        what="kwokctl create cluster",
        timeout=CREATE_TIMEOUT_S + 30,
    )
    _wait_ready(paths)
    paths.state_file.write_text(json.dumps({"fingerprint": fingerprint(paths.home)}))
    progress(f"control plane up at {_server(paths)} ({time.monotonic() - start:.1f}s)")


def node_request(
    home: Path | None = None,
    labels: Mapping[str, str] | None = None,
    taints: Sequence[tuple[str, str, str]] = (),
) -> real_node.NodeRequest:
    """What `up` asks of the real node for this home's control plane (which must be up)."""
    paths = cluster_paths(home)
    return real_node.NodeRequest(
        home=paths.home,
        kubeconfig=paths.kubeconfig,
        pki_dir=paths.cluster_dir / "pki",
        server=_server(paths),
        labels=dict(labels or {}),
        taints=tuple(taints),
    )


def _stop_own_node(paths: ClusterPaths, progress: Progress) -> None:
    # Another home's node is not ours to stop (one real node per machine).
    if real_node.running_home() == paths.home:
        real_node.down(progress=progress)


def _kwokctl_configuration(paths: ClusterPaths) -> str:
    """Loopback only: the components must not be reachable from other hosts. The API server
    advertises the real node's IP, where the node relays to it, so the `kubernetes` Service
    works from pods; its certificate names that IP and the Service's. The same control plane
    serves with or without the real node, so adding the node never restarts it."""
    pki = paths.cluster_dir / "pki"
    apiserver_args = {
        "advertise-address": real_node.NODE_IP,
        "service-cluster-ip-range": real_node.SERVICE_CIDR,
        # The node's name does not resolve (no DNS leaves the machine): use its InternalIP.
        "kubelet-preferred-address-types": "InternalIP",
        # `kubectl logs/exec` on the real node: kubelet trusts the CA, authorizes by webhook.
        "kubelet-client-certificate": str(pki / "admin.crt"),
        "kubelet-client-key": str(pki / "admin.key"),
    }
    config = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokctlConfiguration",
        "options": {
            "bindAddress": "127.0.0.1",
            "kubeApiserverCertSANs": [real_node.NODE_IP, real_node.KUBERNETES_SERVICE_IP],
        },
        # Not --extra-args: kwokctl v0.8.0 panics when two components get several each.
        "componentsPatches": [
            {
                "name": "kube-apiserver",
                "extraArgs": [{"key": k, "value": v} for k, v in apiserver_args.items()],
            }
        ],
    }
    return json.dumps(config, indent=2) + "\n"


def _wait_ready(paths: ClusterPaths) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not is_healthy(paths.home):
        if time.monotonic() > deadline:
            raise ClusterError(
                f"kube-apiserver did not become ready within {READY_TIMEOUT_S:.0f}s; "
                f"logs: {paths.cluster_dir / 'logs'}"
            )
        time.sleep(0.5)


def _server(paths: ClusterPaths) -> str:
    try:
        return kubectl(
            "config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}",
            kubeconfig=paths.kubeconfig, timeout=10,
        ).strip()  # fmt: skip
    except (ClusterError, toolchain.ToolchainError):
        return "unknown"


def _apply_crds(paths: ClusterPaths, crds_dir: Path, progress: Progress, start: float) -> None:
    files = crd_files(crds_dir)
    if not files:
        progress(f"no CRDs in {crds_dir}, skipping")
        return
    file_args = [f"--filename={f}" for f in files]
    # Server-side apply: large CRD schemas overflow the client-side last-applied annotation.
    kubectl("apply", "--server-side", "--force-conflicts", *file_args, kubeconfig=paths.kubeconfig)
    kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", *file_args,
        kubeconfig=paths.kubeconfig, timeout=75,
    )  # fmt: skip
    progress(f"{len(files)} CRDs established ({time.monotonic() - start:.1f}s)")


def crd_files(crds_dir: Path) -> list[Path]:
    """The CRD manifests of a folder: every *.yaml except kustomization.yaml."""
    if not crds_dir.is_dir():
        return []
    return sorted(p for p in crds_dir.glob("*.yaml") if p.name != "kustomization.yaml")


def _register_nodes(paths: ClusterPaths, progress: Progress, start: float) -> None:
    nodes = node_manifests()
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes})
    kubectl("apply", "--filename=-", kubeconfig=paths.kubeconfig, input_text=manifest)
    kubectl(
        "wait", "--for=condition=Ready", "--timeout=60s", "node", f"--selector={POOL_LABEL}",
        kubeconfig=paths.kubeconfig, timeout=75,
    )  # fmt: skip
    progress(f"{len(nodes)} fake nodes ready ({time.monotonic() - start:.1f}s)")


# ---------------------------------------------------------------------------------------------
# stale clusters


def _clean_stale(paths: ClusterPaths, progress: Progress) -> None:
    """Stop whatever an earlier run left: the real node (its pods are deleted through the API
    server, so it goes first), kwokctl's own stop, then leftover processes."""
    _stop_own_node(paths, progress)
    ports = _recorded_ports(paths)
    if paths.cluster_dir.exists():
        try:
            _kwokctl(paths, "delete", "cluster", what="kwokctl delete cluster", timeout=60)
        except (ClusterError, toolchain.ToolchainError) as exc:
            # A half-created cluster can confuse kwokctl; the process sweep below still runs.
            progress(f"kwokctl delete failed, stopping processes directly: {exc}")
    leftovers = cluster_processes(paths.cluster_dir)
    if leftovers:
        progress(f"stopping {len(leftovers)} leftover processes: {sorted(leftovers)}")
        _terminate(leftovers)
    shutil.rmtree(paths.cluster_dir, ignore_errors=True)
    for stale in (paths.kubeconfig, paths.state_file):
        stale.unlink(missing_ok=True)
    _wait_ports_closed(ports)


def cluster_processes(cluster_dir: Path) -> list[int]:
    """Pids of processes started for this cluster: their command line names its directory."""
    # Every component runs as <cluster dir>/bin/<name> with config files under that directory.
    marker = f"{cluster_dir}/".encode()
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(entry.name))
    return pids


def _terminate(pids: Sequence[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT_S / 2
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.1)
        if not any(_alive(pid) for pid in pids):
            return
    alive = [pid for pid in pids if _alive(pid)]
    if alive:
        raise ClusterError(f"processes of the old cluster would not stop: {alive}")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _recorded_ports(paths: ClusterPaths) -> list[int]:
    """The ports kwokctl chose for the cluster, from the configuration it saved."""
    saved = paths.cluster_dir / "kwok.yaml"
    try:
        text = saved.read_text()
    except OSError:
        return []
    ports: list[int] = []
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        if key.endswith("Port") and value.strip().isdigit() and int(value) > 0:
            ports.append(int(value))
    return ports


def listening_ports() -> set[int]:
    """TCP ports in LISTEN state on this host (any address), read from /proc/net."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":  # 0A is TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _wait_ports_closed(ports: Sequence[int]) -> None:
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while open_ports := sorted(set(ports) & listening_ports()):
        if time.monotonic() > deadline:
            raise ClusterError(f"ports of the old cluster are still listening: {open_ports}")
        time.sleep(0.2)
