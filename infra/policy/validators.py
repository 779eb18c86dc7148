"""Policy validators: plain functions from resources (type, properties as the engine sees them,
camelCase) to violation messages. The CrossGuard pack and the mock tests call the same functions.

Policies: the lake is encrypted, versioned and not public, and every access to it is logged (S3
server access logging; GCS data-access audit logs); the Kubernetes API endpoint is
private or limited to listed networks; GPU pools are tainted; pods run as non-root with CPU and
memory limits; no image is `:latest` (or untagged).

A workload may opt out of one pod policy with the annotations `policy.neuraxis.dev/exempt:
<policy>` and `policy.neuraxis.dev/reason: <why>` (the reason is required).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from neuraxis.infra.images import image_problem
from neuraxis.operator.settings import OperatorSettings

S3_BUCKET = "aws:s3/bucket:Bucket"
S3_VERSIONING = "aws:s3/bucketVersioning:BucketVersioning"
S3_ENCRYPTION = (
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
)
S3_PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
S3_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
S3_ACL = "aws:s3/bucketAcl:BucketAcl"
S3_LOGGING = "aws:s3/bucketLogging:BucketLogging"
GCS_BUCKET = "gcp:storage/bucket:Bucket"
GCP_AUDIT_CONFIG = "gcp:projects/iAMAuditConfig:IAMAuditConfig"
GCS_AUDIT_SERVICES = {"storage.googleapis.com", "allServices"}
DATA_ACCESS_LOGS = {"DATA_READ", "DATA_WRITE"}
GCS_IAM = (
    "gcp:storage/bucketIAMMember:BucketIAMMember",
    "gcp:storage/bucketIAMBinding:BucketIAMBinding",
)
EKS_CLUSTER = "aws:eks/cluster:Cluster"
GKE_CLUSTER = "gcp:container/cluster:Cluster"
EKS_NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
GKE_NODE_POOL = "gcp:container/nodePool:NodePool"
KUBE_NODE = "kubernetes:core/v1:Node"
CONFIG_GROUP = "kubernetes:yaml/v2:ConfigGroup"
POD_TEMPLATE_KINDS = {
    "kubernetes:apps/v1:Deployment",
    "kubernetes:apps/v1:DaemonSet",
    "kubernetes:apps/v1:StatefulSet",
    "kubernetes:apps/v1:ReplicaSet",
    "kubernetes:batch/v1:Job",
}
CRON_JOB = "kubernetes:batch/v1:CronJob"
POD = "kubernetes:core/v1:Pod"
PROMETHEUS = "kubernetes:monitoring.coreos.com/v1:Prometheus"
EXEMPT = "policy.neuraxis.dev/exempt"
EXEMPT_REASON = "policy.neuraxis.dev/reason"
PUBLIC_MEMBERS = {"allUsers", "allAuthenticatedUsers"}
GPU_TAINT = OperatorSettings().gpu_taint
GPU_RESOURCE = "nvidia.com/gpu"
PUBLIC_ACCESS_FLAGS = (
    "blockPublicAcls",
    "blockPublicPolicy",
    "ignorePublicAcls",
    "restrictPublicBuckets",
)


@dataclass(frozen=True)
class Resource:
    """One resource as a policy sees it."""

    type: str
    name: str
    props: Mapping[str, Any]
    urn: str = ""
    # Property -> URNs it was computed from (CrossGuard gives these; they link an S3 bucket's
    # settings to the bucket while its id is still unknown in a preview).
    prop_deps: Mapping[str, Sequence[str]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# lake


def _refers_to(setting: Resource, bucket: Resource, prop: str = "bucket") -> bool:
    if bucket.urn and bucket.urn in setting.prop_deps.get(prop, ()):
        return True
    target = setting.props.get(prop)
    return target is not None and target in (bucket.props.get("bucket"), bucket.props.get("id"))


def _settings_of(bucket: Resource, resources: Sequence[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r.type == kind and _refers_to(r, bucket)]


def _is_log_target(bucket: Resource, resources: Sequence[Resource]) -> bool:
    """The bucket receives another bucket's server access logs."""
    return any(r.type == S3_LOGGING and _refers_to(r, bucket, "targetBucket") for r in resources)


def lake_access_logged(resources: Sequence[Resource]) -> list[str]:
    """Every S3 bucket logs its requests to another bucket (log buckets themselves excepted:
    logging into themselves would loop); a stack with a GCS bucket enables data-access audit
    logs (DATA_READ and DATA_WRITE) for Cloud Storage."""
    problems = []
    for bucket in (r for r in resources if r.type == S3_BUCKET):
        if _is_log_target(bucket, resources):
            continue
        logging = [
            r for r in _settings_of(bucket, resources, S3_LOGGING) if r.props.get("targetBucket")
        ]
        if not logging:
            problems.append(f"S3 bucket {bucket.name}: no server access logging (BucketLogging)")
    gcs = [r.name for r in resources if r.type == GCS_BUCKET]
    logged: set[str] = set()
    for config in (r for r in resources if r.type == GCP_AUDIT_CONFIG):
        if config.props.get("service") in GCS_AUDIT_SERVICES:
            logged |= {str(c.get("logType")) for c in config.props.get("auditLogConfigs") or []}
    if gcs and not logged >= DATA_ACCESS_LOGS:
        missing = ", ".join(sorted(DATA_ACCESS_LOGS - logged))
        problems.append(
            f"GCS bucket(s) {', '.join(gcs)}: Cloud Storage data-access audit logs {missing} "
            "are not enabled (IAMAuditConfig on storage.googleapis.com)"
        )
    return problems


def s3_lake_encrypted(resources: Sequence[Resource]) -> list[str]:
    """Every S3 bucket has default encryption with a KMS key (aws:kms or aws:kms:dsse); a
    bucket receiving server access logs has SSE-S3 (AES256) at least, the only encryption
    log delivery supports."""
    problems = []
    for bucket in (r for r in resources if r.type == S3_BUCKET):
        configs = _settings_of(bucket, resources, S3_ENCRYPTION)
        algorithms = [
            (rule.get("applyServerSideEncryptionByDefault") or {}).get("sseAlgorithm")
            for config in configs
            for rule in config.props.get("rules") or []
        ]
        accepted = {"aws:kms", "aws:kms:dsse"}
        if _is_log_target(bucket, resources):
            accepted.add("AES256")
        if not any(a in accepted for a in algorithms):
            problems.append(
                f"S3 bucket {bucket.name}: no server-side encryption with KMS "
                f"(found {algorithms or 'no encryption configuration'})"
            )
    return problems


def s3_lake_versioned(resources: Sequence[Resource]) -> list[str]:
    problems = []
    for bucket in (r for r in resources if r.type == S3_BUCKET):
        statuses = [
            (v.props.get("versioningConfiguration") or {}).get("status")
            for v in _settings_of(bucket, resources, S3_VERSIONING)
        ]
        if "Enabled" not in statuses:
            problems.append(f"S3 bucket {bucket.name}: versioning is not Enabled ({statuses})")
    return problems


def s3_lake_not_public(resources: Sequence[Resource]) -> list[str]:
    """A public access block with all four flags on; no public ACL; no Allow to everyone."""
    problems = []
    for bucket in (r for r in resources if r.type == S3_BUCKET):
        blocks = _settings_of(bucket, resources, S3_PUBLIC_ACCESS_BLOCK)
        if not any(all(b.props.get(f) is True for f in PUBLIC_ACCESS_FLAGS) for b in blocks):
            problems.append(
                f"S3 bucket {bucket.name}: needs a public access block with "
                f"{', '.join(PUBLIC_ACCESS_FLAGS)} all true"
            )
        for acl in _settings_of(bucket, resources, S3_ACL):
            if str(acl.props.get("acl", "")).startswith("public"):
                problems.append(f"S3 bucket {bucket.name}: public ACL {acl.props['acl']!r}")
        for policy in _settings_of(bucket, resources, S3_POLICY):
            if _allows_everyone(policy.props.get("policy")):
                problems.append(f"S3 bucket {bucket.name}: bucket policy allows Principal '*'")
    return problems


def _allows_everyone(policy: Any) -> bool:
    import json

    if isinstance(policy, str):
        try:
            policy = json.loads(policy)
        except json.JSONDecodeError:
            return False
    if not isinstance(policy, dict):
        return False
    for statement in policy.get("Statement", []):
        principal = statement.get("Principal")
        everyone = principal == "*" or (isinstance(principal, dict) and principal.get("AWS") == "*")
        if statement.get("Effect") == "Allow" and everyone:
            return True
    return False


def gcs_lake(resource: Resource) -> list[str]:
    """A GCS bucket: versioned, uniform access, public access prevented (encryption at rest is
    always on in GCS; CMEK is optional)."""
    if resource.type != GCS_BUCKET:
        return []
    props, problems = resource.props, []
    if not (props.get("versioning") or {}).get("enabled"):
        problems.append(f"GCS bucket {resource.name}: versioning is not enabled")
    if props.get("uniformBucketLevelAccess") is not True:
        problems.append(f"GCS bucket {resource.name}: uniformBucketLevelAccess must be true")
    if props.get("publicAccessPrevention") != "enforced":
        problems.append(f"GCS bucket {resource.name}: publicAccessPrevention must be 'enforced'")
    return problems


def gcs_not_public(resource: Resource) -> list[str]:
    if resource.type not in GCS_IAM:
        return []
    members = [resource.props.get("member"), *(resource.props.get("members") or [])]
    public = sorted(m for m in members if m in PUBLIC_MEMBERS)
    return [f"{resource.name}: grants the lake bucket to {', '.join(public)}"] if public else []


# ---------------------------------------------------------------------------------------------
# cluster API endpoint


def _open_to_all(cidrs: Iterable[Any]) -> bool:
    return any(str(c).strip().endswith("/0") for c in cidrs)


def cluster_api_private(resource: Resource) -> list[str]:
    """The API endpoint is private, or public only to listed networks (never 0.0.0.0/0)."""
    props = resource.props
    if resource.type == EKS_CLUSTER:
        vpc = props.get("vpcConfig") or {}
        # EKS's own defaults: public access on, open to 0.0.0.0/0.
        if vpc.get("endpointPublicAccess", True) is False:
            return []
        cidrs = vpc.get("publicAccessCidrs") or ["0.0.0.0/0"]
        if _open_to_all(cidrs):
            return [
                f"EKS cluster {resource.name}: public API endpoint open to {cidrs} (set "
                "endpointPublicAccess false, or publicAccessCidrs to the networks that need it)"
            ]
    elif resource.type == GKE_CLUSTER:
        private = props.get("privateClusterConfig") or {}
        if private.get("enablePrivateEndpoint") is True:
            return []
        blocks = (props.get("masterAuthorizedNetworksConfig") or {}).get("cidrBlocks") or []
        cidrs = [b.get("cidrBlock") for b in blocks]
        if not cidrs or _open_to_all(cidrs):
            return [
                f"GKE cluster {resource.name}: public API endpoint reachable from "
                f"{cidrs or 'anywhere'} (enable the private endpoint, or list master authorized "
                "networks)"
            ]
    return []


# ---------------------------------------------------------------------------------------------
# GPU pools


def _has_gpu_taint(taints: Iterable[Mapping[str, Any]], effect: str) -> bool:
    key, value, _ = GPU_TAINT
    return any(
        t.get("key") == key and t.get("value") == value and t.get("effect") == effect
        for t in taints
    )


def gpu_pool_tainted(resource: Resource) -> list[str]:
    """GPU nodes carry the operator's GPU taint, so only pods that ask for GPUs land there."""
    props, key, value, effect = resource.props, *GPU_TAINT
    want = f"{key}={value}:{effect}"
    if resource.type == EKS_NODE_GROUP:
        ami = str(props.get("amiType") or "")
        types = [str(t) for t in props.get("instanceTypes") or []]
        is_gpu = "NVIDIA" in ami or "GPU" in ami or any(t[:1] in ("g", "p") for t in types)
        if is_gpu and not _has_gpu_taint(props.get("taints") or [], "NO_SCHEDULE"):
            return [f"EKS node group {resource.name} ({ami or types}) is not tainted {want}"]
    elif resource.type == GKE_NODE_POOL:
        config = props.get("nodeConfig") or {}
        if config.get("guestAccelerators") and not _has_gpu_taint(
            config.get("taints") or [], "NO_SCHEDULE"
        ):
            return [f"GKE node pool {resource.name} has accelerators but is not tainted {want}"]
    elif resource.type == KUBE_NODE:
        return _node_problems(resource.name, dict(props))
    elif resource.type == CONFIG_GROUP:
        return [
            problem
            for obj in props.get("objs") or []
            if isinstance(obj, Mapping) and obj.get("kind") == "Node"
            for problem in _node_problems(f"{resource.name}/{obj['metadata']['name']}", obj)
        ]
    return []


def _node_problems(name: str, node: Mapping[str, Any]) -> list[str]:
    capacity = ((node.get("status") or {}).get("capacity")) or {}
    if GPU_RESOURCE in capacity and not _has_gpu_taint(
        (node.get("spec") or {}).get("taints") or [], GPU_TAINT[2]
    ):
        return [f"node {name} advertises {GPU_RESOURCE} but is not tainted {GPU_TAINT[0]}"]
    return []


# ---------------------------------------------------------------------------------------------
# pods


def pod_spec(resource: Resource) -> Mapping[str, Any] | None:
    """The pod spec inside a workload resource (None for anything without pods)."""
    props = resource.props
    if resource.type == POD:
        return props.get("spec") or {}
    if resource.type in POD_TEMPLATE_KINDS:
        return ((props.get("spec") or {}).get("template") or {}).get("spec") or {}
    if resource.type == CRON_JOB:
        job = ((props.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}
        return (job.get("template") or {}).get("spec") or {}
    return None


def _containers(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def _exempt(resource: Resource, policy: str) -> bool:
    annotations = (resource.props.get("metadata") or {}).get("annotations") or {}
    named = [p.strip() for p in str(annotations.get(EXEMPT, "")).split(",")]
    return policy in named and bool(str(annotations.get(EXEMPT_REASON, "")).strip())


def pods_non_root(resource: Resource) -> list[str]:
    spec = pod_spec(resource)
    if spec is None or _exempt(resource, "pods-non-root"):
        return []
    pod_ctx = spec.get("securityContext") or {}
    problems = []
    for c in _containers(spec):
        ctx = {**pod_ctx, **(c.get("securityContext") or {})}
        if ctx.get("runAsUser") == 0 or ctx.get("runAsNonRoot") is not True:
            problems.append(
                f"{resource.name}: container {c.get('name')} may run as root "
                "(set securityContext.runAsNonRoot: true and a non-zero runAsUser)"
            )
        if ctx.get("privileged") is True:
            problems.append(f"{resource.name}: container {c.get('name')} is privileged")
    return problems


def pods_have_limits(resource: Resource) -> list[str]:
    spec = pod_spec(resource)
    if spec is None or _exempt(resource, "pods-have-limits"):
        return []
    problems = []
    for c in _containers(spec):
        limits = (c.get("resources") or {}).get("limits") or {}
        missing = [r for r in ("cpu", "memory") if r not in limits]
        if missing:
            problems.append(
                f"{resource.name}: container {c.get('name')} has no {' or '.join(missing)} limit"
            )
    return problems


def no_latest_images(resource: Resource) -> list[str]:
    spec = pod_spec(resource)
    if spec is not None:
        images = [(str(c.get("name")), c.get("image")) for c in _containers(spec)]
    elif resource.type == PROMETHEUS and (resource.props.get("spec") or {}).get("image"):
        images = [("prometheus", resource.props["spec"]["image"])]
    else:
        return []
    problems = []
    for name, image in images:
        # An unknown image (a preview of a computed value) is checked on the update.
        problem = image_problem(image) if isinstance(image, str) else None
        if problem:
            problems.append(f"{resource.name}: container {name}: {problem}")
    return problems


RESOURCE_POLICIES = {
    "lake-gcs-private-versioned": gcs_lake,
    "lake-gcs-not-public": gcs_not_public,
    "cluster-api-private": cluster_api_private,
    "gpu-pools-tainted": gpu_pool_tainted,
    "pods-non-root": pods_non_root,
    "pods-have-limits": pods_have_limits,
    "no-latest-images": no_latest_images,
}
STACK_POLICIES = {
    "lake-encrypted": s3_lake_encrypted,
    "lake-versioned": s3_lake_versioned,
    "lake-not-public": s3_lake_not_public,
    "lake-access-logged": lake_access_logged,
}
DESCRIPTIONS = {
    "lake-gcs-private-versioned": "GCS lake buckets are versioned, uniform access, never public.",
    "lake-gcs-not-public": "No IAM grant of a bucket to allUsers or allAuthenticatedUsers.",
    "cluster-api-private": "The EKS/GKE API endpoint is private or limited to listed networks.",
    "gpu-pools-tainted": "GPU node groups, node pools and nodes carry the operator's GPU taint.",
    "pods-non-root": "Pods run as non-root and unprivileged.",
    "pods-have-limits": "Every container has CPU and memory limits.",
    "no-latest-images": "Images are pinned: a tag other than latest, or a digest.",
    "lake-encrypted": "S3 lake buckets have default SSE-KMS encryption.",
    "lake-versioned": "S3 lake buckets have versioning enabled.",
    "lake-not-public": "S3 lake buckets block all public access and allow no public principal.",
    "lake-access-logged": "Lake access is logged (S3 server access, GCS data-access audit).",
}


def check_all(resources: Sequence[Resource]) -> dict[str, list[str]]:
    """Every policy over a set of resources: policy name -> violations (empty when it holds)."""
    report = {name: [v for r in resources for v in fn(r)] for name, fn in RESOURCE_POLICIES.items()}
    report.update({name: fn(resources) for name, fn in STACK_POLICIES.items()})
    return report
