"""The authentication of an inference endpoint (ModelVersion predictor, edge agent) in its pod:
the command-line flags, the API-key Secret as a read-only volume, and for ServiceAccount tokens
the account that may call the TokenReview API.

The Secret volume is optional on purpose: with the Secret missing or empty the pod still starts
and the server refuses to run with reason ApiKeysMissing in its termination message, which the
operator reads (the operator has no Secret access) and reports as a condition. A required
volume would leave the pod in ContainerCreating with the cause only in an Event."""

from __future__ import annotations

from typing import Any

from neuraxis.crds.common import ServingAuth

API_KEYS_MOUNT = "/var/run/neuraxis/api-keys"
API_KEYS_VOLUME = "api-keys"
# The server's refusal reasons for its auth settings (the same strings as in the workload's
# auth module; a test holds them equal): the key folder is empty, or anything else.
API_KEYS_MISSING = "ApiKeysMissing"
AUTH_SETUP_FAILED = "AuthSetupFailed"
AUTH_REFUSALS = (API_KEYS_MISSING, AUTH_SETUP_FAILED)


def auth_args(auth: ServingAuth | None) -> list[str]:
    """The serve/edge flags for `auth` (None: an object stored before auth existed, served as
    mode none, as it was)."""
    if auth is None:
        return ["--auth-mode", "none"]
    args = ["--auth-mode", auth.mode]
    if auth.mode == "apiKeys":
        args += ["--api-keys-dir", API_KEYS_MOUNT]
    for audience in auth.audiences or []:
        args += ["--token-audience", audience]
    for user in auth.allowed_users or []:
        args += ["--allowed-user", user]
    if auth.rate_limit is not None:
        limit = auth.rate_limit
        burst = limit.burst or limit.requests_per_second
        args += ["--rate-limit-rps", str(limit.requests_per_second)]
        args += ["--rate-limit-burst", str(burst)]
    return args


def mount_api_keys(template: dict[str, Any], auth: ServingAuth | None) -> None:
    """Mount the API-key Secret (mode apiKeys) into the template's main container."""
    if auth is None or auth.mode != "apiKeys" or auth.secret_ref is None:
        return
    spec = template["spec"]
    spec["volumes"].append(
        {
            "name": API_KEYS_VOLUME,
            "secret": {
                "secretName": auth.secret_ref.name,
                "optional": True,
                "defaultMode": 0o440,  # group-readable: the pod's fsGroup, not world
            },
        }
    )
    container = spec["containers"][0]
    container["volumeMounts"].append(
        {"name": API_KEYS_VOLUME, "mountPath": API_KEYS_MOUNT, "readOnly": True}
    )


def missing_keys_message(auth: ServingAuth | None, namespace: str) -> str:
    name = auth.secret_ref.name if auth and auth.secret_ref else "?"
    return (
        f"Secret {namespace}/{name} (spec auth.secretRef) is missing or has no keys: create it "
        f"with one key per API key (kubectl create secret generic {name} "
        "--from-literal=<key-id>=<key>); the pods start serving once it exists"
    )
