"""Lake: the object store behind `neuraxis.lake` (tables, models, edge bundles, runs, lineage).

aws: an S3 bucket, versioned, SSE-KMS with a rotating key, every public access blocked, a
lifecycle for old versions and a TLS-only bucket policy, plus an IAM policy granting the bucket to
whoever attaches it (the operator's IRSA role; the namespaces get narrower roles from
`TenantAccess`), and S3 server access logging of every request into a separate log bucket
(SSE-S3: the log delivery cannot use KMS keys). gcp: a GCS bucket, versioned, uniform access,
public access prevented, optional CMEK, Cloud Audit Logs of data reads and writes on Cloud
Storage (DATA_READ, DATA_WRITE) in the project, and an HMAC key so the S3-speaking lake code
reaches it through the S3-compatible XML API. local: MinIO in the cluster (Deployment, PVC on a
bound PV, credentials Secret, Service).

`credentials` is the environment the workloads need (the keys `neuraxis.lake.S3Settings` reads);
the Platform puts it into the lake Secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import pulumi

from neuraxis.infra import images
from neuraxis.infra.kube import kube_objects

TOKEN = "neuraxis:infra:Lake"
LAKE_PREFIX = "lake"
MINIO_NAMESPACE = "neuraxis-lake"
MINIO_USER = "neuraxis"
MINIO_PORT = 9000
MINIO_SECRET = "minio-credentials"
GCS_S3_ENDPOINT = "https://storage.googleapis.com"
GCS_AUDIT_SERVICE = "storage.googleapis.com"
GCS_AUDIT_LOG_TYPES = ("DATA_READ", "DATA_WRITE")
ACCESS_LOG_PREFIX = "s3-access/"


@dataclass(frozen=True)
class LakeArgs:
    cloud: Literal["local", "aws", "gcp"]
    bucket: str
    noncurrent_days: int = 30
    region: str = ""
    # gcp
    project: str = ""
    kms_key: str = ""
    # local: the MinIO secret key (a Pulumi secret).
    secret_key: pulumi.Input[str] | None = None
    storage: str = "10Gi"
    # aws: how long S3 server access logs are kept.
    access_log_days: int = 365


class Lake(pulumi.ComponentResource):
    uri: pulumi.Output[str]
    credentials: pulumi.Output[dict[str, str]]

    def __init__(self, name: str, args: LakeArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TOKEN, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.access_policy_arn: pulumi.Output[str] | None = None
        self.kms_key_arn: pulumi.Output[str] | None = None
        if args.cloud == "aws":
            self._aws(name, args, child)
        elif args.cloud == "gcp":
            self._gcp(name, args, child)
        else:
            self._local(name, args, child)
        self.register_outputs({"uri": self.uri, "bucket": args.bucket})

    # -- aws --------------------------------------------------------------------------------

    def _aws(self, name: str, args: LakeArgs, opts: pulumi.ResourceOptions) -> None:
        import pulumi_aws as aws

        key = aws.kms.Key(
            f"{name}-key",
            description=f"Neuraxis lake {args.bucket}",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            opts=opts,
        )
        bucket = aws.s3.Bucket(f"{name}-bucket", bucket=args.bucket, opts=opts)
        on_bucket = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[bucket]))
        aws.s3.BucketVersioning(
            f"{name}-versioning",
            bucket=bucket.id,
            versioning_configuration={"status": "Enabled"},
            opts=on_bucket,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption",
            bucket=bucket.id,
            rules=[
                {
                    "apply_server_side_encryption_by_default": {
                        "sse_algorithm": "aws:kms",
                        "kms_master_key_id": key.arn,
                    },
                    "bucket_key_enabled": True,
                }
            ],
            opts=on_bucket,
        )
        access_block = aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=on_bucket,
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle",
            bucket=bucket.id,
            rules=[
                {
                    "id": "expire-noncurrent-versions",
                    "status": "Enabled",
                    "filter": {},
                    "noncurrent_version_expiration": {"noncurrent_days": args.noncurrent_days},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": 7},
                }
            ],
            opts=on_bucket,
        )
        aws.s3.BucketPolicy(
            f"{name}-tls-only",
            bucket=bucket.id,
            policy=bucket.arn.apply(tls_only_policy),
            # A bucket policy written before the access block can be refused as public.
            opts=pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(depends_on=[access_block])
            ),
        )
        access = aws.iam.Policy(
            f"{name}-access",
            description="Read and write the Neuraxis lake",
            policy=pulumi.Output.all(bucket.arn, key.arn).apply(
                lambda arns: bucket_access_policy(arns[0], arns[1])
            ),
            opts=opts,
        )
        self.access_policy_arn = access.arn
        self.kms_key_arn = key.arn
        self._aws_access_logs(name, args, bucket, opts)
        self.uri = bucket.bucket.apply(lake_uri)
        # Pods get credentials from the node role (the access policy); only the region is set.
        self.credentials = pulumi.Output.from_input({"AWS_REGION": args.region})

    def _aws_access_logs(
        self, name: str, args: LakeArgs, lake: Any, opts: pulumi.ResourceOptions
    ) -> None:
        """Every request to the lake (who, what key, which answer) as S3 server access logs."""
        import pulumi_aws as aws

        logs = aws.s3.Bucket(f"{name}-access-logs", bucket=f"{args.bucket}-logs", opts=opts)
        on_logs = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[logs]))
        aws.s3.BucketVersioning(
            f"{name}-access-logs-versioning",
            bucket=logs.id,
            versioning_configuration={"status": "Enabled"},
            opts=on_logs,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-access-logs-encryption",
            bucket=logs.id,
            # Server access log delivery writes only to SSE-S3 buckets.
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}],
            opts=on_logs,
        )
        block = aws.s3.BucketPublicAccessBlock(
            f"{name}-access-logs-public-access",
            bucket=logs.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=on_logs,
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-access-logs-lifecycle",
            bucket=logs.id,
            rules=[
                {
                    "id": "expire-access-logs",
                    "status": "Enabled",
                    "filter": {},
                    "expiration": {"days": args.access_log_days},
                    "noncurrent_version_expiration": {"noncurrent_days": 1},
                }
            ],
            opts=on_logs,
        )
        aws.s3.BucketPolicy(
            f"{name}-access-logs-policy",
            bucket=logs.id,
            policy=pulumi.Output.all(logs.arn, lake.arn).apply(
                lambda arns: access_log_bucket_policy(arns[0], arns[1])
            ),
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[block])),
        )
        aws.s3.BucketLogging(
            f"{name}-access-logging",
            bucket=lake.id,
            target_bucket=logs.id,
            target_prefix=ACCESS_LOG_PREFIX,
            opts=on_logs,
        )

    # -- gcp --------------------------------------------------------------------------------

    def _gcp(self, name: str, args: LakeArgs, opts: pulumi.ResourceOptions) -> None:
        import pulumi_gcp as gcp

        encryption = {"default_kms_key_name": args.kms_key} if args.kms_key else None
        spec: dict[str, Any] = {
            "name": args.bucket,
            "project": args.project,
            "location": args.region.upper(),
            "versioning": {"enabled": True},
            "uniform_bucket_level_access": True,
            "public_access_prevention": "enforced",
            "encryption": encryption,
            "lifecycle_rules": [
                {
                    "action": {"type": "Delete"},
                    "condition": {"days_since_noncurrent_time": args.noncurrent_days},
                }
            ],
        }
        bucket = gcp.storage.Bucket(f"{name}-bucket", opts=opts, **spec)
        # Data-access audit logs are off by default in GCP: reads and writes of objects are
        # recorded only with this (admin activity is always recorded).
        gcp.projects.IAMAuditConfig(
            f"{name}-storage-audit",
            project=args.project,
            service=GCS_AUDIT_SERVICE,
            audit_log_configs=[{"log_type": t} for t in GCS_AUDIT_LOG_TYPES],
            opts=opts,
        )
        account = gcp.serviceaccount.Account(
            f"{name}-sa",
            account_id=f"{args.bucket}-lake"[:30],
            display_name="Neuraxis lake access",
            project=args.project,
            opts=opts,
        )
        gcp.storage.BucketIAMMember(
            f"{name}-object-admin",
            bucket=bucket.name,
            role="roles/storage.objectAdmin",
            member=account.email.apply(lambda email: f"serviceAccount:{email}"),
            opts=opts,
        )
        hmac = gcp.storage.HmacKey(
            f"{name}-hmac", service_account_email=account.email, project=args.project, opts=opts
        )
        self.uri = bucket.name.apply(lake_uri)
        self.credentials = pulumi.Output.secret(
            pulumi.Output.all(hmac.access_id, hmac.secret).apply(
                lambda keys: {
                    "AWS_ENDPOINT_URL": GCS_S3_ENDPOINT,
                    "AWS_ACCESS_KEY_ID": keys[0],
                    "AWS_SECRET_ACCESS_KEY": keys[1],
                    "AWS_REGION": "auto",
                }
            )
        )

    # -- local ------------------------------------------------------------------------------

    def _local(self, name: str, args: LakeArgs, opts: pulumi.ResourceOptions) -> None:
        if args.secret_key is None:
            raise ValueError(
                "Lake (local): secret_key is required; set the stack secret with "
                "`pulumi config set --secret neuraxis:lakeSecretKey <value>`"
            )
        import pulumi_kubernetes as k8s

        secret_key = pulumi.Output.secret(args.secret_key)
        created = kube_objects(minio_manifests(args.bucket, args.storage), opts)
        namespace = created[0]
        k8s.core.v1.Secret(
            f"{name}-minio-credentials",
            metadata={"name": MINIO_SECRET, "namespace": MINIO_NAMESPACE},
            type="Opaque",
            string_data={"MINIO_ROOT_USER": MINIO_USER, "MINIO_ROOT_PASSWORD": secret_key},
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[namespace])),
        )
        endpoint = f"http://minio.{MINIO_NAMESPACE}.svc:{MINIO_PORT}"
        self.uri = pulumi.Output.from_input(lake_uri(args.bucket))
        self.credentials = pulumi.Output.secret(
            secret_key.apply(
                lambda key: {
                    "AWS_ENDPOINT_URL": endpoint,
                    "AWS_ACCESS_KEY_ID": MINIO_USER,
                    "AWS_SECRET_ACCESS_KEY": key,
                    "AWS_REGION": "us-east-1",
                }
            )
        )


def lake_uri(bucket: str) -> str:
    """The lake root the workloads use: S3 (or S3-compatible GCS / MinIO) under `lake/`."""
    return f"s3://{bucket}/{LAKE_PREFIX}"


def tls_only_policy(bucket_arn: str) -> str:
    """Deny every request to the bucket that does not come over TLS."""
    statement = {
        "Sid": "DenyInsecureTransport",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [bucket_arn, f"{bucket_arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]}, sort_keys=True)


def access_log_bucket_policy(logs_arn: str, lake_arn: str) -> str:
    """TLS only, and the S3 logging service may deliver the lake's access logs (only those)."""
    policy = json.loads(tls_only_policy(logs_arn))
    policy["Statement"].append(
        {
            "Sid": "S3ServerAccessLogs",
            "Effect": "Allow",
            "Principal": {"Service": "logging.s3.amazonaws.com"},
            "Action": "s3:PutObject",
            "Resource": f"{logs_arn}/{ACCESS_LOG_PREFIX}*",
            "Condition": {"ArnLike": {"aws:SourceArn": lake_arn}},
        }
    )
    return json.dumps(policy, sort_keys=True)


def bucket_access_policy(bucket_arn: str, key_arn: str) -> str:
    """Read/write on the lake bucket and use of its KMS key (SSE-KMS needs both)."""
    statements = [
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [bucket_arn]},
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            "Resource": [f"{bucket_arn}/*"],
        },
        {
            "Effect": "Allow",
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Resource": [key_arn],
        },
    ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


def minio_manifests(bucket: str, storage: str) -> list[dict[str, Any]]:
    """MinIO on a pre-bound volume, non-root, with limits; the credentials Secret is apart
    (its value is a Pulumi secret)."""
    labels = {"app.kubernetes.io/name": "minio", "app.kubernetes.io/part-of": "neuraxis"}
    meta = {"namespace": MINIO_NAMESPACE, "labels": labels}
    volume = "neuraxis-lake-minio"
    env_from_secret = [
        {"name": k, "valueFrom": {"secretKeyRef": {"name": MINIO_SECRET, "key": k}}}
        for k in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")
    ]
    container = {
        "name": "minio",
        "image": images.MINIO,
        # A top-level folder of the data dir is a bucket: the lake bucket exists from the start.
        "command": [
            "sh",
            "-c",
            f"mkdir -p /data/{bucket} && exec minio server /data "
            f"--address :{MINIO_PORT} --console-address :9001",
        ],
        "env": env_from_secret,
        "ports": [{"name": "s3", "containerPort": MINIO_PORT}],
        "readinessProbe": {"httpGet": {"path": "/minio/health/ready", "port": "s3"}},
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": MINIO_NAMESPACE, "labels": labels},
        },
        {
            # Pre-bound: the local control plane has no storage provisioner.
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume, "labels": labels},
            "spec": {
                "capacity": {"storage": storage},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": "/var/lib/neuraxis/minio", "type": "DirectoryOrCreate"},
                "claimRef": {"namespace": MINIO_NAMESPACE, "name": "minio-data"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "minio-data", **meta},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "volumeName": volume,
                "resources": {"requests": {"storage": storage}},
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "minio", **meta},
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},  # one writer of the volume
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 1000,
                            "runAsGroup": 1000,
                            "fsGroup": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [container],
                        "volumes": [
                            {"name": "data", "persistentVolumeClaim": {"claimName": "minio-data"}}
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "minio", **meta},
            "spec": {
                "selector": labels,
                "ports": [{"name": "s3", "port": MINIO_PORT, "targetPort": "s3"}],
            },
        },
    ]
