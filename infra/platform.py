"""Platform: the Neuraxis API and operator on a cluster — the CRDs generated from the models
(`neuraxis.crds.generate.render_crds`), the operator's generated namespace, RBAC and Deployment
(`neuraxis.operator.manifests.build_manifests`), the lake credentials Secret the workloads
read (`envFrom` of the Secret named in the operator settings), and in every workload namespace
the `neuraxis-spark` ServiceAccount with its RoleBinding to the shipped `neuraxis-spark-driver`
ClusterRole (what a Spark driver needs to start its executors). The operator also ensures these
before a Spark Dataset runs (create-if-missing), so a namespace added later still works; here
they are declared, so a platform team sees them in previews and policies.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import yaml

from neuraxis.infra.kube import kube_objects
from neuraxis.operator.builders.accounts import spark_accounts, workload_account
from neuraxis.operator.manifests import NAMESPACE, OPERATOR
from neuraxis.operator.settings import DEFAULT_IMAGE, LAKE_CREDENTIALS_ENV, OperatorSettings

TOKEN = "neuraxis:infra:Platform"
# Namespaces that exist in every cluster: never created (or deleted) by a stack.
BUILTIN_NAMESPACES = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})


@dataclass(frozen=True)
class PlatformArgs:
    # Known from config in every cloud (bucket name + layout), so a plain string.
    lake_uri: str
    lake_credentials: pulumi.Input[Mapping[str, str]]
    image: str = DEFAULT_IMAGE
    namespace: str = NAMESPACE
    workload_namespaces: Sequence[str] = field(default_factory=lambda: ("default",))
    # Per workload namespace (TenantAccess): annotations of its workload and Spark accounts
    # (the cloud identity they run as) and the environment of its lake Secret, instead of
    # `lake_credentials` (which then only the operator's namespace gets).
    account_annotations: Mapping[str, pulumi.Input[Mapping[str, str]]] = field(default_factory=dict)
    namespace_credentials: Mapping[str, pulumi.Input[Mapping[str, str]]] = field(
        default_factory=dict
    )
    operator_annotations: pulumi.Input[Mapping[str, str]] | None = None
    # The operator mints each run's own lake keys (STS AssumeRole with the run's grant as
    # session policy; `NEURAXIS_LAKE_CREDENTIALS=scoped`): `lake_credentials` then go to the
    # operator's namespace only, and workload namespaces get no shared lake Secret.
    scoped_lake_keys: bool = False


def crd_manifests() -> list[dict[str, Any]]:
    """The generated CRDs (the same objects as the committed crds/*.yaml)."""
    from neuraxis.crds.generate import render_crds

    return [
        yaml.safe_load(text)
        for name, text in sorted(render_crds().items())
        if name != "kustomization.yaml"
    ]


def operator_manifests(
    image: str, namespace: str, lake_uri: str, *, scoped_lake_keys: bool = False
) -> list[dict[str, Any]]:
    """The operator's generated manifests, its Deployment told where the lake is (and, with
    `scoped_lake_keys`, to mint each run's keys)."""
    from neuraxis.operator.manifests import build_manifests

    manifests = copy.deepcopy(build_manifests(image=image, namespace=namespace))
    settings = OperatorSettings()
    for manifest in manifests:
        if manifest["kind"] == "Deployment" and manifest["metadata"]["name"] == OPERATOR:
            container = manifest["spec"]["template"]["spec"]["containers"][0]
            container["env"] = [
                *container["env"],
                {"name": "NEURAXIS_LAKE_URI", "value": lake_uri},
                {"name": "NEURAXIS_LAKE_SECRET", "value": settings.lake_secret},
                *([{"name": LAKE_CREDENTIALS_ENV, "value": "scoped"}] if scoped_lake_keys else []),
            ]
    return manifests


def annotate_account(
    manifests: list[dict[str, Any]], name: str, annotations: pulumi.Input[Mapping[str, str]]
) -> None:
    """Put `annotations` on the ServiceAccount `name` among `manifests` (in place)."""
    for manifest in manifests:
        if manifest["kind"] == "ServiceAccount" and manifest["metadata"]["name"] == name:
            manifest["metadata"]["annotations"] = annotations
            return
    raise ValueError(f"no ServiceAccount {name} among the manifests")


class Platform(pulumi.ComponentResource):
    def __init__(
        self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TOKEN, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        crds = kube_objects(crd_manifests(), child)
        self.crd_names = [c["metadata"]["name"] for c in crd_manifests()]
        after_crds = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=crds))
        manifests = operator_manifests(
            args.image, args.namespace, args.lake_uri, scoped_lake_keys=args.scoped_lake_keys
        )
        if args.operator_annotations is not None:
            annotate_account(manifests, OPERATOR, args.operator_annotations)
        created = kube_objects(manifests, after_crds)
        settings = OperatorSettings()
        secret_name = settings.lake_secret
        namespaces = [args.namespace, *args.workload_namespaces]
        for ns in dict.fromkeys(namespaces):
            depends: list[pulumi.Resource] = list(created)
            if ns not in BUILTIN_NAMESPACES and ns != args.namespace:
                depends.append(
                    k8s.core.v1.Namespace(
                        f"{name}-ns-{ns}",
                        metadata={"name": ns, "labels": {"app.kubernetes.io/part-of": "neuraxis"}},
                        opts=child,
                    )
                )
            if ns != args.namespace:
                accounts = spark_accounts(ns, settings)
                if ns in args.account_annotations:
                    # The operator creates the workload account when missing; declared here it
                    # carries the namespace's cloud identity from the start.
                    accounts.append(workload_account(ns, settings))
                    for account in (settings.service_account, settings.spark_service_account):
                        annotate_account(accounts, account, args.account_annotations[ns])
                kube_objects(
                    accounts,
                    pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=depends)),
                )
            if args.scoped_lake_keys and ns != args.namespace:
                continue  # the operator writes each run's own Secret there
            k8s.core.v1.Secret(
                f"{name}-lake-{ns}",
                metadata={"name": secret_name, "namespace": ns},
                type="Opaque",
                string_data=args.namespace_credentials.get(ns, args.lake_credentials),
                opts=pulumi.ResourceOptions.merge(
                    child, pulumi.ResourceOptions(depends_on=depends)
                ),
            )
        self.namespace = args.namespace
        self.operator_deployment = f"{args.namespace}/{OPERATOR}"
        self.register_outputs(
            {
                "namespace": self.namespace,
                "crds": self.crd_names,
                "operatorDeployment": self.operator_deployment,
                "lakeSecret": secret_name,
            }
        )
