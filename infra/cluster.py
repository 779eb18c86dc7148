"""The cluster a stack deploys onto, and the Kubernetes provider that reaches it.

EksCluster (aws): VPC with public and private subnets across two zones, EKS with encrypted
Secrets, IAM roles, and an untainted system node group. GkeCluster (gcp): VPC-native GKE with
Workload Identity and a system node pool. LocalCluster: the running local control plane
(`neuraxis dev cluster up --bare`) plus KWOK system nodes for the platform's own pods.
Each gives a `placement` for the node-pool components, a `provider` and a `kubeconfig`.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from neuraxis.infra.nodes import (
    SYSTEM_POOL,
    EksPlacement,
    GkePlacement,
    LocalPlacement,
    local_nodes,
    system_pool,
)

EKS_NODE_POLICIES = (
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
)


def subnet_cidrs(cidr: str, count: int) -> list[str]:
    """`count` equal subnets carved from the front of `cidr` (/16 -> /20s)."""
    network = ipaddress.ip_network(cidr)
    prefix = min(network.prefixlen + 4, 28)
    subnets = list(network.subnets(new_prefix=prefix))
    if len(subnets) < count:
        raise ValueError(f"networkCidr {cidr} is too small for {count} subnets")
    return [str(s) for s in subnets[:count]]


def exec_kubeconfig(name: str, endpoint: str, ca_data: str, command: str, args: list[str]) -> str:
    """A kubeconfig whose user runs a credential plugin (no long-lived secret in the file)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": endpoint, "certificate-authority-data": ca_data}}
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "users": [
            {
                "name": name,
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1beta1",
                        "command": command,
                        "args": args,
                        "interactiveMode": "Never",
                    }
                },
            }
        ],
    }
    return json.dumps(config, sort_keys=True)


@dataclass(frozen=True)
class LocalClusterArgs:
    kubeconfig_path: Path
    system_nodes: int = 2


class LocalCluster(pulumi.ComponentResource):
    def __init__(
        self, name: str, args: LocalClusterArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("neuraxis:infra:LocalCluster", name, None, opts)
        path = args.kubeconfig_path
        if not path.is_file():
            raise FileNotFoundError(
                f"neuraxis:kubeconfig: {path} does not exist; start the control plane with "
                "`neuraxis dev cluster up --bare`"
            )
        self.kubeconfig: pulumi.Output[str] = pulumi.Output.secret(path.read_text())
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        child = pulumi.ResourceOptions(parent=self, provider=self.provider)
        manifests, self.system_nodes = local_nodes(
            f"{name}-{SYSTEM_POOL}-nodes", system_pool(args.system_nodes), child
        )
        self.placement = LocalPlacement()
        self.register_outputs({"systemNodes": [m["metadata"]["name"] for m in manifests]})


def eks_public_access(cidrs: tuple[str, ...]) -> dict[str, Any]:
    """EKS opens its public endpoint to 0.0.0.0/0 unless told otherwise: keep it off, or open
    it only to the configured networks."""
    if not cidrs:
        return {"endpoint_public_access": False}
    return {"endpoint_public_access": True, "public_access_cidrs": list(cidrs)}


# The control plane's peering range of a private GKE cluster (an RFC 1918 /28 outside the
# node, pod and service ranges).
GKE_MASTER_CIDR = "172.16.0.16/28"


def gke_endpoint_access(cidrs: tuple[str, ...]) -> dict[str, Any]:
    """Private nodes always; the endpoint private too unless networks are configured, and then
    reachable only from those (master authorized networks)."""
    return {
        "private_cluster_config": {
            "enable_private_nodes": True,
            "enable_private_endpoint": not cidrs,
            "master_ipv4_cidr_block": GKE_MASTER_CIDR,
        },
        "master_authorized_networks_config": {
            "cidr_blocks": [{"cidr_block": c, "display_name": f"allowed-{i}"}
                            for i, c in enumerate(cidrs)],
        },
    }  # fmt: skip


def oidc_issuer(identities: Any) -> str:
    """The cluster's OIDC issuer URL from `aws.eks.Cluster.identities` (typed outputs, or
    plain dicts where an engine gives those)."""
    identity = identities[0]
    oidcs = identity["oidcs"] if isinstance(identity, dict) else identity.oidcs
    return _field(oidcs[0], "issuer")


@dataclass(frozen=True)
class EksClusterArgs:
    region: str
    kubernetes_version: str
    network_cidr: str
    system_nodes: int
    # Networks allowed to reach the public API endpoint; empty = private endpoint only.
    api_access_cidrs: tuple[str, ...] = ()


class EksCluster(pulumi.ComponentResource):
    def __init__(
        self, name: str, args: EksClusterArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("neuraxis:infra:EksCluster", name, None, opts)
        import pulumi_aws as aws

        child = pulumi.ResourceOptions(parent=self)
        zones = [f"{args.region}a", f"{args.region}b"]
        cidrs = subnet_cidrs(args.network_cidr, 4)
        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args.network_cidr,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags={"Name": f"{name}-vpc"},
            opts=child,
        )
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, opts=child)
        public_rt = aws.ec2.RouteTable(
            f"{name}-public",
            vpc_id=vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}],
            opts=child,
        )
        public, private = [], []
        for i, zone in enumerate(zones):
            subnet = aws.ec2.Subnet(
                f"{name}-public-{zone}",
                vpc_id=vpc.id,
                cidr_block=cidrs[i],
                availability_zone=zone,
                tags={"kubernetes.io/role/elb": "1"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{zone}", subnet_id=subnet.id, route_table_id=public_rt.id,
                opts=child,
            )  # fmt: skip
            public.append(subnet)
        eip = aws.ec2.Eip(f"{name}-nat", domain="vpc", opts=child)
        nat = aws.ec2.NatGateway(
            f"{name}-nat", subnet_id=public[0].id, allocation_id=eip.id, opts=child
        )
        private_rt = aws.ec2.RouteTable(
            f"{name}-private",
            vpc_id=vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat.id}],
            opts=child,
        )
        for i, zone in enumerate(zones):
            subnet = aws.ec2.Subnet(
                f"{name}-private-{zone}",
                vpc_id=vpc.id,
                cidr_block=cidrs[2 + i],
                availability_zone=zone,
                tags={"kubernetes.io/role/internal-elb": "1"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{zone}", subnet_id=subnet.id, route_table_id=private_rt.id,
                opts=child,
            )  # fmt: skip
            private.append(subnet)
        cluster_role = aws.iam.Role(
            f"{name}-cluster-role",
            assume_role_policy=_assume_role("eks.amazonaws.com"),
            managed_policy_arns=["arn:aws:iam::aws:policy/AmazonEKSClusterPolicy"],
            opts=child,
        )
        node_role = aws.iam.Role(
            f"{name}-node-role", assume_role_policy=_assume_role("ec2.amazonaws.com"), opts=child
        )
        # No lake access for the nodes: pods get it from their namespace's IRSA role
        # (TenantAccess), so a pod cannot borrow the node's role to reach another namespace.
        for i, arn in enumerate(EKS_NODE_POLICIES):
            aws.iam.RolePolicyAttachment(
                f"{name}-node-policy-{i}", role=node_role.name, policy_arn=arn, opts=child
            )
        secrets_key = aws.kms.Key(
            f"{name}-secrets", description="EKS Secret encryption", enable_key_rotation=True,
            opts=child,
        )  # fmt: skip
        subnet_ids = [s.id for s in private]
        vpc_config = aws.eks.ClusterVpcConfigArgs(
            subnet_ids=subnet_ids + [s.id for s in public],
            endpoint_private_access=True,
            **eks_public_access(args.api_access_cidrs),
        )
        cluster = aws.eks.Cluster(
            name,
            role_arn=cluster_role.arn,
            version=args.kubernetes_version,
            vpc_config=vpc_config,
            access_config={
                "authentication_mode": "API",
                "bootstrap_cluster_creator_admin_permissions": True,
            },
            encryption_config={"resources": ["secrets"], "provider": {"key_arn": secrets_key.arn}},
            enabled_cluster_log_types=["api", "audit", "authenticator"],
            opts=child,
        )
        issuer = cluster.identities.apply(oidc_issuer)
        # IRSA: pods exchange their projected ServiceAccount token for a role's keys.
        oidc = aws.iam.OpenIdConnectProvider(
            f"{name}-oidc", url=issuer, client_id_lists=["sts.amazonaws.com"], opts=child
        )
        self.oidc_provider_arn: pulumi.Output[str] = oidc.arn
        self.oidc_issuer: pulumi.Output[str] = issuer
        self.placement = EksPlacement(
            cluster_name=cluster.name,
            node_role_arn=node_role.arn,
            subnet_ids=subnet_ids,
            kubernetes_version=args.kubernetes_version,
        )
        aws.eks.NodeGroup(
            f"{name}-{SYSTEM_POOL}",
            cluster_name=cluster.name,
            node_role_arn=node_role.arn,
            subnet_ids=subnet_ids,
            version=args.kubernetes_version,
            instance_types=["m6i.large"],
            scaling_config={
                "desired_size": args.system_nodes,
                "min_size": args.system_nodes,
                "max_size": 2 * args.system_nodes,
            },
            labels={"neuraxis.dev/pool": SYSTEM_POOL},
            opts=child,
        )
        self.kubeconfig: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.all(cluster.name, cluster.endpoint, cluster.certificate_authority).apply(
                lambda v: exec_kubeconfig(
                    v[0], v[1], _field(v[2], "data"), "aws",
                    ["eks", "get-token", "--cluster-name", v[0], "--region", args.region],
                )
            )
        )  # fmt: skip
        self.provider = k8s.Provider(
            f"{name}-k8s", kubeconfig=self.kubeconfig, enable_server_side_apply=True, opts=child
        )
        self.register_outputs({"clusterName": cluster.name, "endpoint": cluster.endpoint})


@dataclass(frozen=True)
class GkeClusterArgs:
    project: str
    region: str
    network_cidr: str
    system_nodes: int
    api_access_cidrs: tuple[str, ...] = ()


class GkeCluster(pulumi.ComponentResource):
    def __init__(
        self, name: str, args: GkeClusterArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("neuraxis:infra:GkeCluster", name, None, opts)
        import pulumi_gcp as gcp

        child = pulumi.ResourceOptions(parent=self)
        network = gcp.compute.Network(
            f"{name}-net", project=args.project, auto_create_subnetworks=False, opts=child
        )
        subnet = gcp.compute.Subnetwork(
            f"{name}-subnet",
            project=args.project,
            region=args.region,
            network=network.id,
            ip_cidr_range=args.network_cidr,
            private_ip_google_access=True,
            opts=child,
        )
        nodes_sa = gcp.serviceaccount.Account(
            f"{name}-nodes", account_id=f"{name}-nodes"[:30], project=args.project, opts=child
        )
        endpoint = gke_endpoint_access(args.api_access_cidrs)
        cluster = gcp.container.Cluster(
            name,
            project=args.project,
            location=args.region,
            network=network.id,
            subnetwork=subnet.id,
            remove_default_node_pool=True,
            initial_node_count=1,
            deletion_protection=True,
            release_channel={"channel": "REGULAR"},
            ip_allocation_policy={},
            workload_identity_config={"workload_pool": f"{args.project}.svc.id.goog"},
            private_cluster_config=endpoint["private_cluster_config"],
            master_authorized_networks_config=endpoint["master_authorized_networks_config"],
            opts=child,
        )
        self.placement = GkePlacement(
            cluster=cluster.name,
            location=args.region,
            project=args.project,
            service_account=nodes_sa.email,
        )
        gcp.container.NodePool(
            f"{name}-{SYSTEM_POOL}",
            cluster=cluster.name,
            location=args.region,
            project=args.project,
            node_count=args.system_nodes,
            node_config={
                "machine_type": "e2-standard-4",
                "service_account": nodes_sa.email,
                "oauth_scopes": ["https://www.googleapis.com/auth/cloud-platform"],
                "labels": {"neuraxis.dev/pool": SYSTEM_POOL},
                "workload_metadata_config": {"mode": "GKE_METADATA"},
            },
            opts=child,
        )
        self.kubeconfig: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.all(cluster.name, cluster.endpoint, cluster.master_auth).apply(
                lambda v: exec_kubeconfig(
                    v[0], f"https://{v[1]}", _field(v[2], "cluster_ca_certificate"),
                    "gke-gcloud-auth-plugin", [],
                )
            )
        )  # fmt: skip
        self.provider = k8s.Provider(
            f"{name}-k8s", kubeconfig=self.kubeconfig, enable_server_side_apply=True, opts=child
        )
        self.register_outputs({"clusterName": cluster.name, "endpoint": cluster.endpoint})


def _assume_role(service: str) -> str:
    statement = {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


def _field(value: object, attribute: str) -> str:
    """A field of a provider output object: a typed object in a deployment, a dict keyed by the
    Python or the wire (camelCase) name under mocks."""
    if isinstance(value, dict):
        head, *rest = attribute.split("_")
        for name in (attribute, head + "".join(p.title() for p in rest)):
            if name in value:
                return str(value[name])
    return str(getattr(value, attribute))
