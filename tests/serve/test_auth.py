"""The authentication decision and the token bucket as plain functions: API keys read from a
real folder laid out as kubelet mounts a Secret (rotation included), the credential headers of
HTTP and gRPC, and the ServiceAccount-token cache in front of a TokenReview API."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from neuraxis.workloads.serve.auth import (
    MISSING,
    ApiKeys,
    AuthConfig,
    AuthError,
    AuthSetupError,
    Gate,
    TokenBucket,
    TokenReviewAuth,
    authenticate,
    build_gate,
    credential,
    credential_headers,
    is_open,
    retry_after_seconds,
)

KEYS = {"ci": "k-ci-0123456789", "dashboard": "k-dash-abcdef"}


def mount_secret(folder: Path, keys: Mapping[str, str], stamp: str) -> None:
    """What kubelet does: the data in a timestamped folder, `..data` a link to it, each key a
    link through `..data`; an update swaps `..data` at once."""
    folder.mkdir(exist_ok=True)
    data = folder / f"..{stamp}"
    data.mkdir()
    for name, value in keys.items():
        (data / name).write_text(value)
    tmp = folder / "..data_tmp"
    tmp.symlink_to(data.name)
    os.replace(tmp, folder / "..data")
    for name in keys:
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    for stale in folder.iterdir():
        if stale.is_symlink() and not stale.exists():
            stale.unlink()


def digests(keys: Mapping[str, str]) -> Any:
    return ApiKeys.digests_of(keys)


def test_either_header_names_the_key_and_anything_else_is_401() -> None:
    known = digests(KEYS)
    assert authenticate({"authorization": "Bearer k-ci-0123456789"}, known) == "ci"
    assert authenticate({"authorization": "bearer   k-dash-abcdef "}, known) == "dashboard"
    assert authenticate({"x-api-key": "k-dash-abcdef"}, known) == "dashboard"
    assert authenticate({}, known) is MISSING
    for headers in (
        {"authorization": "Bearer k-ci-012345678"},  # a prefix of a key
        {"authorization": "Bearer k-ci-0123456789x"},
        {"authorization": "Basic k-ci-0123456789"},
        {"authorization": "Bearer "},
        {"x-api-key": "KEY"},
    ):
        result = authenticate(headers, known)
        assert isinstance(result, AuthError) and result.status == 401, headers
    # A wrong Authorization does not hide a right X-API-Key, nor the other way round.
    assert authenticate({"authorization": "Basic x", "x-api-key": "k-ci-0123456789"}, known) == "ci"


def test_error_body_and_headers_are_the_servers_format() -> None:
    assert MISSING.body["field"] == "authorization"
    assert MISSING.body["error"] == f"authorization: {MISSING.reason}"
    assert MISSING.headers["WWW-Authenticate"].startswith("Bearer")
    limited = AuthError(429, "slow down", retry_after=2)
    assert limited.headers == {"Retry-After": "2"}


def test_credential_headers_from_asgi_bytes_and_grpc_metadata() -> None:
    asgi = [(b"host", b"x"), (b"Authorization", b"Bearer abc"), (b"x-api-key", b"\xff\xfe")]
    assert credential_headers(asgi) == {"authorization": "Bearer abc"}
    grpc = (("x-api-key", "k-ci-0123456789"), ("user-agent", "grpc-python"))
    headers = credential_headers(grpc)
    assert credential(headers) == "k-ci-0123456789"
    assert authenticate(headers, digests(KEYS)) == "ci"


def test_open_paths_are_health_and_metrics_only() -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"):
        assert is_open(path), path
    for path in ("/v1/models/m:predict", "/v2/models/m/infer", "/v2/models/m", "/v2", "/metricsx"):
        assert not is_open(path), path


def test_keys_from_a_mounted_secret_reload_on_rotation(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    mount_secret(folder, KEYS, "2026_01_01")
    keys = ApiKeys(folder, recheck_s=10.0)
    assert len(keys) == 2
    assert authenticate({"x-api-key": "k-ci-0123456789"}, keys.current(0.0)) == "ci"

    mount_secret(folder, {"ci": "k-ci-rotated"}, "2026_01_02")
    # Not looked at again before recheck_s has passed; then the old key is gone.
    assert authenticate({"x-api-key": "k-ci-0123456789"}, keys.current(5.0)) == "ci"
    now = keys.current(11.0)
    assert isinstance(authenticate({"x-api-key": "k-ci-0123456789"}, now), AuthError)
    assert authenticate({"x-api-key": "k-ci-rotated"}, now) == "ci"
    assert isinstance(authenticate({"x-api-key": "k-dash-abcdef"}, now), AuthError)


def test_token_bucket_allows_the_burst_then_refills_at_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = bucket.take("a", 0.0)
    assert wait == pytest.approx(0.5)
    assert bucket.take("b", 0.0) == 0.0  # per key
    assert bucket.take("a", 0.5) == 0.0  # one token back after 1/rate seconds
    assert bucket.take("a", 0.5) > 0
    assert [bucket.take("a", 100.0) for _ in range(3)] == [0.0] * 3  # capped at burst
    assert bucket.take("a", 100.0) > 0


def test_token_bucket_forgets_the_least_recent_keys_beyond_its_bound() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, max_keys=2)
    for key in ("a", "b", "c"):
        assert bucket.take(key, 0.0) == 0.0
    assert bucket.take("c", 0.0) > 0  # still tracked
    assert bucket.take("a", 0.0) == 0.0  # forgotten: a full bucket again


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert retry_after_seconds(0.001) == 1
    assert retry_after_seconds(1.0) == 1
    assert retry_after_seconds(1.2) == 2


class RecordingReviewer:
    """A TokenReview API answering from a table (the real one is in tests/cluster)."""

    def __init__(self, users: dict[str, str]):
        self.users = users
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.down = False

    async def review(self, token: str, audiences: tuple[str, ...]) -> dict[str, Any]:
        self.calls.append((token, audiences))
        if self.down:
            raise ConnectionError("apiserver unreachable")
        if token in self.users:
            return {"authenticated": True, "user": {"username": self.users[token]}}
        return {"authenticated": False, "error": "invalid bearer token"}


def test_service_account_tokens_are_reviewed_cached_and_checked_against_allowed_users() -> None:
    reviewer = RecordingReviewer(
        {"t-app": "system:serviceaccount:apps:app", "t-other": "system:serviceaccount:x:y"}
    )
    auth = TokenReviewAuth(
        reviewer, ("neuraxis",), frozenset({"system:serviceaccount:apps:app"}), ttl_s=30.0
    )

    def check(headers: dict[str, str], now: float) -> str | AuthError:
        return asyncio.run(auth.authenticate(headers, now))

    assert check({"authorization": "Bearer t-app"}, 0.0) == "system:serviceaccount:apps:app"
    assert check({"authorization": "Bearer t-app"}, 10.0) == "system:serviceaccount:apps:app"
    assert reviewer.calls == [("t-app", ("neuraxis",))]  # the second from the cache
    forbidden = check({"x-api-key": "t-other"}, 0.0)
    assert isinstance(forbidden, AuthError) and forbidden.status == 403
    invalid = check({"authorization": "Bearer nope"}, 0.0)
    assert isinstance(invalid, AuthError) and invalid.status == 401
    assert isinstance(check({"authorization": "Bearer nope"}, 1.0), AuthError)  # not cached
    assert len(reviewer.calls) == 4
    reviewer.down = True
    assert check({"authorization": "Bearer t-app"}, 20.0) == "system:serviceaccount:apps:app"
    unavailable = check({"authorization": "Bearer t-app"}, 31.0)  # expired, API down: 503
    assert isinstance(unavailable, AuthError) and unavailable.status == 503


def test_gate_rate_limits_per_key_with_retry_after(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    mount_secret(folder, KEYS, "1")
    clock = [0.0]
    gate = build_gate(AuthConfig("apiKeys", folder, rate_limit_rps=0.5, rate_limit_burst=2))
    gate.clock = lambda: clock[0]

    def check(key: str) -> str | AuthError:
        return asyncio.run(gate.check({"x-api-key": key}))

    assert check("k-ci-0123456789") == "ci"
    assert check("k-ci-0123456789") == "ci"
    limited = check("k-ci-0123456789")
    assert isinstance(limited, AuthError) and limited.status == 429
    assert limited.retry_after == 2 and limited.key_id == "ci"
    assert check("k-dash-abcdef") == "dashboard"
    clock[0] = 2.0
    assert check("k-ci-0123456789") == "ci"
    wrong = check("wrong")
    assert isinstance(wrong, AuthError) and wrong.status == 401  # before any bucket


def test_gate_setup_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(AuthSetupError, match="--api-keys-dir"):
        build_gate(AuthConfig("apiKeys"))
    with pytest.raises(AuthSetupError, match="apiKeys"):
        build_gate(AuthConfig("apiKeys", tmp_path / "absent"))
    assert build_gate(AuthConfig()).mode == "none"
    assert isinstance(build_gate(AuthConfig()), Gate)


def test_an_empty_keys_folder_is_api_keys_missing(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()  # what an optional Secret volume shows when the Secret does not exist
    with pytest.raises(AuthSetupError, match="no API keys") as info:
        build_gate(AuthConfig("apiKeys", folder))
    assert info.value.reason == "ApiKeysMissing"
    with pytest.raises(AuthSetupError) as absent:
        build_gate(AuthConfig("apiKeys", tmp_path / "absent"))
    assert absent.value.reason == "ApiKeysMissing"
