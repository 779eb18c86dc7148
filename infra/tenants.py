"""TenantAccess: one cloud identity per workload namespace, bounded to that namespace's folders
of the lake (`Lake.namespace_prefixes`), so a pod of one team cannot reach another's data even
with the raw cloud APIs.

aws: an IAM role per namespace, assumable only through IRSA by that namespace's workload
ServiceAccounts (trust on the cluster's OIDC provider with `sub` =
system:serviceaccount:<ns>:<account>), with a policy on `<kind>/<ns>/*` of the lake and the
lake's KMS key. The Platform annotates the accounts with the role (`eks.amazonaws.com/role-arn`).

gcp: a service account per namespace with `roles/storage.objectUser` on the bucket under an IAM
condition on the namespace's object prefixes, Workload Identity for the namespace's accounts
(`iam.gke.io/gcp-service-account`), and an HMAC key of it for the S3-compatible API the lake
code speaks. Listing is a bucket-level permission in GCS: the condition admits the bucket
itself, so object *names* of other namespaces can be listed there; their contents cannot be read
or written.

Per-run scoping inside a namespace (a serving pod cannot write its model) is the operator's
STS session policies (`neuraxis.lake_access`), the same on MinIO and AWS.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pulumi

from neuraxis.infra.lake import GCS_S3_ENDPOINT, lake_uri
from neuraxis.lake import Lake
from neuraxis.lake_access import bucket_and_root, namespace_policy

TOKEN = "neuraxis:infra:TenantAccess"
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
WORKLOAD_IDENTITY_ANNOTATION = "iam.gke.io/gcp-service-account"
GCS_OBJECT_ROLE = "roles/storage.objectUser"


@dataclass(frozen=True)
class TenantAccessArgs:
    cloud: Literal["aws", "gcp"]
    bucket: str
    namespaces: Sequence[str]
    # The Kubernetes accounts of a namespace's workload pods (workload, Spark).
    service_accounts: Sequence[str]
    region: str = ""
    # aws
    oidc_provider_arn: pulumi.Input[str] | None = None
    oidc_issuer: pulumi.Input[str] | None = None
    kms_key_arn: pulumi.Input[str] | None = None
    # aws: the operator's own account gets the whole lake (it writes nothing itself today,
    # but reads results and mints nothing on AWS: pods use their namespace role).
    operator_namespace: str = ""
    operator_account: str = ""
    operator_policy_arn: pulumi.Input[str] | None = None
    # gcp
    project: str = ""


def irsa_trust_policy(
    provider_arn: str, issuer: str, namespace: str, accounts: Sequence[str]
) -> str:
    """Only the namespace's listed ServiceAccounts may assume the role (through their projected
    token), never another namespace's."""
    host = issuer.removeprefix("https://")
    statement = {
        "Effect": "Allow",
        "Principal": {"Federated": provider_arn},
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {
            "StringEquals": {
                f"{host}:aud": "sts.amazonaws.com",
                f"{host}:sub": [f"system:serviceaccount:{namespace}:{a}" for a in accounts],
            }
        },
    }
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]}, sort_keys=True)


def namespace_role_policy(bucket: str, namespace: str, kms_key_arn: str) -> str:
    """The namespace's folders of the lake, and the lake key (SSE-KMS needs it to read and
    write); the same document `neuraxis.lake_access` uses for its namespace bound."""
    policy = namespace_policy(lake_uri(bucket), namespace)
    policy["Statement"].append(
        {
            "Sid": "LakeKey",
            "Effect": "Allow",
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Resource": [kms_key_arn],
        }
    )
    return json.dumps(policy, sort_keys=True)


def gcs_namespace_condition(bucket: str, namespace: str) -> dict[str, str]:
    """IAM condition: the bucket (for listing) and the objects under the namespace's folders."""
    _, root = bucket_and_root(lake_uri(bucket))
    objects = f"projects/_/buckets/{bucket}/objects/{root}/"
    prefixes = " || ".join(
        f'resource.name.startsWith("{objects}{p}/")' for p in Lake.namespace_prefixes(namespace)
    )
    return {
        "title": f"neuraxis-{namespace}"[:100],
        "description": f"Neuraxis lake folders of namespace {namespace}",
        "expression": f'resource.name == "projects/_/buckets/{bucket}" || {prefixes}',
    }


def gcp_account_id(bucket: str, namespace: str) -> str:
    """6-30 characters, lower case, letters, digits and dashes, unique per namespace."""
    import hashlib

    digest = hashlib.sha256(f"{bucket}/{namespace}".encode()).hexdigest()[:8]
    return f"nx-{namespace[:17]}-{digest}".replace("_", "-").rstrip("-")


class TenantAccess(pulumi.ComponentResource):
    """Outputs per namespace: `annotations` (for its workload ServiceAccounts) and
    `credentials` (the environment of its lake Secret)."""

    annotations: dict[str, pulumi.Output[dict[str, str]]]
    credentials: dict[str, pulumi.Output[dict[str, str]]]
    operator_annotations: pulumi.Output[dict[str, str]] | None

    def __init__(
        self, name: str, args: TenantAccessArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TOKEN, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.annotations, self.credentials = {}, {}
        self.operator_annotations = None
        if args.cloud == "aws" and args.operator_policy_arn is not None:
            self.operator_annotations = self._aws_operator(name, args, child)
        for ns in dict.fromkeys(args.namespaces):
            if args.cloud == "aws":
                self._aws(name, ns, args, child)
            else:
                self._gcp(name, ns, args, child)
        self.register_outputs(
            {"namespaces": list(self.annotations), "annotations": self.annotations}
        )

    def _aws_operator(
        self, name: str, args: TenantAccessArgs, opts: pulumi.ResourceOptions
    ) -> pulumi.Output[dict[str, str]]:
        import pulumi_aws as aws

        self._need_oidc(args)
        role = aws.iam.Role(
            f"{name}-operator",
            description="Neuraxis operator: the whole lake (IRSA)",
            assume_role_policy=pulumi.Output.all(args.oidc_provider_arn, args.oidc_issuer).apply(
                lambda v: irsa_trust_policy(
                    v[0], v[1], args.operator_namespace, [args.operator_account]
                )
            ),
            opts=opts,
        )
        aws.iam.RolePolicyAttachment(
            f"{name}-operator-lake",
            role=role.name,
            policy_arn=pulumi.Output.from_input(args.operator_policy_arn).apply(str),
            opts=opts,
        )
        return role.arn.apply(lambda arn: {IRSA_ANNOTATION: arn})

    @staticmethod
    def _need_oidc(args: TenantAccessArgs) -> None:
        if args.oidc_provider_arn is None or args.oidc_issuer is None or args.kms_key_arn is None:
            raise ValueError("TenantAccess (aws): the OIDC provider, issuer and KMS key are needed")

    def _aws(
        self, name: str, ns: str, args: TenantAccessArgs, opts: pulumi.ResourceOptions
    ) -> None:
        import pulumi_aws as aws

        self._need_oidc(args)
        role = aws.iam.Role(
            f"{name}-{ns}",
            description=f"Neuraxis lake access of namespace {ns} (IRSA)",
            assume_role_policy=pulumi.Output.all(args.oidc_provider_arn, args.oidc_issuer).apply(
                lambda v: irsa_trust_policy(v[0], v[1], ns, args.service_accounts)
            ),
            opts=opts,
        )
        aws.iam.RolePolicy(
            f"{name}-{ns}-lake",
            role=role.name,
            policy=pulumi.Output.from_input(args.kms_key_arn).apply(
                lambda key: namespace_role_policy(args.bucket, ns, str(key))
            ),
            opts=opts,
        )
        self.annotations[ns] = role.arn.apply(lambda arn: {IRSA_ANNOTATION: arn})
        # Keys come from the role (the pod identity webhook sets the token file and role).
        self.credentials[ns] = pulumi.Output.from_input({"AWS_REGION": args.region})

    def _gcp(
        self, name: str, ns: str, args: TenantAccessArgs, opts: pulumi.ResourceOptions
    ) -> None:
        import pulumi_gcp as gcp

        account = gcp.serviceaccount.Account(
            f"{name}-{ns}",
            account_id=gcp_account_id(args.bucket, ns),
            display_name=f"Neuraxis lake, namespace {ns}",
            project=args.project,
            opts=opts,
        )
        member = account.email.apply(lambda email: f"serviceAccount:{email}")
        gcp.storage.BucketIAMMember(
            f"{name}-{ns}-objects",
            bucket=args.bucket,
            role=GCS_OBJECT_ROLE,
            member=member,
            condition=gcp.storage.BucketIAMMemberConditionArgs(
                **gcs_namespace_condition(args.bucket, ns)
            ),
            opts=opts,
        )
        for account_name in args.service_accounts:
            gcp.serviceaccount.IAMMember(
                f"{name}-{ns}-wi-{account_name}",
                service_account_id=account.name,
                role="roles/iam.workloadIdentityUser",
                member=f"serviceAccount:{args.project}.svc.id.goog[{ns}/{account_name}]",
                opts=opts,
            )
        hmac = gcp.storage.HmacKey(
            f"{name}-{ns}-hmac",
            service_account_email=account.email,
            project=args.project,
            opts=opts,
        )
        self.annotations[ns] = account.email.apply(
            lambda email: {WORKLOAD_IDENTITY_ANNOTATION: email}
        )
        self.credentials[ns] = pulumi.Output.secret(
            pulumi.Output.all(hmac.access_id, hmac.secret).apply(
                lambda keys: {
                    "AWS_ENDPOINT_URL": GCS_S3_ENDPOINT,
                    "AWS_ACCESS_KEY_ID": keys[0],
                    "AWS_SECRET_ACCESS_KEY": keys[1],
                    "AWS_REGION": "auto",
                }
            )
        )
