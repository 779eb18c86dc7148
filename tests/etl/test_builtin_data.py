"""The built-in sources: reproducible, learnable, and with the bad rows the rules should catch."""

from __future__ import annotations

import pyarrow.compute as pc

from neuraxis.workloads.etl import builtin_data


def test_sensors_are_reproducible_and_seed_dependent() -> None:
    a = builtin_data.sensors_table(2000, 7)
    assert a.equals(builtin_data.sensors_table(2000, 7))
    assert not a.equals(builtin_data.sensors_table(2000, 8))
    assert a.schema == builtin_data.SENSOR_SCHEMA
    assert a.num_rows == 2000


def test_sensors_hold_each_kind_of_bad_row() -> None:
    table = builtin_data.sensors_table(4000, 3)
    per_kind = 4000 // builtin_data.BAD_ROW_EVERY
    assert pc.sum(pc.is_null(table["machine_id"])).as_py() == per_kind
    hot = pc.equal(table["temperature"], builtin_data.BAD_TEMPERATURE)
    assert pc.sum(hot).as_py() >= per_kind
    no_at = pc.invert(pc.match_substring(table["operator_email"], "@"))
    assert pc.sum(no_at).as_py() >= per_kind
    assert pc.sum(pc.equal(table["status"], "unknown")).as_py() >= per_kind
    rows = table.select(["machine_id", "ts"]).to_pylist()
    keys = [(r["machine_id"], r["ts"]) for r in rows]
    assert len(keys) - len(set(keys)) >= per_kind  # exact duplicates of the previous row


def test_failure_label_is_balanced_and_follows_heat_stress() -> None:
    table = builtin_data.sensors_table(5000, 11)
    rate = pc.mean(table["failure"]).as_py()
    assert 0.10 <= rate <= 0.30
    heat = pc.multiply(table["temperature"], table["vibration"])
    failing = pc.mean(pc.filter(heat, pc.equal(table["failure"], 1))).as_py()
    healthy = pc.mean(pc.filter(heat, pc.equal(table["failure"], 0))).as_py()
    assert failing > healthy * 1.3


def test_emails_are_the_known_operators() -> None:
    table = builtin_data.sensors_table(1000, 1)
    known = set(builtin_data.operator_emails())
    values = {v for v in table["operator_email"].to_pylist() if v and "@" in v}
    assert values <= known


def test_breast_cancer_is_snake_case_with_target() -> None:
    table = builtin_data.breast_cancer_table()
    assert table.num_rows == 569
    assert "mean_radius" in table.column_names
    assert "worst_concave_points" in table.column_names
    assert table.column_names[-1] == "target"
    assert set(table["target"].to_pylist()) == {0, 1}
    assert builtin_data.builtin_uri("breast-cancer", 5, 1) == "builtin://breast-cancer"
