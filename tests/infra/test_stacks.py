"""Every stack (local, aws, gcp) through the real program entry under Pulumi mocks: what it
creates, the key properties, the outputs, and the policy pack over the result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from neuraxis.dev.cluster import kubeconfig_path
from neuraxis.infra.policy.validators import check_all
from neuraxis.operator.settings import OperatorSettings

from .mocks import REPO, STACKS, run_stack

SETTINGS = OperatorSettings()


@pytest.fixture
def fake_kubeconfig(tmp_path: Path) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    return str(path)


@pytest.fixture(autouse=True)
def light_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real prometheus-operator CRDs and operator, with the CRD schemas (~4 MB that the
    mock runtime would serialize for minutes) dropped; the cluster test applies them whole."""
    import copy

    from neuraxis.infra import stack
    from neuraxis.infra.prometheus_operator import PrometheusOperatorBundle, load_bundle

    real = load_bundle()
    crds = copy.deepcopy(real.crds)
    for crd in crds:
        for version in crd["spec"]["versions"]:
            version["schema"] = {"openAPIV3Schema": {"type": "object"}}
    light = PrometheusOperatorBundle(real.version, crds, real.operator)
    monkeypatch.setattr(stack, "load_bundle", lambda: light)


def _no_violations(report: dict[str, list[str]]) -> None:
    assert {name: v for name, v in report.items() if v} == {}


def test_program_module_creates_nothing_at_import() -> None:
    # Importing the library modules (what the program imports) must not register resources.
    import importlib

    for module in ("config", "stack", "lake", "gpu_node_pool", "edge_sites", "monitoring",
                   "platform", "cluster", "policy.validators"):  # fmt: skip
        importlib.import_module(f"neuraxis.infra.{module}")
    assert "config = load_stack_config()" in (STACKS / "__main__.py").read_text()


def test_aws_stack(fake_kubeconfig: str) -> None:
    mocks, outputs = run_stack("aws")
    bucket = mocks.one("aws:s3/bucket:Bucket")
    assert bucket.inputs["bucket"] == "neuraxis-lake-prod-euw1"
    versioning = mocks.one("aws:s3/bucketVersioning:BucketVersioning")
    assert versioning.inputs["versioningConfiguration"] == {"status": "Enabled"}
    assert versioning.inputs["bucket"] == bucket.id
    sse = mocks.one(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
    )
    rule = sse.inputs["rules"][0]
    assert rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "aws:kms"
    assert rule["bucketKeyEnabled"] is True
    block = mocks.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    for flag in (
        "blockPublicAcls",
        "blockPublicPolicy",
        "ignorePublicAcls",
        "restrictPublicBuckets",
    ):
        assert block.inputs[flag] is True
    policy = json.loads(mocks.one("aws:s3/bucketPolicy:BucketPolicy").inputs["policy"])
    assert policy["Statement"][0]["Effect"] == "Deny"
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    lifecycle = mocks.one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    assert lifecycle.inputs["rules"][0]["noncurrentVersionExpiration"] == {"noncurrentDays": 30}
    assert mocks.one("aws:kms/key:Key", "lake-key").inputs["enableKeyRotation"] is True

    groups = {g.name: g.inputs for g in mocks.of_type("aws:eks/nodeGroup:NodeGroup")}
    assert set(groups) == {"eks-system", "gpu", "edge-plant-a", "edge-plant-b"}
    gpu = groups["gpu"]
    assert gpu["amiType"] == "AL2023_x86_64_NVIDIA"
    assert gpu["instanceTypes"] == ["g5.xlarge"]
    assert gpu["labels"] == {"neuraxis.dev/pool": "gpu"}
    assert gpu["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}]
    assert gpu["scalingConfig"]["desiredSize"] == 2
    edge = groups["edge-plant-b"]
    assert edge["labels"]["neuraxis.dev/edge-site"] == "plant-b"
    assert edge["taints"] == [
        {"key": "neuraxis.dev/edge", "value": "true", "effect": "NO_SCHEDULE"}
    ]
    assert "taints" not in groups["eks-system"]
    plugin = mocks.one("kubernetes:apps/v1:DaemonSet")
    pod = plugin.inputs["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"neuraxis.dev/pool": "gpu"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"

    cluster = mocks.one("aws:eks/cluster:Cluster")
    assert cluster.inputs["encryptionConfig"]["resources"] == ["secrets"]
    # The API endpoint is private unless networks are listed (apiAccessCidrs).
    assert cluster.inputs["vpcConfig"]["endpointPublicAccess"] is False
    assert cluster.inputs["vpcConfig"]["endpointPrivateAccess"] is True
    attachments = [
        a.inputs["policyArn"]
        for a in mocks.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    ]
    assert "arn:aws:mock:::lake-access" in attachments  # the node role can reach the lake

    assert outputs["lakeUri"] == "s3://neuraxis-lake-prod-euw1/lake"
    assert outputs["grafanaUrl"] == "http://grafana.monitoring.svc:3000"
    kubeconfig = json.loads(outputs["kubeconfig"])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://eks.eks.mock"
    assert kubeconfig["users"][0]["user"]["exec"]["command"] == "aws"
    _no_violations(check_all(mocks.policy_view()))


def test_gcp_stack() -> None:
    mocks, outputs = run_stack("gcp")
    bucket = mocks.one("gcp:storage/bucket:Bucket").inputs
    assert bucket["versioning"] == {"enabled": True}
    assert bucket["uniformBucketLevelAccess"] is True
    assert bucket["publicAccessPrevention"] == "enforced"
    assert "encryption" not in bucket  # Google-managed keys unless gcpKmsKey is set
    pools = {p.name: p.inputs for p in mocks.of_type("gcp:container/nodePool:NodePool")}
    assert set(pools) == {"gke-system", "gpu", "edge-plant-a"}
    gpu = pools["gpu"]["nodeConfig"]
    assert gpu["guestAccelerators"][0]["type"] == "nvidia-l4"
    assert gpu["machineType"] == "g2-standard-8"
    assert gpu["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}]
    assert gpu["labels"] == {"neuraxis.dev/pool": "gpu"}
    assert not mocks.of_type("kubernetes:apps/v1:DaemonSet")  # GKE installs the device plugin
    cluster = mocks.one("gcp:container/cluster:Cluster").inputs
    assert cluster["privateClusterConfig"]["enablePrivateEndpoint"] is True
    assert cluster["privateClusterConfig"]["enablePrivateNodes"] is True
    assert outputs["lakeUri"] == "s3://neuraxis-lake-prod-ew4/lake"
    assert outputs["grafanaUrl"].startswith("http://grafana.")
    assert json.loads(outputs["kubeconfig"])["users"][0]["user"]["exec"]["command"] == (
        "gke-gcloud-auth-plugin"
    )
    lake_secrets = [s for s in mocks.of_type("kubernetes:core/v1:Secret") if "lake" in s.name]
    assert lake_secrets and all(
        s.inputs["stringData"]["AWS_ENDPOINT_URL"] == "https://storage.googleapis.com"
        for s in lake_secrets
    )
    _no_violations(check_all(mocks.policy_view()))


def test_gcp_stack_with_cmek() -> None:
    mocks, _ = run_stack(
        "gcp", {"neuraxis:gcpKmsKey": "projects/p/locations/l/keyRings/r/cryptoKeys/k"}
    )
    bucket = mocks.one("gcp:storage/bucket:Bucket").inputs
    assert bucket["encryption"] == {
        "defaultKmsKeyName": "projects/p/locations/l/keyRings/r/cryptoKeys/k"
    }


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_api_endpoint_open_only_to_the_listed_networks(cloud: str) -> None:
    mocks, _ = run_stack(cloud, {"neuraxis:apiAccessCidrs": '["203.0.113.0/24"]'})
    if cloud == "aws":
        vpc = mocks.one("aws:eks/cluster:Cluster").inputs["vpcConfig"]
        assert vpc["endpointPublicAccess"] is True
        assert vpc["publicAccessCidrs"] == ["203.0.113.0/24"]
    else:
        cluster = mocks.one("gcp:container/cluster:Cluster").inputs
        assert cluster["privateClusterConfig"]["enablePrivateEndpoint"] is False
        blocks = cluster["masterAuthorizedNetworksConfig"]["cidrBlocks"]
        assert [b["cidrBlock"] for b in blocks] == ["203.0.113.0/24"]
    _no_violations(check_all(mocks.policy_view()))


def test_local_stack(fake_kubeconfig: str) -> None:
    mocks, outputs = run_stack("local", {"neuraxis:kubeconfig": fake_kubeconfig})
    crd_type = "kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition"
    crds = {c.inputs["metadata"]["name"] for c in mocks.of_type(crd_type)}
    committed = {p.name.removeprefix("neuraxis.dev_").removesuffix(".yaml") + ".neuraxis.dev"
                 for p in (REPO / "crds").glob("neuraxis.dev_*.yaml")}  # fmt: skip
    assert committed <= crds
    assert "prometheuses.monitoring.coreos.com" in crds
    deployment = mocks.one(
        "kubernetes:apps/v1:Deployment", "deployment-neuraxis-system-neuraxis-operator"
    )
    pod = deployment.inputs["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # Plain values only: the lease identity comes from the pod's name (valueFrom).
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["NEURAXIS_LAKE_URI"] == "s3://neuraxis-lake/lake"
    assert env["NEURAXIS_LAKE_SECRET"] == SETTINGS.lake_secret

    groups = {g.name: g.inputs["objs"] for g in mocks.of_type("kubernetes:yaml/v2:ConfigGroup")}
    assert set(groups) == {"local-system-nodes", "gpu-nodes", "edge-nodes"}
    gpu_nodes = groups["gpu-nodes"]
    assert len(gpu_nodes) == 2
    for node in gpu_nodes:
        assert node["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}
        assert node["metadata"]["labels"]["neuraxis.dev/pool"] == "gpu"
        assert node["spec"]["taints"] == [
            {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
        ]
        assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
    sites = [n["metadata"]["labels"]["neuraxis.dev/edge-site"] for n in groups["edge-nodes"]]
    assert sites == ["plant-a", "plant-a", "plant-b", "plant-b"]
    assert all("taints" not in n["spec"] for n in groups["local-system-nodes"])

    minio = mocks.one("kubernetes:apps/v1:Deployment", "deployment-neuraxis-lake-minio")
    assert minio.inputs["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 1000
    # Spark drivers' account and binding in each workload namespace, not the operator's.
    spark = SETTINGS.spark_service_account
    account = mocks.one("kubernetes:core/v1:ServiceAccount", f"serviceaccount-default-{spark}")
    assert account.inputs["automountServiceAccountToken"] is False
    binding = mocks.one("kubernetes:rbac.authorization.k8s.io/v1:RoleBinding",
                        f"rolebinding-default-{spark}").inputs  # fmt: skip
    assert binding["roleRef"]["name"] == "neuraxis-spark-driver"
    subject = {"kind": "ServiceAccount", "name": spark, "namespace": "default"}
    assert binding["subjects"] == [subject]
    spark_accounts = [a for a in mocks.of_type("kubernetes:core/v1:ServiceAccount")
                      if a.inputs["metadata"]["name"] == spark]  # fmt: skip
    assert [a.inputs["metadata"]["namespace"] for a in spark_accounts] == ["default"]
    lake_secret = mocks.one("kubernetes:core/v1:Secret", "platform-lake-default")
    assert lake_secret.inputs["stringData"]["AWS_SECRET_ACCESS_KEY"] == "test-secret-value"
    assert (
        lake_secret.inputs["stringData"]["AWS_ENDPOINT_URL"]
        == "http://minio.neuraxis-lake.svc:9000"
    )
    rules = mocks.one("kubernetes:monitoring.coreos.com/v1:PrometheusRule")
    alerts = {r["alert"] for g in rules.inputs["spec"]["groups"] for r in g["rules"]}
    assert {"NeuraxisReconcileErrors", "NeuraxisRunsFailed", "NeuraxisDatasetQualityFailed",
            "NeuraxisServingLatencyHigh"} <= alerts  # fmt: skip
    dashboards = mocks.one(
        "kubernetes:core/v1:ConfigMap", "configmap-monitoring-grafana-dashboards"
    )
    assert set(dashboards.inputs["data"]) == {"datasets.json", "operator.json", "serving.json"}

    assert outputs["lakeUri"] == "s3://neuraxis-lake/lake"
    assert outputs["grafanaUrl"] == "http://grafana.monitoring.svc:3000"
    assert outputs["kubeconfig"] == Path(fake_kubeconfig).read_text()
    _no_violations(check_all(mocks.policy_view()))


def test_local_stack_without_secret_key_names_the_key(fake_kubeconfig: str) -> None:
    import pulumi

    from .mocks import run, stack_config

    config = {k: v for k, v in stack_config("local").items() if k != "neuraxis:lakeSecretKey"}

    def body() -> Any:
        from neuraxis.infra.config import load_stack_config
        from neuraxis.infra.stack import lake_secret_key

        with pytest.raises(pulumi.RunError, match="neuraxis:lakeSecretKey"):
            lake_secret_key(load_stack_config())

    run(body, config={**config, "neuraxis:kubeconfig": fake_kubeconfig})


def test_local_stack_without_a_cluster_says_how_to_start_one(tmp_path: Path) -> None:
    from .mocks import run

    missing = tmp_path / "nope"

    def body() -> Any:
        from neuraxis.infra.cluster import LocalCluster, LocalClusterArgs

        with pytest.raises(FileNotFoundError, match="neuraxis dev cluster up --bare"):
            LocalCluster("local", LocalClusterArgs(kubeconfig_path=missing))

    run(body)
    assert kubeconfig_path(tmp_path) == tmp_path / "kubeconfig"
