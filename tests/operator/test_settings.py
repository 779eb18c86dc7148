"""Operator settings from the environment: defaults, parsing, and start-up errors that name the
variable and the reason."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from neuraxis.operator.settings import OperatorSettings, SettingsError

KWOK_TOLERATION = {
    "key": "kwok.x-k8s.io/node",
    "operator": "Equal",
    "value": "fake",
    "effect": "NoSchedule",
}


def test_defaults_add_no_scheduling_and_refuse_kwok_annotations() -> None:
    settings = OperatorSettings.from_env({})
    assert settings == OperatorSettings()
    assert settings.workload_tolerations == () and dict(settings.workload_node_selector) == {}
    assert settings.allow_kwok_annotations is False


def test_scheduling_and_kwok_settings_are_read() -> None:
    settings = OperatorSettings.from_env(
        {
            "NEURAXIS_WORKLOAD_TOLERATIONS": json.dumps(
                [KWOK_TOLERATION, {"operator": "Exists", "effect": "NoExecute"}]
            ),
            "NEURAXIS_WORKLOAD_NODE_SELECTOR": '{"type": "kwok"}',
            "NEURAXIS_ALLOW_KWOK_ANNOTATIONS": "true",
            "NEURAXIS_SPARK_SERVICE_ACCOUNT": "spark-x",
            "NEURAXIS_RESYNC_SECONDS": "3",
        }
    )
    assert settings.workload_tolerations == (
        KWOK_TOLERATION,
        {"operator": "Exists", "effect": "NoExecute"},
    )
    assert dict(settings.workload_node_selector) == {"type": "kwok"}
    assert settings.allow_kwok_annotations is True
    assert settings.spark_service_account == "spark-x" and settings.resync_seconds == 3.0


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("NEURAXIS_WORKLOAD_TOLERATIONS", "[{", "NEURAXIS_WORKLOAD_TOLERATIONS: not valid JSON"),
        ("NEURAXIS_WORKLOAD_TOLERATIONS", '{"key": "a"}', "must be a JSON list of tolerations"),
        ("NEURAXIS_WORKLOAD_TOLERATIONS", '["a"]', r"\[0\]: a toleration must be a JSON object"),
        ("NEURAXIS_WORKLOAD_TOLERATIONS", '[{"key": "a", "opertor": "Exists"}]', "opertor"),
        ("NEURAXIS_WORKLOAD_TOLERATIONS", '[{"key": "a", "operator": "In"}]', "Equal or Exists"),
        (
            "NEURAXIS_WORKLOAD_TOLERATIONS",
            '[{"operator": "Exists", "value": "x"}]',
            r"\[0\].value: must be empty with operator Exists",
        ),
        ("NEURAXIS_WORKLOAD_TOLERATIONS", '[{"value": "x"}]', r"\[0\].key: required"),
        ("NEURAXIS_WORKLOAD_TOLERATIONS", '[{"key": "a", "effect": "Never"}]', "effect"),
        (
            "NEURAXIS_WORKLOAD_TOLERATIONS",
            '[{"key": "a", "effect": "NoSchedule", "tolerationSeconds": 5}]',
            "only allowed with effect NoExecute",
        ),
        ("NEURAXIS_WORKLOAD_NODE_SELECTOR", '["type"]', "must be a JSON object of labels"),
        ("NEURAXIS_WORKLOAD_NODE_SELECTOR", '{"type": 1}', r"\[type\]: 1 is not a valid label"),
        ("NEURAXIS_WORKLOAD_NODE_SELECTOR", '{"bad key!": "x"}', "not a valid label key"),
        ("NEURAXIS_WORKLOAD_NODE_SELECTOR", '{"neuraxis.dev/pool": "x"}', "GPU pool label"),
        ("NEURAXIS_ALLOW_KWOK_ANNOTATIONS", "maybe", "not a boolean"),
        ("NEURAXIS_RESYNC_SECONDS", "soon", "not a number of seconds"),
        ("NEURAXIS_GATEWAY", "gw", "not namespace/name"),
        ("NEURAXIS_GATEWAY", "infra/Main_GW", "not namespace/name"),
        ("NEURAXIS_GATEWAY", "a/b/c/d", "not namespace/name"),
    ],
)
def test_bad_settings_name_the_variable_and_the_reason(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as raised:
        OperatorSettings.from_env({name: value})
    assert str(raised.value).startswith(name)


def test_the_gateway_is_read() -> None:
    assert OperatorSettings.from_env({}).gateway is None
    read = OperatorSettings.from_env({"NEURAXIS_GATEWAY": "infra/main"}).gateway
    assert read == ("infra", "main", "")
    section = OperatorSettings.from_env({"NEURAXIS_GATEWAY": "infra/main/https"}).gateway
    assert section == ("infra", "main", "https")


def test_the_operator_refuses_to_start_with_a_bad_setting() -> None:
    env = {"NEURAXIS_WORKLOAD_NODE_SELECTOR": "{oops", "PATH": ""}
    done = subprocess.run(
        [sys.executable, "-m", "neuraxis.cli", "operator", "--namespace", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "operator settings: NEURAXIS_WORKLOAD_NODE_SELECTOR: not valid JSON" in done.stderr


def test_bounds_are_read() -> None:
    settings = OperatorSettings.from_env(
        {
            "NEURAXIS_WORKERS": "3",
            "NEURAXIS_API_QPS": "12.5",
            "NEURAXIS_API_BURST": "25",
            "NEURAXIS_API_TIMEOUT_SECONDS": "4",
            "NEURAXIS_API_RETRIES": "0",
            "NEURAXIS_API_RETRY_CAP_SECONDS": "1.5",
            "NEURAXIS_DEGRADED_RETRY_SECONDS": "60",
        }
    )
    assert (settings.workers, settings.api_qps, settings.api_burst) == (3, 12.5, 25)
    assert (settings.api_timeout_seconds, settings.api_retries) == (4.0, 0)
    assert (settings.api_retry_cap_seconds, settings.degraded_retry_seconds) == (1.5, 60.0)


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("NEURAXIS_WORKERS", "0", "NEURAXIS_WORKERS: must be >= 1"),
        ("NEURAXIS_WORKERS", "two", "NEURAXIS_WORKERS: 'two' is not a whole number"),
        ("NEURAXIS_API_QPS", "fast", "NEURAXIS_API_QPS: 'fast' is not a number of requests/s"),
        ("NEURAXIS_API_BURST", "0", "NEURAXIS_API_BURST: must be >= 1"),
        ("NEURAXIS_API_TIMEOUT_SECONDS", "-1", "NEURAXIS_API_TIMEOUT_SECONDS: must be > 0"),
        ("NEURAXIS_API_RETRIES", "-1", "NEURAXIS_API_RETRIES: must be >= 0"),
    ],
)
def test_bad_bounds_name_the_variable(name: str, value: str, error: str) -> None:
    with pytest.raises(SettingsError, match=error):
        OperatorSettings.from_env({name: value})


def test_leader_election_settings() -> None:
    settings = OperatorSettings.from_env(
        {
            "NEURAXIS_LEADER_ELECTION": "true",
            "POD_NAME": "operator-abc",
            "POD_NAMESPACE": "neuraxis-system",
            "NEURAXIS_LEASE_SECONDS": "6",
            "NEURAXIS_LEASE_RENEW_SECONDS": "2",
        }
    )
    assert settings.leader_election and settings.lease_identity() == "operator-abc"
    assert (settings.lease_namespace, settings.lease_name) == (
        "neuraxis-system",
        "neuraxis-operator",
    )
    assert (settings.lease_seconds, settings.lease_renew_seconds) == (6.0, 2.0)
    assert OperatorSettings().lease_identity()  # host and process id without POD_NAME
    with pytest.raises(SettingsError, match="NEURAXIS_LEASE_RENEW_SECONDS: 15s must be shorter"):
        OperatorSettings.from_env({"NEURAXIS_LEASE_RENEW_SECONDS": "15"})
