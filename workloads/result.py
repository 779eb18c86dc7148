"""The result contract between a workload and whoever started it (the operator or `neuraxis run`).

Every workload reports twice: the full result as `runs/<ns>/<run-id>/result.json` in the lake, and
a compact JSON copy in the container's termination-message file, which the kubelet puts into the
Pod status (`state.terminated.message`, at most 4096 bytes), so the operator learns the outcome
without lake credentials.

The serving metrics contract lives here too: the names the inference server exports on
/metrics and the operator's canary analysis reads (the operator imports no server code)."""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from neuraxis.lake import Lake

TERMINATION_LOG_ENV = "NEURAXIS_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT = 4096

Outcome = Literal["Succeeded", "Failed"]

# Federated TrainingJobs add their own keys and reasons: workloads/federation_contract.py.

# Serving metrics (Prometheus names without the `_total`/`_bucket` suffixes): requests by
# `route` (a route template, never the raw path) and `code`, and latency by `route`.
SERVE_REQUESTS_METRIC = "neuraxis_serve_requests"
SERVE_LATENCY_METRIC = "neuraxis_serve_request_duration_seconds"
# The `route` label values of prediction requests (what a canary is judged on).
PREDICT_V1_ROUTE = "/v1/models/{name}:predict"
INFER_V2_ROUTE = "/v2/models/{name}/infer"
INFER_GRPC_ROUTE = "grpc:ModelInfer"  # gRPC calls count as grpc:<Method>, HTTP-equivalent codes
PREDICTION_ROUTES = (PREDICT_V1_ROUTE, INFER_V2_ROUTE, INFER_GRPC_ROUTE)


def now_rfc3339() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def compact_json(compact: dict[str, Any]) -> str:
    """The termination message: the compact dict, with `message` shortened to fit 4096 bytes."""
    text = json.dumps(compact, sort_keys=True, separators=(",", ":"))
    if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
        return text
    shortened = dict(compact)
    overflow = len(text.encode()) - TERMINATION_MESSAGE_LIMIT + 16
    message = str(shortened.get("message", ""))
    shortened["message"] = message[: max(0, len(message) - overflow)] + "…"
    text = json.dumps(shortened, sort_keys=True, separators=(",", ":"))
    if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
        keep = {k: shortened[k] for k in ("outcome", "reason", "resultUri") if k in shortened}
        text = json.dumps(keep, sort_keys=True, separators=(",", ":"))
    return text


def termination_log_path() -> Path | None:
    """$NEURAXIS_TERMINATION_LOG, else the kubelet's default path when running in a pod."""
    configured = os.environ.get(TERMINATION_LOG_ENV)
    if configured:
        return Path(configured)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return Path(DEFAULT_TERMINATION_LOG)
    return None


def publish_result(
    lake: Lake,
    namespace: str,
    run_id: str,
    result: dict[str, Any],
    compact: dict[str, Any],
) -> str:
    """Write the full result to the lake and the compact one to the termination log.

    `result` and `compact` must both carry `outcome` (Succeeded|Failed) and `reason`."""
    for part, name in ((result, "result"), (compact, "compact")):
        if part.get("outcome") not in ("Succeeded", "Failed") or not part.get("reason"):
            raise ValueError(f"{name} needs outcome Succeeded|Failed and a reason")
    uri = lake.write_json(f"{lake.run_path(namespace, run_id)}/result.json", result)
    message = compact_json({**compact, "resultUri": uri})
    path = termination_log_path()
    # Where there is no termination log (or /dev is read-only), the lake copy is the record.
    if path is not None:
        with contextlib.suppress(OSError):
            path.write_text(message)
    return uri


def report_refusal(reason: str, message: str) -> None:
    """A server that refuses to start (serve, edge) has no run in the lake: it reports only in
    its termination message, where the operator reads the reason (ArtifactChanged)."""
    path = termination_log_path()
    if path is not None:
        compact = {"outcome": "Failed", "reason": reason, "message": message}
        with contextlib.suppress(OSError):
            path.write_text(compact_json(compact))


def publish_failure(
    lake: Lake, namespace: str, run_id: str, reason: str, message: str, started: str
) -> str:
    """Publish the result of a run that could not do its work (the workload then exits 1)."""
    result = {
        "outcome": "Failed",
        "reason": reason,
        "message": message,
        "startTime": started,
        "completionTime": now_rfc3339(),
    }
    compact = {"outcome": "Failed", "reason": reason, "message": message}
    return publish_result(lake, namespace, run_id, result, compact)


def read_compact_result(message: str | None) -> dict[str, Any] | None:
    """Parse a termination message written by `publish_result`; None when absent or foreign."""
    if not message:
        return None
    try:
        parsed = json.loads(message)
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) and "outcome" in parsed else None
