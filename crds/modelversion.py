"""ModelVersion: one immutable model in the registry, with card, evaluation gates and serving."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from neuraxis.crds.common import (
    AUTH_REQUIRED_RULE,
    NAME_MAX_LENGTH,
    NAME_PATTERN,
    SHA256_PATTERN,
    ApiModel,
    Artifact,
    DatasetRef,
    Lineage,
    ObjectMeta,
    ObjectRef,
    ResourceRequirements,
    Rule,
    ServingAuth,
    StatusBase,
    cron_rules,
    exactly_one,
    ordered_bounds_rule,
)


class ModelSource(ApiModel):
    """Where the model comes from. Immutable once set: a new model is a new ModelVersion."""

    training_job_ref: ObjectRef | None = Field(
        default=None, description="The TrainingJob whose artifact this is."
    )
    uri: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^(file|s3|gs)://[^\s]+$",
        description="An artifact folder already in the lake.",
    )
    digest: str | None = Field(
        default=None, pattern=SHA256_PATTERN, description="sha256:<hex> of the artifact at uri."
    )

    rules = (
        Rule(
            cel="has(self.trainingJobRef) != has(self.uri)",
            message="exactly one of trainingJobRef or uri must be set",
            check=lambda s: exactly_one(s.training_job_ref, s.uri),
        ),
        Rule(
            cel="!has(self.uri) || has(self.digest)",
            message="digest is required with uri",
            check=lambda s: s.uri is None or s.digest is not None,
            field=".digest",
        ),
    )


class ModelCard(ApiModel):
    """Human documentation published with the model (Markdown and JSON in the lake)."""

    description: str = Field(default="", max_length=8192, description="What the model does.")
    intended_use: str = Field(default="", max_length=8192, description="What it is for.")
    limitations: str = Field(
        default="", max_length=8192, description="Where it should not be used."
    )
    owners: list[str] = Field(
        default_factory=list, max_length=32, description="Responsible people."
    )
    ethics: str = Field(default="", max_length=8192, description="Ethical considerations.")


class Gate(ApiModel):
    """A metric threshold the evaluation must meet."""

    metric: str = Field(
        max_length=64,
        pattern=r"^[a-z][a-z0-9_]*$",
        description="accuracy, precision, recall, f1, roc_auc, mae, rmse, r2, latency_p99_ms, ...",
    )
    min: float | None = Field(default=None, description="The metric must be at least this.")
    max: float | None = Field(default=None, description="The metric must be at most this.")

    rules = (
        Rule(
            cel="has(self.min) || has(self.max)",
            message="a gate needs min or max",
            check=lambda g: g.min is not None or g.max is not None,
        ),
        ordered_bounds_rule(),
    )


BACKTEST_NEEDS_DATA = (
    "schedule needs datasetRef without a pinned version (a backtest reads the latest Ready "
    "version of the evaluation Dataset)"
)


class Evaluation(ApiModel):
    """Held-out evaluation and the gates that decide Approved or Rejected."""

    dataset_ref: DatasetRef | None = Field(
        default=None,
        description="Evaluation data; defaults to the training job's validation split.",
    )
    gates: list[Gate] = Field(default_factory=list, max_length=32, description="Thresholds.")
    # The same field as Dataset.spec.schedule (the same rules, one wording).
    schedule: str | None = Field(
        default=None,
        max_length=128,
        description=(
            "Cron schedule (5 fields or @daily etc.) of backtests: the Approved model is scored "
            "again on the latest Ready version of datasetRef and judged by the same gates; "
            "results go to status.evaluationHistory, a failing gate sets condition Degraded."
        ),
    )

    rules = (
        Rule(
            cel="!has(self.schedule) || (has(self.datasetRef) && !has(self.datasetRef.version))",
            message=BACKTEST_NEEDS_DATA,
            check=lambda e: (
                e.schedule is None or (e.dataset_ref is not None and e.dataset_ref.version is None)
            ),
            field=".schedule",
        ),
        *cron_rules("schedule", "schedule"),
    )


CANARY_ANALYSIS_NEEDS_THRESHOLD = (
    "analysis needs maxErrorRatioIncrease or maxP99LatencyIncreaseMs (nothing to compare)"
)


class CanaryAnalysis(ApiModel):
    """Automatic rollback: the operator reads the predictor pods' /metrics, compares the canary
    with the stable version and sets the canary's weight to 0 (condition CanaryRolledBack) when
    the canary is worse by more than a threshold; it stays rolled back until the spec changes."""

    max_error_ratio_increase: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Roll back when the canary's 5xx ratio exceeds the stable's by more than "
        "this (0.05: five percentage points).",
    )
    max_p99_latency_increase_ms: float | None = Field(
        default=None,
        ge=0,
        le=600000,
        description="Roll back when the canary's p99 prediction latency exceeds the stable's "
        "by more than this many milliseconds.",
    )
    min_requests: int = Field(
        default=50,
        ge=1,
        le=1000000,
        description="Prediction requests each side must have served before it is judged.",
    )
    interval_seconds: int = Field(
        default=30, ge=5, le=3600, description="How often the metrics are read."
    )

    rules = (
        Rule(
            cel="has(self.maxErrorRatioIncrease) || has(self.maxP99LatencyIncreaseMs)",
            message=CANARY_ANALYSIS_NEEDS_THRESHOLD,
            check=lambda a: (
                a.max_error_ratio_increase is not None or a.max_p99_latency_increase_ms is not None
            ),
        ),
    )


class Canary(ApiModel):
    """Send part of the traffic to this version while the stable version serves the rest."""

    traffic_percent: int = Field(ge=1, le=99, description="Share of requests for this version.")
    stable_ref: ObjectRef | None = Field(
        default=None,
        description="The ModelVersion serving the rest; default: the production version.",
    )
    analysis: CanaryAnalysis | None = Field(
        default=None, description="Compare with the stable version and roll back automatically."
    )


class GatewayRef(ApiModel):
    """The Gateway (Gateway API) a canary's HTTPRoute attaches to."""

    name: str = Field(max_length=253, pattern=NAME_PATTERN, description="Gateway name.")
    namespace: str | None = Field(
        default=None,
        max_length=63,
        pattern=NAME_PATTERN,
        description="Gateway namespace; default: the ModelVersion's.",
    )
    section_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=NAME_PATTERN,
        description="The Gateway listener to attach to; default: every listener that allows it.",
    )


class Autoscaling(ApiModel):
    """Horizontal autoscaling of the serving Deployment."""

    min_replicas: int = Field(default=1, ge=1, le=100)
    max_replicas: int = Field(default=4, ge=1, le=100)
    target_cpu_utilization: int = Field(default=70, ge=1, le=100, description="Percent of request.")

    rules = (
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas must not exceed maxReplicas",
            check=lambda a: a.min_replicas <= a.max_replicas,
            field=".minReplicas",
        ),
    )


class Serving(ApiModel):
    """An HTTP inference endpoint (KServe v1 and Open Inference Protocol v2 routes)."""

    enabled: bool = Field(default=True, description="Serve this version once Approved.")
    replicas: int = Field(default=1, ge=0, le=100, description="Pods of this version.")
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    max_batch_size: int = Field(default=32, ge=1, le=4096, description="Dynamic batching limit.")
    max_batch_wait_ms: int = Field(default=2, ge=0, le=1000, description="Dynamic batching wait.")
    canary: Canary | None = Field(default=None, description="Canary traffic split.")
    gateway: GatewayRef | None = Field(
        default=None,
        description="The Gateway of the canary's HTTPRoute; default: the operator's "
        "NEURAXIS_GATEWAY. Without either, traffic is split by replicas.",
    )
    autoscaling: Autoscaling | None = Field(default=None, description="HPA settings.")
    auth: ServingAuth | None = Field(
        default=None, description="Authentication and rate limits (required; mode none is open)."
    )

    rules = (
        AUTH_REQUIRED_RULE,
        Rule(
            cel="!has(self.canary) || self.enabled",
            message="canary needs serving enabled",
            check=lambda s: s.canary is None or s.enabled,
            field=".canary",
        ),
    )


class ModelVersionSpec(ApiModel):
    """Desired state of a ModelVersion."""

    model: str = Field(
        max_length=NAME_MAX_LENGTH, pattern=NAME_PATTERN, description="Model name in the registry."
    )
    source: ModelSource = Field(description="Where the model comes from (immutable).")
    card: ModelCard = Field(default_factory=ModelCard, description="The model card.")
    evaluation: Evaluation | None = Field(default=None, description="Evaluation and gates.")
    stage: Literal["candidate", "staging", "production", "archived"] = Field(
        default="candidate", description="Lifecycle stage."
    )
    serving: Serving | None = Field(default=None, description="Serve the model over HTTP.")

    immutable_fields: ClassVar[tuple[str, ...]] = ("source", "model")


class GateResult(ApiModel):
    """How one gate fared."""

    metric: str = Field(max_length=64)
    value: float | None = None
    min: float | None = None
    max: float | None = None
    passed: bool


class EvaluationStatus(ApiModel):
    """Evaluation results."""

    metrics: dict[str, float] = Field(default_factory=dict, max_length=64)
    gates: list[GateResult] = Field(default_factory=list, max_length=32)
    passed: bool | None = None


HISTORY_KEPT = 20


class BacktestRecord(ApiModel):
    """One scheduled re-evaluation (backtest) of an Approved model."""

    time: str = Field(description="When it finished.", json_schema_extra={"format": "date-time"})
    run_id: str = Field(max_length=63, description="The backtest Job (run id).")
    dataset: str | None = Field(default=None, max_length=NAME_MAX_LENGTH)
    dataset_version: int | None = Field(default=None, ge=0, description="Version scored on.")
    dataset_digest: str | None = Field(default=None, max_length=128)
    rows: int | None = Field(default=None, ge=0, description="Rows scored.")
    metrics: dict[str, float] = Field(default_factory=dict, max_length=64)
    passed: bool = Field(description="Every gate held (false too when the backtest failed).")
    error: bool | None = Field(
        default=None, description="True when the backtest could not score (see message)."
    )
    message: str = Field(default="", max_length=4096, description="The gates' verdict or error.")


class CanaryMeasurement(ApiModel):
    """One side of a canary analysis, from its predictor pods' /metrics."""

    requests: int = Field(ge=0, description="Prediction requests served.")
    error_ratio: float = Field(ge=0, le=1, description="Share of them answered with a 5xx.")
    p99_latency_ms: float | None = Field(
        default=None, ge=0, description="p99 latency (histogram buckets), None when no request."
    )


class TrafficSplit(ApiModel):
    """How a canary's traffic is split now, and what the automatic analysis measured."""

    mode: Literal["gateway", "replicas"] = Field(
        description="gateway: HTTPRoute weights (exact); replicas: pods of each version behind "
        "one Service (approximate)."
    )
    gateway: str | None = Field(
        default=None, max_length=600, description="namespace/name[/section] of the Gateway."
    )
    canary_percent: int = Field(ge=0, le=100, description="The canary's share in force.")
    rolled_back: bool = Field(default=False, description="The analysis set the canary to 0.")
    rolled_back_generation: int | None = Field(
        default=None, ge=0, description="The generation rolled back (a new one tries again)."
    )
    analyzed_at: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="Last analysis."
    )
    stable: CanaryMeasurement | None = None
    canary: CanaryMeasurement | None = None
    message: str = Field(default="", max_length=4096, description="The analysis's verdict.")


class ModelVersionStatus(StatusBase):
    """Observed state of a ModelVersion."""

    phase: Literal[
        "Pending", "Registered", "Evaluating", "Approved", "Rejected", "Serving", "Failed"
    ] = Field(
        default="Pending",
        description="Pending, Registered, Evaluating, Approved, Rejected, Serving or Failed.",
    )
    artifact: Artifact | None = Field(
        default=None,
        description="The artifact evaluated; its digest is pinned from then on: serving, bundles "
        "and edge agents load only an artifact with that digest (else Failed, ArtifactChanged).",
    )
    evaluation: EvaluationStatus | None = None
    card_uri: str | None = Field(default=None, max_length=2048)
    endpoint: str | None = Field(default=None, max_length=2048, description="In-cluster URL.")
    lineage: Lineage | None = None
    evaluation_history: list[BacktestRecord] = Field(
        default_factory=list,
        max_length=HISTORY_KEPT,
        description="Backtests (spec.evaluation.schedule), newest first.",
    )
    traffic_split: TrafficSplit | None = Field(
        default=None, description="A canary's traffic split in force (spec.serving.canary)."
    )


class ModelVersion(ApiModel):
    """One immutable model in the registry: its artifact, card, evaluation gates and, once
    Approved, an HTTP endpoint with optional canary traffic."""

    api_version: Literal["neuraxis.dev/v1alpha1"]
    kind: Literal["ModelVersion"]
    metadata: ObjectMeta
    spec: ModelVersionSpec
    status: ModelVersionStatus | None = None
