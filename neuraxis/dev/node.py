"""The real node of the local cluster: one kubelet that runs real containers.

Next to the KWOK pools, `neuraxis dev cluster up` starts one real node, `real-0`:

- a bridge `nx0` with 10.88.0.1/16 (the node IP) and a CNI conflist (bridge without gateway
  or masquerade, host-local IPAM) for Debian's CNI plugins and runc;
- containerd v2 (built by the toolchain) whose root, the image store, is a persistent cache
  outside the checkout, so imported images survive `cluster down`/`up`;
- kubelet and kube-proxy (iptables mode) from the Kubernetes table, with certificates signed
  by kwokctl's CA; CoreDNS for cluster.local on 10.88.0.1:53, forwarding nothing;
- a relay from 10.88.0.1:<apiserver port> to the API server on loopback, where the
  `kubernetes` Service points (the apiserver advertises 10.88.0.1).

Traffic stays on the machine: the global ip_forward stays 0 and nothing is masqueraded out.
Service DNAT between pods on the bridge needs br_netfilter's bridge-nf-call-iptables=1 and, on
this kernel (6.18, measured), forwarding on the bridge: without it the DNAT'ed SYN is dropped
(br_netfilter's "bridged DNAT without ip_forward" path does not deliver it). So forwarding is
on for `nx0` only (net.ipv4.conf.nx0.forwarding, gone with the bridge), and the mangle FORWARD
chain drops whatever would be routed from the bridge to any other interface (chain
NX-NODE-ISOLATE), before kube-proxy's filter rules see it.

Every host change is written to a state file before it is made, so `down`, or the next `up`
after a crash, undoes it: processes, mounts under the node's folders, kubepods cgroups, the
bridge and veths, sysctls (kubelet sets kernel.panic and friends), iptables chains (kubelet's
canaries, kube-proxy's KUBE-*, the portmap plugin's CNI-*, NX-NODE-ISOLATE), conntrack entries
of the pod subnet, /var/log/containers links and the fixed paths kubelet, libcni and the shims
write to (FIXED_HOST_PATHS) when the node created them.

Needs root. One real node per machine. Standard library only, like the rest of neuraxis.dev.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuraxis.dev import toolchain

NODE_NAME = "real-0"
NODE_SELECTOR = f"spec.nodeName={NODE_NAME}"
BRIDGE = "nx0"
NODE_IP = "10.88.0.1"
POD_SUBNET = "10.88.0.0/16"
POD_RANGE = ("10.88.1.1", "10.88.255.254")
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
CLUSTER_DOMAIN = "cluster.local"
POOL_LABEL = "neuraxis.dev/pool"
NODE_POOL = "real"
CNI_NETWORK = "neuraxis-node"
CRI_NAMESPACE = "k8s.io"
PAUSE_IMAGE = "neuraxis.local/pause:3.10"
BUSYBOX_IMAGE = "neuraxis.local/busybox:1.35"
# The toolset tables the node runs from.
NODE_TOOLS = ("kubernetes", "containerd", "coredns")
# Machine-wide on purpose (one node per machine) and short: unix socket paths are limited to
# 108 bytes, which a deep $NEURAXIS_HOME would overflow.
RUN_DIR = Path("/run/neuraxis-node")
UNIX_PATH_MAX = 108
CACHE_ENV = "NEURAXIS_NODE_CACHE"
RUNC = Path("/usr/sbin/runc")
CNI_BIN_DIR = Path("/usr/lib/cni")
CONTAINER_LOG_LINKS = Path("/var/log/containers")
# Fixed paths outside the node's folders that kubelet (log links, its device-plugin socket),
# libcni (result cache) and containerd's shims (fifos, runc state) write to whatever the
# configuration says. Those that did not exist before the node started are removed with it.
FIXED_HOST_PATHS = (
    CONTAINER_LOG_LINKS,
    Path("/var/lib/kubelet"),
    Path("/var/lib/cni"),
    Path("/run/containerd"),
)
CGROUP_ROOT = Path("/sys/fs/cgroup")
KUBEPODS = "kubepods"
# Chains created by kubelet (KUBE-FIREWALL, canaries, hints), kube-proxy, CNI's portmap and
# this module (ISOLATION_CHAIN).
CHAIN_PREFIXES = ("KUBE-", "CNI-", "NX-NODE-")
ISOLATION_CHAIN = "NX-NODE-ISOLATE"
IPTABLES_TABLES = ("filter", "nat", "mangle")
# Every sysctl that kubelet, kube-proxy or this module may change, recorded before the start.
HOST_SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
    "net.netfilter.nf_conntrack_tcp_be_liberal",
)
# Host binaries the node needs -> the Debian package that provides them.
HOST_PACKAGES: Mapping[Path, str] = {
    RUNC: "runc",
    CNI_BIN_DIR / "bridge": "containernetworking-plugins",
    CNI_BIN_DIR / "host-local": "containernetworking-plugins",
    CNI_BIN_DIR / "loopback": "containernetworking-plugins",
    CNI_BIN_DIR / "portmap": "containernetworking-plugins",
    Path("/usr/sbin/iptables"): "iptables",
    Path("/usr/sbin/ip6tables"): "iptables",
    Path("/usr/sbin/conntrack"): "conntrack",
    Path("/bin/busybox"): "busybox-static",
}
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
READY_TIMEOUT_S = 90.0
POD_DELETE_TIMEOUT_S = 40.0
STOP_TIMEOUT_S = 10.0
PAUSE_SOURCE = Path(__file__).with_name("pause.c")

Progress = Callable[[str], None]


class NodeError(RuntimeError):
    """The real node could not be set up, started or stopped; the message names the step."""


def _stderr_progress(message: str) -> None:
    print(f"[node] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# locations


def cache_dir() -> Path:
    """The node's persistent cache: containerd's root (images) and built image archives."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "neuraxis" / "node"


@dataclass(frozen=True)
class NodePaths:
    """Where one run of the node keeps its files (`home` is the cluster's NEURAXIS_HOME)."""

    home: Path

    @property
    def node_dir(self) -> Path:
        return self.home / "node"

    @property
    def etc(self) -> Path:
        return self.node_dir / "etc"

    @property
    def pki(self) -> Path:
        return self.node_dir / "pki"

    @property
    def logs(self) -> Path:
        return self.node_dir / "logs"

    @property
    def kubelet_root(self) -> Path:
        # Machine-wide like the sockets: kubelet puts unix sockets here, and a checkout deep in
        # the file system would overflow their 108-byte limit under NEURAXIS_HOME.
        return RUN_DIR / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.node_dir / "pod-logs"

    @property
    def containerd_state(self) -> Path:
        return self.node_dir / "containerd-state"

    @property
    def runc_root(self) -> Path:
        return self.node_dir / "runc"

    @property
    def cni_conf_dir(self) -> Path:
        return self.node_dir / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.node_dir / "cni" / "ipam"

    @property
    def volume_plugins(self) -> Path:
        return self.node_dir / "volume-plugins"

    def config(self, name: str) -> Path:
        return self.etc / name


def containerd_socket() -> Path:
    return RUN_DIR / "containerd.sock"


def containerd_root() -> Path:
    return cache_dir() / "containerd"


def state_file() -> Path:
    """What the running node changed on this host (machine-wide: one node per machine)."""
    return cache_dir() / "host-state.json"


def _lock_file() -> Path:
    return cache_dir() / "node.lock"


# ---------------------------------------------------------------------------------------------
# labels and taints


def parse_label(text: str) -> tuple[str, str]:
    """`key=value` -> (key, value); raises NodeError naming the flag."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise NodeError(f"--node-label {text!r}: expected key=value")
    return key, value


def parse_taint(text: str) -> tuple[str, str, str]:
    """`key=value:Effect` or `key:Effect` -> (key, value, effect)."""
    spec, sep, effect = text.rpartition(":")
    if not sep or effect not in TAINT_EFFECTS:
        raise NodeError(
            f"--node-taint {text!r}: expected key=value:Effect with Effect one of "
            f"{', '.join(TAINT_EFFECTS)}"
        )
    key, _, value = spec.partition("=")
    if not key:
        raise NodeError(f"--node-taint {text!r}: the key is empty")
    return key, value, effect


# ---------------------------------------------------------------------------------------------
# host packages (runc, CNI plugins, iptables, conntrack, busybox)


def missing_host_packages() -> list[str]:
    """The Debian packages whose binaries are missing, sorted, without duplicates."""
    return sorted({pkg for path, pkg in HOST_PACKAGES.items() if not os.access(path, os.X_OK)})


def install_host_packages(progress: Progress = _stderr_progress) -> list[str]:
    """Install the missing packages with apt-get (only when a binary is missing).

    Returns the packages installed; idempotent: a second run checks files and returns [].
    """
    missing = missing_host_packages()
    if not missing:
        progress("host packages present: " + ", ".join(sorted(set(HOST_PACKAGES.values()))))
        return []
    if os.geteuid() != 0:
        raise NodeError(f"installing {', '.join(missing)} needs root (apt-get)")
    progress(f"installing Debian packages: {', '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-q"], what="apt-get update", timeout=600, env=env)
    _run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        what="apt-get install", timeout=1200, env=env,
    )  # fmt: skip
    still = missing_host_packages()
    if still:
        raise NodeError(f"apt-get install finished but these are still missing: {still}")
    return missing


# ---------------------------------------------------------------------------------------------
# commands


def _run(
    argv: Sequence[str | Path],
    *,
    what: str,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
    input_bytes: bytes | None = None,
    check: bool = True,
) -> str:
    """Run a command; raises NodeError naming `what` with the output's tail on failure."""
    try:
        proc = subprocess.run(
            [str(a) for a in argv],
            capture_output=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            input=input_bytes,
            stdin=None if input_bytes is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise NodeError(f"{what}: timed out after {timeout:.0f}s") from exc
    except OSError as exc:
        raise NodeError(f"{what}: could not run {argv[0]}: {exc}") from exc
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    if check and proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-20:])
        raise NodeError(f"{what}: `{Path(str(argv[0])).name}` exited {proc.returncode}\n{tail}")
    return proc.stdout.decode(errors="replace")


def _kubectl(
    kubeconfig: Path, *args: str, what: str, timeout: float = 60.0, check: bool = True
) -> str:
    argv: list[str | Path] = [toolchain.tool_path("kubectl"), f"--kubeconfig={kubeconfig}", *args]
    return _run(argv, what=what, timeout=timeout, check=check)


def ctr_argv(home: Path | None = None) -> list[str]:
    """`ctr --address <socket>` of the real node's containerd (add `--namespace k8s.io`: the
    namespace kubelet's images live in). The socket is machine-wide, one node per machine;
    `home` refuses a node that another NEURAXIS_HOME started."""
    owner = running_home()
    if home is not None and owner is not None and owner != home.resolve():
        raise NodeError(f"the real node on this machine belongs to NEURAXIS_HOME={owner}")
    return [str(toolchain.tool_path("ctr")), "--address", str(containerd_socket())]


def _ctr(*args: str) -> list[str]:
    return [*ctr_argv(), "--namespace", CRI_NAMESPACE, *args]


def is_running(home: Path | None = None) -> bool:
    """Whether a started node runs (of `home` when given): recorded complete, processes alive."""
    state = read_host_state()
    if not state.get("complete") or (home is not None and state.get("home") != str(home.resolve())):
        return False
    return all(_is_running(record) for record in state.get("processes", {}).values())


def _require_containerd() -> None:
    if not containerd_socket().is_socket():
        raise NodeError(
            f"the real node's containerd is not running ({containerd_socket()} is missing); "
            "start it with `neuraxis dev cluster up`"
        )


def has_image(ref: str) -> bool:
    """Whether the node's containerd holds the image `ref` (e.g. neuraxis.local/busybox:1.35)
    whole and unpacked. An import cut short (a killed run) can leave the record without its
    snapshot: `ctr` lists it, kubelet answers ErrImageNeverPull; such an image is imported again."""
    _require_containerd()
    out = _run(_ctr("images", "check", f"name=={ref}"), what="ctr images check")
    return any(image_usable(line, ref) for line in out.splitlines()[1:])


def image_usable(check_line: str, ref: str) -> bool:
    """One row of `ctr images check` (REF TYPE DIGEST STATUS SIZE UNPACKED): `ref`, complete,
    unpacked."""
    fields = check_line.split()
    return bool(fields) and fields[0] == ref and "complete" in fields and fields[-1] == "true"


def import_archive(path: Path, *, progress: Progress = _stderr_progress) -> None:
    """Import a docker-archive or OCI tarball into the node's containerd (kubelet sees it)."""
    _require_containerd()
    start = time.monotonic()
    _run(_ctr("images", "import", str(path)), what=f"ctr import {path.name}", timeout=1800)
    progress(f"imported {path.name} ({time.monotonic() - start:.1f}s)")


# ---------------------------------------------------------------------------------------------
# host state: what the node changed, recorded before each change


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def read_host_state() -> dict[str, Any]:
    """The recorded host changes of this boot ({} when none; a state of an earlier boot is
    void: a reboot undid its changes)."""
    try:
        data = json.loads(state_file().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("boot_id") != _boot_id():
        return {}
    return data


def _write_host_state(state: Mapping[str, Any]) -> None:
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


def _update_host_state(**changes: Any) -> dict[str, Any]:
    state = {**read_host_state(), **changes}
    _write_host_state(state)
    return state


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    # Two `up`s at once (a test session and `make cluster`) must not build two nodes.
    path = _lock_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# sysctls


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def read_sysctl(key: str) -> str | None:
    try:
        return " ".join(_sysctl_path(key).read_text().split())
    except OSError:
        return None


def _write_sysctl(key: str, value: str) -> None:
    try:
        _sysctl_path(key).write_text(value + "\n")
    except OSError as exc:
        raise NodeError(f"sysctl {key}={value}: {exc}") from exc


def _record_sysctls() -> dict[str, str]:
    """The current values of every sysctl the node may change (before it changes any)."""
    return {key: value for key in HOST_SYSCTLS if (value := read_sysctl(key)) is not None}


def _restore_sysctls(original: Mapping[str, str], progress: Progress) -> None:
    for key, value in sorted(original.items()):
        if read_sysctl(key) != value:
            _write_sysctl(key, value)
            progress(f"restored {key}={value}")


# ---------------------------------------------------------------------------------------------
# network: bridge and CNI


def _interfaces() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def _create_bridge() -> None:
    if BRIDGE in _interfaces():
        raise NodeError(f"bridge {BRIDGE} exists although no node is recorded; remove it first")
    _run(["ip", "link", "add", BRIDGE, "type", "bridge"], what=f"create bridge {BRIDGE}")
    _run(["ip", "addr", "add", f"{NODE_IP}/16", "dev", BRIDGE], what=f"address {BRIDGE}")
    _run(["ip", "link", "set", BRIDGE, "up"], what=f"bring {BRIDGE} up")


def _flush_pod_conntrack() -> None:
    """Drop the kernel's connection-tracking entries of pod addresses (they would otherwise
    linger until they time out); `conntrack -D` exits 1 when none match."""
    if shutil.which("conntrack") is None:
        return
    for direction in ("--orig-src", "--orig-dst"):
        _run(["conntrack", "-D", direction, POD_SUBNET], what="conntrack -D", check=False)


def _require_br_netfilter() -> None:
    if not Path("/proc/sys/net/bridge").is_dir():
        raise NodeError(
            "the kernel has no br_netfilter (/proc/sys/net/bridge is missing): Service traffic "
            "between pods needs it; load the module (`modprobe br_netfilter`) or use "
            "--no-real-node"
        )


def _isolate_bridge() -> None:
    """Drop what would be routed from the bridge to another interface (mangle runs before
    filter, where kube-proxy prepends ACCEPT rules of its own)."""
    table = ["iptables", "-w", "-t", "mangle"]
    _run([*table, "-N", ISOLATION_CHAIN], what=f"iptables -N {ISOLATION_CHAIN}")
    _run(
        [*table, "-A", ISOLATION_CHAIN, "-i", BRIDGE, "!", "-o", BRIDGE, "-m", "comment",
         "--comment", "neuraxis node: nothing leaves the bridge", "-j", "DROP"],
        what="iptables isolation rule",
    )  # fmt: skip
    _run([*table, "-I", "FORWARD", "1", "-j", ISOLATION_CHAIN], what="iptables FORWARD jump")


def _bridge_ports() -> list[str]:
    ports = Path("/sys/class/net") / BRIDGE / "brif"
    return sorted(os.listdir(ports)) if ports.is_dir() else []


def _delete_bridge(progress: Progress) -> None:
    for port in _bridge_ports():
        # A veth whose pod was never torn down by CNI; deleting one end removes both.
        _run(["ip", "link", "del", port], what=f"delete veth {port}", check=False)
        progress(f"deleted leftover veth {port}")
    if BRIDGE in _interfaces():
        _run(["ip", "link", "del", BRIDGE], what=f"delete bridge {BRIDGE}")


def cni_conflist(paths: NodePaths) -> dict[str, Any]:
    """Bridge without gateway or masquerade: isGateway would make the plugin turn on
    ip_forward; the gateway address is the bridge's own (set by `_create_bridge`)."""
    first, last = POD_RANGE
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(paths.cni_ipam_dir),
                    "ranges": [
                        [
                            {
                                "subnet": POD_SUBNET,
                                "rangeStart": first,
                                "rangeEnd": last,
                                "gateway": NODE_IP,
                            }
                        ]
                    ],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


# ---------------------------------------------------------------------------------------------
# certificates (openssl, signed by kwokctl's CA)


def _issue_client_cert(
    pki_dir: Path, out_dir: Path, name: str, subject: str, *, server_ips: Sequence[str] = ()
) -> tuple[Path, Path]:
    """A key and a certificate for `subject`, signed by the control plane's CA."""
    key, csr, crt = (out_dir / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    ext_file = out_dir / f"{name}.ext"
    usage = "clientAuth,serverAuth" if server_ips else "clientAuth"
    lines = ["basicConstraints=CA:FALSE", "keyUsage=digitalSignature,keyEncipherment"]
    lines.append(f"extendedKeyUsage={usage}")
    if server_ips:
        lines.append("subjectAltName=" + ",".join(f"IP:{ip}" for ip in server_ips))
    ext_file.write_text("\n".join(lines) + "\n")
    what = f"certificate for {subject}"
    _run(["openssl", "genrsa", "-out", key, "2048"], what=what)
    _run(["openssl", "req", "-new", "-key", key, "-subj", subject, "-out", csr], what=what)
    _run(
        ["openssl", "x509", "-req", "-in", csr, "-CA", pki_dir / "ca.crt",
         "-CAkey", pki_dir / "ca.key", "-CAcreateserial", "-CAserial", out_dir / "ca.srl",
         "-days", "30", "-extfile", ext_file, "-out", crt],
        what=what,
    )  # fmt: skip
    key.chmod(0o600)
    return crt, key


def _client_kubeconfig(server: str, ca: Path, crt: Path, key: Path) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "neuraxis", "cluster": {"server": server,
                                                       "certificate-authority": str(ca)}}],
        "users": [{"name": "node", "user": {"client-certificate": str(crt),
                                            "client-key": str(key)}}],
        "contexts": [{"name": "neuraxis", "context": {"cluster": "neuraxis", "user": "node"}}],
        "current-context": "neuraxis",
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# images built offline (docker-archive tarballs imported with ctr)


@dataclass(frozen=True)
class ImageEntry:
    """One file, directory or symbolic link of an image layer."""

    path: str
    mode: int = 0o755
    data: bytes | None = None
    link: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.data is None and self.link is None


def layer_tar(entries: Sequence[ImageEntry]) -> bytes:
    """A deterministic layer: sorted names, owner root, time 0 (same input, same digest)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(entries, key=lambda e: e.path):
            info = tarfile.TarInfo(entry.path)
            info.mode, info.mtime, info.uid, info.gid = entry.mode, 0, 0, 0
            if entry.link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, entry.link
                tar.addfile(info)
            elif entry.data is not None:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
            else:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
    return buffer.getvalue()


def docker_archive(ref: str, layer: bytes, container_config: Mapping[str, Any], out: Path) -> Path:
    """Write a one-layer docker-archive (what `docker save` writes) that `ctr import` reads."""
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": dict(container_config),
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "neuraxis.dev.node (built offline)"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = f"{diff_id.removeprefix('sha256:')}/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [ref], "Layers": [layer_name]}]
    members = {
        "manifest.json": json.dumps(manifest).encode(),
        config_name: config_bytes,
        layer_name: layer,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp")
    with tarfile.open(temporary, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    os.replace(temporary, out)
    return out


def _image_archive_path(name: str, inputs: bytes) -> Path:
    return cache_dir() / "images" / f"{name}-{hashlib.sha256(inputs).hexdigest()[:12]}.tar"


def pause_archive() -> Path:
    """The sandbox image: a static build of pause.c (cached by the source's digest)."""
    source = PAUSE_SOURCE.read_bytes()
    out = _image_archive_path("pause", source)
    if out.is_file():
        return out
    build = out.with_name("pause-build")
    build.mkdir(parents=True, exist_ok=True)
    binary = build / "pause"
    gcc: list[str | Path] = ["gcc", "-Os", "-static", "-s", "-o", binary, PAUSE_SOURCE]
    _run(gcc, what="gcc pause.c")
    layer = layer_tar([ImageEntry("pause", 0o755, binary.read_bytes())])
    config = {"Entrypoint": ["/pause"], "User": "65535:65535"}
    shutil.rmtree(build, ignore_errors=True)
    return docker_archive(PAUSE_IMAGE, layer, config, out)


def busybox_archive(
    ref: str = BUSYBOX_IMAGE, extra_binaries: Mapping[str, Path] | None = None
) -> Path:
    """A tiny image for tests: Debian's static busybox with its applets, passwd and /tmp, plus
    `extra_binaries` (name in /bin -> static binary on the host, e.g. the toolset's kubectl)."""
    binary = Path("/bin/busybox")
    if not os.access(binary, os.X_OK):
        raise NodeError("/bin/busybox is missing; run `neuraxis dev node deps`")
    files = {"busybox": binary.read_bytes()}
    files.update({name: path.read_bytes() for name, path in (extra_binaries or {}).items()})
    digest = hashlib.sha256(ref.encode())
    for name, data in sorted(files.items()):
        digest.update(name.encode() + hashlib.sha256(data).digest())
    out = _image_archive_path(ref.rsplit("/", 1)[-1].replace(":", "-"), digest.digest())
    if out.is_file():
        return out
    applets = _run([binary, "--list"], what="busybox --list").split()
    entries = [ImageEntry(d) for d in ("bin", "etc", "root", "home", "var")]
    entries += [ImageEntry("tmp", 0o1777)]
    entries += [ImageEntry(f"bin/{name}", 0o755, data) for name, data in files.items()]
    entries += [ImageEntry(f"bin/{a}", 0o777, link="busybox") for a in applets if a not in files]
    passwd = "root:x:0:0:root:/root:/bin/sh\nuser:x:10001:10001:user:/tmp:/bin/sh\n"
    passwd += "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    group = "root:x:0:\nuser:x:10001:\nnogroup:x:65534:\n"
    entries += [ImageEntry("etc/passwd", 0o644, passwd.encode())]
    entries += [ImageEntry("etc/group", 0o644, group.encode())]
    config = {"Env": ["PATH=/bin"], "Cmd": ["sh"]}
    return docker_archive(ref, layer_tar(entries), config, out)


def _ensure_images(progress: Progress) -> None:
    for ref, archive in ((PAUSE_IMAGE, pause_archive), (BUSYBOX_IMAGE, busybox_archive)):
        if not has_image(ref):
            import_archive(archive(), progress=progress)


# ---------------------------------------------------------------------------------------------
# configuration files


def containerd_config(paths: NodePaths) -> str:
    """containerd v2 configuration: every path inside the node's folders, nothing in /etc,
    /opt, /var/lib or /run/containerd (NRI, CDI and the opt plugin are turned off)."""
    q = json.dumps  # TOML basic strings read JSON string escapes.
    return f"""version = 3
root = {q(str(containerd_root()))}
state = {q(str(paths.containerd_state))}
imports = []
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.nri.v1.nri"]

[grpc]
  address = {q(str(containerd_socket()))}

[ttrpc]
  address = {q(str(RUN_DIR / "containerd.sock.ttrpc"))}

[plugins."io.containerd.shim.v1.manager"]
  socket_dir = {q(str(RUN_DIR / "s"))}

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = {q(PAUSE_IMAGE)}

[plugins."io.containerd.cri.v1.runtime"]
  # The VM withholds CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below its own.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  cdi_spec_dirs = []
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = {q(str(RUNC))}
        Root = {q(str(paths.runc_root))}
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [{q(str(CNI_BIN_DIR))}]
    conf_dir = {q(str(paths.cni_conf_dir))}
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def kubelet_config(
    paths: NodePaths, ca: Path, taints: Sequence[tuple[str, str, str]], healthz_port: int
) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # cgroup v1 on this VM: a warning instead of a refusal.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": "/",
        "cgroupsPerQOS": True,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{containerd_socket()}",
        "address": NODE_IP,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDNS": [NODE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(paths.config("resolv.conf")),
        "podLogsDir": str(paths.pod_logs),
        "volumePluginDir": str(paths.volume_plugins),
        "registerNode": True,
        "registerWithTaints": [{"key": k, "value": v, "effect": e} for k, v, e in taints],
        "rotateCertificates": False,
        "serializeImagePulls": False,
        "nodeStatusUpdateFrequency": "4s",
        "syncFrequency": "10s",
        # 100 turns kubelet's image garbage collection off: on a developer's disk, which caches
        # and builds fill, it removed the (unused at that moment) test images once a 9 GB image
        # import crossed the threshold, and pods with pullPolicy Never then failed with
        # ErrImageNeverPull. `neuraxis dev image` prunes its own old tags instead.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 90,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "2%",
            "imagefs.available": "2%",
        },
    }


def kube_proxy_config(kubeconfig: Path, healthz_port: int, metrics_port: int) -> dict[str, Any]:
    """iptables mode, touching as little of the host as it can: conntrack limits and timeouts
    are left as they are (0) and NodePorts do not reach localhost (no route_localnet)."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_IP,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "nodePortAddresses": [f"{NODE_IP}/32"],
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False, "syncPeriod": "30s"},
    }


def corefile(kubeconfig: Path, ready_port: int) -> str:
    """cluster.local from the API server; every other name is NXDOMAIN (nothing forwarded)."""
    return f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {NODE_IP}
    errors
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
.:53 {{
    bind {NODE_IP}
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def _write_json(path: Path, data: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _process_start_time(pid: int) -> str | None:
    """The start time field of /proc/<pid>/stat: a pid plus this names one process for good."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def _start_process(
    paths: NodePaths, name: str, argv: Sequence[str | Path], *, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Start a daemon in its own session, logging to logs/<name>.log; records it first thing."""
    log_path = paths.logs / f"{name}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [str(a) for a in argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=paths.node_dir,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
    record = {"pid": proc.pid, "start": _process_start_time(proc.pid), "log": str(log_path)}
    processes = dict(read_host_state().get("processes", {}))
    processes[name] = record
    _update_host_state(processes=processes)
    return record


def _is_running(record: Mapping[str, Any]) -> bool:
    pid, started = record.get("pid"), record.get("start")
    return isinstance(pid, int) and started is not None and _process_start_time(pid) == started


def _stop_processes(pids: Sequence[int], what: str, *, graceful: bool = True) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_S (only SIGKILL unless `graceful`); raises when
    something survives."""
    signals = (signal.SIGTERM, signal.SIGKILL) if graceful else (signal.SIGKILL,)
    for sig in signals:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline and any(_process_start_time(p) for p in pids):
            time.sleep(0.1)
        if not any(_process_start_time(p) for p in pids):
            return
    alive = [p for p in pids if _process_start_time(p)]
    raise NodeError(f"stopping {what}: processes would not stop: {alive}")


def _stop_recorded(name: str, record: Mapping[str, Any]) -> None:
    if _is_running(record):
        _stop_processes([int(record["pid"])], name)


def processes_mentioning(markers: Sequence[str]) -> list[int]:
    """Pids whose command line contains one of `markers` (folder paths of the node)."""
    encoded = [m.encode() for m in markers]
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes()
            if any(m in cmdline for m in encoded) and _process_start_time(int(entry.name)):
                found.append(int(entry.name))
    return sorted(found)


def _wait_until(check: Callable[[], bool], *, what: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tail = "\n".join(_tail(log, 15))
            raise NodeError(f"{what} within {timeout:.0f}s; log {log}:\n{tail}")
        time.sleep(0.2)


def _tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


# ---------------------------------------------------------------------------------------------
# the API server relay (pods reach the loopback-bound API server on the node IP)


def serve_relay(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    """Copy bytes between clients on `listen` and `upstream` (TLS passes through untouched)."""
    server = socket.create_server(listen, reuse_port=False)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        client, _ = server.accept()
        threading.Thread(target=_relay_connection, args=(client, upstream), daemon=True).start()


def _relay_connection(client: socket.socket, upstream: tuple[str, int]) -> None:
    try:
        remote = socket.create_connection(upstream, timeout=10)
    except OSError:
        client.close()
        return
    remote.settimeout(None)
    threading.Thread(target=_pump, args=(remote, client), daemon=True).start()
    _pump(client, remote)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    # Half-close so the other direction can finish, then let both ends go.
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
    with contextlib.suppress(OSError):
        source.close()


# ---------------------------------------------------------------------------------------------
# up


@dataclass(frozen=True)
class NodeInfo:
    name: str
    node_ip: str
    reused: bool
    elapsed_s: float


@dataclass(frozen=True)
class NodeRequest:
    """What `up` is asked for: the control plane to join, and the node's labels and taints."""

    home: Path
    kubeconfig: Path
    pki_dir: Path
    server: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[tuple[str, str, str], ...] = ()

    def fingerprint(self) -> str:
        """What a running node must have been made from to be reused as it is."""
        toolset = toolchain.load_toolset()
        data = {
            "tools": [toolset.tool(name).build_pins() for name in NODE_TOOLS],
            "server": self.server,
            "ca": hashlib.sha256((self.pki_dir / "ca.crt").read_bytes()).hexdigest(),
            "labels": dict(sorted(self.labels.items())),
            "taints": [list(t) for t in self.taints],
            "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def up(request: NodeRequest, *, progress: Progress = _stderr_progress) -> NodeInfo:
    """Start the real node (or reuse a healthy one of the same request); waits for Ready."""
    start = time.monotonic()
    if os.geteuid() != 0:
        raise NodeError("the real node needs root (bridge, mounts, cgroups, iptables)")
    missing = missing_host_packages()
    if missing:
        raise NodeError(f"missing Debian packages {missing}: run `neuraxis dev node deps`")
    toolchain.build(only=NODE_TOOLS, progress=progress)
    with _machine_lock():
        state = read_host_state()
        if _reusable(state, request):
            progress(f"reusing the running node {NODE_NAME}")
            return NodeInfo(NODE_NAME, NODE_IP, True, time.monotonic() - start)
        if state:
            _refuse_foreign_node(state, request)
            _teardown(state, progress)
        try:
            _start_node(request, progress, start)
        except BaseException:
            progress("start failed; undoing what was done")
            _teardown(read_host_state(), progress)
            raise
    elapsed = time.monotonic() - start
    progress(f"node {NODE_NAME} Ready ({elapsed:.1f}s)")
    return NodeInfo(NODE_NAME, NODE_IP, False, elapsed)


def _reusable(state: Mapping[str, Any], request: NodeRequest) -> bool:
    processes = state.get("processes", {})
    return (
        state.get("complete") is True
        and state.get("home") == str(request.home)
        and state.get("fingerprint") == request.fingerprint()
        and all(_is_running(record) for record in processes.values())
        and _node_ready(request.kubeconfig)
    )


def _refuse_foreign_node(state: Mapping[str, Any], request: NodeRequest) -> None:
    """Another NEURAXIS_HOME's healthy node is not ours to stop: one node per machine."""
    owner = state.get("home")
    owner_kubeconfig = state.get("kubeconfig")
    if owner == str(request.home) or not isinstance(owner_kubeconfig, str):
        return
    if all(_is_running(r) for r in state.get("processes", {}).values()) and _node_ready(
        Path(owner_kubeconfig)
    ):
        raise NodeError(
            f"a real node of NEURAXIS_HOME={owner} is running (one per machine); stop it with "
            f"`NEURAXIS_HOME={owner} neuraxis dev cluster down` or pass --no-real-node"
        )


def _start_node(request: NodeRequest, progress: Progress, start: float) -> None:
    paths = NodePaths(request.home)
    _require_br_netfilter()
    _prepare_dirs(paths)
    _update_host_state(
        boot_id=_boot_id(),
        home=str(request.home),
        kubeconfig=str(request.kubeconfig),
        node_dir=str(paths.node_dir),
        sysctls=_record_sysctls(),
        created_paths=[str(p) for p in FIXED_HOST_PATHS if not p.exists()],
        processes={},
        complete=False,
    )
    _create_bridge()
    _isolate_bridge()
    # Bridged frames go through iptables (kube-proxy's DNAT of Service traffic between pods).
    _write_sysctl("net.bridge.bridge-nf-call-iptables", "1")
    # Routing a DNAT'ed packet back into the bridge needs forwarding on the bridge itself; the
    # isolation chain keeps anything from being routed elsewhere.
    _write_sysctl(f"net.ipv4.conf.{BRIDGE}.forwarding", "1")
    _write_configs(paths, request)
    _start_containerd(paths)
    _ensure_images(progress)
    progress(f"bridge, containerd and images ready ({time.monotonic() - start:.1f}s)")
    _start_relay(paths, request.server)
    _start_coredns(paths, request)
    _start_kubelet(paths, request)
    _start_kube_proxy(paths)
    _label_node(request)
    _update_host_state(fingerprint=request.fingerprint(), complete=True)


def _prepare_dirs(paths: NodePaths) -> None:
    # Per run: whatever an earlier run left in these was torn down with it.
    for stale in (paths.node_dir, RUN_DIR):
        shutil.rmtree(stale, ignore_errors=True)
    for folder in (
        paths.etc, paths.pki, paths.logs, paths.kubelet_root, paths.pod_logs,
        paths.containerd_state, paths.runc_root, paths.cni_conf_dir, paths.cni_ipam_dir,
        paths.volume_plugins, RUN_DIR, containerd_root(),
    ):  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)


def _write_configs(paths: NodePaths, request: NodeRequest) -> None:
    ca = request.pki_dir / "ca.crt"
    node_crt, node_key = _issue_client_cert(
        request.pki_dir, paths.pki, "kubelet", f"/O=system:nodes/CN=system:node:{NODE_NAME}"
    )
    _write_json(
        paths.config("kubelet.kubeconfig"),
        _client_kubeconfig(request.server, ca, node_crt, node_key),
    )
    proxy_crt, proxy_key = _issue_client_cert(
        request.pki_dir, paths.pki, "kube-proxy", "/CN=system:kube-proxy"
    )
    _write_json(
        paths.config("kube-proxy.kubeconfig"),
        _client_kubeconfig(request.server, ca, proxy_crt, proxy_key),
    )
    conflist = paths.cni_conf_dir / f"10-{CNI_NETWORK}.conflist"
    _write_json(conflist, cni_conflist(paths))
    paths.config("containerd.toml").write_text(containerd_config(paths))
    # Pods with dnsPolicy Default get the cluster DNS too: nothing may resolve off the machine.
    paths.config("resolv.conf").write_text(f"nameserver {NODE_IP}\n")


def _start_containerd(paths: NodePaths) -> None:
    containerd = toolchain.tool_path("containerd")
    # containerd finds its shim on PATH.
    env = {**os.environ, "PATH": f"{containerd.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    record = _start_process(
        paths, "containerd", [containerd, f"--config={paths.config('containerd.toml')}"], env=env
    )

    _wait_until(
        lambda: containerd_socket().is_socket() and _ctr_ok(),
        what="containerd did not answer",
        timeout=30,
        log=Path(record["log"]),
    )


def _ctr_ok() -> bool:
    try:
        _run(_ctr("version"), what="ctr version", timeout=10)
    except NodeError:
        return False
    return True


def _apiserver_port(server: str) -> int:
    match = re.fullmatch(r"https://[^:/]+:(\d+)/?", server)
    if not match:
        raise NodeError(f"cannot read the API server port from {server!r}")
    return int(match.group(1))


def _start_relay(paths: NodePaths, server: str) -> None:
    port = _apiserver_port(server)
    argv = [sys.executable, "-m", "neuraxis.dev.node", "relay", f"{NODE_IP}:{port}",
            f"127.0.0.1:{port}", str(paths.node_dir)]  # fmt: skip
    record = _start_process(paths, "apiserver-relay", argv)
    _wait_until(
        lambda: _connects(NODE_IP, port),
        what="the API server relay did not listen",
        timeout=15,
        log=Path(record["log"]),
    )


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _start_coredns(paths: NodePaths, request: NodeRequest) -> None:
    ready_port = _free_port()
    config = paths.config("Corefile")
    config.write_text(corefile(request.kubeconfig, ready_port))
    argv: list[str | Path] = [toolchain.tool_path("coredns"), "-conf", config, "-dns.port", "53"]
    record = _start_process(paths, "coredns", argv)
    _wait_until(
        lambda: _http_ok(f"http://127.0.0.1:{ready_port}/ready"),
        what="CoreDNS was not ready",
        timeout=30,
        log=Path(record["log"]),
    )


def _start_kubelet(paths: NodePaths, request: NodeRequest) -> None:
    config = kubelet_config(paths, request.pki_dir / "ca.crt", request.taints, _free_port())
    config_path = _write_json(paths.config("kubelet.json"), config)
    argv: list[str | Path] = [
        toolchain.tool_path("kubelet"),
        f"--config={config_path}",
        f"--kubeconfig={paths.config('kubelet.kubeconfig')}",
        f"--root-dir={paths.kubelet_root}",
        f"--cert-dir={paths.pki / 'kubelet-serving'}",
        f"--hostname-override={NODE_NAME}",
        f"--node-ip={NODE_IP}",
        f"--node-labels={POOL_LABEL}={NODE_POOL}",
        "--v=2",
    ]
    record = _start_process(paths, "kubelet", argv)
    _wait_until(
        lambda: _node_ready(request.kubeconfig) or not _is_running(record),
        what=f"node {NODE_NAME} did not become Ready",
        timeout=READY_TIMEOUT_S,
        log=Path(record["log"]),
    )
    if not _is_running(record):
        raise NodeError(f"kubelet exited; log {record['log']}:\n" + "\n".join(_tail(
            Path(record["log"]), 15)))  # fmt: skip


def _node_ready(kubeconfig: Path) -> bool:
    try:
        out = _kubectl(
            kubeconfig, "get", "node", NODE_NAME, "--ignore-not-found",
            "--output=jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            what="kubectl get node", timeout=10,
        )  # fmt: skip
    except (NodeError, toolchain.ToolchainError):
        return False
    return out.strip() == "True"


def _start_kube_proxy(paths: NodePaths) -> None:
    healthz = _free_port()
    config = kube_proxy_config(paths.config("kube-proxy.kubeconfig"), healthz, _free_port())
    config_path = _write_json(paths.config("kube-proxy.json"), config)
    argv: list[str | Path] = [toolchain.tool_path("kube-proxy"), f"--config={config_path}", "--v=2"]
    record = _start_process(paths, "kube-proxy", argv)
    _wait_until(
        lambda: _http_ok(f"http://127.0.0.1:{healthz}/healthz"),
        what="kube-proxy was not healthy",
        timeout=30,
        log=Path(record["log"]),
    )


def _label_node(request: NodeRequest) -> None:
    if request.labels:
        pairs = [f"{k}={v}" for k, v in sorted(request.labels.items())]
        _kubectl(request.kubeconfig, "label", "node", NODE_NAME, "--overwrite", *pairs,
                 what="label the real node")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# down


def down(*, progress: Progress = _stderr_progress) -> bool:
    """Stop the real node and undo every host change it recorded; False when none ran."""
    start = time.monotonic()
    with _machine_lock():
        state = read_host_state()
        if not state:
            # A state of an earlier boot: its changes died with that boot, only files remain.
            state_file().unlink(missing_ok=True)
            return False
        _teardown(state, progress)
    progress(f"node stopped and host restored in {time.monotonic() - start:.1f}s")
    return True


def running_home() -> Path | None:
    """The NEURAXIS_HOME whose node this machine runs (None when none is recorded)."""
    home = read_host_state().get("home")
    return Path(home) if isinstance(home, str) else None


def _teardown(state: Mapping[str, Any], progress: Progress) -> None:
    """Undo a recorded node, step by step; every step runs, failures are reported together."""
    node_dir = Path(str(state.get("node_dir", ""))) if state.get("node_dir") else None
    kubeconfig = Path(str(state["kubeconfig"])) if state.get("kubeconfig") else None
    errors: list[str] = []

    def step(name: str, action: Callable[[], None]) -> None:
        try:
            action()
        except (NodeError, OSError, toolchain.ToolchainError) as exc:
            errors.append(f"{name}: {exc}")

    processes: Mapping[str, Mapping[str, Any]] = state.get("processes", {})
    if kubeconfig is not None:
        kubelet_up = "kubelet" in processes and _is_running(processes["kubelet"])
        step("delete pods", lambda: _delete_node_pods(kubeconfig, progress, graceful=kubelet_up))
    # kube-proxy and DNS first, kubelet before containerd: nothing restarts what was stopped.
    for name in ("kube-proxy", "coredns", "apiserver-relay", "kubelet"):
        if name in processes:
            step(f"stop {name}", functools.partial(_stop_recorded, name, processes[name]))
    step("remove containers", _remove_containers)
    if "containerd" in processes:
        step(
            "stop containerd",
            functools.partial(_stop_recorded, "containerd", processes["containerd"]),
        )
    ours = [RUN_DIR, *([node_dir] if node_dir else [])]
    step("stop shims", lambda: _stop_leftovers([str(p) for p in ours], progress))
    step("unmount", lambda: _unmount_under([*ours, containerd_root()], progress))
    step("remove cgroups", lambda: _remove_kubepods_cgroups(progress))
    step("delete bridge", lambda: _delete_bridge(progress))
    step("forget connections", _flush_pod_conntrack)
    step("remove iptables chains", lambda: remove_iptables_chains(progress))
    step("restore sysctls", lambda: _restore_sysctls(state.get("sysctls", {}), progress))
    step("remove log links", lambda: _remove_container_log_links(node_dir))
    step("remove created paths", lambda: _remove_created_paths(state.get("created_paths", [])))
    step("remove node files", lambda: _remove_run_files(node_dir))
    if kubeconfig is not None:
        step("delete Node object", lambda: _delete_node_object(kubeconfig))
    if errors:
        # Keep the state: the next `up` or `down` tries again.
        raise NodeError("tearing down the real node failed:\n" + "\n".join(errors))
    state_file().unlink(missing_ok=True)


def _delete_node_pods(kubeconfig: Path, progress: Progress, *, graceful: bool) -> None:
    """Cordon, then delete the node's pods with a short grace: kubelet stops the sandboxes,
    runs CNI DEL and unmounts volumes, which leaves little for the sweep below. Without a
    kubelet (a crashed run) nobody would confirm a graceful delete: the pods are removed at
    once, or a new kubelet would restart them."""
    if not _api_answers(kubeconfig):
        progress("the API server does not answer: the node's pods are left to the sweep")
        return
    start = time.monotonic()
    # The Node object may be missing (a kubelet that never registered): nothing to cordon.
    _kubectl(kubeconfig, "cordon", NODE_NAME, what="cordon", timeout=20, check=False)
    if graceful:
        _delete_pods(kubeconfig, "--grace-period=1")
        if _wait_pods_gone(kubeconfig, POD_DELETE_TIMEOUT_S):
            progress(f"pods deleted ({time.monotonic() - start:.1f}s)")
            return
        progress(f"pods still terminating after {POD_DELETE_TIMEOUT_S:.0f}s; removing them")
    _delete_pods(kubeconfig, "--grace-period=0", "--force")
    _wait_pods_gone(kubeconfig, 15)


def _api_answers(kubeconfig: Path) -> bool:
    try:
        _kubectl(kubeconfig, "get", "--raw=/readyz", what="API server readyz", timeout=10)
    except (NodeError, toolchain.ToolchainError):
        return False
    return True


def _delete_pods(kubeconfig: Path, *flags: str) -> None:
    _kubectl(
        kubeconfig, "delete", "pods", "--all-namespaces", f"--field-selector={NODE_SELECTOR}",
        "--wait=false", *flags, what="delete the real node's pods", timeout=30,
    )  # fmt: skip


def _wait_pods_gone(kubeconfig: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = _kubectl(
            kubeconfig, "get", "pods", "--all-namespaces", f"--field-selector={NODE_SELECTOR}",
            "--output=name", what="list the real node's pods", timeout=20,
        ).split()  # fmt: skip
        if not left:
            return True
        time.sleep(0.5)
    return False


def _remove_containers() -> None:
    """Kill and delete what kubelet left in containerd (the root is kept between runs)."""
    if not containerd_socket().is_socket() or not _ctr_ok():
        return
    tasks = _run(_ctr("tasks", "ls", "--quiet"), what="ctr tasks ls").split()
    for task in tasks:
        _run(_ctr("tasks", "kill", "--signal", "SIGKILL", task), what="ctr kill",
             check=False)  # fmt: skip
    for task in tasks:
        _run(_ctr("tasks", "delete", "--force", task), what="ctr tasks delete",
             check=False)  # fmt: skip
    containers = _run(_ctr("containers", "ls", "--quiet"), what="ctr containers ls")
    for container in containers.split():
        _run(_ctr("containers", "delete", container), what="ctr containers delete",
             check=False)  # fmt: skip


def _stop_leftovers(markers: Sequence[str], progress: Progress) -> None:
    """Shims outlive containerd; container processes may outlive their shim."""
    pids = processes_mentioning(markers) + _kubepods_pids()
    if pids:
        names = sorted({_process_name(pid) for pid in pids})
        progress(f"stopping {len(pids)} leftover processes: {', '.join(names)}")
        # Orphans of a stopped node: nothing is left to shut down gracefully, and a container's
        # pid 1 ignores SIGTERM anyway.
        _stop_processes(sorted(set(pids)), "leftover node processes", graceful=False)


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return str(pid)


def _kubepods_dirs() -> list[Path]:
    """Every cgroup directory under kubepods, in every v1 hierarchy, deepest first."""
    found: list[Path] = []
    if not CGROUP_ROOT.is_dir():
        return found
    for hierarchy in CGROUP_ROOT.iterdir():
        top = hierarchy / KUBEPODS
        if top.is_dir() and not top.is_symlink():
            found.extend(p for p in top.rglob("*") if p.is_dir())
            found.append(top)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _kubepods_pids() -> list[int]:
    pids: set[int] = set()
    for folder in _kubepods_dirs():
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (folder / "cgroup.procs").read_text().split())
    return sorted(pids)


def _remove_kubepods_cgroups(progress: Progress) -> None:
    folders = _kubepods_dirs()
    for folder in folders:
        # rmdir is how cgroup v1 removes a group; it fails while a process is inside.
        folder.rmdir()
    if folders:
        progress(f"removed {len(folders)} kubepods cgroups")


def _mount_targets() -> list[str]:
    targets: list[str] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        # Field 5 is the mount point, with spaces and such octal-escaped.
        targets.append(fields[4].encode().decode("unicode_escape"))
    return targets


def _unmount_under(folders: Sequence[Path], progress: Progress) -> None:
    prefixes = [str(f).rstrip("/") for f in folders]
    inside = [t for t in _mount_targets() if any(t == p or t.startswith(p + "/") for p in prefixes)]
    # Deepest first; a mount stacked twice on one path shows up twice.
    for target in sorted(inside, key=len, reverse=True):
        rc = subprocess.run(["umount", target], capture_output=True, check=False).returncode
        if rc != 0:
            _run(["umount", "--lazy", target], what=f"umount {target}")
    if inside:
        progress(f"unmounted {len(inside)} mounts")


def iptables_rules(tool: str, table: str) -> tuple[list[str], list[str]]:
    """(non-built-in chains, `-A` rules) of one table, from `<tool>-save`."""
    if shutil.which(f"{tool}-save") is None:
        return [], []
    out = _run([f"{tool}-save", "-t", table], what=f"{tool}-save -t {table}", check=False)
    chains, rules = [], []
    for line in out.splitlines():
        if line.startswith(":"):
            name = line[1:].split()[0]
            if name not in ("INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"):
                chains.append(name)
        elif line.startswith("-A "):
            rules.append(line)
    return chains, rules


def remove_iptables_chains(progress: Progress = _stderr_progress) -> None:
    """Remove every KUBE-*/CNI-* chain and each rule that jumps to one (IPv4 and IPv6)."""
    removed = 0
    for tool in ("iptables", "ip6tables"):
        for table in IPTABLES_TABLES:
            chains, rules = iptables_rules(tool, table)
            ours = [c for c in chains if c.startswith(CHAIN_PREFIXES)]
            for rule in rules:
                args = shlex.split(rule)
                chain, target = args[1], _jump_target(args)
                if chain not in ours and target is not None and target.startswith(CHAIN_PREFIXES):
                    _run([tool, "-w", "-t", table, "-D", chain, *args[2:]],
                         what=f"{tool} -t {table} -D {chain}")  # fmt: skip
            for chain in ours:
                _run([tool, "-w", "-t", table, "-F", chain], what=f"{tool} -F {chain}")
            for chain in ours:
                _run([tool, "-w", "-t", table, "-X", chain], what=f"{tool} -X {chain}")
            removed += len(ours)
    if removed:
        progress(f"removed {removed} iptables chains")


def _jump_target(args: Sequence[str]) -> str | None:
    for flag in ("-j", "-g"):
        if flag in args:
            index = args.index(flag)
            if index + 1 < len(args):
                return args[index + 1]
    return None


def _remove_container_log_links(node_dir: Path | None) -> None:
    """kubelet links /var/log/containers/* to the pod logs, even where the folder existed."""
    if node_dir is None or not CONTAINER_LOG_LINKS.is_dir():
        return
    for link in CONTAINER_LOG_LINKS.iterdir():
        if link.is_symlink() and os.readlink(link).startswith(str(node_dir) + "/"):
            link.unlink()


def _remove_created_paths(created: Sequence[str]) -> None:
    for path in created:
        if Path(path) in FIXED_HOST_PATHS:
            shutil.rmtree(path, ignore_errors=True)


def _remove_run_files(node_dir: Path | None) -> None:
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    if node_dir is None or not node_dir.is_dir():
        return
    # Keep the logs and configs for a look after the fact; the rest is per-run state.
    for child in node_dir.iterdir():
        if child.name not in ("logs", "etc"):
            shutil.rmtree(child, ignore_errors=True)


def _delete_node_object(kubeconfig: Path) -> None:
    with contextlib.suppress(NodeError, toolchain.ToolchainError):
        _kubectl(kubeconfig, "delete", "node", NODE_NAME, "--ignore-not-found", "--wait=false",
                 what="delete the Node object", timeout=15)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# a snapshot of what the node touches on the host (for tests and `neuraxis dev node status`)


def host_snapshot(node_dir: Path | None = None) -> dict[str, Any]:
    """Processes, mounts, interfaces, netns, cgroups, iptables and sysctls the node touches."""
    markers = [str(RUN_DIR)] + ([str(node_dir)] if node_dir else [])
    iptables: dict[str, list[str]] = {}
    for tool in ("iptables", "ip6tables"):
        for table in IPTABLES_TABLES:
            chains, rules = iptables_rules(tool, table)
            iptables[f"{tool}/{table}"] = sorted(chains) + sorted(rules)
    netns = Path("/run/netns")
    return {
        "processes": processes_mentioning(markers),
        "mounts": sorted(_mount_targets()),
        "interfaces": sorted(_interfaces()),
        "netns": sorted(os.listdir(netns)) if netns.is_dir() else [],
        "cgroups": sorted(str(p) for p in _kubepods_dirs()),
        "iptables": iptables,
        "sysctls": _record_sysctls(),
        "fixed_paths": {str(p): _listing(p) for p in FIXED_HOST_PATHS},
    }


def _listing(folder: Path) -> list[str] | None:
    return sorted(os.listdir(folder)) if folder.is_dir() else None


# ---------------------------------------------------------------------------------------------
# `python -m neuraxis.dev.node relay LISTEN UPSTREAM NODE_DIR` (NODE_DIR marks the process)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: Sequence[str]) -> int:
    if len(argv) == 4 and argv[0] == "relay":
        serve_relay(_address(argv[1]), _address(argv[2]))
        return 0
    print("usage: python -m neuraxis.dev.node relay HOST:PORT HOST:PORT NODE_DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
