"""`neuraxis operator`: run the operator in this process.

kopf hosts it: kopf logs in, runs the start-up and clean-up handlers, handles SIGTERM/SIGINT and
serves the liveness endpoint with a probe of the reconciler. The reconciler is ours (watch caches,
work queue, workers in `runtime.py`): kopf's per-resource handlers would GET, LIST and write
progress annotations on every change, which the scale goals rule out. With leader election,
only the replica holding the Lease reconciles (a coordination.k8s.io Lease, not kopf's peering,
which would need its own CRD)."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from prometheus_client import start_http_server

from neuraxis.operator.kube import Kube, RetryPolicy
from neuraxis.operator.leader import LeaderElector, LeaseConfig
from neuraxis.operator.metrics import IS_LEADER
from neuraxis.operator.runtime import Runtime
from neuraxis.operator.settings import OperatorSettings

log = logging.getLogger("neuraxis.operator")


def api_client(kubeconfig: str | None) -> k8s.ApiClient:
    """In a pod: the service account; elsewhere: the kubeconfig (flag, $KUBECONFIG, ~/.kube)."""
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not kubeconfig:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    else:
        k8s_config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    return k8s.ApiClient()


def kube_for(client: k8s.ApiClient, settings: OperatorSettings) -> Kube:
    return Kube(
        client,
        qps=settings.api_qps,
        burst=settings.api_burst,
        timeout_s=settings.api_timeout_seconds,
        retry=RetryPolicy(attempts=settings.api_retries + 1, cap_s=settings.api_retry_cap_seconds),
    )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(json_logs: bool) -> None:
    handler = logging.StreamHandler(sys.stdout)
    if json_logs:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # every probe otherwise


def connection_info(client: k8s.ApiClient) -> kopf.ConnectionInfo:
    """What kopf needs to reach the API server: the same credentials as the reconciler's client
    (kopf's own login would ignore --kubeconfig)."""
    cfg = client.configuration
    token = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
    scheme, _, value = (token or "").partition(" ")
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        scheme=scheme or None,
        token=value or None,
    )


def operator_registry(
    client: k8s.ApiClient, runtime: Runtime, settings: OperatorSettings, namespaces: list[str]
) -> kopf.OperatorRegistry:
    """kopf's activity handlers around the reconciler: login, start, probe, clean up."""
    registry = kopf.OperatorRegistry()
    stopping = threading.Event()
    electors: list[LeaderElector] = []

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(client)

    @kopf.on.startup(registry=registry)
    def start(**_: Any) -> None:
        runtime.start()
        scope = ", ".join(namespaces) if namespaces else "all namespaces"
        log.info("operator started (%s, %d workers)", scope, settings.workers)
        if settings.leader_election:
            electors.append(start_election(runtime, settings, namespaces, stopping))
            return
        runtime.lead()
        IS_LEADER.set(1)
        log.info("caches synced: reconciling")

    @kopf.on.probe(id="reconciler", registry=registry)
    def reconciler(**_: Any) -> str:
        if not runtime.alive():
            raise RuntimeError("a cache, worker or resync thread has stopped")
        return "leading" if runtime.leading.is_set() else "standby"

    @kopf.on.cleanup(registry=registry)
    def stop(**_: Any) -> None:
        log.info("stopping")
        stopping.set()
        runtime.shutdown()
        for elector in electors:
            elector.release()  # the next replica need not wait for the lease to expire

    return registry


def run_operator(
    namespaces: list[str],
    *,
    kubeconfig: str | None = None,
    metrics_port: int = 9090,
    liveness_port: int = 8080,
    json_logs: bool = False,
    settings: OperatorSettings | None = None,
) -> None:
    """Run until SIGTERM or SIGINT. No namespaces means every namespace (cluster scope).
    Settings come from the environment unless given (a bad one raises SettingsError before
    anything starts)."""
    settings = settings or OperatorSettings.from_env()
    configure_logging(json_logs)
    client = api_client(kubeconfig)
    runtime = Runtime(kube_for(client, settings), settings, namespaces)
    if metrics_port:
        start_http_server(metrics_port)
    kopf.run(
        registry=operator_registry(client, runtime, settings, namespaces),
        standalone=True,  # one active replica comes from the Lease (start_election)
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None,
    )


def start_election(
    runtime: Runtime, settings: OperatorSettings, namespaces: list[str], stopping: threading.Event
) -> LeaderElector:
    """Campaign in the background; reconcile while holding the Lease. Losing it ends the
    process at once (exit 1): a restarted one rejoins as a follower with fresh state."""
    namespace = settings.lease_namespace or (namespaces[0] if namespaces else "default")
    config = LeaseConfig(
        namespace=namespace,
        name=settings.lease_name,
        identity=settings.lease_identity(),
        lease_s=settings.lease_seconds,
        renew_s=settings.lease_renew_seconds,
        retry_s=settings.lease_retry_seconds,
    )
    elector = LeaderElector(runtime.kube, config)

    def started() -> None:
        runtime.lead()
        IS_LEADER.set(1)
        log.info("leading (%s): reconciling", config.identity)

    def lost() -> None:
        runtime.leading.clear()
        IS_LEADER.set(0)
        logging.shutdown()
        os._exit(1)

    def campaign() -> None:
        # Synced first: taking the lease must not wait on the caches (renewals would stall).
        try:
            runtime.wait_synced()
        except RuntimeError:
            log.exception("not campaigning for the lease")
            lost()
        try:
            elector.run(stopping, started, lost)
        except Exception:  # a replica without an election thread must not live on
            log.exception("leader election stopped")
            lost()

    log.info("waiting for the leader lease %s/%s as %s", namespace, config.name, config.identity)
    threading.Thread(target=campaign, name="leader-election", daemon=True).start()
    return elector
