"""`neuraxis run`'s serving smoke test with spec.serving.auth: API keys from the environment
variables of the Secret (as `make demo` sets them), a request without a key refused, and a
clear ApiKeysMissing when no key is set."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuraxis.crds.common import ServingAuth
from neuraxis.lake import Lake
from neuraxis.local.smoke import api_keys_from_env, smoke_test
from tests.serve.conftest import TinyClassifier, write_model

pytestmark = pytest.mark.engine

AUTH = ServingAuth.model_validate(
    {
        "mode": "apiKeys",
        "secretRef": {"name": "tiny-api-keys"},
        "rateLimit": {"requestsPerSecond": 5},
    }
)


def test_keys_come_from_the_secrets_variables() -> None:
    env = {
        "NEURAXIS_SECRET_TINY_API_KEYS_CI": "k1",
        "NEURAXIS_SECRET_TINY_API_KEYS_DASH_BOARD": "k2",
        "NEURAXIS_SECRET_TINY_API_KEYS_EMPTY": "",
        "NEURAXIS_SECRET_TINY_API_KEYS_": "no id",
        "NEURAXIS_SECRET_OTHER_CI": "k3",
    }
    assert api_keys_from_env("tiny-api.keys", env) == {"ci": "k1", "dash_board": "k2"}


def test_smoke_test_uses_the_api_key_and_checks_a_keyless_request_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    ref = write_model(lake, "models/default/tiny/v1", TinyClassifier(seed=1), version="v1")
    uri = f"file://{tmp_path}/lake/models/default/tiny/v1"

    monkeypatch.delenv("NEURAXIS_SECRET_TINY_API_KEYS_CI", raising=False)
    missing = smoke_test(uri, "tiny", lake, tmp_path / "w1", digest=ref.digest, auth=AUTH)
    assert (missing.passed, missing.reason) == (False, "ApiKeysMissing")
    assert "NEURAXIS_SECRET_TINY_API_KEYS_<ID>" in missing.message

    monkeypatch.setenv("NEURAXIS_SECRET_TINY_API_KEYS_CI", "smoke-key-123")
    result = smoke_test(uri, "tiny", lake, tmp_path / "w2", digest=ref.digest, auth=AUTH)
    assert result.passed, result.message
    assert "API key ci accepted, none refused 401" in result.message
    assert (tmp_path / "w2" / "api-keys" / "ci").stat().st_mode & 0o077 == 0
