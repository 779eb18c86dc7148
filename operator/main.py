"""`neuraxis operator`: run the operator in this process (watch caches, work queue, workers;
with leader election, only the replica holding the Lease reconciles)."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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


def serve_liveness(port: int, runtime: Runtime) -> ThreadingHTTPServer:
    """/healthz: 200 while the caches, workers and (when elected) the lease loop run."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path.split("?")[0] == "/healthz" and runtime.alive()
            body = b"ok\n" if ok else b"unhealthy\n"
            self.send_response(200 if ok else 503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="liveness", daemon=True).start()
    return server


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
    runtime = Runtime(kube_for(api_client(kubeconfig), settings), settings, namespaces)
    if metrics_port:
        start_http_server(metrics_port)
    if liveness_port:
        serve_liveness(liveness_port, runtime)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    runtime.start()
    scope = ", ".join(namespaces) if namespaces else "all namespaces"
    log.info("operator started (%s, %d workers)", scope, settings.workers)
    elector = None
    if settings.leader_election:
        elector = start_election(runtime, settings, namespaces, stopping)
    else:
        runtime.lead()
        IS_LEADER.set(1)
        log.info("caches synced: reconciling")
    stopping.wait()
    log.info("stopping")
    runtime.shutdown()
    if elector is not None:
        elector.release()  # the next replica need not wait for the lease to expire


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
        elector.run(stopping, started, lost)

    log.info("waiting for the leader lease %s/%s as %s", namespace, config.name, config.identity)
    threading.Thread(target=campaign, name="leader-election", daemon=True).start()
    return elector
