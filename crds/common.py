"""Shared building blocks of the Neuraxis API: the base model, object metadata, references,
the status contract every kind follows, and cross-field rules that exist twice on purpose:
as CEL in the CRD (so the API server rejects bad input) and as Python (so `neuraxis run` and the
operator reject the same input with the same message)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

# DNS-1123 label, shortened so that derived child names (`<name>-train-0`, ...) stay within 63.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
NAME_MAX_LENGTH = 50
# A column or table identifier as Spark SQL accepts it without quoting.
IDENTIFIER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Kubernetes resource quantity (CPU or memory), e.g. 500m, 2, 4Gi.
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"
# Same shape as metav1.Condition.reason.
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
SHA256_PATTERN = r"^sha256:[a-f0-9]{64}$"
# An image reference with a tag or a digest (RE2 syntax: the API server evaluates it too). That
# the tag is not `latest` is a CEL rule next to each image field.
PINNED_IMAGE_PATTERN = r"^[a-z0-9./_:-]+(@sha256:[a-f0-9]{64}|:[A-Za-z0-9_][A-Za-z0-9._-]*)$"
# Kubernetes label syntax, as the API server checks node selectors and tolerations: an optional
# DNS-subdomain prefix and a name part of at most 63 characters.
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY_PATTERN = rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}$"
LABEL_VALUE_PATTERN = rf"^({_LABEL_NAME})?$"
# A Secret data key as the API server checks it (`.` and `..` are refused by a rule).
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
Column = Annotated[str, Field(max_length=128, pattern=IDENTIFIER_PATTERN)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]


@dataclass(frozen=True)
class Rule:
    """A cross-field rule on one object schema.

    `cel` is what the API server evaluates (`self` is the object); `check` is the same rule in
    Python, evaluated on the validated model. `field` names the offending sub-field (the CEL
    `fieldPath`, e.g. `.source`), so both sides report the same path."""

    cel: str
    message: str
    check: Callable[[Any], bool]
    field: str = ""


VALIDATIONS = "x-kubernetes-validations"


def _alias(model: type[BaseModel], field_name: str) -> str:
    return model.model_fields[field_name].alias or field_name


def add_schema_extensions(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """pydantic `json_schema_extra` hook: CEL rules, immutable fields and object defaults."""
    if not issubclass(model, ApiModel):
        return
    rules = [
        {"rule": r.cel, "message": r.message, **({"fieldPath": r.field} if r.field else {})}
        for r in model.rules
    ]
    if rules:
        schema[VALIDATIONS] = rules
    props = schema.get("properties", {})
    for name in model.immutable_fields:
        alias = _alias(model, name)
        props[alias][VALIDATIONS] = [
            {"rule": "self == oldSelf", "message": f"{alias} is immutable"}
        ]
    for name, info in model.model_fields.items():
        factory = info.default_factory
        # A nested object with defaults inside must exist for the API server to default it.
        # The default is the whole object, not {}: the API server checks a default against
        # the object's CEL rules as written, and `{}` has none of the keys they read.
        if isinstance(factory, type) and issubclass(factory, ApiModel):
            props[_alias(model, name)]["default"] = factory().to_wire()


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields rejected, and no type
    coercion (the API server would not turn "3" into 3 either)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        json_schema_extra=add_schema_extensions,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()
    # Spec fields that may not change after creation (CEL transition rule `self == oldSelf`).
    immutable_fields: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        for rule in type(self).rules:
            if not rule.check(self):
                raise PydanticCustomError(
                    "k8s_rule", "{message}", {"message": rule.message, "field_path": rule.field}
                )
        return self

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase keys, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def is_set(value: Any) -> bool:
    """`has()` in CEL: present and not null. Empty lists and maps count as present."""
    return value is not None


def exactly_one(*values: Any) -> bool:
    return sum(1 for v in values if v is not None) == 1


def ordered_bounds_rule() -> Rule:
    """min <= max when both are set, with one wording wherever a min/max pair appears."""
    return Rule(
        cel="!has(self.min) || !has(self.max) || self.min <= self.max",
        message="min must not be greater than max",
        check=lambda o: o.min is None or o.max is None or o.min <= o.max,
        field=".min",
    )


# Cron as the Kubernetes CronJob controller parses it (robfig/cron ParseStandard): five fields,
# each a list of `*`, `?`, a value or a range low-high, each with an optional /step; month and
# day-of-week names in any case; day of week 0-6 (7 is refused there, so here too). RE2 and
# Python's re read the same pattern (no backslashes: it sits in a CEL string literal).
_CRON_FIELDS = (
    "[0-5]?[0-9]",  # minute 0-59
    "[01]?[0-9]|2[0-3]",  # hour 0-23
    "0?[1-9]|[12][0-9]|3[01]",  # day of month 1-31
    "0?[1-9]|1[0-2]|(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)",  # month 1-12
    "0?[0-6]|(?i:sun|mon|tue|wed|thu|fri|sat)",  # day of week 0-6
)
CRON_MACROS = ("yearly", "annually", "monthly", "weekly", "daily", "midnight", "hourly")


def _cron_field(value: str) -> str:
    item = f"([*?]|({value})(-({value}))?)(/[1-9][0-9]*)?"
    return f"{item}(,{item})*"


CRON_PATTERN = f"^(@({'|'.join(CRON_MACROS)})|{' +'.join(_cron_field(v) for v in _CRON_FIELDS)})$"
_CRON = re.compile(CRON_PATTERN)
# Numeric ranges (names are not compared: `fri-mon` still fails at the CronJob).
_CRON_RANGE = "[0-9]+-[0-9]+"


def is_cron(value: str) -> bool:
    return _CRON.fullmatch(value) is not None


def cron_ranges_ordered(value: str) -> bool:
    ranges = (r.split("-") for r in re.findall(_CRON_RANGE, value))
    return all(int(low) <= int(high) for low, high in ranges)


def cron_rules(alias: str, attr: str) -> tuple[Rule, Rule]:
    """The rules of the cron field `alias` (model attribute `attr`), set on its parent object.
    Without them a bad schedule is admitted and only the CronJob built from it is refused."""
    this = f"self.{alias}"
    matches = f"{this}.matches('{CRON_PATTERN}')"
    return (
        Rule(
            cel=f"!has({this}) || {matches}",
            message=(
                f"{alias} must be five cron fields (minute 0-59, hour 0-23, day of month 1-31, "
                "month 1-12 or jan-dec, day of week 0-6 or sun-sat; each *, a value, a range "
                "or a list, with an optional /step) or one of "
                + ", ".join(f"@{m}" for m in CRON_MACROS)
            ),
            check=lambda o: getattr(o, attr) is None or is_cron(getattr(o, attr)),
            field=f".{alias}",
        ),
        # Guarded by the pattern: int() then only sees numbers of at most two digits.
        Rule(
            cel=(
                f"!has({this}) || !{matches} || {this}.findAll('{_CRON_RANGE}')"
                ".all(r, int(r.split('-')[0]) <= int(r.split('-')[1]))"
            ),
            message=f"{alias}: a range must not end before it starts (write 9-17, not 17-9)",
            check=lambda o: (
                getattr(o, attr) is None
                or not is_cron(getattr(o, attr))
                or cron_ranges_ordered(getattr(o, attr))
            ),
            field=f".{alias}",
        ),
    )


class ObjectMeta(BaseModel):
    """Standard Kubernetes object metadata. Only `name` is constrained by Neuraxis: it becomes
    part of child resource names and label values."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)

    name: str = Field(
        description="Name of the resource, a DNS-1123 label of at most 50 characters.",
        max_length=NAME_MAX_LENGTH,
        pattern=NAME_PATTERN,
    )
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    uid: str | None = None


class ObjectRef(ApiModel):
    """A reference to another Neuraxis resource in the same namespace."""

    name: str = Field(
        description="Name of the referenced resource.",
        max_length=NAME_MAX_LENGTH,
        pattern=NAME_PATTERN,
    )


class DatasetRef(ObjectRef):
    """A reference to a Dataset, optionally pinned to one table version. Unpinned means the
    latest Ready version. It may name another namespace that grants it (neuraxis/references.py)."""

    version: int | None = Field(
        default=None,
        ge=0,
        description="Delta table version to read; omit for the latest Ready one.",
    )
    namespace: str | None = Field(
        default=None,
        max_length=63,
        pattern=NAME_PATTERN,
        description=(
            "The Dataset's namespace; default this object's. Another namespace is read only if "
            "that Dataset's annotation neuraxis.dev/grant-to-namespaces lists this namespace "
            "(else the reference is refused with reason ReferenceNotPermitted)."
        ),
    )


def secret_env_prefix(secret: str) -> str:
    """NEURAXIS_SECRET_<NAME>_: where `neuraxis run` finds a Secret's keys (one variable per
    key, NEURAXIS_SECRET_<NAME>_<KEY>), upper case, `-` and `.` as `_`."""
    return re.sub(r"[-.]", "_", f"NEURAXIS_SECRET_{secret}_".upper())


class SecretKeyRef(ApiModel):
    """A key of a Secret in the same namespace. Run locally (`neuraxis run`), the value comes from
    the environment variable NEURAXIS_SECRET_<NAME>_<KEY> (upper case, `-` and `.` as `_`)."""

    name: str = Field(description="Secret name.", max_length=253, pattern=NAME_PATTERN)
    key: str = Field(
        description="Key within the Secret: letters, digits, -, _ and . (not . or ..).",
        max_length=253,
        pattern=SECRET_KEY_PATTERN,
    )

    rules = (
        Rule(
            cel="self.key != '.' && self.key != '..'",
            message="key must not be . or .. (not a valid Secret key)",
            check=lambda r: r.key not in (".", ".."),
            field=".key",
        ),
    )


class SecretRef(ApiModel):
    """A whole Secret in the same namespace (every key of it is used)."""

    name: str = Field(description="Secret name.", max_length=253, pattern=NAME_PATTERN)


class RateLimit(ApiModel):
    """A token bucket per caller (per API key or per ServiceAccount identity): a request past
    the bucket is answered 429 with Retry-After."""

    requests_per_second: int = Field(ge=1, le=100000, description="Sustained rate per caller.")
    burst: int | None = Field(
        default=None, ge=1, le=100000, description="Bucket size; default requestsPerSecond."
    )


AUTH_REQUIRED = (
    "auth is required: set auth.mode to apiKeys, serviceAccountToken or none "
    "(serving without authentication must be explicit)"
)
# The rule both serving kinds carry (a model's `serving` and an EdgeDeployment's spec).
AUTH_REQUIRED_RULE = Rule(
    cel="has(self.auth)",
    message=AUTH_REQUIRED,
    check=lambda s: s.auth is not None,
    field=".auth",
)


class ServingAuth(ApiModel):
    """Who may call the inference endpoint. Health routes and /metrics stay open (probes and
    Prometheus); every other route needs credentials unless mode is none."""

    mode: Literal["none", "apiKeys", "serviceAccountToken"] = Field(
        description="none (explicitly open), apiKeys (keys from secretRef, sent as "
        "`Authorization: Bearer <key>` or `X-API-Key: <key>`) or serviceAccountToken "
        "(Kubernetes tokens checked by the TokenReview API)."
    )
    secret_ref: SecretRef | None = Field(
        default=None,
        description="mode apiKeys: every key of this Secret is one API key; the key's name is "
        "its id in metrics. Locally (`neuraxis run`) the keys are the environment variables "
        "NEURAXIS_SECRET_<NAME>_<ID> (upper case, `-` and `.` as `_`).",
    )
    audiences: list[Annotated[str, Field(max_length=253)]] | None = Field(
        default=None,
        max_length=16,
        description="mode serviceAccountToken: audiences a token must be issued for; default "
        "the API server's.",
    )
    allowed_users: list[Annotated[str, Field(max_length=253)]] | None = Field(
        default=None,
        max_length=64,
        description="mode serviceAccountToken: usernames allowed to call (e.g. "
        "system:serviceaccount:<namespace>:<name>); another valid identity gets 403. Default: "
        "every identity the API server authenticates.",
    )
    rate_limit: RateLimit | None = Field(default=None, description="Per-caller rate limit.")

    rules = (
        Rule(
            cel="self.mode != 'apiKeys' || has(self.secretRef)",
            message="mode apiKeys needs secretRef (the Secret whose keys are the API keys)",
            check=lambda a: a.mode != "apiKeys" or a.secret_ref is not None,
            field=".secretRef",
        ),
        Rule(
            cel="self.mode == 'apiKeys' || !has(self.secretRef)",
            message="secretRef is only for mode apiKeys",
            check=lambda a: a.mode == "apiKeys" or a.secret_ref is None,
            field=".secretRef",
        ),
        Rule(
            cel="self.mode == 'serviceAccountToken' || (!has(self.audiences) && "
            "!has(self.allowedUsers))",
            message="audiences and allowedUsers are only for mode serviceAccountToken",
            check=lambda a: (
                a.mode == "serviceAccountToken" or (a.audiences is None and a.allowed_users is None)
            ),
            field=".mode",
        ),
        Rule(
            cel="self.mode != 'none' || !has(self.rateLimit)",
            message="rateLimit is per caller: it needs mode apiKeys or serviceAccountToken",
            check=lambda a: a.mode != "none" or a.rate_limit is None,
            field=".rateLimit",
        ),
    )


class Condition(ApiModel):
    """One observation of the resource's state, shaped like metav1.Condition."""

    type: str = Field(
        description="Condition type, e.g. Ready, InputsReady, QualityPassed.",
        max_length=316,
        pattern=r"^[A-Za-z][A-Za-z0-9]*$",
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        description="CamelCase machine-readable reason for the last transition.",
        max_length=1024,
        pattern=REASON_PATTERN,
    )
    message: str = Field(default="", description="Human-readable details.", max_length=32768)
    last_transition_time: str = Field(
        description="When the status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation this condition was computed for."
    )


class RunRecord(ApiModel):
    """One run of the resource: a Job whose name is the run id."""

    id: str = Field(
        max_length=63,
        description="The run id: the Job's name and NEURAXIS_RUN_ID (results, Delta commits and "
        "checkpoints are keyed by it); it carries the resource's short uid and generation.",
    )
    generation: int = Field(ge=0, description="The metadata.generation the run was started for.")
    phase: Literal["Running", "Succeeded", "Failed", "Superseded"] = Field(
        description="Superseded: stopped before it finished because the spec changed (its Job "
        "was deleted before the next run started)."
    )
    start_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    completion_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})


RUNS_KEPT = 8


class StatusBase(ApiModel):
    """The status contract shared by every Neuraxis kind."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation the status was computed for."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=32,
        description="Current conditions. `Ready` summarises the resource; kinds add their own.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    message: str | None = Field(
        default=None, max_length=32768, description="Why the resource is in its phase, for people."
    )
    runs: list[RunRecord] = Field(
        default_factory=list,
        max_length=RUNS_KEPT,
        description="The latest runs, newest first.",
    )


class SiteLineage(ApiModel):
    """One site of a federated training: its data version and the rounds it took part in."""

    site: str = Field(max_length=63, description="Site name.")
    dataset: str = Field(max_length=NAME_MAX_LENGTH, description="The site's Dataset name.")
    dataset_version: int | None = Field(default=None, description="Dataset table version.")
    dataset_digest: str | None = Field(default=None, description="Content digest of that version.")
    rounds: list[int] = Field(
        default_factory=list, max_length=1000, description="Rounds whose aggregate it is in."
    )


class Lineage(ApiModel):
    """Where a result came from: the dataset version it was built from, and what built it."""

    dataset: str | None = Field(default=None, description="Dataset name.")
    dataset_version: int | None = Field(default=None, description="Dataset table version.")
    dataset_digest: str | None = Field(default=None, description="Content digest of that version.")
    training_job: str | None = Field(default=None, description="TrainingJob name.")
    training_job_uid: str | None = Field(default=None, description="TrainingJob uid.")
    model_version: str | None = Field(default=None, description="ModelVersion name.")
    sources: list[str] = Field(
        default_factory=list, max_length=64, description="Raw source URIs at the root of the chain."
    )
    # None, not [], when absent: a non-federated lineage stays exactly as it was.
    sites: list[SiteLineage] | None = Field(
        default=None,
        max_length=32,
        description="Federated training: each site's Dataset version and its rounds.",
    )


class Artifact(ApiModel):
    """A file or folder in the lake with its content digest."""

    uri: str = Field(description="Location in the lake.", max_length=2048)
    digest: str | None = Field(default=None, description="sha256:<hex> of the content.")
    size_bytes: int | None = Field(default=None, ge=0, description="Size in bytes.")


class ResourceRequirements(ApiModel):
    """CPU and memory for each pod, as Kubernetes quantities."""

    cpu: str = Field(
        default="1", description="CPU request and limit, e.g. 500m or 2.", pattern=QUANTITY_PATTERN
    )
    memory: str = Field(
        default="2Gi",
        description="Memory request and limit, e.g. 512Mi or 4Gi.",
        pattern=QUANTITY_PATTERN,
    )
