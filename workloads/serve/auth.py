"""Who may call the inference server, and how often: API keys or Kubernetes ServiceAccount
tokens, then a token bucket per caller.

One decision function per mode, independent of the transport: `authenticate(headers, keys)`
(API keys, pure and synchronous) and `TokenReviewAuth.authenticate(headers)` (tokens, cached),
both behind `Gate.check(headers)`, which the ASGI middleware below and a gRPC server
interceptor (metadata `authorization: Bearer <key>` or `x-api-key`) share. `headers` maps
lower-case header (or metadata) names to values; `credential_headers` builds it from raw pairs.

Keys are never kept or logged as text: the store holds sha256 digests and compares a caller's
digest with `hmac.compare_digest` against every stored one (the time does not depend on which
key matches, or how much of it). A key's id (its name in the Secret) labels metrics.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import ssl
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

AuthMode = Literal["none", "apiKeys", "serviceAccountToken"]
KeyId = str
FIELD = "authorization"
# Probes and Prometheus call these without credentials.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
OPEN_PREFIXES = ("/v2/health/",)
# The metric label of a request that was not authenticated (open route or refused).
NO_KEY = ""
CHALLENGE = 'Bearer realm="neuraxis"'
# The ASGI scope entry the authenticated key id travels in (read by the metrics middleware).
SCOPE_KEY = "neuraxis.key_id"


@dataclass(frozen=True)
class AuthError:
    """A refusal: 401 (no or bad credentials), 403 (a valid identity not allowed), 429 (rate
    limited, `retry_after` whole seconds >= 1) or 503 (the TokenReview API is unreachable)."""

    status: int
    reason: str
    retry_after: int | None = None
    key_id: KeyId = NO_KEY

    @property
    def body(self) -> dict[str, str]:
        return {"error": f"{FIELD}: {self.reason}", "field": FIELD, "reason": self.reason}

    @property
    def headers(self) -> dict[str, str]:
        if self.status == 401:
            return {"WWW-Authenticate": CHALLENGE}
        if self.retry_after is not None:
            return {"Retry-After": str(self.retry_after)}
        return {}


MISSING = AuthError(
    401, "credentials required (send Authorization: Bearer <key> or X-API-Key: <key>)"
)
INVALID = AuthError(401, "invalid credentials")


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def credential_headers(pairs: Iterable[tuple[str | bytes, str | bytes]]) -> dict[str, str]:
    """The two credential headers of raw (name, value) pairs: ASGI headers (bytes) or gRPC
    metadata (str). Undecodable values are left out (they are no valid credential anyway)."""
    out: dict[str, str] = {}
    for name, value in pairs:
        key = name.decode("latin-1") if isinstance(name, bytes) else name
        key = key.lower()
        if key in ("authorization", "x-api-key"):
            try:
                out[key] = value.decode("ascii") if isinstance(value, bytes) else value
            except UnicodeDecodeError:
                continue
    return out


def credential(headers: Mapping[str, str]) -> str | None:
    """The presented secret: `Authorization: Bearer <x>` first, else `X-API-Key: <x>`."""
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = headers.get("x-api-key")
    if api_key is not None and api_key.strip():
        return api_key.strip()
    return None


# ---- API keys ---------------------------------------------------------------------------------
class ApiKeys:
    """The API keys of a mounted Secret: one file per key, the file name is the key's id. The
    folder is looked at again at most every `recheck_s` seconds (kubelet swaps a Secret volume's
    content atomically through its `..data` link), so a rotated key works without a restart."""

    def __init__(self, folder: Path, recheck_s: float = 1.0):
        self.folder = folder
        self.recheck_s = recheck_s
        self._digests: tuple[tuple[bytes, KeyId], ...] = ()
        self._stamp: tuple[int, int] | None = None
        self._next_check = 0.0
        self.reload()

    @classmethod
    def digests_of(cls, keys: Mapping[KeyId, str]) -> tuple[tuple[bytes, KeyId], ...]:
        return tuple(
            (hashlib.sha256(secret.encode()).digest(), key_id)
            for key_id, secret in sorted(keys.items())
            if secret
        )

    def _folder_stamp(self) -> tuple[int, int]:
        data = self.folder / "..data"
        st = os.stat(data if data.exists() else self.folder)
        return (st.st_mtime_ns, st.st_ino)

    def reload(self) -> None:
        stamp = self._folder_stamp()
        keys: dict[KeyId, str] = {}
        for path in sorted(self.folder.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue  # kubelet's ..data / ..<timestamp> entries
            keys[path.name] = path.read_text().strip()
        self._digests = self.digests_of(keys)
        self._stamp = stamp
        if not self._digests:
            log.warning("no API keys in %s: every request will get 401", self.folder)

    def current(self, now: float) -> tuple[tuple[bytes, KeyId], ...]:
        if now >= self._next_check:
            self._next_check = now + self.recheck_s
            try:
                if self._folder_stamp() != self._stamp:
                    self.reload()
                    log.info("API keys reloaded from %s (%d keys)", self.folder, len(self))
            except OSError as exc:  # keep the keys we have; the volume may be mid-update
                log.warning("API keys not reloaded from %s: %s", self.folder, exc)
        return self._digests

    def __len__(self) -> int:
        return len(self._digests)


def match_key(secret: str, digests: tuple[tuple[bytes, KeyId], ...]) -> KeyId | None:
    """The id of the key whose digest is the secret's, comparing with every key."""
    presented = hashlib.sha256(secret.encode()).digest()
    found: KeyId | None = None
    for digest, key_id in digests:
        if hmac.compare_digest(presented, digest):
            found = key_id
    return found


def authenticate(
    headers: Mapping[str, str], digests: tuple[tuple[bytes, KeyId], ...]
) -> KeyId | AuthError:
    """API-key mode: the key id, or 401."""
    secret = credential(headers)
    if secret is None:
        return MISSING
    key_id = match_key(secret, digests)
    return INVALID if key_id is None else key_id


# ---- ServiceAccount tokens --------------------------------------------------------------------
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class TokenReviewer(Protocol):
    async def review(self, token: str, audiences: tuple[str, ...]) -> dict[str, Any]: ...


@dataclass
class KubeTokenReviewer:
    """Posts TokenReviews to the API server as the pod itself (its projected token and CA)."""

    server: str
    token_file: Path
    ca_file: Path | None
    timeout_s: float = 5.0

    @classmethod
    def in_cluster(cls) -> KubeTokenReviewer:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise RuntimeError(
                "serviceAccountToken auth: not in a pod (no KUBERNETES_SERVICE_HOST)"
            )
        if ":" in host:
            host = f"[{host}]"
        return cls(f"https://{host}:{port}", SA_DIR / "token", SA_DIR / "ca.crt")

    async def review(self, token: str, audiences: tuple[str, ...]) -> dict[str, Any]:
        import httpx

        spec: dict[str, Any] = {"token": token}
        if audiences:
            spec["audiences"] = list(audiences)
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        # The pod's token is read per review: kubelet rotates it in place.
        own = (await asyncio.to_thread(self.token_file.read_text)).strip()
        verify: ssl.SSLContext | bool = True
        if self.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(self.ca_file))
        async with httpx.AsyncClient(verify=verify, timeout=self.timeout_s) as client:
            response = await client.post(
                f"{self.server}/apis/authentication.k8s.io/v1/tokenreviews",
                content=json.dumps(body),
                headers={"Authorization": f"Bearer {own}", "Content-Type": "application/json"},
            )
        if response.status_code != 201 and response.status_code != 200:
            raise RuntimeError(
                f"TokenReview answered {response.status_code}: {response.text[:200]}"
            )
        status: dict[str, Any] = response.json().get("status") or {}
        return status


class TokenReviewAuth:
    """ServiceAccount-token mode: the API server says who the caller is (TokenReview); a
    positive answer is cached for `ttl_s` (keyed by the token's digest, bounded)."""

    def __init__(
        self,
        reviewer: TokenReviewer,
        audiences: tuple[str, ...] = (),
        allowed_users: frozenset[str] = frozenset(),
        ttl_s: float = 30.0,
        max_cached: int = 4096,
    ):
        self.reviewer = reviewer
        self.audiences = audiences
        self.allowed_users = allowed_users
        self.ttl_s = ttl_s
        self.max_cached = max_cached
        self._cache: OrderedDict[bytes, tuple[float, str]] = OrderedDict()

    async def authenticate(self, headers: Mapping[str, str], now: float) -> KeyId | AuthError:
        token = credential(headers)
        if token is None:
            return MISSING
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            user = hit[1]
        else:
            try:
                status = await self.reviewer.review(token, self.audiences)
            except Exception as exc:
                log.warning("TokenReview failed: %s", exc)
                return AuthError(503, "cannot check the token now (TokenReview unavailable)")
            if not status.get("authenticated"):
                return INVALID
            user = str((status.get("user") or {}).get("username") or "")
            self._cache[digest] = (now + self.ttl_s, user)
            self._cache.move_to_end(digest)
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        if self.allowed_users and user not in self.allowed_users:
            return AuthError(403, f"{user} is not allowed to call this model", key_id=NO_KEY)
        return user


# ---- rate limits --------------------------------------------------------------------------------
class TokenBucket:
    """A token bucket per key: `rate` tokens a second up to `burst`. `take` answers 0 when the
    request may go, else the seconds until a token is there. At most `max_keys` buckets (the
    least recently used go: a forgotten caller starts again with a full bucket)."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10000):
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[KeyId, tuple[float, float]] = OrderedDict()

    def take(self, key: KeyId, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait


def retry_after_seconds(wait: float) -> int:
    """Retry-After is whole seconds; never 0 (a client would retry at once)."""
    return max(1, math.ceil(wait))


# ---- the gate -----------------------------------------------------------------------------------
@dataclass
class Gate:
    """The decision for one request: who it is (per mode), then the rate limit."""

    mode: AuthMode = "none"
    keys: ApiKeys | None = None
    tokens: TokenReviewAuth | None = None
    limiter: TokenBucket | None = None
    clock: Any = field(default=time.monotonic)

    async def check(self, headers: Mapping[str, str]) -> KeyId | AuthError:
        now = self.clock()
        who: KeyId | AuthError
        if self.mode == "apiKeys":
            assert self.keys is not None
            who = authenticate(headers, self.keys.current(now))
        elif self.mode == "serviceAccountToken":
            assert self.tokens is not None
            who = await self.tokens.authenticate(headers, now)
        else:
            return NO_KEY
        if isinstance(who, AuthError) or self.limiter is None:
            return who
        wait = self.limiter.take(who, now)
        if wait > 0:
            seconds = retry_after_seconds(wait)
            reason = f"rate limit exceeded for {who}; retry after {seconds}s"
            return AuthError(429, reason, retry_after=seconds, key_id=who)
        return who


@dataclass(frozen=True)
class AuthConfig:
    """What the command line asks for (see the serve and edge commands)."""

    mode: AuthMode = "none"
    api_keys_dir: Path | None = None
    audiences: tuple[str, ...] = ()
    allowed_users: tuple[str, ...] = ()
    rate_limit_rps: float | None = None
    rate_limit_burst: int | None = None


# The refusal reasons a server reports in its termination message (read by the operator).
API_KEYS_MISSING = "ApiKeysMissing"
AUTH_SETUP_FAILED = "AuthSetupFailed"


class AuthSetupError(ValueError):
    """The command line asks for auth the server cannot set up (no keys, not in a pod)."""

    def __init__(self, message: str, reason: str = AUTH_SETUP_FAILED):
        super().__init__(message)
        self.reason = reason


def build_gate(config: AuthConfig, reviewer: TokenReviewer | None = None) -> Gate:
    try:
        return _build_gate(config, reviewer)
    except (OSError, RuntimeError) as exc:
        reason = API_KEYS_MISSING if config.mode == "apiKeys" else AUTH_SETUP_FAILED
        raise AuthSetupError(f"auth mode {config.mode}: {exc}", reason) from exc


def _build_gate(config: AuthConfig, reviewer: TokenReviewer | None) -> Gate:
    limiter = None
    if config.rate_limit_rps:
        burst = config.rate_limit_burst or max(1, math.ceil(config.rate_limit_rps))
        limiter = TokenBucket(config.rate_limit_rps, burst)
    if config.mode == "apiKeys":
        if config.api_keys_dir is None:
            raise AuthSetupError("auth mode apiKeys needs --api-keys-dir")
        keys = ApiKeys(config.api_keys_dir)
        if not len(keys):  # a missing Secret mounts as an empty folder (optional volume)
            raise AuthSetupError(
                f"auth mode apiKeys: no API keys in {config.api_keys_dir} (the Secret is missing "
                "or empty); refusing to start a server every request would get 401 from",
                API_KEYS_MISSING,
            )
        return Gate("apiKeys", keys=keys, limiter=limiter)
    if config.mode == "serviceAccountToken":
        tokens = TokenReviewAuth(
            reviewer or KubeTokenReviewer.in_cluster(),
            config.audiences,
            frozenset(config.allowed_users),
        )
        return Gate("serviceAccountToken", tokens=tokens, limiter=limiter)
    return Gate("none", limiter=None)


# ---- ASGI ---------------------------------------------------------------------------------------
class AuthMiddleware:
    """Refuses unauthenticated, unauthorised and rate-limited HTTP requests before any body is
    read; open paths pass. The key id goes into the scope for the metrics middleware."""

    def __init__(self, app: ASGIApp, gate: Gate, on_limited: Any = None):
        self.app = app
        self.gate = gate
        self.on_limited = on_limited  # called with the key id of a 429

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.gate.mode == "none" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        who = await self.gate.check(credential_headers(scope["headers"]))
        if isinstance(who, str):
            scope[SCOPE_KEY] = who
            await self.app(scope, receive, send)
            return
        scope[SCOPE_KEY] = who.key_id
        if who.status == 429 and self.on_limited is not None:
            self.on_limited(who.key_id)
        payload = json.dumps(who.body, ensure_ascii=True).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(payload)),
        ]
        headers += [(k.lower().encode(), v.encode()) for k, v in who.headers.items()]
        await send({"type": "http.response.start", "status": who.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
