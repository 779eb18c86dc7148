"""Built-in sources that need no network, generated column-wise in numpy/pyarrow (Spark takes
them over Arrow in one go, not row by row).

`sensors`: seeded synthetic machine readings. One reading per machine per minute from a fixed
start time (so the same rows and seed give the same data on any day), with an operator e-mail
(PII) and a `failure` label that depends on heat stress (temperature x vibration), so a model can
learn it. A small share of rows is deliberately bad, one kind each, for the quality rules: a null
machine_id, an out-of-range temperature, a malformed e-mail, an unknown status, and exact
duplicates of the previous row.

`breast-cancer`: scikit-learn's bundled Wisconsin diagnostic data (no download), snake_case
columns, label `target` (0 malignant, 1 benign)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

SENSOR_MACHINES = 40
SENSOR_START = datetime(2026, 1, 1, tzinfo=UTC)
SENSOR_STATUSES = ("running", "idle", "maintenance")
# Heat stress above this fails often; tuned so that 10-30% of readings are failures.
HEAT_STRESS_THRESHOLD = 160.0
# One bad row of each kind per this many rows (at least one each, when there is room).
BAD_ROW_EVERY = 400
BAD_TEMPERATURE = 999.0
_FIRST = ("ana", "ben", "chloe", "dev", "elif", "femi", "gita", "hugo", "ines", "jon", "kai")
_LAST = ("alvarez", "brown", "chen", "dubois", "ekwueme", "fischer", "garcia", "haddad")
SENSOR_OPERATORS = 24

SENSOR_SCHEMA = pa.schema(
    [
        ("machine_id", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("temperature", pa.float64()),
        ("vibration", pa.float64()),
        ("pressure", pa.float64()),
        ("rpm", pa.float64()),
        ("status", pa.string()),
        ("operator_email", pa.string()),
        ("failure", pa.int32()),
    ]
)


@dataclass(frozen=True)
class BadRows:
    """Positions of the deliberately bad rows, by kind."""

    null_machine: np.ndarray
    bad_temperature: np.ndarray
    bad_email: np.ndarray
    bad_status: np.ndarray
    duplicate: np.ndarray


def operator_emails() -> list[str]:
    """The operators' e-mail addresses (the raw PII values of the sensors source)."""
    out = []
    for i in range(SENSOR_OPERATORS):
        first, last = _FIRST[i % len(_FIRST)], _LAST[(i * 5) % len(_LAST)]
        out.append(f"{first}.{last}{i}@plant{i % 3 + 1}.example.com")
    return out


def _bad_rows(rng: np.random.Generator, rows: int) -> BadRows:
    per_kind = max(1, rows // BAD_ROW_EVERY)
    if rows < 10:  # too small to spoil: every row stays good
        empty = np.array([], dtype=np.int64)
        return BadRows(empty, empty, empty, empty, empty)
    # Duplicates copy the previous row, so they start at position 1.
    picked = rng.choice(np.arange(1, rows), size=min(5 * per_kind, rows - 1), replace=False)
    kinds = np.array_split(picked, 5)
    return BadRows(*[np.sort(k) for k in kinds])


def sensors_table(rows: int, seed: int) -> pa.Table:
    """`rows` sensor readings generated from `seed` (same arguments, same table)."""
    rng = np.random.default_rng(seed)
    idx = np.arange(rows, dtype=np.int64)
    machine = idx % SENSOR_MACHINES
    wear = rng.uniform(0.0, 1.0, SENSOR_MACHINES)[machine]
    status_idx = rng.choice(3, size=rows, p=[0.8, 0.15, 0.05])
    running = status_idx == 0

    temperature = 60.0 + 25.0 * wear + rng.normal(0.0, 8.0, rows) - 10.0 * (~running)
    vibration = 0.4 + 1.6 * wear + rng.gamma(2.0, 0.25, rows)
    pressure = rng.normal(101.3, 4.0, rows)
    rpm = np.where(running, rng.normal(1500.0, 150.0, rows), np.abs(rng.normal(250.0, 60.0, rows)))
    heat = temperature * vibration
    noise = rng.normal(0.0, 12.0, rows)
    failure = ((heat + noise) > HEAT_STRESS_THRESHOLD).astype(np.int32)

    machine_id = np.array([f"M-{m:03d}" for m in range(SENSOR_MACHINES)], dtype=object)[machine]
    start_us = int(SENSOR_START.timestamp() * 1_000_000)
    ts = start_us + (idx // SENSOR_MACHINES) * 60_000_000 + machine * 1_000_000
    emails = np.array(operator_emails(), dtype=object)
    email = emails[rng.integers(0, SENSOR_OPERATORS, rows)]
    status = np.array(SENSOR_STATUSES, dtype=object)[status_idx]

    bad = _bad_rows(rng, rows)
    machine_id = machine_id.copy()
    machine_id[bad.null_machine] = None
    temperature[bad.bad_temperature] = BAD_TEMPERATURE
    email = email.copy()
    email[bad.bad_email] = [str(e).replace("@", " at ") for e in email[bad.bad_email]]
    status = status.copy()
    status[bad.bad_status] = "unknown"
    columns: dict[str, np.ndarray] = {
        "machine_id": machine_id,
        "ts": ts,
        "temperature": temperature,
        "vibration": vibration,
        "pressure": pressure,
        "rpm": rpm,
        "status": status,
        "operator_email": email,
        "failure": failure,
    }
    for values in columns.values():
        values[bad.duplicate] = values[bad.duplicate - 1]
    arrays = [
        pa.array(columns[f.name], type=f.type)
        if f.name != "ts"
        else pa.array(columns["ts"], type=pa.int64()).cast(f.type)
        for f in SENSOR_SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=SENSOR_SCHEMA)


def snake_case(name: str) -> str:
    return "_".join(name.strip().lower().replace("-", " ").split())


def breast_cancer_table() -> pa.Table:
    """scikit-learn's bundled Wisconsin diagnostic breast cancer data (569 rows, 30 features)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    columns = {snake_case(n): pa.array(data.data[:, i]) for i, n in enumerate(data.feature_names)}
    columns["target"] = pa.array(data.target.astype(np.int32))
    return pa.table(columns)


def builtin_table(name: str, rows: int, seed: int) -> pa.Table:
    """The table of a built-in source (breast-cancer ignores rows and seed)."""
    makers: dict[str, Callable[[], pa.Table]] = {
        "sensors": lambda: sensors_table(rows, seed),
        "breast-cancer": breast_cancer_table,
    }
    try:
        return makers[name]()
    except KeyError:
        raise ValueError(f"unknown builtin source {name!r}; known: {sorted(makers)}") from None


def builtin_uri(name: str, rows: int, seed: int) -> str:
    """A stable name for a built-in source in lineage (`builtin://sensors?rows=5000&seed=7`)."""
    return (
        f"builtin://{name}"
        if name == "breast-cancer"
        else f"builtin://{name}?rows={rows}&seed={seed}"
    )
