"""From an ETL result to the Dataset status through the real termination message: the schema,
the expectation results and the lineage arrive whole when they fit, as a deterministic prefix
with the full counts when they do not, and the message never exceeds 4096 bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuraxis.crds.common import DatasetRef
from neuraxis.crds.dataset import ColumnSchema, DatasetStatus, QualityResult
from neuraxis.local.state import LocalStore
from neuraxis.operator.inputs import CR_VERSION, resolve_dataset_ref
from neuraxis.operator.outcomes import dataset_outcome, status_from_draft, training_outcome
from neuraxis.workloads.etl.report import EtlResult
from neuraxis.workloads.result import (
    TERMINATION_MESSAGE_LIMIT,
    compact_json,
    read_compact_result,
)

TABLE = "s3://lake/tables/factory/sensor-features"
DIGEST = "sha256:" + "c" * 64
UPSTREAM_DIGEST = "sha256:" + "a" * 64
# A long result URI: the compact result leaves room for it.
RESULT_URI = "s3://a-rather-long-lake-bucket-name/" + "deep/" * 60 + "result.json"


def _result(columns: int, expectations: int) -> EtlResult:
    schema = tuple(
        ColumnSchema(
            name=f"measurement_column_{i:04d}",
            type="double",
            pii=["email", "person"] if i == 1 else [],
        )
        for i in range(columns)
    )
    quality = tuple(
        QualityResult(
            rule="range",
            column=f"measurement_column_{i:04d}",
            passed=i != 2,
            failed_rows=17 if i == 2 else 0,
            observed="min -3.2, max 104.5",
        )
        for i in range(expectations)
    )
    return EtlResult(
        outcome="Succeeded",
        reason="RowsQuarantined",
        message="48 rows quarantined",
        dataset="sensor-features",
        namespace="factory",
        run_id="features-1",
        table_name="sensor_features",
        table_uri=TABLE,
        started_at="2026-01-01T00:00:00Z",
        finished_at="2026-01-01T00:01:00Z",
        version=3,
        rows=4940,
        quarantined_rows=48,
        quality_passed=True,
        quality=quality,
        schema=schema,
        digest=DIGEST,
        input_uri="s3://lake/tables/factory/sensor-readings",
        input_version=5,
        input_dataset="sensor-readings",
        input_digest=UPSTREAM_DIGEST,
        sources=("builtin://sensors?rows=5000&seed=7",),
    )


def _status(result: EtlResult) -> tuple[str, dict[str, object]]:
    """The message as the pod writes it, and the status the operator makes of it."""
    message = compact_json({**result.to_compact(), "resultUri": RESULT_URI})
    compact = read_compact_result(message)
    assert compact is not None
    draft = dataset_outcome(compact, TABLE)
    assert draft.phase == "Ready"
    status = status_from_draft(draft, {}, 1, "2026-01-01T00:01:00Z")
    DatasetStatus.model_validate(status)  # what the API server would be asked to store
    return message, status


def test_a_result_that_fits_arrives_whole() -> None:
    message, status = _status(_result(columns=12, expectations=6))
    assert len(message.encode()) <= TERMINATION_MESSAGE_LIMIT
    assert "truncated" not in status
    schema = status["schema"]
    assert isinstance(schema, list) and len(schema) == 12
    assert schema[1] == {
        "name": "measurement_column_0001",
        "type": "double",
        "pii": ["email", "person"],
    }
    quality = status["quality"]
    assert isinstance(quality, list) and len(quality) == 6
    assert quality[2] == {
        "rule": "range",
        "column": "measurement_column_0002",
        "passed": False,
        "failedRows": 17,
        "observed": "min -3.2, max 104.5",
    }
    assert status["lineage"] == {
        "dataset": "sensor-features",
        "datasetVersion": 3,
        "datasetDigest": DIGEST,
        "sources": ["builtin://sensors?rows=5000&seed=7"],
        "inputs": [
            {
                "uri": "s3://lake/tables/factory/sensor-readings",
                "dataset": "sensor-readings",
                "version": 5,
                "digest": UPSTREAM_DIGEST,
            }
        ],
    }
    assert status["table"] == {"uri": TABLE, "digest": DIGEST}


def test_a_result_too_big_keeps_a_prefix_and_says_so() -> None:
    result = _result(columns=300, expectations=40)
    message, status = _status(result)
    assert len(message.encode()) <= TERMINATION_MESSAGE_LIMIT
    assert status["truncated"] == {
        "columns": 300,
        "expectations": 40,
        "inputs": 1,
        "resultUri": RESULT_URI,
    }
    # Lineage first (whole), then the expectations, then the schema: each a prefix, in order.
    lineage = status["lineage"]
    assert isinstance(lineage, dict) and lineage["inputs"][0]["digest"] == UPSTREAM_DIGEST
    quality, schema = status["quality"], status["schema"]
    assert isinstance(quality, list) and isinstance(schema, list)
    assert 0 < len(quality) < 40
    assert quality == [q.to_wire() for q in result.quality[: len(quality)]]
    assert schema == [c.to_wire() for c in result.schema[: len(schema)]]
    assert len(schema) < 300
    # Deterministic: the same result gives the same message.
    assert message == _status(result)[0]


def test_a_failed_run_carries_no_details() -> None:
    failed = EtlResult(
        outcome="Failed",
        reason="QualityGateFailed",
        message="notNull machine_id: 12 rows",
        dataset="d",
        namespace="n",
        run_id="r",
        table_name="d",
        table_uri=TABLE,
        started_at="2026-01-01T00:00:00Z",
        finished_at="2026-01-01T00:00:00Z",
    )
    assert not {"schema", "lineage", "truncated"} & set(failed.to_compact())
    assert dataset_outcome(failed.to_compact(), TABLE).phase == "Failed"


def test_a_status_the_api_server_would_refuse_is_left_out() -> None:
    compact = {**_result(2, 1).to_compact(), "schema": [{"name": "x"}]}  # no type
    draft = dataset_outcome(compact, TABLE)
    assert draft.phase == "Ready" and "schema" not in draft.fields
    assert draft.fields["table"]["digest"] == DIGEST


def _store_with_dataset(tmp_path: Path, version: int) -> LocalStore:
    store = LocalStore(tmp_path / "state")
    body = {
        "apiVersion": CR_VERSION,
        "kind": "Dataset",
        "metadata": {"name": "features", "namespace": "ml"},
        "spec": {"source": {"builtin": {"name": "sensors"}}},
        "status": {"phase": "Ready", "version": version, "table": {"uri": TABLE, "digest": DIGEST}},
    }
    store.save(body)
    return store


@pytest.mark.parametrize(("pinned", "digest"), [(None, DIGEST), (4, DIGEST), (2, None)])
def test_the_status_digest_is_used_only_for_the_version_it_describes(
    tmp_path: Path, pinned: int | None, digest: str | None
) -> None:
    store = _store_with_dataset(tmp_path, version=4)
    resolved = resolve_dataset_ref(DatasetRef(name="features", version=pinned), "ml", store)
    assert resolved.digest == digest


def test_training_lineage_takes_the_digest_the_run_read() -> None:
    inputs = ("InputsReady", True, "DatasetReady", "Dataset features version 2")
    result = {"outcome": "Succeeded", "reason": "Trained", "datasetDigest": UPSTREAM_DIGEST}
    draft = training_outcome(result, {"dataset": "features", "datasetVersion": 2}, inputs)
    assert draft.fields["lineage"] == {
        "dataset": "features",
        "datasetVersion": 2,
        "datasetDigest": UPSTREAM_DIGEST,
    }
