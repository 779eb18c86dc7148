"""Prometheus metrics of one server (its own registry: no process-global state)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from neuraxis.workloads.result import (
    INFER_V2_ROUTE,
    PREDICT_V1_ROUTE,
    SERVE_LATENCY_METRIC,
    SERVE_REQUESTS_METRIC,
)

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0
)  # fmt: skip
# Distinct caller key ids labelled on request metrics (bounded cardinality).
MAX_KEY_LABELS = 64
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


GRPC_ROUTE_PREFIX = "grpc:"  # gRPC calls count under "grpc:<Method>", e.g. "grpc:ModelInfer"


def route_label(path: str) -> str:
    """The route template of a path (bounded label cardinality: never the raw path). A versioned
    v2 path counts with its unversioned form."""
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        return PREDICT_V1_ROUTE
    if path.startswith("/v1/models/") and path.endswith(":explain"):
        return "/v1/models/{name}:explain"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return INFER_V2_ROUTE
    if path.startswith("/v2/models/") and path.endswith("/ready"):
        return "/v2/models/{name}/ready"
    if path.startswith("/v2/models/"):
        return "/v2/models/{name}"
    if path in ("/v2", "/healthz", "/readyz", "/metrics", "/v2/health/ready", "/v2/health/live"):
        return path
    return "other"


@dataclass
class ServeMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            SERVE_REQUESTS_METRIC,
            "Requests by route, status code and caller key id (empty: not authenticated). gRPC: "
            "route grpc:<Method>, the HTTP equivalent of its status code.",
            ["route", "code", "key"], registry=r,
        )  # fmt: skip
        self.rate_limited = Counter(
            "neuraxis_serve_rate_limited", "Requests answered 429 by the per-key rate limit.",
            ["key"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            SERVE_LATENCY_METRIC, "Request latency by route.",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "neuraxis_serve_requests_in_flight", "Requests being handled (not /metrics).",
            registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "neuraxis_serve_batch_size", "Rows per model forward.", buckets=BATCH_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.model_info = Gauge(
            "neuraxis_serve_model_info", "The model being served (value 1).",
            ["model", "version", "digest"], registry=r,
        )  # fmt: skip
        self.feature_drift = Gauge(
            "neuraxis_feature_drift",
            "PSI of each feature over the last served rows against the training profile "
            "(> 0.2: significant shift).",
            ["model", "feature"], registry=r,
        )  # fmt: skip
        self._model_labels: tuple[str, str, str] | None = None
        self._key_labels: set[str] = set()
        self._drift_labels: list[tuple[str, str]] = []

    def set_model(self, model: str, version: str, digest: str) -> None:
        """Report the served model; a swapped-out model's series is removed."""
        if self._model_labels is not None:
            self.model_info.remove(*self._model_labels)
        self._model_labels = (model, version, digest)
        self.model_info.labels(*self._model_labels).set(1)

    def set_drift(self, model: str, values: dict[str, float]) -> None:
        for feature, value in values.items():
            self.feature_drift.labels(model, feature).set(value)
            if (model, feature) not in self._drift_labels:
                self._drift_labels.append((model, feature))

    def clear_drift(self) -> None:
        """Drop every drift series (a new model starts with an empty window)."""
        for labels in self._drift_labels:
            self.feature_drift.remove(*labels)
        self._drift_labels = []

    def key_label(self, key_id: str) -> str:
        """The key id as a label value; past MAX_KEY_LABELS distinct ids (ServiceAccount
        usernames are not a fixed set) the rest count as `other`."""
        if key_id in self._key_labels or not key_id:
            return key_id
        if len(self._key_labels) >= MAX_KEY_LABELS:
            return "other"
        self._key_labels.add(key_id)
        return key_id

    def observe_limited(self, key_id: str) -> None:
        self.rate_limited.labels(self.key_label(key_id)).inc()

    def observe(self, route: str, code: int, seconds: float, key_id: str = "") -> None:
        self.requests.labels(route, str(code), self.key_label(key_id)).inc()
        self.latency.labels(route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
