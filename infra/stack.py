"""The whole stack for one cloud: cluster, lake, GPU pool, edge sites, monitoring, platform.

`stacks/__main__.py` calls `build_stack(load_stack_config())` and exports what it returns;
importing this module creates nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi

from neuraxis.infra.cluster import (
    EksCluster,
    EksClusterArgs,
    GkeCluster,
    GkeClusterArgs,
    LocalCluster,
    LocalClusterArgs,
)
from neuraxis.infra.config import NAMESPACE, StackConfig
from neuraxis.infra.edge_sites import EdgeSites, EdgeSitesArgs
from neuraxis.infra.gpu_node_pool import GpuNodePool, GpuNodePoolArgs
from neuraxis.infra.lake import Lake, LakeArgs, lake_uri
from neuraxis.infra.monitoring import Monitoring, MonitoringArgs
from neuraxis.infra.platform import Platform, PlatformArgs
from neuraxis.infra.prometheus_operator import load_bundle
from neuraxis.infra.tenants import TenantAccess, TenantAccessArgs
from neuraxis.operator.manifests import NAMESPACE as OPERATOR_NAMESPACE
from neuraxis.operator.manifests import OPERATOR
from neuraxis.operator.settings import OperatorSettings

# The project root: relative local paths in config (the kubeconfig) are resolved from here.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
EDGE_MACHINE = {"aws": "t3.medium", "gcp": "e2-standard-2", "local": "kwok"}


@dataclass(frozen=True)
class StackOutputs:
    kubeconfig: pulumi.Output[str]
    lake_uri: pulumi.Output[str]
    grafana_url: str
    components: dict[str, pulumi.ComponentResource]

    def export(self) -> None:
        pulumi.export("kubeconfig", self.kubeconfig)
        pulumi.export("lakeUri", self.lake_uri)
        pulumi.export("grafanaUrl", self.grafana_url)


def build_stack(cfg: StackConfig, lake_secret_key: pulumi.Input[str] | None = None) -> StackOutputs:
    lake_args = LakeArgs(
        cloud=cfg.cloud,
        bucket=cfg.lake_bucket,
        noncurrent_days=cfg.lake_noncurrent_days,
        region=cfg.region,
        project=cfg.gcp_project,
        kms_key=cfg.gcp_kms_key,
        secret_key=lake_secret_key,
    )
    cluster: LocalCluster | EksCluster | GkeCluster
    tenants: TenantAccess | None = None
    if cfg.cloud == "local":
        cluster = _local_cluster(cfg)
        # The platform's own pods need the system nodes to schedule (and so to become ready).
        on_cluster = pulumi.ResourceOptions(
            provider=cluster.provider, depends_on=[cluster.system_nodes]
        )
        # MinIO runs in the cluster.
        lake = Lake("lake", lake_args, opts=on_cluster)
    else:
        # The cloud lake comes first: the EKS node role is granted its access policy.
        lake = Lake("lake", lake_args)
        cluster = _eks_cluster(cfg) if cfg.cloud == "aws" else _gke_cluster(cfg)
        on_cluster = pulumi.ResourceOptions(provider=cluster.provider)
        tenants = _tenant_access(cfg, lake, cluster)
    gpu = GpuNodePool(
        "gpu",
        GpuNodePoolArgs(
            placement=cluster.placement,
            node_count=cfg.gpu_nodes,
            gpus_per_node=cfg.gpus_per_node,
            machine_type=cfg.gpu_machine,
            accelerator=cfg.gpu_accelerator,
        ),
        opts=pulumi.ResourceOptions(provider=cluster.provider),
    )
    edge = EdgeSites(
        "edge",
        EdgeSitesArgs(
            placement=cluster.placement,
            sites=cfg.edge_sites,
            nodes_per_site=cfg.edge_nodes_per_site,
            machine_type=EDGE_MACHINE[cfg.cloud],
        ),
        opts=pulumi.ResourceOptions(provider=cluster.provider),
    )
    platform = Platform(
        "platform",
        PlatformArgs(
            lake_uri=lake_uri(cfg.lake_bucket),
            lake_credentials=lake.credentials,
            image=cfg.image,
            workload_namespaces=cfg.workload_namespaces,
            # MinIO: per-run keys from its STS. The clouds scope by namespace identity instead
            # (TenantAccess: IRSA roles on AWS, a service account and HMAC key each on GCP).
            scoped_lake_keys=cfg.cloud == "local",
            **(platform_identities(tenants) if tenants is not None else {}),
        ),
        opts=on_cluster,
    )
    monitoring = Monitoring(
        "monitoring",
        MonitoringArgs(
            bundle=load_bundle(),
            namespace=cfg.monitoring_namespace,
            operator_namespace=platform.namespace,
        ),
        opts=on_cluster,
    )
    return StackOutputs(
        kubeconfig=cluster.kubeconfig,
        lake_uri=lake.uri,
        grafana_url=monitoring.grafana_url,
        components={
            "cluster": cluster,
            "lake": lake,
            "gpu": gpu,
            "edge": edge,
            "platform": platform,
            "monitoring": monitoring,
            **({"tenants": tenants} if tenants is not None else {}),
        },
    )


def _local_cluster(cfg: StackConfig) -> LocalCluster:
    path = Path(cfg.kubeconfig)
    return LocalCluster(
        "local",
        LocalClusterArgs(
            kubeconfig_path=path if path.is_absolute() else PROJECT_ROOT / path,
            system_nodes=cfg.system_nodes,
        ),
    )


def _eks_cluster(cfg: StackConfig) -> EksCluster:
    return EksCluster(
        "eks",
        EksClusterArgs(
            region=cfg.region,
            kubernetes_version=cfg.kubernetes_version,
            network_cidr=cfg.network_cidr,
            system_nodes=cfg.system_nodes,
            api_access_cidrs=cfg.api_access_cidrs,
        ),
    )


def _tenant_access(cfg: StackConfig, lake: Lake, cluster: Any) -> TenantAccess:
    """One cloud identity per workload namespace, bounded to its folders of the lake."""
    settings = OperatorSettings()
    args = TenantAccessArgs(
        cloud="aws" if cfg.cloud == "aws" else "gcp",
        bucket=cfg.lake_bucket,
        namespaces=cfg.workload_namespaces,
        service_accounts=(settings.service_account, settings.spark_service_account),
        region=cfg.region,
        project=cfg.gcp_project,
    )
    if isinstance(cluster, EksCluster):
        args = dataclasses.replace(
            args,
            oidc_provider_arn=cluster.oidc_provider_arn,
            oidc_issuer=cluster.oidc_issuer,
            kms_key_arn=lake.kms_key_arn,
            operator_namespace=OPERATOR_NAMESPACE,
            operator_account=OPERATOR,
            operator_policy_arn=lake.access_policy_arn,
        )
    return TenantAccess("tenants", args)


def platform_identities(tenants: TenantAccess) -> dict[str, Any]:
    """The PlatformArgs fields that give each namespace (and the operator) its identity."""
    return {
        "account_annotations": tenants.annotations,
        "namespace_credentials": tenants.credentials,
        "operator_annotations": tenants.operator_annotations,
    }


def _gke_cluster(cfg: StackConfig) -> GkeCluster:
    return GkeCluster(
        "gke",
        GkeClusterArgs(
            project=cfg.gcp_project,
            region=cfg.region,
            network_cidr=cfg.network_cidr,
            system_nodes=cfg.system_nodes,
            api_access_cidrs=cfg.api_access_cidrs,
        ),
    )


def lake_secret_key(cfg: StackConfig) -> pulumi.Output[str] | None:
    """The MinIO secret key of the local stack (a stack secret); clouds need none."""
    if cfg.cloud != "local":
        return None
    key = pulumi.Config(NAMESPACE).get_secret("lakeSecretKey")
    if key is None:
        raise pulumi.RunError(
            "neuraxis:lakeSecretKey: required for the local stack; set it with "
            "`pulumi config set --secret neuraxis:lakeSecretKey <value>`"
        )
    return key
