"""The validation rules that exist twice (CEL in the CRD, Python in the models) are neither too
loose nor too strict: cron fields in range as the Kubernetes CronJob parser reads them, Secret
keys as the API server accepts them, and the valid edge-case corpus (tests/good_inputs/, replayed
against a real API server in tests/cluster/test_crds_admission.py) is admitted."""

from __future__ import annotations

import pytest
from croniter import croniter

from neuraxis.crds.common import CRON_MACROS, cron_ranges_ordered, is_cron
from neuraxis.resources import ResourceError, parse_resource
from tests.conftest import GoodInput, load_good_inputs

GOOD = load_good_inputs()

ACCEPTED = [
    "*/15 9-17 * * 1-5",
    "0 0 * * *",
    "0,30 */2 1-31/10 1,6,12 0-6",
    "5/15 ? * * ?",
    "0 6 1 JAN-jun/2,Dec MON-fri",
    "59 23 31 12 sat",
    "05 09 01 01 00",
    "0  0  *  *  *",
    *(f"@{m}" for m in CRON_MACROS),
]

# Each is refused by the CronJob parser (robfig/cron, Kubernetes' own): admitting it would
# only move the error to the CronJob the operator builds.
REJECTED = {
    "61 * * * *": "minute 61",
    "0 24 * * *": "hour 24",
    "0 0 0 * *": "day of month 0",
    "0 0 32 * *": "day of month 32",
    "0 0 1 0 *": "month 0",
    "0 0 1 13 *": "month 13",
    "0 0 * * 7": "day of week 7 (robfig reads 0-6)",
    "*/0 * * * *": "step 0",
    "0 0 * * * *": "six fields (seconds)",
    "0 0 * *": "four fields",
    "every day": "words",
    "@reboot": "a macro CronJobs do not have",
    "@every 5m": "an interval, not a calendar",
    "TZ=UTC 0 0 * * *": "a time zone (CronJob has spec.timeZone for that)",
    "0 0 L * *": "Quartz L",
    "0 0 * * 1#2": "Quartz #",
    " 0 0 * * *": "leading space",
    "0 0 * * *\n": "trailing newline",
    "0 0 * foo *": "not a month name",
    "0 17-9 * * *": "a range that ends before it starts",
}

FIELDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]


def _accepted(schedule: str) -> bool:
    return is_cron(schedule) and cron_ranges_ordered(schedule)


@pytest.mark.parametrize("schedule", ACCEPTED)
def test_valid_schedules_are_accepted_and_parse(schedule: str) -> None:
    assert _accepted(schedule)
    # A second, independent parser agrees they are cron (croniter reads `?` only in some
    # fields, so that case is left to the first assertion).
    if "?" not in schedule:
        assert croniter.is_valid(schedule.replace("  ", " ")), schedule


@pytest.mark.parametrize("schedule", REJECTED, ids=list(REJECTED.values()))
def test_invalid_schedules_are_refused(schedule: str) -> None:
    assert not _accepted(schedule), REJECTED[schedule]


@pytest.mark.parametrize("position", range(5))
def test_every_value_in_range_and_none_outside(position: int) -> None:
    low, high = FIELDS[position]

    def schedule(value: int | str) -> str:
        fields = ["*"] * 5
        fields[position] = str(value)
        return " ".join(fields)

    for value in range(low, high + 1):
        assert is_cron(schedule(value)), schedule(value)
        assert _accepted(schedule(f"{low}-{value}/{value + 1}"))
    for value in [v for v in (low - 1, high + 1, 100, 999) if v >= 0]:
        assert not is_cron(schedule(value)), schedule(value)
        assert not is_cron(schedule(f"{low}-{value}")), schedule(f"{low}-{value}")


@pytest.mark.parametrize("key", [".", ".."])
def test_secret_keys_dot_and_dot_dot_are_refused(key: str) -> None:
    with pytest.raises(ResourceError, match=r"saltSecretRef.key: Invalid value: key must not be"):
        parse_resource(_dataset_with_salt_key(key))


@pytest.mark.parametrize("key", ["a", ".a", "..a", "a..b", "api.key-1", "K_2", "x" * 253])
def test_secret_keys_kubernetes_accepts_are_accepted(key: str) -> None:
    parse_resource(_dataset_with_salt_key(key))


def test_secret_key_longer_than_253_is_refused() -> None:
    with pytest.raises(ResourceError, match="may not be more than 253"):
        parse_resource(_dataset_with_salt_key("x" * 254))


def _dataset_with_salt_key(key: str) -> dict[str, object]:
    return {
        "apiVersion": "neuraxis.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "salted"},
        "spec": {
            "source": {"builtin": {"name": "sensors"}},
            "privacy": {
                "columns": [{"column": "email", "method": "hash"}],
                "saltSecretRef": {"name": "salt", "key": key},
            },
        },
    }


def test_edge_corpus_covers_every_new_rule() -> None:
    kinds = {c.object["kind"] for c in GOOD}
    assert kinds == {"Dataset", "TrainingJob", "ModelVersion", "EdgeDeployment"}


@pytest.mark.parametrize("case", GOOD, ids=[c.name for c in GOOD])
def test_valid_edge_cases_are_accepted(case: GoodInput) -> None:
    parse_resource(case.object)
