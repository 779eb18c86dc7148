"""Stack configuration: every `neuraxis:*` key, its default and its check, in one place.

`parse_stack_config` is pure (a mapping of raw strings in, a typed config out) so tests and the
README check the same rules the program applies; `load_stack_config` is the thin shell that reads
`pulumi.Config`. Bad input raises ConfigError naming the key and the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from neuraxis.operator.settings import DEFAULT_IMAGE

Cloud = Literal["local", "aws", "gcp"]
CLOUDS: tuple[Cloud, ...] = ("local", "aws", "gcp")
NAMESPACE = "neuraxis"  # the Pulumi config namespace: keys are `neuraxis:<key>`
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class ConfigError(ValueError):
    """A config key is missing or invalid; the message names `neuraxis:<key>` and why."""


@dataclass(frozen=True)
class StackConfig:
    """What a stack provisions. Field docs are the README's key docs (kept in step by a test)."""

    cloud: Cloud
    # Lake bucket name (aws, gcp) or MinIO bucket (local).
    lake_bucket: str = "neuraxis-lake"
    # Days before non-current object versions expire (aws lifecycle; gcp lifecycle rule).
    lake_noncurrent_days: int = 30
    # GPU nodes in the pool (min = desired; max = 2x).
    gpu_nodes: int = 1
    # aws: instance type of the GPU node group; gcp: machine type of the accelerator pool.
    gpu_instance_type: str = ""
    # gcp: accelerator type attached to each GPU node; local: GPUs each fake node advertises.
    gpu_accelerator: str = "nvidia-l4"
    gpus_per_node: int = 1
    # Edge sites; each gets its nodes labelled `neuraxis.dev/edge-site=<site>` and tainted.
    edge_sites: tuple[str, ...] = ("plant-a", "plant-b")
    edge_nodes_per_site: int = 1
    # General-purpose (untainted) nodes for the operator, MinIO, Prometheus and Grafana.
    system_nodes: int = 2
    # The one image of the operator and the workloads (pinned: never `:latest`).
    image: str = DEFAULT_IMAGE
    # Namespaces where workloads run: each gets the lake credentials Secret.
    workload_namespaces: tuple[str, ...] = ("default",)
    # Monitoring namespace (Prometheus, Grafana, prometheus-operator).
    monitoring_namespace: str = "monitoring"
    # aws/gcp region; gcp project.
    region: str = ""
    gcp_project: str = ""
    # aws: Kubernetes version of EKS; gcp: release channel of GKE.
    kubernetes_version: str = "1.33"
    # local: kubeconfig of the running control plane (relative paths: from the project root).
    kubeconfig: str = ".neuraxis/kubeconfig"
    # gcp: a Cloud KMS key for CMEK on the lake bucket ("" = Google-managed keys).
    gcp_kms_key: str = ""
    # VPC CIDR (aws) / subnet CIDR (gcp).
    network_cidr: str = "10.40.0.0/16"
    # aws/gcp: CIDRs allowed to reach the Kubernetes API endpoint from outside the network.
    # Empty (the default) = private endpoint only: `pulumi up` and kubectl run from inside the
    # VPC (a runner or bastion there). 0.0.0.0/0 and ::/0 are refused.
    api_access_cidrs: tuple[str, ...] = ()
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def gpu_machine(self) -> str:
        if self.gpu_instance_type:
            return self.gpu_instance_type
        return {"aws": "g5.xlarge", "gcp": "g2-standard-8", "local": "kwok"}[self.cloud]


KEYS: dict[str, str] = {
    "cloud": "Where the stack runs: local, aws or gcp (required).",
    "lakeBucket": "Lake bucket name (S3, GCS or the MinIO bucket). Default neuraxis-lake.",
    "lakeNoncurrentDays": "Days before non-current lake object versions expire. Default 30.",
    "gpuNodes": "GPU nodes in the GPU pool. Default 1.",
    "gpuInstanceType": "GPU machine: aws default g5.xlarge, gcp default g2-standard-8.",
    "gpuAccelerator": "gcp accelerator type per GPU node. Default nvidia-l4.",
    "gpusPerNode": "GPUs per node (gcp accelerators; local fake nodes). Default 1.",
    "edgeSites": 'JSON list of edge site names. Default ["plant-a", "plant-b"].',
    "edgeNodesPerSite": "Nodes per edge site. Default 1.",
    "systemNodes": "Untainted nodes for the platform's own pods. Default 2.",
    "image": f"The operator and workload image (pinned). Default {DEFAULT_IMAGE}.",
    "workloadNamespaces": (
        "JSON list of workload namespaces (created, with the Spark account; on aws and gcp "
        "each gets its own lake identity and Secret; on local the operator mints per-run lake "
        'keys there). Default ["default"].'
    ),
    "monitoringNamespace": "Namespace of Prometheus and Grafana. Default monitoring.",
    "region": "aws region or gcp region (required for aws and gcp).",
    "gcpProject": "gcp project id (required for gcp).",
    "kubernetesVersion": "EKS Kubernetes version (aws). Default 1.33.",
    "kubeconfig": "local: kubeconfig of the control plane. Default .neuraxis/kubeconfig.",
    "gcpKmsKey": "gcp: Cloud KMS key id for CMEK on the lake bucket. Default: Google-managed.",
    "networkCidr": "VPC (aws) or subnet (gcp) CIDR. Default 10.40.0.0/16.",
    "apiAccessCidrs": (
        "JSON list of CIDRs that may reach the EKS/GKE API endpoint. Default []: private only."
    ),
    "lakeSecretKey": "local: MinIO secret key (a Pulumi secret, required for local).",
}


def parse_stack_config(raw: Mapping[str, str]) -> StackConfig:
    """Typed config from raw `neuraxis:*` values (keys without the namespace)."""
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(f"neuraxis:{unknown[0]}: unknown key; known keys: {', '.join(KEYS)}")
    cloud = raw.get("cloud", "")
    if cloud not in CLOUDS:
        raise ConfigError(f"neuraxis:cloud: must be one of {', '.join(CLOUDS)}, got {cloud!r}")
    d = StackConfig(cloud=cloud)
    cfg = StackConfig(
        cloud=cloud,
        lake_bucket=_bucket(raw.get("lakeBucket", d.lake_bucket)),
        lake_noncurrent_days=_int(raw, "lakeNoncurrentDays", d.lake_noncurrent_days, low=1),
        gpu_nodes=_int(raw, "gpuNodes", d.gpu_nodes, low=0),
        gpu_instance_type=raw.get("gpuInstanceType", d.gpu_instance_type),
        gpu_accelerator=raw.get("gpuAccelerator", d.gpu_accelerator),
        gpus_per_node=_int(raw, "gpusPerNode", d.gpus_per_node, low=1),
        edge_sites=_names(raw, "edgeSites", d.edge_sites),
        edge_nodes_per_site=_int(raw, "edgeNodesPerSite", d.edge_nodes_per_site, low=1),
        system_nodes=_int(raw, "systemNodes", d.system_nodes, low=1),
        image=_image(raw.get("image", d.image)),
        workload_namespaces=_names(raw, "workloadNamespaces", d.workload_namespaces),
        monitoring_namespace=_name(
            raw.get("monitoringNamespace", d.monitoring_namespace), "monitoringNamespace"
        ),
        region=raw.get("region", d.region),
        gcp_project=raw.get("gcpProject", d.gcp_project),
        kubernetes_version=raw.get("kubernetesVersion", d.kubernetes_version),
        kubeconfig=raw.get("kubeconfig", d.kubeconfig),
        gcp_kms_key=raw.get("gcpKmsKey", d.gcp_kms_key),
        network_cidr=raw.get("networkCidr", d.network_cidr),
        api_access_cidrs=_cidrs(raw, "apiAccessCidrs"),
    )
    if cfg.cloud in ("aws", "gcp") and not cfg.region:
        raise ConfigError(f"neuraxis:region: required for the {cfg.cloud} stack")
    if cfg.cloud == "gcp" and not cfg.gcp_project:
        raise ConfigError("neuraxis:gcpProject: required for the gcp stack")
    return cfg


def load_stack_config() -> StackConfig:
    """Read `neuraxis:*` from the running Pulumi stack (the imperative shell)."""
    import pulumi

    config = pulumi.Config(NAMESPACE)
    # lakeSecretKey is a secret: read apart, never through the plain mapping.
    raw = {key: value for key in KEYS if key != "lakeSecretKey" if (value := config.get(key))}
    return parse_stack_config(raw)


def _int(raw: Mapping[str, str], key: str, default: int, *, low: int) -> int:
    text = raw.get(key)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"neuraxis:{key}: must be an integer, got {text!r}") from None
    if value < low:
        raise ConfigError(f"neuraxis:{key}: must be >= {low}, got {value}")
    return value


def _names(raw: Mapping[str, str], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    text = raw.get(key)
    if text is None:
        return default
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"neuraxis:{key}: must be a JSON list of names: {exc}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"neuraxis:{key}: must be a JSON list of strings, got {text!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"neuraxis:{key}: names must be unique, got {value}")
    return tuple(_name(v, key) for v in value)


def _cidrs(raw: Mapping[str, str], key: str) -> tuple[str, ...]:
    text = raw.get(key)
    if text is None:
        return ()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"neuraxis:{key}: must be a JSON list of CIDRs: {exc}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"neuraxis:{key}: must be a JSON list of strings, got {text!r}")
    return tuple(_cidr(v, key) for v in value)


def _cidr(value: str, key: str) -> str:
    import ipaddress

    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise ConfigError(f"neuraxis:{key}: {value!r} is not a CIDR: {exc}") from None
    if network.prefixlen == 0:
        raise ConfigError(
            f"neuraxis:{key}: {value!r} opens the API endpoint to the whole internet; "
            "list the networks that need it"
        )
    return str(network)


def _name(value: str, key: str) -> str:
    if not _DNS_LABEL.match(value):
        raise ConfigError(
            f"neuraxis:{key}: {value!r} is not a DNS label (lowercase letters, digits, '-', "
            "at most 63 characters)"
        )
    return value


def _bucket(value: str) -> str:
    if not _BUCKET.match(value) or ".." in value:
        raise ConfigError(
            f"neuraxis:lakeBucket: {value!r} is not a valid bucket name (3-63 lowercase letters, "
            "digits, '.', '-')"
        )
    return value


def _image(value: str) -> str:
    from neuraxis.infra.images import image_problem

    problem = image_problem(value)
    if problem:
        raise ConfigError(f"neuraxis:image: {problem}")
    return value
