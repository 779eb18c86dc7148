"""EdgeSites: per site, nodes labelled `neuraxis.dev/edge-site=<site>` and tainted so that only
EdgeDeployment DaemonSets (which tolerate the taint) land on them.

local: KWOK fake nodes (one pool, site labels per node, as `make cluster` makes them);
aws: an EKS node group per site; gcp: a GKE node pool per site.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi

from neuraxis.infra.nodes import (
    EDGE_POOL,
    EDGE_SITE_LABEL,
    EDGE_TAINT,
    EksPlacement,
    GkePlacement,
    LocalPlacement,
    Placement,
    cloud_taints,
    edge_pool,
    local_nodes,
)

TOKEN = "neuraxis:infra:EdgeSites"


@dataclass(frozen=True)
class EdgeSitesArgs:
    placement: Placement
    sites: Sequence[str]
    nodes_per_site: int = 1
    # aws instance type / gcp machine type of an edge node (small, CPU-only).
    machine_type: str = "t3.medium"


class EdgeSites(pulumi.ComponentResource):
    def __init__(
        self, name: str, args: EdgeSitesArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TOKEN, name, None, opts)
        if not args.sites:
            raise ValueError(f"EdgeSites {name}: sites must name at least one site")
        child = pulumi.ResourceOptions(parent=self)
        self.taint = {"key": EDGE_TAINT[0], "value": EDGE_TAINT[1], "effect": EDGE_TAINT[2]}
        self.site_labels = {site: {EDGE_SITE_LABEL: site} for site in args.sites}
        placement = args.placement
        if isinstance(placement, LocalPlacement):
            pool = edge_pool(args.sites, args.nodes_per_site)
            manifests, _ = local_nodes(f"{name}-nodes", pool, child)
            self.node_names = [m["metadata"]["name"] for m in manifests]
        else:
            for site in args.sites:
                self._cloud_site(f"{name}-{site}", site, args, placement, child)
        self.register_outputs(
            {"sites": list(args.sites), "siteLabels": self.site_labels, "taint": self.taint}
        )

    def _cloud_site(
        self,
        name: str,
        site: str,
        args: EdgeSitesArgs,
        placement: Placement,
        opts: pulumi.ResourceOptions,
    ) -> Any:
        labels = {"neuraxis.dev/pool": EDGE_POOL, EDGE_SITE_LABEL: site}
        count = args.nodes_per_site
        if isinstance(placement, EksPlacement):
            import pulumi_aws as aws

            spec: dict[str, Any] = {
                "cluster_name": placement.cluster_name,
                "node_role_arn": placement.node_role_arn,
                "subnet_ids": placement.subnet_ids,
                "version": placement.kubernetes_version,
                "instance_types": [args.machine_type],
                "scaling_config": {"desired_size": count, "min_size": count, "max_size": count},
                "labels": labels,
                "taints": cloud_taints([EDGE_TAINT]),
            }
            return aws.eks.NodeGroup(name, opts=opts, **spec)
        assert isinstance(placement, GkePlacement)
        import pulumi_gcp as gcp

        spec = {
            "cluster": placement.cluster,
            "location": placement.location,
            "project": placement.project,
            "node_count": count,
            "node_config": {
                "machine_type": args.machine_type,
                "service_account": placement.service_account,
                "oauth_scopes": ["https://www.googleapis.com/auth/cloud-platform"],
                "labels": labels,
                "taints": cloud_taints([EDGE_TAINT]),
                "shielded_instance_config": {"enable_secure_boot": True},
                "workload_metadata_config": {"mode": "GKE_METADATA"},
            },
            "management": {"auto_repair": True, "auto_upgrade": True},
        }
        return gcp.container.NodePool(name, opts=opts, **spec)
