"""The CrossGuard validators as plain functions: a good and a bad input for each policy."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from neuraxis.dev.cluster import node_manifests
from neuraxis.infra.gpu_node_pool import device_plugin_daemonset
from neuraxis.infra.lake import minio_manifests, tls_only_policy
from neuraxis.infra.monitoring import grafana_manifests
from neuraxis.infra.nodes import edge_pool, gpu_pool
from neuraxis.infra.platform import operator_manifests
from neuraxis.infra.policy import validators as v

R = v.Resource


def s3_lake(**overrides: Any) -> list[R]:
    props: dict[str, Any] = {
        "versioning": {"versioningConfiguration": {"status": "Enabled"}, "bucket": "lake"},
        "sse": {"bucket": "lake", "rules": [
            {"applyServerSideEncryptionByDefault": {"sseAlgorithm": "aws:kms"}}]},
        "block": {"bucket": "lake", **{f: True for f in v.PUBLIC_ACCESS_FLAGS}},
        "policy": {"bucket": "lake", "policy": tls_only_policy("arn:aws:s3:::lake")},
    }  # fmt: skip
    props.update(overrides)
    return [
        R(v.S3_BUCKET, "lake", {"bucket": "lake"}, urn="urn:bucket"),
        R(v.S3_VERSIONING, "versioning", props["versioning"]),
        R(v.S3_ENCRYPTION, "sse", props["sse"]),
        R(v.S3_PUBLIC_ACCESS_BLOCK, "block", props["block"]),
        R(v.S3_POLICY, "policy", props["policy"]),
    ]


def test_a_complete_s3_lake_passes() -> None:
    lake = s3_lake()
    assert v.s3_lake_encrypted(lake) == v.s3_lake_versioned(lake) == []
    assert v.s3_lake_not_public(lake) == []


def test_s3_settings_link_to_the_bucket_by_dependency_when_the_id_is_unknown() -> None:
    # In a preview the bucket id is unknown: the link is the property dependency.
    lake = [
        R(v.S3_BUCKET, "lake", {}, urn="urn:bucket"),
        R(v.S3_ENCRYPTION, "sse", {"rules": [{"applyServerSideEncryptionByDefault":
                                              {"sseAlgorithm": "aws:kms"}}]},
          prop_deps={"bucket": ["urn:bucket"]}),
    ]  # fmt: skip
    assert v.s3_lake_encrypted(lake) == []
    assert v.s3_lake_encrypted(lake[:1]) != []


@pytest.mark.parametrize(
    ("override", "check", "needle"),
    [
        ({"sse": {"bucket": "lake", "rules": [{"applyServerSideEncryptionByDefault":
                                               {"sseAlgorithm": "AES256"}}]}},
         v.s3_lake_encrypted, "no server-side encryption with KMS"),
        ({"sse": {"bucket": "other"}}, v.s3_lake_encrypted, "no encryption configuration"),
        ({"versioning": {"bucket": "lake", "versioningConfiguration": {"status": "Suspended"}}},
         v.s3_lake_versioned, "versioning is not Enabled"),
        ({"block": {"bucket": "lake", "blockPublicAcls": True}}, v.s3_lake_not_public,
         "public access block"),
        ({"policy": {"bucket": "lake", "policy": json.dumps({"Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject"}]})}},
         v.s3_lake_not_public, "Principal '*'"),
    ],
)  # fmt: skip
def test_an_incomplete_s3_lake_fails(override: dict[str, Any], check: Any, needle: str) -> None:
    problems = check(s3_lake(**override))
    assert len(problems) == 1 and needle in problems[0] and "lake" in problems[0]


def test_gcs_lake() -> None:
    good = {"versioning": {"enabled": True}, "uniformBucketLevelAccess": True,
            "publicAccessPrevention": "enforced"}  # fmt: skip
    assert v.gcs_lake(R(v.GCS_BUCKET, "lake", good)) == []
    bad = v.gcs_lake(R(v.GCS_BUCKET, "lake", {**good, "publicAccessPrevention": "inherited",
                                              "versioning": {"enabled": False}}))  # fmt: skip
    assert len(bad) == 2 and "versioning" in bad[0] and "enforced" in bad[1]
    public = R(v.GCS_IAM[0], "grant", {"member": "allUsers", "role": "roles/storage.objectViewer"})
    assert "allUsers" in v.gcs_not_public(public)[0]
    assert v.gcs_not_public(R(v.GCS_IAM[0], "grant", {"member": "serviceAccount:x"})) == []


def test_cluster_api_endpoint_is_private_or_limited() -> None:
    # EKS: public access is on and open to 0.0.0.0/0 unless set otherwise.
    assert v.cluster_api_private(R(v.EKS_CLUSTER, "eks", {"vpcConfig": {}}))
    private = {"vpcConfig": {"endpointPublicAccess": False, "endpointPrivateAccess": True}}
    assert v.cluster_api_private(R(v.EKS_CLUSTER, "eks", private)) == []
    limited = {"vpcConfig": {"endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24"]}}
    assert v.cluster_api_private(R(v.EKS_CLUSTER, "eks", limited)) == []
    opened = {"vpcConfig": {"endpointPublicAccess": True, "publicAccessCidrs": ["0.0.0.0/0"]}}
    assert "0.0.0.0/0" in v.cluster_api_private(R(v.EKS_CLUSTER, "eks", opened))[0]
    # GKE: a private endpoint, or master authorized networks without /0.
    gke_private = {"privateClusterConfig": {"enablePrivateEndpoint": True}}
    assert v.cluster_api_private(R(v.GKE_CLUSTER, "gke", gke_private)) == []
    gke_public = {"privateClusterConfig": {"enablePrivateEndpoint": False}}
    assert "anywhere" in v.cluster_api_private(R(v.GKE_CLUSTER, "gke", gke_public))[0]
    networks = {"cidrBlocks": [{"cidrBlock": "203.0.113.0/24"}]}
    gke_limited = {**gke_public, "masterAuthorizedNetworksConfig": networks}
    assert v.cluster_api_private(R(v.GKE_CLUSTER, "gke", gke_limited)) == []
    everyone = {"cidrBlocks": [{"cidrBlock": "0.0.0.0/0"}]}
    gke_open = {**gke_public, "masterAuthorizedNetworksConfig": everyone}
    assert v.cluster_api_private(R(v.GKE_CLUSTER, "gke", gke_open))


def test_gpu_pools_must_be_tainted() -> None:
    taint = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}]
    eks = {"amiType": "AL2023_x86_64_NVIDIA", "instanceTypes": ["g5.xlarge"], "taints": taint}
    assert v.gpu_pool_tainted(R(v.EKS_NODE_GROUP, "gpu", eks)) == []
    assert v.gpu_pool_tainted(R(v.EKS_NODE_GROUP, "gpu", {**eks, "taints": []}))
    # A CPU node group needs no taint.
    assert v.gpu_pool_tainted(R(v.EKS_NODE_GROUP, "cpu", {"instanceTypes": ["m6i.large"]})) == []
    gke = {
        "nodeConfig": {"guestAccelerators": [{"type": "nvidia-l4", "count": 1}], "taints": taint}
    }
    assert v.gpu_pool_tainted(R(v.GKE_NODE_POOL, "gpu", gke)) == []
    untainted = copy.deepcopy(gke)
    del untainted["nodeConfig"]["taints"]
    assert "not tainted" in v.gpu_pool_tainted(R(v.GKE_NODE_POOL, "gpu", untainted))[0]


def test_fake_gpu_nodes_must_be_tainted() -> None:
    nodes = node_manifests([gpu_pool(2, 8), edge_pool(["a"], 1)])
    assert v.gpu_pool_tainted(R(v.CONFIG_GROUP, "nodes", {"objs": nodes})) == []
    for node in nodes:
        node["spec"].pop("taints", None)
    problems = v.gpu_pool_tainted(R(v.CONFIG_GROUP, "nodes", {"objs": nodes}))
    assert len(problems) == 2 and all("kwok-gpu" in p for p in problems)  # not the edge node
    assert v.gpu_pool_tainted(R(v.KUBE_NODE, "kwok-gpu-0", nodes[0]))


def workload(manifest: dict[str, Any]) -> R:
    kind = f"kubernetes:{manifest['apiVersion']}:{manifest['kind']}"
    return R(kind, manifest["metadata"]["name"], manifest)


def test_the_stacks_own_workloads_pass_the_pod_policies() -> None:
    manifests = [
        *operator_manifests("ghcr.io/neuraxis/neuraxis:0.1.0", "neuraxis-system", "s3://b/lake"),
        *minio_manifests("lake", "1Gi"),
        *grafana_manifests("monitoring"),
        device_plugin_daemonset(),
    ]
    pods = [workload(m) for m in manifests if m["kind"] in ("Deployment", "DaemonSet")]
    assert len(pods) == 4
    for check in (v.pods_non_root, v.pods_have_limits, v.no_latest_images):
        assert [p for r in pods for p in check(r)] == []


def _deployment(**container: Any) -> dict[str, Any]:
    base = {"name": "app", "image": "registry/app:1.2.3",
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
            "securityContext": {"runAsNonRoot": True}}  # fmt: skip
    base.update(container)
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app"},
            "spec": {"template": {"spec": {"containers": [base]}}}}  # fmt: skip


def test_pod_policies_reject_root_missing_limits_and_latest() -> None:
    assert v.pods_non_root(workload(_deployment())) == []
    assert "may run as root" in v.pods_non_root(workload(_deployment(securityContext={})))[0]
    root = _deployment(securityContext={"runAsNonRoot": True, "runAsUser": 0})
    assert v.pods_non_root(workload(root))
    privileged = _deployment(securityContext={"runAsNonRoot": True, "privileged": True})
    assert "privileged" in v.pods_non_root(workload(privileged))[0]
    assert "memory limit" in v.pods_have_limits(
        workload(_deployment(resources={"limits": {"cpu": "1"}})))[0]  # fmt: skip
    for image in ("registry/app:latest", "registry/app", "localhost:5000/app"):
        assert v.no_latest_images(workload(_deployment(image=image))), image
    assert v.no_latest_images(workload(_deployment(image="registry/app@sha256:" + "a" * 64))) == []
    # Resources without pods are not judged by pod policies.
    assert v.pods_non_root(R("kubernetes:core/v1:ConfigMap", "c", {"data": {}})) == []


def test_an_exemption_needs_the_policy_name_and_a_reason() -> None:
    root = _deployment(securityContext={})
    root["metadata"]["annotations"] = {v.EXEMPT: "pods-non-root"}
    assert v.pods_non_root(workload(root))  # no reason: not exempt
    root["metadata"]["annotations"][v.EXEMPT_REASON] = "needs the kubelet socket"
    assert v.pods_non_root(workload(root)) == []
    assert v.pods_have_limits(workload(root)) == []  # limits are still checked (and present)


def logged_s3_lake() -> list[R]:
    """The lake with server access logging into a log bucket encrypted with SSE-S3."""
    return [
        *s3_lake(),
        R(v.S3_BUCKET, "logs", {"bucket": "logs"}, urn="urn:logs"),
        R(v.S3_ENCRYPTION, "logs-sse", {"bucket": "logs", "rules": [
            {"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}}]}),
        R(v.S3_LOGGING, "logging", {"bucket": "lake", "targetBucket": "logs"}),
    ]  # fmt: skip


def test_lake_access_must_be_logged_on_s3() -> None:
    lake = logged_s3_lake()
    assert v.lake_access_logged(lake) == []
    # SSE-S3 is enough for the log bucket only (log delivery cannot use KMS).
    assert v.s3_lake_encrypted(lake) == []
    unlogged = [r for r in lake if r.type != v.S3_LOGGING]
    assert v.lake_access_logged(unlogged) == [
        "S3 bucket lake: no server access logging (BucketLogging)",
        "S3 bucket logs: no server access logging (BucketLogging)",
    ]
    assert "logs: no server-side encryption with KMS" in v.s3_lake_encrypted(unlogged)[0]
    no_target = [*unlogged, R(v.S3_LOGGING, "logging", {"bucket": "lake"})]
    assert "S3 bucket lake: no server access logging" in v.lake_access_logged(no_target)[0]


def test_lake_access_must_be_logged_on_gcs() -> None:
    bucket = R(v.GCS_BUCKET, "lake", {"name": "lake"})

    def audit(service: str, *types: str) -> R:
        configs = [{"logType": t} for t in types]
        return R(v.GCP_AUDIT_CONFIG, "audit", {"service": service, "auditLogConfigs": configs})

    assert (
        v.lake_access_logged([bucket, audit("storage.googleapis.com", *v.DATA_ACCESS_LOGS)]) == []
    )
    assert v.lake_access_logged([bucket, audit("allServices", "DATA_READ", "DATA_WRITE")]) == []
    (problem,) = v.lake_access_logged([bucket, audit("storage.googleapis.com", "DATA_READ")])
    assert "GCS bucket(s) lake" in problem and "DATA_WRITE are not enabled" in problem
    (problem,) = v.lake_access_logged([bucket, audit("bigquery.googleapis.com", "DATA_WRITE")])
    assert "DATA_READ, DATA_WRITE are not enabled" in problem
    assert v.lake_access_logged([audit("storage.googleapis.com")]) == []  # no GCS bucket
