"""TrainingJob with `spec.federation` -> per run: a Flower SuperLink (Deployment; its Service
lives across runs so that its TLS certificate does), one SuperNode Deployment per site pinned
to that site's edge nodes, the server app as a Job (the run: its result is the run's result),
and NetworkPolicies that keep the SuperNodes talking to the SuperLink only.

What the pods run and where their TLS material is mounted is the workload contract
(`neuraxis.workloads.federation_contract`); this module only decides the objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neuraxis.crds import TrainingJob
from neuraxis.lake import EDGE_SITE_ENV
from neuraxis.operator.builders.common import RUN_ID_ENV, job, spec_config_map
from neuraxis.operator.builders.edge import edge_toleration
from neuraxis.operator.builders.training import ResolvedDataset
from neuraxis.operator.children import (
    RUN_LABEL,
    SPEC_FILE,
    child_metadata,
    fixed_name,
    run_name,
)
from neuraxis.operator.pods import pod_template, resource_limits, workload_container
from neuraxis.operator.settings import OperatorSettings
from neuraxis.workloads.federation_contract import (
    CA_CERT_FILE,
    CONTROL_ADDRESS_ENV,
    SERVER_CERT_FILE,
    SERVER_KEY_FILE,
    SITE_ENV,
    SUPERLINK_ADDRESS_ENV,
    SUPERLINK_PORT,
    TLS_DIR_ENV,
    TLS_MOUNT,
    WORKLOAD_COMMAND,
    Role,
)

ROLE_LABEL = "neuraxis.dev/federation-role"
SITE_LABEL = "neuraxis.dev/federation-site"
COMPONENT = "federated"
TLS_VOLUME = "federation-tls"
# Egress every SuperNode keeps besides the SuperLink: name resolution.
DNS_PORTS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]


@dataclass(frozen=True)
class ResolvedSite:
    """A site of the run: its Dataset version (pinned now) and the nodes its SuperNode runs on."""

    name: str
    dataset: ResolvedDataset
    node_selector: dict[str, str]


def federation_run_name(tj: TrainingJob) -> str:
    """The run id: the server app Job's name (its result is the run's)."""
    return run_name(tj, "fed")


def superlink_service_name(tj: TrainingJob) -> str:
    """One Service per resource (not per run), so that its certificate serves every run."""
    return fixed_name(tj, "superlink")


def tls_secret_name(tj: TrainingJob) -> str:
    return fixed_name(tj, "fedtls")


def superlink_name(run: str) -> str:
    return f"{run}-link"


def supernode_name(run: str, index: int) -> str:
    # By position: a site name may be as long as a whole object name.
    return f"{run}-site{index}"


def role_labels(run: str, role: Role) -> dict[str, str]:
    return {RUN_LABEL: run, ROLE_LABEL: role}


def pinned_sites(tj: TrainingJob, sites: list[ResolvedSite]) -> TrainingJob:
    """The job with every site's dataset reference pinned to the version resolved now."""
    out = tj.model_copy(deep=True)
    assert out.spec.federation is not None
    versions = {s.name: s.dataset.version for s in sites}
    for site in out.spec.federation.sites:
        site.dataset_ref.version = versions[site.name]
    return out


def _command(tj: TrainingJob, role: Role) -> list[str]:
    """`neuraxis workload federated <role>`; only the server reads the spec (the run config
    it submits carries the job to the ServerApp and the ClientApps)."""
    if role != "server":
        return [*WORKLOAD_COMMAND, role]
    namespace = tj.metadata.namespace or "default"
    return [
        *WORKLOAD_COMMAND, role, "--spec", SPEC_FILE,
        "--namespace", namespace, "--run-id", "$(NEURAXIS_RUN_ID)",
    ]  # fmt: skip


def _tls_volume(tj: TrainingJob, ca_only: bool) -> dict[str, Any]:
    # A SuperNode and the server app see the CA certificate alone, never the server's key.
    files = [CA_CERT_FILE] if ca_only else [CA_CERT_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE]
    return {
        "name": TLS_VOLUME,
        "secret": {
            "secretName": tls_secret_name(tj),
            "defaultMode": 0o440,
            "items": [{"key": f, "path": f} for f in files],
        },
    }


def _federated_pod(
    tj: TrainingJob,
    settings: OperatorSettings,
    run: str,
    role: Role,
    *,
    env: dict[str, str],
    extra_env: list[dict[str, Any]] | None = None,
    ports: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    scheduling: dict[str, Any] | None = None,
    restart_policy: str = "Always",
) -> dict[str, Any]:
    spec = tj.spec
    container = workload_container(
        tj,
        settings,
        _command(tj, role),
        resources=resource_limits(spec.resources.cpu, spec.resources.memory),
        env={TLS_DIR_ENV: TLS_MOUNT, **env},
        extra_env=extra_env,
        ports=ports,
    )
    container["volumeMounts"].append({"name": TLS_VOLUME, "mountPath": TLS_MOUNT, "readOnly": True})
    template = pod_template(
        tj,
        settings,
        COMPONENT,
        container,
        run,
        labels={**role_labels(run, role), **(labels or {})},
        restart_policy=restart_policy,
        scheduling=scheduling,
    )
    template["spec"]["volumes"].append(_tls_volume(tj, ca_only=role != "superlink"))
    return template


def _deployment(tj: TrainingJob, name: str, template: dict[str, Any]) -> dict[str, Any]:
    labels = template["metadata"]["labels"]
    selector = {k: labels[k] for k in (RUN_LABEL, ROLE_LABEL, SITE_LABEL) if k in labels}
    meta = child_metadata(tj, name, COMPONENT)
    meta["labels"][RUN_LABEL] = labels[RUN_LABEL]  # a superseded run's servers are found by it
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            # spec.suspend: no pods at all, the servers' too.
            "replicas": 0 if tj.spec.suspend else 1,
            # One SuperLink/SuperNode at a time: a second would register as another node.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": template,
        },
    }


def _superlink(tj: TrainingJob, settings: OperatorSettings, run: str) -> dict[str, Any]:
    ports = [{"name": "superlink", "containerPort": SUPERLINK_PORT}]
    template = _federated_pod(
        tj, settings, run, "superlink", env={}, extra_env=[_run_id(run)], ports=ports
    )
    template["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": "superlink"}}
    return _deployment(tj, superlink_name(run), template)


def _run_id(run: str) -> dict[str, Any]:
    # Deployment pods have no job-name label: the run id is written out.
    return {"name": "NEURAXIS_RUN_ID", "value": run}


def _dataset_env(dataset: ResolvedDataset) -> dict[str, str]:
    env = {"NEURAXIS_DATASET": dataset.name, "NEURAXIS_DATASET_VERSION": str(dataset.version)}
    if dataset.digest:
        env["NEURAXIS_DATASET_DIGEST"] = dataset.digest
    return env


def _superlink_address(tj: TrainingJob) -> str:
    return f"{superlink_service_name(tj)}.{tj.metadata.namespace or 'default'}.svc:{SUPERLINK_PORT}"


def _supernode(
    tj: TrainingJob, settings: OperatorSettings, run: str, index: int, site: ResolvedSite
) -> dict[str, Any]:
    env = {
        SUPERLINK_ADDRESS_ENV: _superlink_address(tj),
        SITE_ENV: site.name,
        EDGE_SITE_ENV: site.name,
        **_dataset_env(site.dataset),
    }
    scheduling = {
        "nodeSelector": dict(site.node_selector),
        "tolerations": [edge_toleration(settings)],
    }
    template = _federated_pod(
        tj,
        settings,
        run,
        "supernode",
        env=env,
        extra_env=[_run_id(run)],
        labels={SITE_LABEL: site.name},
        scheduling=scheduling,
    )
    return _deployment(tj, supernode_name(run, index), template)


def _server_job(tj: TrainingJob, settings: OperatorSettings, run: str) -> dict[str, Any]:
    template = _federated_pod(
        tj,
        settings,
        run,
        "server",
        env={CONTROL_ADDRESS_ENV: _superlink_address(tj)},
        extra_env=[RUN_ID_ENV],
        restart_policy="Never",
    )
    spec = tj.spec
    return job(
        tj,
        run,
        COMPONENT,
        template,
        backoff_limit=spec.backoff_limit,
        active_deadline_seconds=spec.active_deadline_seconds,
        suspend=spec.suspend,
    )


def superlink_service(tj: TrainingJob, run: str) -> dict[str, Any]:
    """Selects the current run's SuperLink; a new run moves it."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(tj, superlink_service_name(tj), COMPONENT),
        "spec": {
            "selector": role_labels(run, "superlink"),
            "ports": [{"name": "superlink", "port": SUPERLINK_PORT, "targetPort": "superlink"}],
        },
    }


def _network_policy(tj: TrainingJob, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(tj, name, COMPONENT),
        "spec": spec,
    }


def network_policy_names(run: str) -> list[str]:
    return [f"{run}-supernodes", f"{run}-superlink"]


def network_policies(tj: TrainingJob, run: str, settings: OperatorSettings) -> list[dict[str, Any]]:
    """SuperNodes: no ingress; egress to the SuperLink's port, DNS and the lake (their Dataset)
    only. SuperLink: ingress from the run's SuperNodes and server only (Flower serves Fleet and
    Control on one port)."""
    link = {"podSelector": {"matchLabels": role_labels(run, "superlink")}}
    nodes = {"podSelector": {"matchLabels": role_labels(run, "supernode")}}
    server = {"podSelector": {"matchLabels": role_labels(run, "server")}}
    supernode_egress: list[dict[str, Any]] = [
        {"to": [link], "ports": [{"protocol": "TCP", "port": SUPERLINK_PORT}]},
        {"ports": DNS_PORTS},
        *[dict(rule) for rule in settings.federation_lake_egress],
    ]
    return [
        _network_policy(
            tj,
            network_policy_names(run)[0],
            {
                **nodes,
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [],
                "egress": supernode_egress,
            },
        ),
        _network_policy(
            tj,
            network_policy_names(run)[1],
            {
                **link,
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"from": [peers], "ports": [{"protocol": "TCP", "port": SUPERLINK_PORT}]}
                    for peers in (nodes, server)
                ],
            },
        ),
    ]


def build_federation_children(
    tj: TrainingJob, sites: list[ResolvedSite], settings: OperatorSettings
) -> list[dict[str, Any]]:
    """Children of one run; the server app Job (the run) comes last. The TLS Secret is made
    apart (`tls_secret`): it is created once and never read back."""
    run = federation_run_name(tj)
    config = spec_config_map(pinned_sites(tj, sites), run, COMPONENT)
    return [
        config,
        *network_policies(tj, run, settings),
        superlink_service(tj, run),
        _superlink(tj, settings, run),
        *[_supernode(tj, settings, run, i, site) for i, site in enumerate(sites)],
        _server_job(tj, settings, run),
    ]


def tls_secret(
    tj: TrainingJob, ca_cert: bytes, server_cert: bytes, server_key: bytes
) -> dict[str, Any]:
    """The SuperLink's certificate, its key and the CA that signed it, in one Secret (created
    in one request, so a certificate never meets another run's CA); pods mount the keys they
    need (`_tls_volume`)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": child_metadata(tj, tls_secret_name(tj), COMPONENT),
        "type": "Opaque",
        "stringData": {
            CA_CERT_FILE: ca_cert.decode(),
            SERVER_CERT_FILE: server_cert.decode(),
            SERVER_KEY_FILE: server_key.decode(),
        },
    }
