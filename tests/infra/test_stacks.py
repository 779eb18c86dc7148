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
    bucket = mocks.one("aws:s3/bucket:Bucket", "lake-bucket")
    assert bucket.inputs["bucket"] == "neuraxis-lake-prod-euw1"
    versioning = mocks.one("aws:s3/bucketVersioning:BucketVersioning", "lake-versioning")
    assert versioning.inputs["versioningConfiguration"] == {"status": "Enabled"}
    assert versioning.inputs["bucket"] == bucket.id
    sse = mocks.one(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
        "lake-encryption",
    )
    rule = sse.inputs["rules"][0]
    assert rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "aws:kms"
    assert rule["bucketKeyEnabled"] is True
    block = mocks.one(
        "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "lake-public-access"
    )
    for flag in (
        "blockPublicAcls",
        "blockPublicPolicy",
        "ignorePublicAcls",
        "restrictPublicBuckets",
    ):
        assert block.inputs[flag] is True
    policy = json.loads(
        mocks.one("aws:s3/bucketPolicy:BucketPolicy", "lake-tls-only").inputs["policy"]
    )
    assert policy["Statement"][0]["Effect"] == "Deny"
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    lifecycle = mocks.one(
        "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", "lake-lifecycle"
    )
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
    # Nodes cannot reach the lake (a pod could borrow the node role); the operator's IRSA role
    # can, and each workload namespace's IRSA role reaches only its own folders.
    node_attachments = [
        a.inputs["policyArn"]
        for a in mocks.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
        if a.name.startswith("eks-node-policy")
    ]
    assert node_attachments and "arn:aws:mock:::lake-access" not in node_attachments
    assert "arn:aws:mock:::lake-access" in attachments
    assert mocks.one("aws:iam/openIdConnectProvider:OpenIdConnectProvider").inputs == {
        "url": "https://oidc.mock/eks",
        "clientIdLists": ["sts.amazonaws.com"],
    }
    roles = {r.name: r.inputs for r in mocks.of_type("aws:iam/role:Role")}
    for ns in ("default",):
        trust = json.loads(roles[f"tenants-{ns}"]["assumeRolePolicy"])["Statement"][0]
        assert trust["Principal"] == {"Federated": "arn:aws:mock:::eks-oidc"}
        assert trust["Condition"]["StringEquals"]["oidc.mock/eks:sub"] == [
            f"system:serviceaccount:{ns}:neuraxis-workload",
            f"system:serviceaccount:{ns}:neuraxis-spark",
        ]
        lake_policy = json.loads(mocks.one("aws:iam/rolePolicy:RolePolicy", f"tenants-{ns}-lake")
                                 .inputs["policy"])  # fmt: skip
        objects = next(s for s in lake_policy["Statement"] if s["Sid"] == "Write")["Resource"]
        assert f"arn:aws:s3:::neuraxis-lake-prod-euw1/lake/tables/{ns}/*" in objects
        # The namespace's folders and the folder keys themselves (s3a probes them with HEAD).
        assert all(r.endswith((f"/{ns}", f"/{ns}/*")) for r in objects), objects
    operator_trust = json.loads(roles["tenants-operator"]["assumeRolePolicy"])["Statement"][0]
    assert operator_trust["Condition"]["StringEquals"]["oidc.mock/eks:sub"] == [
        "system:serviceaccount:neuraxis-system:neuraxis-operator"
    ]
    accounts = {
        (a.inputs["metadata"].get("namespace"), a.inputs["metadata"]["name"]): a.inputs["metadata"]
        for a in mocks.of_type("kubernetes:core/v1:ServiceAccount")
    }
    assert accounts[("default", "neuraxis-workload")]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:mock:::tenants-default"
    }
    assert accounts[("neuraxis-system", "neuraxis-operator")]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:mock:::tenants-operator"
    }
    # Every request to the lake is logged into a separate bucket.
    logging = mocks.one("aws:s3/bucketLogging:BucketLogging").inputs
    assert logging["bucket"] == "neuraxis-lake-prod-euw1"
    assert logging["targetBucket"] == "neuraxis-lake-prod-euw1-logs"

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
    # Each workload namespace: its own service account, bounded to its folders, through
    # Workload Identity and its own HMAC key; data reads and writes are audit-logged.
    members = {
        m.name: m.inputs for m in mocks.of_type("gcp:storage/bucketIAMMember:BucketIAMMember")
    }
    condition = members["tenants-default-objects"]["condition"]["expression"]
    assert (
        'startsWith("projects/_/buckets/neuraxis-lake-prod-ew4/objects/lake/tables/default/")'
        in (condition)
    )
    assert "/objects/lake/tables/other" not in condition
    assert members["tenants-default-objects"]["role"] == "roles/storage.objectUser"
    wi = mocks.one("gcp:serviceaccount/iAMMember:IAMMember", "tenants-default-wi-neuraxis-workload")
    assert wi.inputs["member"].endswith(".svc.id.goog[default/neuraxis-workload]")
    secrets = {s.inputs["metadata"]["namespace"]: s.inputs["stringData"] for s in lake_secrets}
    assert secrets["default"]["AWS_ACCESS_KEY_ID"] == "GOOGMOCKACCESS"
    audit = mocks.one("gcp:projects/iAMAuditConfig:IAMAuditConfig").inputs
    assert audit["service"] == "storage.googleapis.com"
    assert {c["logType"] for c in audit["auditLogConfigs"]} == {"DATA_READ", "DATA_WRITE"}
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
    # MinIO: the operator mints each run's keys; only its own namespace holds the root keys.
    assert env["NEURAXIS_LAKE_CREDENTIALS"] == "scoped"

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
    lake_secrets = [s for s in mocks.of_type("kubernetes:core/v1:Secret")
                    if s.inputs["metadata"]["name"] == SETTINGS.lake_secret]  # fmt: skip
    assert [s.inputs["metadata"]["namespace"] for s in lake_secrets] == ["neuraxis-system"]
    lake_secret = mocks.one("kubernetes:core/v1:Secret", "platform-lake-neuraxis-system")
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
