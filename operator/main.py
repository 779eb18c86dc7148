"""`neuraxis operator`: run the kopf operator in this process."""

from __future__ import annotations

import os

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from prometheus_client import start_http_server

from neuraxis.operator.handlers import build_registry
from neuraxis.operator.runtime import Runtime
from neuraxis.operator.settings import OperatorSettings


def api_client(kubeconfig: str | None) -> k8s.ApiClient:
    """In a pod: the service account; elsewhere: the kubeconfig (flag, $KUBECONFIG, ~/.kube)."""
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig  # kopf's own login reads it too
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not kubeconfig:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    else:
        k8s_config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    return k8s.ApiClient()


def run_operator(
    namespaces: list[str],
    *,
    kubeconfig: str | None = None,
    metrics_port: int = 9090,
    liveness_port: int = 8080,
    json_logs: bool = False,
    settings: OperatorSettings | None = None,
) -> None:
    """Run until interrupted. No namespaces means every namespace (cluster scope). Settings
    come from the environment unless given (a bad one raises SettingsError before anything
    starts)."""
    settings = settings or OperatorSettings.from_env()
    kopf.configure(log_format=kopf.LogFormat.JSON if json_logs else kopf.LogFormat.PLAIN)
    runtime = Runtime(api_client(kubeconfig), settings, namespaces)
    if metrics_port:
        start_http_server(metrics_port)
    kopf.run(
        registry=build_registry(runtime),
        standalone=True,
        namespaces=namespaces,
        clusterwide=not namespaces,
        liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None,
    )
