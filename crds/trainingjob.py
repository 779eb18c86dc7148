"""TrainingJob: distributed PyTorch training on a Dataset, optionally with an AutoML search."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from neuraxis.crds.common import (
    IDENTIFIER_PATTERN,
    NAME_MAX_LENGTH,
    NAME_PATTERN,
    PINNED_IMAGE_PATTERN,
    ApiModel,
    Artifact,
    Column,
    DatasetRef,
    LabelValue,
    Lineage,
    ObjectMeta,
    ResourceRequirements,
    Rule,
    StatusBase,
    exactly_one,
)


class Task(ApiModel):
    """What is learned: the label column and the feature columns."""

    type: Literal["classification", "regression"] = Field(
        description="classification or regression."
    )
    label: str = Field(max_length=128, pattern=IDENTIFIER_PATTERN, description="Label column.")
    features: list[Column] = Field(
        default_factory=list,
        max_length=4096,
        description="Feature columns, without the label; empty means every numeric column "
        "except the label.",
    )

    rules = (
        Rule(
            # A label among the features is target leakage: the model reads the answer.
            cel="!has(self.features) || !(self.label in self.features)",
            message="features must not contain the label (target leakage)",
            check=lambda t: t.label not in t.features,
            field=".features",
        ),
    )


class BuiltinModel(ApiModel):
    """A built-in architecture trained by the Neuraxis training loop."""

    architecture: Literal["mlp", "cnn1d", "transformer"] = Field(
        description="mlp: tabular; cnn1d and transformer: the feature vector read as a sequence."
    )
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Architecture settings, e.g. hiddenSize, layers, dropout. Free-form.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    epochs: int = Field(default=10, ge=1, le=10000, description="Passes over the training data.")
    batch_size: int = Field(default=64, ge=1, le=65536, description="Samples per step and worker.")
    learning_rate: float = Field(default=0.001, gt=0, le=10, description="Optimizer learning rate.")
    seed: int = Field(default=42, ge=0, description="Seed for weights and data order.")


class CustomTrainer(ApiModel):
    """User code in a container. The environment contract (NEURAXIS_DATASET_URI,
    NEURAXIS_OUTPUT_URI, RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) is in the README."""

    image: str = Field(
        max_length=512,
        pattern=PINNED_IMAGE_PATTERN,
        description="Container image pinned by tag (not latest) or digest.",
    )
    command: list[str] = Field(min_length=1, max_length=64, description="Entrypoint and arguments.")
    env: dict[str, str] = Field(
        default_factory=dict, max_length=128, description="Extra environment."
    )

    rules = (
        Rule(
            cel="!self.image.endsWith(':latest')",
            message="image must be pinned: the tag latest is not allowed",
            check=lambda c: not c.image.endswith(":latest"),
            field=".image",
        ),
    )


class Resources(ResourceRequirements):
    """Workers and what each gets."""

    workers: int = Field(default=1, ge=1, le=64, description="Data-parallel workers (pods).")
    gpus_per_worker: int = Field(default=0, ge=0, le=8, description="nvidia.com/gpu per worker.")


class SearchDimension(ApiModel):
    """One hyperparameter's search range."""

    type: Literal["choice", "uniform", "loguniform", "randint"] = Field(description="Distribution.")
    values: list[int | str] | None = Field(
        default=None, min_length=1, max_length=256, description="Candidates (choice)."
    )
    min: float | None = Field(
        default=None, description="Lower bound (uniform, loguniform, randint)."
    )
    max: float | None = Field(
        default=None, description="Upper bound (uniform, loguniform, randint)."
    )

    rules = (
        Rule(
            cel="self.type != 'choice' || has(self.values)",
            message="choice needs values",
            check=lambda d: d.type != "choice" or d.values is not None,
            field=".values",
        ),
        Rule(
            cel="self.type == 'choice' || (has(self.min) && has(self.max) && self.min < self.max)",
            message="uniform, loguniform and randint need min < max",
            check=lambda d: (
                d.type == "choice" or (d.min is not None and d.max is not None and d.min < d.max)
            ),
        ),
        Rule(
            cel="self.type != 'loguniform' || (has(self.min) && self.min > 0.0)",
            message="loguniform needs min > 0",
            check=lambda d: d.type != "loguniform" or (d.min is not None and d.min > 0),
            field=".min",
        ),
    )


class Tuning(ApiModel):
    """AutoML search with Ray Tune. Each trial runs the same training loop."""

    algorithm: Literal["random", "tpe"] = Field(
        default="random", description="random search or TPE (Optuna)."
    )
    scheduler: Literal["fifo", "asha"] = Field(
        default="asha",
        description="fifo runs every trial to the end; asha stops weak trials early.",
    )
    metric: str = Field(
        default="val_loss", max_length=64, description="Metric the search optimises."
    )
    goal: Literal["minimize", "maximize"] = Field(default="minimize", description="Direction.")
    space: dict[str, SearchDimension] = Field(
        min_length=1, max_length=64, description="Hyperparameter name to its search range."
    )
    max_trials: int = Field(default=8, ge=1, le=1000, description="Trials in total.")
    parallel_trials: int = Field(default=1, ge=1, le=64, description="Trials at once.")

    rules = (
        Rule(
            cel="self.parallelTrials <= self.maxTrials",
            message="parallelTrials must not exceed maxTrials",
            check=lambda t: t.parallel_trials <= t.max_trials,
            field=".parallelTrials",
        ),
    )


# Unless the spec says otherwise, after the first epoch at most one checkpoint per this many
# seconds: epochs of a fraction of a second would otherwise spend 5-10 % of the run writing
# checkpoints (README, training bench), and a restarted worker redoes at most this long plus one
# epoch.
DEFAULT_CHECKPOINT_INTERVAL_SECONDS = 30


class Checkpoint(ApiModel):
    """Checkpoints in the lake, for resuming a restarted worker. Written at the end of an epoch:
    by default after the first epoch, then after the first epoch that ends 30 s or more after
    the previous checkpoint; `everyEpochs` alone gives a fixed cadence; both: every N epochs,
    spaced by at least `intervalSeconds`."""

    every_epochs: int | None = Field(
        default=None,
        ge=1,
        le=10000,
        description="Write one every N epochs (alone: exactly every N epochs; default 1).",
    )
    interval_seconds: int | None = Field(
        default=None,
        ge=0,
        le=86400,
        description=(
            "At least this many seconds between two checkpoints (default 30 when everyEpochs "
            "is not set, else 0)."
        ),
    )
    keep: int = Field(default=3, ge=1, le=100, description="How many recent checkpoints to keep.")

    def cadence(self) -> tuple[int, int]:
        """(every N epochs, at least S seconds apart), the defaults resolved."""
        if self.interval_seconds is not None:
            interval = self.interval_seconds
        elif self.every_epochs is not None:
            interval = 0
        else:
            interval = DEFAULT_CHECKPOINT_INTERVAL_SECONDS
        return self.every_epochs or 1, interval


class Register(ApiModel):
    """Register the trained model: on success a ModelVersion is created (or, if one was declared
    with that name, linked) that outlives this job."""

    model: str = Field(
        max_length=NAME_MAX_LENGTH, pattern=NAME_PATTERN, description="Model name in the registry."
    )
    version_name: str | None = Field(
        default=None,
        max_length=NAME_MAX_LENGTH,
        pattern=NAME_PATTERN,
        description="Name of the ModelVersion; defaults to <model>-<trainingjob name>.",
    )


# The node label that marks an edge site; a site's SuperNode is pinned to it by default.
EDGE_SITE_LABEL = "neuraxis.dev/edge-site"
FEDERATION_MAX_SITES = 32


class FederationSite(ApiModel):
    """One site: its own data, and the nodes that may read it."""

    name: str = Field(
        max_length=63, pattern=NAME_PATTERN, description="Site name, a DNS-1123 label."
    )
    dataset_ref: DatasetRef = Field(description="The site's training data; it never leaves it.")
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=32,
        description="Nodes the site's SuperNode runs on; empty means "
        "{neuraxis.dev/edge-site: <name>}.",
    )

    def selector(self) -> dict[str, str]:
        """The node selector in force: the explicit one, else the site's edge label."""
        return dict(self.node_selector) or {EDGE_SITE_LABEL: self.name}


class FederationStrategy(ApiModel):
    """How the server combines the sites' updates."""

    name: Literal["FedAvg", "FedProx"] = Field(
        default="FedAvg", description="FedAvg, or FedProx (adds a proximal term per site)."
    )
    proximal_mu: float | None = Field(
        default=None, ge=0, le=100, description="FedProx's proximal term weight (> 0)."
    )

    rules = (
        Rule(
            # has() guards: the API server also checks the rule against the object's default {}.
            cel="!has(self.name) || self.name != 'FedProx'"
            " || (has(self.proximalMu) && self.proximalMu > 0.0)",
            message="FedProx requires proximalMu > 0",
            check=lambda s: s.name != "FedProx" or (s.proximal_mu or 0) > 0,
            field=".proximalMu",
        ),
    )


def _required_unless_none(attr: str) -> Callable[[Any], bool]:
    return lambda p: p.mode == "none" or getattr(p, attr) is not None


class FederationPrivacy(ApiModel):
    """Differential privacy and its epsilon budget. mode none must be written out."""

    mode: Literal["none", "central", "local"] = Field(
        description="none; central: sites clip their updates and the server adds noise; "
        "local: every site adds noise to its own update."
    )
    clipping_norm: float | None = Field(
        default=None, gt=0, le=1e6, description="L2 bound on each site's update (> 0)."
    )
    noise_multiplier: float | None = Field(
        default=None, gt=0, le=1e3, description="Gaussian noise std / clipping norm (> 0)."
    )
    target_epsilon: float | None = Field(
        default=None,
        gt=0,
        le=1e6,
        description="Budget: the run stops before a round would exceed it (BudgetExhausted).",
    )
    delta: float = Field(default=1e-5, gt=0, lt=1, description="delta of (epsilon, delta)-DP.")

    rules = tuple(
        Rule(
            cel=f"self.mode == 'none' || has(self.{alias})",
            message=f"{alias} is required unless mode is none",
            check=_required_unless_none(attr),
            field=f".{alias}",
        )
        for alias, attr in (
            ("clippingNorm", "clipping_norm"),
            ("noiseMultiplier", "noise_multiplier"),
            ("targetEpsilon", "target_epsilon"),
        )
    )


class SecureAggregation(ApiModel):
    """SecAgg+: the server only learns the sum of the sites' updates. Flower's SecAgg+ splits
    each site's key into at least 3 shares and needs fewer shares than that to rebuild it."""

    enabled: bool = Field(default=True, description="On by default.")
    shares: int = Field(
        default=3, ge=3, le=FEDERATION_MAX_SITES, description="Secret shares per site key (>= 3)."
    )
    threshold: int = Field(
        default=2,
        ge=2,
        le=FEDERATION_MAX_SITES,
        description="Shares needed to reconstruct (< shares); up to shares - threshold sites "
        "may drop mid-round.",
    )

    rules = (
        Rule(
            cel="!has(self.threshold) || !has(self.shares) || self.threshold < self.shares",
            message="threshold must be less than shares",
            check=lambda s: s.threshold < s.shares,
            field=".threshold",
        ),
    )


class Federation(ApiModel):
    """Federated training: each site trains on its own Dataset, only model updates travel."""

    sites: list[FederationSite] = Field(
        min_length=2, max_length=FEDERATION_MAX_SITES, description="The sites (2..32)."
    )
    rounds: int = Field(default=10, ge=1, le=1000, description="Federated rounds.")
    min_sites: int = Field(
        default=2, ge=2, le=FEDERATION_MAX_SITES, description="Sites needed for each round."
    )
    local_epochs: int = Field(
        default=1, ge=1, le=100, description="Epochs each site trains per round."
    )
    strategy: FederationStrategy = Field(
        default_factory=FederationStrategy, description="Aggregation strategy."
    )
    privacy: FederationPrivacy = Field(description="Differential privacy (required).")
    secure_aggregation: SecureAggregation = Field(
        default_factory=SecureAggregation, description="SecAgg+ (on by default)."
    )

    rules = (
        Rule(
            cel="self.sites.all(s, self.sites.exists_one(t, t.name == s.name))",
            message="site names must be unique",
            check=lambda f: len({s.name for s in f.sites}) == len(f.sites),
            field=".sites",
        ),
        Rule(
            cel="self.minSites <= size(self.sites)",
            message="minSites must not exceed the number of sites",
            check=lambda f: f.min_sites <= len(f.sites),
            field=".minSites",
        ),
        Rule(
            cel="!self.secureAggregation.enabled"
            " || self.secureAggregation.shares <= size(self.sites)",
            message="secureAggregation.shares must not exceed the number of sites",
            check=lambda f: (
                not f.secure_aggregation.enabled or f.secure_aggregation.shares <= len(f.sites)
            ),
            field=".secureAggregation.shares",
        ),
    )


class TrainingJobSpec(ApiModel):
    """Desired state of a TrainingJob."""

    dataset_ref: DatasetRef | None = Field(
        default=None,
        description="Training data; the Dataset must be Ready. Required unless federation is "
        "set (then each site names its own).",
    )
    federation: Federation | None = Field(
        default=None,
        description="Federated training across edge sites (Flower); the data stays at each site.",
    )
    validation_split: float = Field(
        default=0.2,
        gt=0,
        lt=1,
        description="Share of rows for validation: Ray Tune and early stopping choose on it.",
    )
    test_split: float = Field(
        default=0.2,
        ge=0,
        lt=1,
        description="Share of rows held out as test data before tuning: training never sees "
        "them; evaluation gates and the model card score on them. 0: none (give the "
        "ModelVersion spec.evaluation.datasetRef).",
    )
    task: Task = Field(description="Label and features.")
    model: BuiltinModel | None = Field(default=None, description="A built-in architecture.")
    custom: CustomTrainer | None = Field(
        default=None, description="User code instead of a built-in."
    )
    resources: Resources = Field(
        default_factory=Resources, description="Workers and their resources."
    )
    tuning: Tuning | None = Field(default=None, description="AutoML search (built-in models only).")
    checkpoint: Checkpoint = Field(default_factory=Checkpoint, description="Checkpointing.")
    # `register` is taken by ABCMeta on every pydantic model, hence the alias.
    register_: Register | None = Field(
        default=None, alias="register", description="Register the result as a ModelVersion."
    )
    suspend: bool = Field(default=False, description="Create no pods while true.")
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail the run after this many seconds."
    )
    backoff_limit: int = Field(default=3, ge=0, le=100, description="Pod retries before Failed.")

    rules = (
        Rule(
            cel="has(self.datasetRef) != has(self.federation)",
            message="exactly one of datasetRef or federation must be set "
            "(a federated job reads each site's datasetRef)",
            check=lambda s: exactly_one(s.dataset_ref, s.federation),
            field=".datasetRef",
        ),
        Rule(
            cel="!has(self.federation) || (has(self.model) && !has(self.tuning))",
            message="federation needs a built-in model and no tuning",
            check=lambda s: s.federation is None or (s.model is not None and s.tuning is None),
            field=".federation",
        ),
        Rule(
            cel="has(self.model) != has(self.custom)",
            message="exactly one of model or custom must be set",
            check=lambda s: exactly_one(s.model, s.custom),
        ),
        Rule(
            cel="self.validationSplit + self.testSplit < 1.0",
            message="validationSplit + testSplit must be below 1 (rows are left to train on)",
            check=lambda s: s.validation_split + s.test_split < 1,
            field=".testSplit",
        ),
        Rule(
            cel="!has(self.tuning) || has(self.model)",
            message="tuning needs a built-in model",
            check=lambda s: s.tuning is None or s.model is not None,
            field=".tuning",
        ),
    )

    def central_dataset(self) -> DatasetRef:
        """The one Dataset of a non-federated job (a federated one has one per site)."""
        if self.dataset_ref is None:
            raise ValueError("a federated TrainingJob has no central datasetRef: read its sites")
        return self.dataset_ref

    def dataset_refs(self) -> list[DatasetRef]:
        """Every Dataset the job reads: its datasetRef, or each site's."""
        if self.federation is not None:
            return [site.dataset_ref for site in self.federation.sites]
        return [self.central_dataset()]


class Progress(ApiModel):
    """How far the run is."""

    epoch: int = Field(default=0, ge=0)
    epochs: int = Field(default=0, ge=0)
    trials_completed: int = Field(default=0, ge=0)
    trials_total: int = Field(default=0, ge=0)
    percent: int = Field(default=0, ge=0, le=100)


class Trial(ApiModel):
    """The best trial of a search."""

    id: str = Field(max_length=256)
    metric: float | None = None
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )


class FederationRound(ApiModel):
    """One completed federated round."""

    round: int = Field(ge=1, description="Round number, from 1.")
    sites_active: list[str] = Field(
        default_factory=list, max_length=FEDERATION_MAX_SITES, description="Sites that reported."
    )
    sites_dropped: list[str] = Field(
        default_factory=list,
        max_length=FEDERATION_MAX_SITES,
        description="Sites asked to train that did not report.",
    )
    metrics: dict[str, float] = Field(
        default_factory=dict, max_length=32, description="Aggregated metrics of the round."
    )


class FederationPrivacyStatus(ApiModel):
    """The privacy spent, as the RDP accountant computes it after the last round."""

    epsilon_spent: float = Field(ge=0, description="epsilon after the completed rounds.")
    delta: float = Field(gt=0, lt=1)
    clipping_norm: float | None = Field(default=None, gt=0)
    noise_multiplier: float | None = Field(default=None, gt=0)


class FederationStatus(ApiModel):
    """Observed state of federated training: rounds, sites per round, privacy spent."""

    rounds_completed: int = Field(default=0, ge=0)
    rounds: list[FederationRound] = Field(default_factory=list, max_length=1000)
    privacy: FederationPrivacyStatus | None = None


class TrainingJobStatus(StatusBase):
    """Observed state of a TrainingJob."""

    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"] = Field(
        default="Pending", description="Pending, Running, Succeeded, Failed or Suspended."
    )
    progress: Progress | None = None
    metrics: dict[str, float] = Field(default_factory=dict, max_length=64)
    best_trial: Trial | None = None
    artifact: Artifact | None = Field(default=None, description="The trained model in the lake.")
    model_version: str | None = Field(default=None, description="The registered ModelVersion.")
    lineage: Lineage | None = None
    federation: FederationStatus | None = Field(
        default=None, description="Federated training: rounds, sites and privacy spent."
    )
    start_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    completion_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})


class TrainingJob(ApiModel):
    """Distributed PyTorch training of a built-in model (or user code) on a Dataset, with an
    optional Ray Tune search; on success it can register a ModelVersion."""

    api_version: Literal["neuraxis.dev/v1alpha1"]
    kind: Literal["TrainingJob"]
    metadata: ObjectMeta
    spec: TrainingJobSpec
    status: TrainingJobStatus | None = None
