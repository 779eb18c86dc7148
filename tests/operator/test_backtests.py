"""Backtests (spec.evaluation.schedule): the CronJob the operator builds, and the pure rules that
turn backtest results into `status.evaluationHistory` and the `Degraded` condition."""

from __future__ import annotations

from typing import Any

from neuraxis.crds import ModelVersion
from neuraxis.crds.common import DatasetRef
from neuraxis.crds.modelversion import HISTORY_KEPT, ModelVersionStatus
from neuraxis.operator.backtests import (
    BACKTEST_ERROR,
    BACKTEST_FAILED,
    BACKTEST_PASSED,
    backtest_entry,
    degraded_condition,
    record_backtest,
)
from neuraxis.operator.builders.modelversion import (
    BACKTEST_LABEL,
    build_backtest_children,
    build_evaluation_children,
)
from neuraxis.operator.children import owner_label
from neuraxis.operator.outcomes import Condition, Draft, status_from_draft
from neuraxis.operator.settings import OperatorSettings
from tests.operator.test_builders import UID, _example

SETTINGS = OperatorSettings()
DIGEST = "sha256:" + "ab" * 32


def _scheduled(schedule: str | None = "0 6 * * *") -> ModelVersion:
    mv: ModelVersion = _example("ModelVersion")
    assert mv.spec.evaluation is not None
    mv.spec.evaluation.dataset_ref = DatasetRef(name="sensor-features")
    mv.spec.evaluation.schedule = schedule
    return mv


def _result(passed: bool, version: int, accuracy: float, when: str) -> dict[str, Any]:
    """A backtest's compact result, as workloads/evaluate/backtest.py reports it."""
    message = "accuracy 0.95 >= min 0.8" if passed else f"accuracy {accuracy} < min 0.8"
    return {
        "outcome": "Succeeded",
        "reason": "GatesPassed" if passed else "GatesFailed",
        "message": message,
        "mode": "backtest",
        "passed": passed,
        "metrics": {"accuracy": accuracy, "roc_auc": 0.9},
        "dataset": {"name": "sensor-features", "version": version, "digest": DIGEST, "rows": 400},
        "completionTime": when,
    }


# ---- the CronJob ------------------------------------------------------------------------------
def test_backtest_cron_job_runs_the_evaluation_command_in_backtest_mode() -> None:
    mv = _scheduled()
    config, cron = build_backtest_children(mv, "s3://lake/models/ml/m/v1", SETTINGS)
    assert cron["kind"] == "CronJob" and config["kind"] == "ConfigMap"
    assert (
        cron["metadata"]["name"]
        == config["metadata"]["name"]
        == "anomaly-detector-v1-backtest-3f2a9c1b"
    )
    assert cron["metadata"]["ownerReferences"][0]["uid"] == UID
    spec = cron["spec"]
    assert spec["schedule"] == "0 6 * * *" and spec["suspend"] is False
    assert spec["concurrencyPolicy"] == "Forbid"
    job_labels = spec["jobTemplate"]["metadata"]["labels"]
    # How the operator finds the Jobs (owner label, indexed in its cache) and tells them apart.
    assert job_labels[owner_label("ModelVersion")] == mv.metadata.name
    assert job_labels[BACKTEST_LABEL] == "true"
    pod = spec["jobTemplate"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    evaluation = build_evaluation_children(mv, "s3://lake/models/ml/m/v1", SETTINGS)[-1]
    eval_container = evaluation["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == [*eval_container["command"], "--backtest"]
    assert container["image"] == eval_container["image"]
    # Least privilege: the workload account, no API token, non-root.
    assert pod["spec"]["serviceAccountName"] == SETTINGS.service_account
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert container["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["restartPolicy"] == "Never"
    run_id = next(e for e in container["env"] if e["name"] == "NEURAXIS_RUN_ID")
    assert "job-name" in run_id["valueFrom"]["fieldRef"]["fieldPath"]


def test_the_spec_in_the_config_map_reads_the_latest_dataset_version() -> None:
    import json

    config, _cron = build_backtest_children(_scheduled(), "s3://l/m", SETTINGS)
    body = json.loads(config["data"]["resource.yaml"])
    assert body["spec"]["evaluation"]["datasetRef"] == {"name": "sensor-features"}


def test_the_backtest_scores_only_the_pinned_artifact() -> None:
    _config, cron = build_backtest_children(_scheduled(), "s3://l/m", SETTINGS, DIGEST)
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    command = pod["spec"]["containers"][0]["command"]
    assert command[command.index("--artifact-digest") + 1] == DIGEST


def test_a_removed_schedule_suspends_the_cron_job() -> None:
    _config, cron = build_backtest_children(_scheduled(None), "s3://l/m", SETTINGS)
    assert cron["spec"]["suspend"] is True


# ---- history and Degraded ---------------------------------------------------------------------
def _degraded(history: list[dict[str, Any]]) -> Condition:
    found = degraded_condition(history)
    assert found is not None
    return found


def test_a_failing_backtest_sets_degraded_with_the_metric_and_a_pass_clears_it() -> None:
    history: list[dict[str, Any]] = []
    assert degraded_condition(history) is None
    history = record_backtest(
        history, backtest_entry("bt-1", _result(True, 3, 0.95, "2026-01-01T06:00:00Z"), "x")
    )
    assert _degraded(history)[:3] == ("Degraded", False, BACKTEST_PASSED)
    history = record_backtest(
        history, backtest_entry("bt-2", _result(False, 4, 0.61, "2026-01-02T06:00:00Z"), "x")
    )
    type_, value, reason, message = _degraded(history)
    assert (type_, value, reason) == ("Degraded", True, BACKTEST_FAILED)
    assert "accuracy 0.61 < min 0.8" in message and "sensor-features v4" in message
    assert [e["runId"] for e in history] == ["bt-2", "bt-1"]  # newest first
    assert history[0]["datasetVersion"] == 4 and history[0]["datasetDigest"] == DIGEST
    history = record_backtest(
        history, backtest_entry("bt-3", _result(True, 5, 0.93, "2026-01-03T06:00:00Z"), "x")
    )
    assert _degraded(history)[:3] == ("Degraded", False, BACKTEST_PASSED)


def test_a_backtest_that_could_not_run_is_recorded_and_degrades() -> None:
    entry = backtest_entry(
        "bt-9", {"outcome": "Failed", "reason": "BacktestFailed", "message": "no rows"}, "T"
    )
    assert entry["passed"] is False and entry["time"] == "T" and "no rows" in entry["message"]
    _type, value, reason, _message = _degraded([entry])
    assert value is True and reason == BACKTEST_ERROR
    missing = backtest_entry("bt-10", None, "T", "BackoffLimitExceeded")
    assert "BackoffLimitExceeded" in missing["message"]


def test_history_is_bounded_newest_first_and_records_a_run_once() -> None:
    history: list[dict[str, Any]] = []
    for day in range(1, HISTORY_KEPT + 6):
        when = f"2026-01-{day:02d}T06:00:00Z"
        entry = backtest_entry(f"bt-{day}", _result(True, day, 0.9, when), when)
        history = record_backtest(history, entry)
        history = record_backtest(history, entry)  # seen again on the next reconcile
    assert len(history) == HISTORY_KEPT
    assert history[0]["runId"] == f"bt-{HISTORY_KEPT + 5}"
    times = [e["time"] for e in history]
    assert times == sorted(times, reverse=True) and len(set(times)) == HISTORY_KEPT


def test_history_and_degraded_fit_the_status_schema_and_leave_the_phase_alone() -> None:
    history = [backtest_entry("bt-2", _result(False, 4, 0.61, "2026-01-02T06:00:00Z"), "x")]
    degraded = degraded_condition(history)
    assert degraded is not None
    draft = Draft(
        "Serving",
        "PredictorAvailable",
        "2 replica(s) available",
        ready=True,
        fields={"evaluationHistory": history},
        conditions=[degraded],
    )
    status = status_from_draft(draft, {}, 2, now="2026-01-02T06:01:00Z")
    assert status["phase"] == "Serving"
    parsed = ModelVersionStatus.model_validate(status)
    assert parsed.evaluation_history[0].passed is False
    conditions = {c.type: c for c in parsed.conditions}
    assert conditions["Degraded"].status == "True" and conditions["Ready"].status == "True"


def test_a_finished_backtest_job_as_the_watch_caches_keep_it_gives_its_entry() -> None:
    """The path a result takes in a cluster: the Job from the CronJob's template and its pod's
    termination message, trimmed as the operator's informers trim them, read by observe_run."""
    from neuraxis.operator.informer import keep_job, keep_pod
    from neuraxis.operator.observe import observe_run
    from neuraxis.workloads.result import compact_json

    _config, cron = build_backtest_children(_scheduled(), "s3://l/m", SETTINGS)
    name = "anomaly-detector-v1-backtest-3f2a9c1b-29410920"  # what the CronJob controller names
    labels = cron["spec"]["jobTemplate"]["metadata"]["labels"]
    job = keep_job(
        {
            "metadata": {"name": name, "namespace": "ml", "labels": labels},
            "spec": {"backoffLimit": 0},
            "status": {
                "conditions": [{"type": "Complete", "status": "True"}],
                "completionTime": "2026-01-02T06:01:00Z",
            },
        }
    )
    assert job["metadata"]["labels"][BACKTEST_LABEL] == "true"  # survives the trim
    assert job["metadata"]["labels"][owner_label("ModelVersion")] == "anomaly-detector-v1"
    message = compact_json(_result(False, 4, 0.61, "2026-01-02T06:00:58Z"))
    pod = keep_pod(
        {
            "metadata": {"name": f"{name}-x7k2p", "labels": {"batch.kubernetes.io/job-name": name}},
            "status": {
                "phase": "Succeeded",
                "containerStatuses": [{"state": {"terminated": {"message": message}}}],
            },
        }
    )
    run = observe_run(job, [pod])
    assert run.state == "Succeeded"
    entry = backtest_entry(name, run.result, "2026-01-02T06:01:00Z", run.message)
    assert entry["passed"] is False and entry["metrics"]["accuracy"] == 0.61
    assert (entry["datasetVersion"], entry["datasetDigest"]) == (4, DIGEST)
    assert _degraded([entry])[1] is True
