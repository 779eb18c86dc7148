"""Unit tests of the real node's pure parts: flags, generated configuration, offline images and
the iptables bookkeeping (no root, no processes; tests/cluster/test_real_node.py runs it)."""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import subprocess
import tarfile
from pathlib import Path

import pytest

from neuraxis.dev import cluster, node
from neuraxis.dev.node import ImageEntry, NodeError, NodePaths
from neuraxis.dev.toolchain import tool_path


def test_labels_and_taints_from_flags() -> None:
    assert node.parse_label("neuraxis.dev/site=plant-a") == ("neuraxis.dev/site", "plant-a")
    assert node.parse_label("flag=") == ("flag", "")
    assert node.parse_taint("gpu=present:NoSchedule") == ("gpu", "present", "NoSchedule")
    assert node.parse_taint("dedicated:NoExecute") == ("dedicated", "", "NoExecute")
    # A value may hold a colon; the effect is what follows the last one.
    assert node.parse_taint("a=b:c:PreferNoSchedule") == ("a", "b:c", "PreferNoSchedule")


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (node.parse_label, "novalue", "--node-label 'novalue': expected key=value"),
        (node.parse_label, "=v", "expected key=value"),
        (node.parse_taint, "a=b", "Effect one of NoSchedule"),
        (node.parse_taint, "a=b:Sometimes", "Effect one of"),
        (node.parse_taint, "=b:NoSchedule", "the key is empty"),
    ],
)
def test_bad_flags_name_the_flag(parse: object, text: str, message: str) -> None:
    assert callable(parse)
    with pytest.raises(NodeError, match=message):
        parse(text)


def test_cni_keeps_traffic_on_the_bridge(tmp_path: Path) -> None:
    conflist = node.cni_conflist(NodePaths(tmp_path))
    bridge, portmap = conflist["plugins"]
    # isGateway would turn on ip_forward, ipMasq would masquerade pods out of the machine.
    assert (bridge["isGateway"], bridge["ipMasq"], bridge["hairpinMode"]) == (False, False, True)
    assert bridge["bridge"] == node.BRIDGE
    [[pod_range]] = bridge["ipam"]["ranges"]
    assert pod_range["subnet"] == node.POD_SUBNET
    assert pod_range["gateway"] == node.NODE_IP
    assert bridge["ipam"]["dataDir"] == str(tmp_path / "node" / "cni" / "ipam")
    assert portmap["type"] == "portmap"


def test_containerd_config_keeps_every_path_inside_the_node(tmp_path: Path) -> None:
    text = node.containerd_config(NodePaths(tmp_path))
    for line in text.splitlines():
        if "= " in line and '"/' in line:
            path = line.split('"')[1]
            inside = (str(tmp_path), str(node.RUN_DIR), str(node.cache_dir()), "/usr/")
            assert path.startswith(inside), line
    assert "restrict_oom_score_adj = true" in text
    assert f'sandbox = "{node.PAUSE_IMAGE}"' in text
    assert '"io.containerd.nri.v1.nri"' in text  # disabled: it would listen in /var/run/nri
    # Unix socket paths are limited to 108 bytes, whatever NEURAXIS_HOME is.
    assert len(str(node.containerd_socket())) < 60


def test_kubelet_and_kube_proxy_configuration(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    taints = (("dedicated", "ml", "NoSchedule"),)
    kubelet = node.kubelet_config(paths, tmp_path / "ca.crt", taints, 10348)
    assert kubelet["failCgroupV1"] is False
    assert kubelet["clusterDNS"] == [node.NODE_IP]
    assert kubelet["clusterDomain"] == "cluster.local"
    assert kubelet["registerWithTaints"] == [
        {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}
    ]
    assert kubelet["containerRuntimeEndpoint"] == f"unix://{node.containerd_socket()}"
    for key in ("podLogsDir", "resolvConf", "volumePluginDir"):
        assert kubelet[key].startswith(str(paths.node_dir)), key
    proxy = node.kube_proxy_config(tmp_path / "kubeconfig", 1, 2)
    assert proxy["mode"] == "iptables"
    # Sysctls kube-proxy would otherwise change: conntrack limits, route_localnet.
    assert proxy["conntrack"]["maxPerCore"] == 0
    assert proxy["iptables"]["localhostNodePorts"] is False
    assert proxy["nodePortAddresses"] == [f"{node.NODE_IP}/32"]


def test_corefile_serves_the_cluster_domain_and_forwards_nothing(tmp_path: Path) -> None:
    text = node.corefile(tmp_path / "kubeconfig", 8181)
    assert "kubernetes cluster.local" in text
    assert f"bind {node.NODE_IP}" in text
    assert "forward" not in text
    assert "rcode NXDOMAIN" in text


def _corefile_directives(text: str) -> set[str]:
    """The plugin names of a Corefile: the first word of each line directly inside a block."""
    depth, names = 0, set()
    for line in text.splitlines():
        words = line.split()
        if depth == 1 and words and words[0] != "}":
            names.add(words[0])
        depth += line.count("{") - line.count("}")
    return names


def test_the_built_coredns_has_every_plugin_the_corefile_uses(tmp_path: Path) -> None:
    """Our CoreDNS main (neuraxis/dev/mains/coredns.go) links only the plugins we use."""
    directives = _corefile_directives(node.corefile(tmp_path / "kubeconfig", 8181))
    assert directives == {"bind", "errors", "ready", "kubernetes", "cache", "template"}
    listed = subprocess.run(
        [str(tool_path("coredns")), "-plugins"], capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    plugins = {line.strip() for line in listed.stdout.splitlines()}
    assert directives <= plugins, f"not in the built CoreDNS: {sorted(directives - plugins)}"
    # The cloud DNS plugins of upstream's main are left out.
    assert "route53" not in plugins and "forward" not in plugins


def test_control_plane_advertises_the_node_ip(tmp_path: Path) -> None:
    config = json.loads(cluster._kwokctl_configuration(cluster.ClusterPaths(tmp_path)))
    assert config["options"]["bindAddress"] == "127.0.0.1"
    assert node.NODE_IP in config["options"]["kubeApiserverCertSANs"]
    assert node.KUBERNETES_SERVICE_IP in config["options"]["kubeApiserverCertSANs"]
    [patch] = config["componentsPatches"]
    args = {a["key"]: a["value"] for a in patch["extraArgs"]}
    assert args["advertise-address"] == node.NODE_IP
    assert args["service-cluster-ip-range"] == node.SERVICE_CIDR
    assert args["kubelet-preferred-address-types"] == "InternalIP"


def test_layers_are_deterministic() -> None:
    entries = [
        ImageEntry("bin"),
        ImageEntry("bin/tool", 0o755, b"#!/bin/sh\n"),
        ImageEntry("bin/alias", 0o777, link="tool"),
        ImageEntry("tmp", 0o1777),
    ]
    layer = node.layer_tar(entries)
    assert node.layer_tar(list(reversed(entries))) == layer
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == ["bin", "bin/alias", "bin/tool", "tmp"]
    assert members["bin/alias"].issym() and members["bin/alias"].linkname == "tool"
    assert members["tmp"].mode == 0o1777
    assert {(m.uid, m.gid, m.mtime) for m in members.values()} == {(0, 0, 0)}


def test_docker_archive_layout(tmp_path: Path) -> None:
    layer = node.layer_tar([ImageEntry("pause", 0o755, b"\x7fELF")])
    archive = node.docker_archive(
        "neuraxis.local/pause:test", layer, {"Entrypoint": ["/pause"]}, tmp_path / "a.tar"
    )
    with tarfile.open(archive) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    [manifest] = json.loads(files["manifest.json"])
    assert manifest["RepoTags"] == ["neuraxis.local/pause:test"]
    config = json.loads(files[manifest["Config"]])
    [layer_name] = manifest["Layers"]
    assert files[layer_name] == layer
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    assert config["config"]["Entrypoint"] == ["/pause"]
    assert (config["os"], config["architecture"]) == ("linux", "amd64")


def test_jump_targets_of_saved_rules() -> None:
    rule = '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD'
    assert node._jump_target(shlex.split(rule)) == "KUBE-FORWARD"
    assert node._jump_target(["-A", "INPUT", "-g", "CNI-HOSTPORT"]) == "CNI-HOSTPORT"
    assert node._jump_target(["-A", "INPUT", "-p", "tcp"]) is None


def test_host_state_of_another_boot_is_void(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(node.CACHE_ENV, str(tmp_path))
    node._write_host_state({"boot_id": "an-earlier-boot", "home": "/x", "complete": True})
    assert node.read_host_state() == {}
    assert node.running_home() is None
    node._update_host_state(boot_id=node._boot_id(), home=str(tmp_path), complete=True)
    assert node.running_home() == tmp_path
    assert node.is_running(tmp_path)  # no processes recorded, all (none) alive
    assert not node.is_running(tmp_path / "other")


def test_kubelets_sockets_fit_the_unix_limit_however_deep_the_home() -> None:
    deep = NodePaths(Path("/tmp") / ("d" * 200))
    longest = deep.kubelet_root / "pod-resources" / "kubelet.sock"
    assert len(str(longest).encode()) < node.UNIX_PATH_MAX
    assert not deep.kubelet_root.is_relative_to(deep.home)


def test_an_image_counts_only_when_complete_and_unpacked() -> None:
    ref = "neuraxis.local/busybox:1.35"
    row = f"{ref} application/vnd.docker.distribution.manifest.v2+json sha256:38df complete (2/2)"
    assert node.image_usable(f"{row} 2.0 MiB/2.0 MiB true", ref)
    # An import cut short: the record is there, its snapshot is not (kubelet: ErrImageNeverPull).
    assert not node.image_usable(f"{row} 2.0 MiB/2.0 MiB false", ref)
    incomplete = row.replace("complete (2/2)", "incomplete (1/2)")
    assert not node.image_usable(f"{incomplete} 1.0 MiB/2.0 MiB true", ref)
    assert not node.image_usable(f"{row} 2.0 MiB/2.0 MiB true", "neuraxis.local/other:1")
    assert not node.image_usable("", ref)
