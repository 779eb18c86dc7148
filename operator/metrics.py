"""Prometheus metrics of the operator, served on /metrics by `neuraxis operator`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "neuraxis_reconcile_total", "Reconciliations by kind and outcome.", ["kind", "outcome"]
)
RECONCILE_ERRORS = Counter(
    "neuraxis_reconcile_errors_total", "Reconcile errors by kind and reason.", ["kind", "reason"]
)
RECONCILE_SECONDS = Histogram(
    "neuraxis_reconcile_duration_seconds",
    "Time spent in one reconciliation.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RESOURCES_BY_PHASE = Gauge(
    "neuraxis_resources", "Resources by kind and phase (as last reconciled).", ["kind", "phase"]
)
TRAINING_METRICS = Gauge(
    "neuraxis_training_metric",
    "Final metrics of TrainingJobs as their status reports them (status.metrics), exported by "
    "the operator so training results reach Prometheus without scraping short-lived pods.",
    ["namespace", "trainingjob", "metric"],
)
API_REQUESTS = Counter(
    "neuraxis_api_requests_total",
    "API server requests by verb, resource, HTTP status (0: no answer) and the kind being "
    "reconciled (empty: the watch caches and the leader lease).",
    ["verb", "resource", "code", "kind"],
)
API_RETRIES = Counter(
    "neuraxis_api_retries_total",
    "Retried API requests (429, 5xx, no answer).",
    ["verb", "resource"],
)
API_SECONDS = Histogram(
    "neuraxis_api_request_duration_seconds",
    "Time of one API request (without the rate limit's wait).",
    ["verb", "resource"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CACHES_SYNCED = Gauge("neuraxis_caches_synced", "1 once every watch cache has listed its objects.")
CACHED_OBJECTS = Gauge("neuraxis_cached_objects", "Objects in the watch caches.", ["kind"])
QUEUE_DEPTH = Gauge("neuraxis_queue_depth", "Resources waiting to be reconciled.")
IS_LEADER = Gauge("neuraxis_leader", "1 while this replica holds the leader lease.")
EVENTS_DROPPED = Counter(
    "neuraxis_events_dropped_total", "Events not posted: the queue of Events to post was full."
)
