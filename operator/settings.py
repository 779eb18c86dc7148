"""Operator settings: read once at start-up from the environment, with defaults in one place.
A value that cannot work stops the start-up with a SettingsError naming the variable."""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_IMAGE = "ghcr.io/neuraxis/neuraxis:0.1.0"

IMAGE_ENV = "NEURAXIS_IMAGE"
LAKE_URI_ENV = "NEURAXIS_LAKE_URI"
LAKE_SECRET_ENV = "NEURAXIS_LAKE_SECRET"
LAKE_CREDENTIALS_ENV = "NEURAXIS_LAKE_CREDENTIALS"
LAKE_CREDENTIALS_SECONDS_ENV = "NEURAXIS_LAKE_CREDENTIALS_SECONDS"
LAKE_CREDENTIAL_MODES = ("shared", "scoped")
SERVICE_ACCOUNT_ENV = "NEURAXIS_WORKLOAD_SERVICE_ACCOUNT"
SPARK_SERVICE_ACCOUNT_ENV = "NEURAXIS_SPARK_SERVICE_ACCOUNT"
RESYNC_ENV = "NEURAXIS_RESYNC_SECONDS"
WORKLOAD_TOLERATIONS_ENV = "NEURAXIS_WORKLOAD_TOLERATIONS"
WORKLOAD_NODE_SELECTOR_ENV = "NEURAXIS_WORKLOAD_NODE_SELECTOR"
ALLOW_KWOK_ANNOTATIONS_ENV = "NEURAXIS_ALLOW_KWOK_ANNOTATIONS"
WORKERS_ENV = "NEURAXIS_WORKERS"
API_QPS_ENV = "NEURAXIS_API_QPS"
API_BURST_ENV = "NEURAXIS_API_BURST"
API_TIMEOUT_ENV = "NEURAXIS_API_TIMEOUT_SECONDS"
API_RETRIES_ENV = "NEURAXIS_API_RETRIES"
API_RETRY_CAP_ENV = "NEURAXIS_API_RETRY_CAP_SECONDS"
DEGRADED_RETRY_ENV = "NEURAXIS_DEGRADED_RETRY_SECONDS"
LEADER_ELECTION_ENV = "NEURAXIS_LEADER_ELECTION"
LEASE_NAMESPACE_ENV = "NEURAXIS_LEASE_NAMESPACE"
LEASE_NAME_ENV = "NEURAXIS_LEASE_NAME"
LEASE_SECONDS_ENV = "NEURAXIS_LEASE_SECONDS"
LEASE_RENEW_ENV = "NEURAXIS_LEASE_RENEW_SECONDS"
LEASE_RETRY_ENV = "NEURAXIS_LEASE_RETRY_SECONDS"
IDENTITY_ENV = "POD_NAME"  # set from the downward API in the operator's Deployment
POD_NAMESPACE_ENV = "POD_NAMESPACE"
GATEWAY_ENV = "NEURAXIS_GATEWAY"
FEDERATION_LAKE_EGRESS_ENV = "NEURAXIS_FEDERATION_LAKE_EGRESS"

Toleration = dict[str, Any]
EgressRule = dict[str, Any]
# How a federated run's SuperNodes reach the lake for their site's Dataset (their only egress
# besides the SuperLink and DNS): HTTPS and MinIO's port, to any address, since the lake's
# address is in a Secret the operator does not read. Narrow it with NEURAXIS_FEDERATION_LAKE_EGRESS.
DEFAULT_LAKE_EGRESS: tuple[EgressRule, ...] = (
    {"ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 9000}]},
)
EGRESS_RULE_FIELDS = {"to", "ports"}

TOLERATION_FIELDS = {"key", "operator", "value", "effect", "tolerationSeconds"}
TAINT_EFFECTS = {"", "NoSchedule", "PreferNoSchedule", "NoExecute"}
# Label syntax as the API server checks it: an optional DNS-subdomain prefix and a name part.
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_PREFIX = r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"
LABEL_KEY = re.compile(rf"^({_LABEL_PREFIX}/)?{_LABEL_NAME}$")
LABEL_VALUE = re.compile(rf"^({_LABEL_NAME})?$")


class SettingsError(ValueError):
    """An operator setting (environment variable) that cannot work; the message names it."""


@dataclass(frozen=True)
class OperatorSettings:
    """What every child resource needs to know about the platform it runs on."""

    image: str = DEFAULT_IMAGE
    lake_uri: str = "s3://neuraxis-lake/lake"
    # Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL for the lake.
    lake_secret: str = "neuraxis-lake"
    # "shared": every workload pod mounts `lake_secret`. "scoped": the operator mints per-run
    # keys limited to the run's prefixes (STS AssumeRole with a session policy, with its own
    # lake keys from its environment) into a Secret per run and role
    # (`neuraxis.lake_access`); `lake_secret` is then only the operator's.
    lake_credentials: str = "shared"
    # Lifetime of minted keys; re-minted when a third is left (MinIO: 900 s to 365 days; AWS
    # role sessions: at most 12 h).
    lake_credentials_seconds: int = 43200
    service_account: str = "neuraxis-workload"
    # Spark drivers with executors > 0 run as this account and create executor pods with its
    # token; the operator ensures it (and its RoleBinding) in each namespace that needs it.
    spark_service_account: str = "neuraxis-spark"
    gpu_pool_label: tuple[str, str] = ("neuraxis.dev/pool", "gpu")
    gpu_taint: tuple[str, str, str] = ("nvidia.com/gpu", "present", "NoSchedule")
    edge_site_label: str = "neuraxis.dev/edge-site"
    edge_taint: tuple[str, str, str] = ("neuraxis.dev/edge", "true", "NoSchedule")
    # Periodic level-based resync: restores edited/deleted children and refreshes status.
    resync_seconds: float = 30.0
    serving_port: int = 8080
    # The Gateway (Gateway API) canary HTTPRoutes attach to unless spec.serving.gateway names
    # one: (namespace, name, sectionName or ""). None: no platform Gateway.
    gateway: tuple[str, str, str] | None = None
    edge_port: int = 8090
    # Open Inference Protocol over gRPC (`--grpc-port`), next to each HTTP port.
    serving_grpc_port: int = 8081
    edge_grpc_port: int = 8091
    # NetworkPolicy egress rules (`{"to": [...], "ports": [...]}`) for federated SuperNodes to
    # reach the lake.
    federation_lake_egress: tuple[EgressRule, ...] = DEFAULT_LAKE_EGRESS
    # Platform-wide scheduling for every workload pod, merged with each kind's own (GPU pool,
    # edge nodes): e.g. a dedicated pool's taint and label.
    workload_tolerations: tuple[Toleration, ...] = ()
    workload_node_selector: Mapping[str, str] = field(default_factory=dict)
    # Test clusters only: let `neuraxis.dev/pod-annotations` carry KWOK fault-injection
    # annotations (`neuraxis.dev/kwok-*`), which fabricate a pod's outcome on fake nodes.
    allow_kwok_annotations: bool = False
    # Bounds: reconciles at once, the client's request rate (QPS, with a burst), the timeout of
    # every API request, and the retries of 429/5xx/no answer (exponential backoff with jitter,
    # each wait at most the cap). After the last retry the resource reports `Degraded` and is
    # reconciled again every `degraded_retry_seconds` until the API answers.
    workers: int = 8
    api_qps: float = 100.0
    api_burst: int = 200
    api_timeout_seconds: float = 10.0
    api_retries: int = 5
    api_retry_cap_seconds: float = 5.0
    degraded_retry_seconds: float = 30.0
    # Several replicas: only the holder of the Lease `<lease_namespace>/<lease_name>` reconciles;
    # another takes over when it is not renewed for `lease_seconds`. The namespace defaults to
    # the pod's own (POD_NAMESPACE), the identity to POD_NAME (else host and process id).
    leader_election: bool = False
    lease_namespace: str = ""
    lease_name: str = "neuraxis-operator"
    lease_seconds: float = 15.0
    lease_renew_seconds: float = 5.0
    lease_retry_seconds: float = 2.0
    identity: str = ""

    def lease_identity(self) -> str:
        return self.identity or f"{socket.gethostname()}-{os.getpid()}"

    def __post_init__(self) -> None:
        if not 900 <= self.lake_credentials_seconds <= 365 * 86400:
            raise SettingsError(
                f"{LAKE_CREDENTIALS_SECONDS_ENV}: {self.lake_credentials_seconds} is outside "
                "900..31536000 (STS: 15 minutes to MinIO's 365 days; AWS allows 12 h)"
            )
        for index, toleration in enumerate(self.workload_tolerations):
            check_toleration(toleration, f"{WORKLOAD_TOLERATIONS_ENV}[{index}]")
        check_node_selector(self.workload_node_selector, WORKLOAD_NODE_SELECTOR_ENV)
        gpu_key = self.gpu_pool_label[0]
        if gpu_key in self.workload_node_selector:
            raise SettingsError(
                f"{WORKLOAD_NODE_SELECTOR_ENV}: key {gpu_key!r} is the GPU pool label the "
                "operator sets on GPU pods itself; use another label"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        d = cls()
        return cls(
            image=env.get(IMAGE_ENV, d.image),
            lake_uri=env.get(LAKE_URI_ENV, d.lake_uri),
            lake_secret=env.get(LAKE_SECRET_ENV, d.lake_secret),
            lake_credentials=parse_choice(
                env.get(LAKE_CREDENTIALS_ENV), LAKE_CREDENTIALS_ENV, LAKE_CREDENTIAL_MODES
            ),
            lake_credentials_seconds=parse_count(
                env.get(LAKE_CREDENTIALS_SECONDS_ENV),
                LAKE_CREDENTIALS_SECONDS_ENV,
                d.lake_credentials_seconds,
                low=900,
            ),
            service_account=env.get(SERVICE_ACCOUNT_ENV, d.service_account),
            spark_service_account=env.get(SPARK_SERVICE_ACCOUNT_ENV, d.spark_service_account),
            resync_seconds=parse_seconds(env.get(RESYNC_ENV), RESYNC_ENV, d.resync_seconds),
            gateway=parse_gateway(env.get(GATEWAY_ENV)),
            federation_lake_egress=parse_egress_rules(
                env.get(FEDERATION_LAKE_EGRESS_ENV), d.federation_lake_egress
            ),
            workload_tolerations=parse_tolerations(env.get(WORKLOAD_TOLERATIONS_ENV)),
            workload_node_selector=parse_node_selector(env.get(WORKLOAD_NODE_SELECTOR_ENV)),
            allow_kwok_annotations=parse_flag(
                env.get(ALLOW_KWOK_ANNOTATIONS_ENV), ALLOW_KWOK_ANNOTATIONS_ENV
            ),
            workers=parse_count(env.get(WORKERS_ENV), WORKERS_ENV, d.workers, low=1),
            api_qps=parse_seconds(env.get(API_QPS_ENV), API_QPS_ENV, d.api_qps, "requests/s"),
            api_burst=parse_count(env.get(API_BURST_ENV), API_BURST_ENV, d.api_burst, low=1),
            api_timeout_seconds=parse_seconds(
                env.get(API_TIMEOUT_ENV), API_TIMEOUT_ENV, d.api_timeout_seconds
            ),
            api_retries=parse_count(env.get(API_RETRIES_ENV), API_RETRIES_ENV, d.api_retries),
            api_retry_cap_seconds=parse_seconds(
                env.get(API_RETRY_CAP_ENV), API_RETRY_CAP_ENV, d.api_retry_cap_seconds
            ),
            degraded_retry_seconds=parse_seconds(
                env.get(DEGRADED_RETRY_ENV), DEGRADED_RETRY_ENV, d.degraded_retry_seconds
            ),
            **lease_settings(env),
        )


def lease_settings(env: Mapping[str, str]) -> dict[str, Any]:
    d = OperatorSettings
    lease = parse_seconds(env.get(LEASE_SECONDS_ENV), LEASE_SECONDS_ENV, d.lease_seconds)
    renew = parse_seconds(env.get(LEASE_RENEW_ENV), LEASE_RENEW_ENV, d.lease_renew_seconds)
    if renew >= lease:
        raise SettingsError(
            f"{LEASE_RENEW_ENV}: {renew:g}s must be shorter than {LEASE_SECONDS_ENV} ({lease:g}s)"
        )
    return {
        "leader_election": parse_flag(env.get(LEADER_ELECTION_ENV), LEADER_ELECTION_ENV),
        "lease_namespace": env.get(LEASE_NAMESPACE_ENV) or env.get(POD_NAMESPACE_ENV) or "",
        "lease_name": env.get(LEASE_NAME_ENV) or d.lease_name,
        "lease_seconds": lease,
        "lease_renew_seconds": renew,
        "lease_retry_seconds": parse_seconds(
            env.get(LEASE_RETRY_ENV), LEASE_RETRY_ENV, d.lease_retry_seconds
        ),
        "identity": env.get(IDENTITY_ENV) or "",
    }


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def parse_gateway(raw: str | None) -> tuple[str, str, str] | None:
    """`namespace/name` or `namespace/name/sectionName` of a Gateway."""
    if raw is None or raw.strip() == "":
        return None
    parts = raw.strip().split("/")
    if len(parts) not in (2, 3) or not all(_DNS_LABEL.match(p) and len(p) <= 253 for p in parts):
        raise SettingsError(
            f"{GATEWAY_ENV}: {raw!r} is not namespace/name or namespace/name/sectionName "
            "(lower-case DNS names)"
        )
    return parts[0], parts[1], parts[2] if len(parts) == 3 else ""


def parse_count(raw: str | None, name: str, default: int, *, low: int = 0) -> int:
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}: {raw!r} is not a whole number") from None
    if value < low:
        raise SettingsError(f"{name}: must be >= {low}, got {raw!r}")
    return value


def parse_seconds(raw: str | None, name: str, default: float, unit: str = "seconds") -> float:
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: {raw!r} is not a number of {unit}") from None
    if value <= 0:
        raise SettingsError(f"{name}: must be > 0, got {raw!r}")
    return value


def parse_choice(raw: str | None, name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (the first when unset)."""
    value = (raw or "").strip() or choices[0]
    if value not in choices:
        raise SettingsError(f"{name}: {raw!r} is not one of {', '.join(choices)}")
    return value


def parse_flag(raw: str | None, name: str) -> bool:
    value = (raw or "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise SettingsError(f"{name}: {raw!r} is not a boolean (true or false)")


def _json(raw: str, name: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{name}: not valid JSON: {exc}") from exc


def parse_tolerations(raw: str | None) -> tuple[Toleration, ...]:
    """`[{"key": ..., "operator": "Equal"|"Exists", "value": ..., "effect": ...}, ...]`"""
    name = WORKLOAD_TOLERATIONS_ENV
    if raw is None or raw.strip() == "":
        return ()
    value = _json(raw, name)
    if not isinstance(value, list):
        raise SettingsError(f"{name}: must be a JSON list of tolerations, got {_type(value)}")
    return tuple(check_toleration(item, f"{name}[{i}]") for i, item in enumerate(value))


def check_toleration(item: Any, where: str) -> Toleration:
    """The toleration if the API server would accept it, else a SettingsError naming `where`."""
    if not isinstance(item, dict):
        raise SettingsError(f"{where}: a toleration must be a JSON object, got {_type(item)}")
    unknown = sorted(set(item) - TOLERATION_FIELDS)
    if unknown:
        raise SettingsError(
            f"{where}: unknown field(s) {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(TOLERATION_FIELDS))})"
        )
    for key in ("key", "operator", "value", "effect"):
        if key in item and not isinstance(item[key], str):
            raise SettingsError(f"{where}.{key}: must be a string, got {_type(item[key])}")
    operator = item.get("operator", "Equal")
    if operator not in ("Equal", "Exists"):
        raise SettingsError(f"{where}.operator: must be Equal or Exists, got {operator!r}")
    if operator == "Exists" and item.get("value"):
        raise SettingsError(f"{where}.value: must be empty with operator Exists")
    if operator == "Equal" and not item.get("key"):
        raise SettingsError(f"{where}.key: required with operator Equal")
    if item.get("key") and not LABEL_KEY.match(item["key"]):
        raise SettingsError(f"{where}.key: {item['key']!r} is not a valid taint key")
    if item.get("effect", "") not in TAINT_EFFECTS:
        raise SettingsError(
            f"{where}.effect: must be one of NoSchedule, PreferNoSchedule, NoExecute "
            f"(or empty for all), got {item['effect']!r}"
        )
    if "tolerationSeconds" in item:
        seconds = item["tolerationSeconds"]
        if not isinstance(seconds, int) or isinstance(seconds, bool):
            raise SettingsError(f"{where}.tolerationSeconds: must be an integer")
        if item.get("effect") != "NoExecute":
            raise SettingsError(f"{where}.tolerationSeconds: only allowed with effect NoExecute")
    return dict(item)


def parse_egress_rules(raw: str | None, default: tuple[EgressRule, ...]) -> tuple[EgressRule, ...]:
    """`[{"to": [<NetworkPolicyPeer>...], "ports": [{"protocol": "TCP", "port": 9000}]}, ...]`:
    the shape is checked here; the API server checks the peers when the policy is applied."""
    name = FEDERATION_LAKE_EGRESS_ENV
    if raw is None or raw.strip() == "":
        return default
    value = _json(raw, name)
    if not isinstance(value, list):
        raise SettingsError(f"{name}: must be a JSON list of egress rules, got {_type(value)}")
    for i, rule in enumerate(value):
        if not isinstance(rule, dict):
            raise SettingsError(f"{name}[{i}]: an egress rule must be a JSON object")
        unknown = sorted(set(rule) - EGRESS_RULE_FIELDS)
        if unknown:
            raise SettingsError(
                f"{name}[{i}]: unknown field(s) {', '.join(unknown)} (allowed: ports, to)"
            )
        for key in ("to", "ports"):
            if key in rule and not isinstance(rule[key], list):
                raise SettingsError(f"{name}[{i}].{key}: must be a list, got {_type(rule[key])}")
        if not rule.get("to") and not rule.get("ports"):
            # An empty rule would allow all egress: the opposite of what the policy is for.
            raise SettingsError(f"{name}[{i}]: needs `to` or `ports` (an empty rule allows all)")
    return tuple(dict(rule) for rule in value)


def parse_node_selector(raw: str | None) -> dict[str, str]:
    """`{"label": "value", ...}`"""
    name = WORKLOAD_NODE_SELECTOR_ENV
    if raw is None or raw.strip() == "":
        return {}
    value = _json(raw, name)
    if not isinstance(value, dict):
        raise SettingsError(f"{name}: must be a JSON object of labels, got {_type(value)}")
    return check_node_selector(value, name)


def check_node_selector(selector: Mapping[Any, Any], name: str) -> dict[str, str]:
    for key, value in selector.items():
        if not isinstance(key, str) or not LABEL_KEY.match(key):
            raise SettingsError(f"{name}: {key!r} is not a valid label key")
        if not isinstance(value, str) or not LABEL_VALUE.match(value):
            raise SettingsError(f"{name}[{key}]: {value!r} is not a valid label value")
    return dict(selector)


def _type(value: Any) -> str:
    names: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
    return names.get(type(value), type(value).__name__)
