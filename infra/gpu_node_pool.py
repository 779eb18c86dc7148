"""GpuNodePool: GPU nodes labelled and tainted the way the operator's training pods expect.

aws: an EKS managed node group on the NVIDIA AMI plus the NVIDIA device plugin DaemonSet;
gcp: a GKE node pool with guest accelerators (GKE installs the driver and device plugin);
local: KWOK fake nodes advertising `nvidia.com/gpu`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from neuraxis.infra import images
from neuraxis.infra.kube import kube_object
from neuraxis.infra.nodes import (
    GPU_LABEL,
    GPU_TAINT,
    EksPlacement,
    GkePlacement,
    LocalPlacement,
    Placement,
    cloud_taints,
    gpu_pool,
    local_nodes,
    pool_labels,
)

TOKEN = "neuraxis:infra:GpuNodePool"
EKS_GPU_AMI = "AL2023_x86_64_NVIDIA"
DEVICE_PLUGIN_NAMESPACE = "kube-system"


@dataclass(frozen=True)
class GpuNodePoolArgs:
    placement: Placement
    node_count: int = 1
    gpus_per_node: int = 1
    # aws instance type (g5.xlarge) or gcp machine type (g2-standard-8).
    machine_type: str = "g5.xlarge"
    # gcp accelerator type.
    accelerator: str = "nvidia-l4"


class GpuNodePool(pulumi.ComponentResource):
    def __init__(
        self, name: str, args: GpuNodePoolArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TOKEN, name, None, opts)
        if args.node_count < 0:
            raise ValueError(f"GpuNodePool {name}: node_count must be >= 0, got {args.node_count}")
        child = pulumi.ResourceOptions(parent=self)
        pool = gpu_pool(args.node_count, args.gpus_per_node)
        self.labels = pool_labels(pool)
        self.taint = {"key": GPU_TAINT[0], "value": GPU_TAINT[1], "effect": GPU_TAINT[2]}
        placement = args.placement
        pool_name: pulumi.Input[str]
        if isinstance(placement, EksPlacement):
            group = self._eks(name, args, placement, child)
            pool_name = group.node_group_name
            device_plugin_manifest = device_plugin_daemonset()
            kube_object(device_plugin_manifest, child)
        elif isinstance(placement, GkePlacement):
            pool_name = self._gke(name, args, placement, child).name
        else:
            assert isinstance(placement, LocalPlacement)
            manifests, _ = local_nodes(f"{name}-nodes", pool, child)
            pool_name = name
            self.node_names = [m["metadata"]["name"] for m in manifests]
        self.pool_name = pulumi.Output.from_input(pool_name)
        self.register_outputs(
            {"poolName": self.pool_name, "labels": self.labels, "taint": self.taint}
        )

    def _eks(
        self, name: str, args: GpuNodePoolArgs, at: EksPlacement, opts: pulumi.ResourceOptions
    ) -> Any:
        import pulumi_aws as aws

        spec: dict[str, Any] = {
            "cluster_name": at.cluster_name,
            "node_role_arn": at.node_role_arn,
            "subnet_ids": at.subnet_ids,
            "version": at.kubernetes_version,
            "ami_type": EKS_GPU_AMI,
            "instance_types": [args.machine_type],
            "capacity_type": "ON_DEMAND",
            "disk_size": 200,
            "scaling_config": {
                "desired_size": args.node_count,
                "min_size": args.node_count,
                "max_size": max(1, 2 * args.node_count),
            },
            "labels": self.labels,
            "taints": cloud_taints([GPU_TAINT]),
            "update_config": {"max_unavailable": 1},
        }
        return aws.eks.NodeGroup(name, opts=opts, **spec)

    def _gke(
        self, name: str, args: GpuNodePoolArgs, at: GkePlacement, opts: pulumi.ResourceOptions
    ) -> Any:
        import pulumi_gcp as gcp

        spec: dict[str, Any] = {
            "cluster": at.cluster,
            "location": at.location,
            "project": at.project,
            "node_count": args.node_count,
            "autoscaling": {
                "min_node_count": args.node_count,
                "max_node_count": 2 * args.node_count,
            },
            "node_config": {
                "machine_type": args.machine_type,
                "service_account": at.service_account,
                "oauth_scopes": ["https://www.googleapis.com/auth/cloud-platform"],
                "guest_accelerators": [
                    {
                        "type": args.accelerator,
                        "count": args.gpus_per_node,
                        "gpu_driver_installation_config": {"gpu_driver_version": "LATEST"},
                    }
                ],
                "labels": self.labels,
                "taints": cloud_taints([GPU_TAINT]),
                "shielded_instance_config": {"enable_secure_boot": True},
                "workload_metadata_config": {"mode": "GKE_METADATA"},
            },
            "management": {"auto_repair": True, "auto_upgrade": True},
        }
        return gcp.container.NodePool(name, opts=opts, **spec)


def device_plugin_daemonset() -> dict[str, Any]:
    """The NVIDIA device plugin, on the GPU pool only: it tolerates the GPU taint and selects the
    pool label. It needs the kubelet's device-plugin socket directory, nothing more."""
    key, value, effect = GPU_TAINT
    labels = {"app.kubernetes.io/name": "nvidia-device-plugin"}
    container = {
        "name": "nvidia-device-plugin",
        "image": images.NVIDIA_DEVICE_PLUGIN,
        "env": [{"name": "FAIL_ON_INIT_ERROR", "value": "false"}],
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"cpu": "200m", "memory": "128Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
        "volumeMounts": [{"name": "device-plugin", "mountPath": "/var/lib/kubelet/device-plugins"}],
    }
    pool_key, pool_value = GPU_LABEL
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": "nvidia-device-plugin",
            "namespace": DEVICE_PLUGIN_NAMESPACE,
            "labels": labels,
            # The kubelet's device-plugin socket is root-owned: the one sanctioned root pod.
            "annotations": {
                "policy.neuraxis.dev/exempt": "pods-non-root",
                "policy.neuraxis.dev/reason": "writes the root-owned kubelet device-plugin socket",
            },
        },
        "spec": {
            "selector": {"matchLabels": labels},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "priorityClassName": "system-node-critical",
                    "nodeSelector": {pool_key: pool_value},
                    "tolerations": [
                        {"key": key, "operator": "Equal", "value": value, "effect": effect}
                    ],
                    "containers": [container],
                    "volumes": [
                        {
                            "name": "device-plugin",
                            "hostPath": {"path": "/var/lib/kubelet/device-plugins"},
                        }
                    ],
                },
            },
        },
    }
