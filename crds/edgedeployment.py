"""EdgeDeployment: roll an Approved ModelVersion out to edge nodes, canary nodes first."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from neuraxis.crds.common import (
    AUTH_REQUIRED_RULE,
    LABEL_KEY_PATTERN,
    LABEL_VALUE_PATTERN,
    NAME_PATTERN,
    ApiModel,
    Artifact,
    LabelValue,
    Lineage,
    ObjectMeta,
    ObjectRef,
    Rule,
    ServingAuth,
    StatusBase,
)

SiteName = Annotated[str, Field(max_length=63, pattern=NAME_PATTERN)]


class Toleration(ApiModel):
    """A pod toleration (as in core/v1)."""

    key: str | None = Field(
        default=None,
        max_length=316,
        pattern=LABEL_KEY_PATTERN,
        description="Taint key (label syntax); omit it with operator Exists to match every taint.",
    )
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = Field(
        default=None, max_length=63, pattern=LABEL_VALUE_PATTERN, description="Taint value."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None

    # What the API server checks on the pod: without these rules the EdgeDeployment is
    # admitted and only the agent DaemonSet built from it is refused.
    rules = (
        Rule(
            cel="self.operator != 'Equal' || (has(self.key) && self.key != '')",
            message="key is required with operator Equal",
            check=lambda t: t.operator != "Equal" or bool(t.key),
            field=".key",
        ),
        Rule(
            cel="self.operator != 'Exists' || !has(self.value) || self.value == ''",
            message="value must be empty with operator Exists",
            check=lambda t: t.operator != "Exists" or not t.value,
            field=".value",
        ),
    )


class Target(ApiModel):
    """Which edge nodes run the model. The edge taint is tolerated automatically."""

    sites: list[SiteName] = Field(
        default_factory=list,
        max_length=256,
        description="Edge sites (node label neuraxis.dev/edge-site).",
    )
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=32, description="Extra node labels to match."
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)

    rules = (
        Rule(
            # Absent lists and maps are not defaulted to empty in CEL: test presence first.
            cel=(
                "(has(self.sites) && size(self.sites) > 0)"
                " || (has(self.nodeSelector) && size(self.nodeSelector) > 0)"
            ),
            message="target needs sites or nodeSelector",
            check=lambda t: bool(t.sites) or bool(t.node_selector),
        ),
    )


class Optimize(ApiModel):
    """How the model is prepared for edge hardware."""

    quantize: Literal["int8", "none"] = Field(
        default="int8", description="int8 dynamic quantization."
    )
    format: Literal["torchscript"] = Field(default="torchscript", description="Export format.")


class Rollout(ApiModel):
    """How the rollout proceeds."""

    canary_nodes: int = Field(default=1, ge=0, le=1000, description="Nodes updated first.")
    max_unavailable: int = Field(default=1, ge=1, le=1000, description="Nodes updating at once.")
    pause: bool = Field(default=False, description="Stop after the canary nodes.")


class Sync(ApiModel):
    """Inference-log upload from the edge to the lake."""

    upload_logs: bool = Field(default=True, description="Buffer inference logs and upload them.")
    interval_seconds: int = Field(default=300, ge=10, le=86400, description="Upload interval.")
    health_interval_seconds: int = Field(
        default=60, ge=1, le=3600, description="A health snapshot (device and service) this often."
    )
    max_buffered_snapshots: int = Field(
        default=10080,
        ge=1,
        le=1000000,
        description="Health snapshots kept on the node while offline; the oldest go first.",
    )


class Load(ApiModel):
    """Load limits of each agent: back-pressure and an adaptive batch size."""

    max_in_flight: int = Field(
        default=64,
        ge=1,
        le=10000,
        description="Prediction requests an agent handles at once; more get 429 with Retry-After.",
    )
    retry_after_seconds: int = Field(
        default=1, ge=1, le=3600, description="Retry-After of a 429 answer."
    )
    max_batch_size: int = Field(default=32, ge=1, le=4096, description="Rows per forward at most.")
    min_batch_size: int = Field(
        default=1, ge=1, le=4096, description="The adaptive batch size never goes below this."
    )
    latency_target_ms: int | None = Field(
        default=None,
        ge=1,
        le=60000,
        description=(
            "Set: the batch size adapts (AIMD) so one forward takes about this long. "
            "Unset: batches always grow up to maxBatchSize."
        ),
    )

    rules = (
        Rule(
            # The `{}` default of spec.load is checked without its fields' defaults: has().
            cel=(
                "!has(self.minBatchSize) || !has(self.maxBatchSize)"
                " || self.minBatchSize <= self.maxBatchSize"
            ),
            message="minBatchSize must not be greater than maxBatchSize",
            check=lambda load: load.min_batch_size <= load.max_batch_size,
            field=".minBatchSize",
        ),
    )


class Logging(ApiModel):
    """What each inference-log record says about the prediction."""

    hard_example_threshold: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description=(
            "A classification whose highest class probability is below this is flagged "
            "hard_example (a candidate for labelling and retraining); unset flags nothing. "
            "Regression outputs are never flagged."
        ),
    )


class Offline(ApiModel):
    """Behaviour when the lake is unreachable."""

    cache_model: bool = Field(
        default=True, description="Keep the bundle on local disk and start from it."
    )


class EdgeDeploymentSpec(ApiModel):
    """Desired state of an EdgeDeployment."""

    model_version_ref: ObjectRef = Field(description="The ModelVersion; it must be Approved.")
    target: Target = Field(description="Which nodes.")
    optimize: Optimize = Field(default_factory=Optimize)
    rollout: Rollout = Field(default_factory=Rollout)
    sync: Sync = Field(default_factory=Sync)
    logging: Logging = Field(default_factory=Logging)
    offline: Offline = Field(default_factory=Offline)
    auth: ServingAuth | None = Field(
        default=None,
        description="Authentication and rate limits of the agents' endpoint (required; apiKeys "
        "or none: agents serve offline, without the API server).",
    )
    load: Load = Field(default_factory=Load)

    rules = (
        AUTH_REQUIRED_RULE,
        Rule(
            cel="!has(self.auth) || self.auth.mode != 'serviceAccountToken'",
            message="edge agents serve offline, without the API server: auth.mode must be "
            "apiKeys or none",
            check=lambda s: s.auth is None or s.auth.mode != "serviceAccountToken",
            field=".auth.mode",
        ),
    )


class SiteStatus(ApiModel):
    """The agents of one site (nodes without a site label count under the name `-`)."""

    name: str = Field(max_length=63)
    desired: int = Field(default=0, ge=0, description="Targeted nodes.")
    ready: int = Field(default=0, ge=0, description="Nodes whose agent pod is Ready.")
    updated: int = Field(
        default=0, ge=0, description="Nodes whose agent pod runs the current template."
    )
    offline: int = Field(default=0, ge=0, description="Targeted nodes that are not Ready.")


class EdgeDeploymentStatus(StatusBase):
    """Observed state of an EdgeDeployment."""

    phase: Literal["Pending", "RollingOut", "Paused", "Available", "Failed"] = Field(
        default="Pending", description="Pending, RollingOut, Paused, Available or Failed."
    )
    targeted_nodes: int = Field(default=0, ge=0)
    updated_nodes: int = Field(default=0, ge=0)
    ready_nodes: int = Field(default=0, ge=0)
    offline_nodes: int = Field(default=0, ge=0, description="Targeted nodes that are not Ready.")
    sites: list[SiteStatus] = Field(default_factory=list, max_length=256)
    bundle: Artifact | None = None
    lineage: Lineage | None = None


class EdgeDeployment(ApiModel):
    """Roll an Approved ModelVersion out to edge nodes as an optimised bundle, canary nodes
    first; the agents keep serving offline from their cache."""

    api_version: Literal["neuraxis.dev/v1alpha1"]
    kind: Literal["EdgeDeployment"]
    metadata: ObjectMeta
    spec: EdgeDeploymentSpec
    status: EdgeDeploymentStatus | None = None
