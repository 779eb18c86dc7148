"""ETL benchmark: a generated sensor CSV through the full pipeline (casts, dedupe, quality gate
with quarantine, salted-hash masking, Delta commit, content digest), in rows per second.

In the same run, for comparison:
  * polars, the same transforms on one machine (what a single-machine user would pick), writing
    the same Delta tables through delta-rs;
  * pyarrow, a raw CSV read + Parquet write with no transforms at all (the limit).
Spark's start-up is reported separately (it is paid once per pod).

    .venv/bin/python bench/etl.py            # 10 million rows
    .venv/bin/python bench/etl.py --quick    # 1 million rows
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from neuraxis.crds.dataset import Dataset
from neuraxis.lake import Lake
from neuraxis.workloads.etl.builtin_data import SENSOR_MACHINES, sensors_table

CHUNK_ROWS = 1_000_000
SALT = "bench-salt"
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+$"
STATUSES = ["running", "idle", "maintenance"]


def write_sensor_csv(path: Path, rows: int) -> None:
    """`rows` sensor readings as CSV, generated in chunks (each chunk continues the clock)."""
    writer: pacsv.CSVWriter | None = None
    done = 0
    chunk = 0
    while done < rows:
        n = min(CHUNK_ROWS, rows - done)
        table = sensors_table(n, seed=chunk)
        shift = pa.scalar((done // SENSOR_MACHINES) * 60_000_000, pa.duration("us"))
        table = table.set_column(1, "ts", pc.add(table["ts"], shift))
        if writer is None:
            writer = pacsv.CSVWriter(str(path), table.schema)
        writer.write_table(table)
        done += n
        chunk += 1
    assert writer is not None
    writer.close()


def spec(csv: Path) -> Dataset:
    return Dataset.model_validate(
        {
            "apiVersion": "neuraxis.dev/v1alpha1",
            "kind": "Dataset",
            "metadata": {"name": "bench-readings"},
            "spec": {
                "source": {"uri": f"file://{csv}", "format": "csv", "options": {"header": "true"}},
                "transform": {
                    "casts": {
                        "ts": "timestamp",
                        "temperature": "double",
                        "vibration": "double",
                        "pressure": "double",
                        "rpm": "double",
                        "failure": "int",
                    },
                    "dedupe": {"keys": ["machine_id", "ts"]},
                },
                "quality": {
                    "onFailure": "Quarantine",
                    "expectations": [
                        {"rule": "notNull", "column": "machine_id"},
                        {"rule": "range", "column": "temperature", "min": -40, "max": 150},
                        {"rule": "regex", "column": "operator_email", "pattern": EMAIL_PATTERN},
                        {"rule": "allowedValues", "column": "status", "values": STATUSES},
                    ],
                },
                "privacy": {
                    "saltSecretRef": {"name": "bench", "key": "salt"},
                    "columns": [{"column": "operator_email", "method": "hash"}],
                },
                "engine": {"driverMemory": "4g"},
            },
        }
    )


def run_spark(csv: Path, lake_dir: Path) -> tuple[float, float, int]:
    """(start-up seconds, pipeline seconds, rows written)."""
    from neuraxis.crds.dataset import Engine
    from neuraxis.dev.jars import ensure_jars
    from neuraxis.workloads.etl.run import run_etl
    from neuraxis.workloads.etl.spark_session import local_conf, local_cores, start_spark

    lake = Lake(str(lake_dir))
    jars = ensure_jars(["delta"])
    t = time.perf_counter()
    conf = local_conf(
        Engine(driver_memory="4g"), lake, jars, app_name="bench-etl", cores=local_cores()
    )
    spark = start_spark(conf)
    startup = time.perf_counter() - t
    t = time.perf_counter()
    env = {"NEURAXIS_SECRET_BENCH_SALT": SALT}
    result = run_etl(spec(csv), lake, run_id="bench", namespace="bench", spark=spark, env=env)
    elapsed = time.perf_counter() - t
    spark.stop()
    print("spark stages (s):", {k: round(v, 1) for k, v in sorted(result.timings.items())})
    if not result.succeeded:
        raise SystemExit(f"spark pipeline failed: {result.reason}: {result.message}")
    return startup, elapsed, result.rows or 0


def run_polars(csv: Path, out: Path) -> tuple[float, int]:
    """The same pipeline in polars + delta-rs: (seconds, rows written)."""
    import polars as pl

    t = time.perf_counter()
    df = pl.read_csv(csv, try_parse_dates=False).with_columns(
        pl.col("ts").str.to_datetime(time_zone="UTC"),
        pl.col("temperature", "vibration", "pressure", "rpm").cast(pl.Float64, strict=False),
        pl.col("failure").cast(pl.Int32, strict=False),
    )
    df = df.unique(subset=["machine_id", "ts"], keep="first", maintain_order=False)
    failed = pl.concat_list(
        pl.when(pl.col("machine_id").is_null()).then(pl.lit("notNull:machine_id")),
        pl.when((pl.col("temperature") < -40) | (pl.col("temperature") > 150)).then(
            pl.lit("range:temperature")
        ),
        pl.when(~pl.col("operator_email").str.contains(EMAIL_PATTERN)).then(
            pl.lit("regex:operator_email")
        ),
        pl.when(~pl.col("status").is_in(STATUSES)).then(pl.lit("allowedValues:status")),
    ).list.drop_nulls()
    salt = SALT.encode()

    def sha256(values: pl.Series) -> pl.Series:
        return pl.Series(
            [None if v is None else hashlib.sha256(salt + v.encode()).hexdigest() for v in values]
        )

    df = df.with_columns(
        failed.alias("_failed_rules"),
        pl.col("operator_email").map_batches(sha256, return_dtype=pl.String),
    )
    good = df.filter(pl.col("_failed_rules").list.len() == 0).drop("_failed_rules")
    bad = df.filter(pl.col("_failed_rules").list.len() > 0)
    bad.write_delta(str(out / "quarantine"), mode="append")
    good.write_delta(str(out / "table"), mode="overwrite")
    return time.perf_counter() - t, good.height


def run_pyarrow(csv: Path, out: Path) -> float:
    """Raw read + write, no transforms: the floor any pipeline pays."""
    t = time.perf_counter()
    table = pacsv.read_csv(csv)
    pq.write_table(table, out / "raw.parquet")
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--quick", action="store_true", help="1 million rows")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    rows = 1_000_000 if args.quick else args.rows
    work = Path(tempfile.mkdtemp(prefix="neuraxis-bench-etl-", dir=args.workdir))
    try:
        csv = work / "sensors.csv"
        t = time.perf_counter()
        write_sensor_csv(csv, rows)
        size_mb = csv.stat().st_size / 1e6
        made = time.perf_counter() - t
        print(f"input: {rows:,} rows, {size_mb:,.0f} MB CSV (generated in {made:.1f}s)")

        arrow_s = run_pyarrow(csv, work)
        polars_s, polars_rows = run_polars(csv, work / "polars")
        startup_s, spark_s, spark_rows = run_spark(csv, work / "lake")
        if spark_rows != polars_rows:
            print(f"note: rows written differ: spark {spark_rows:,} vs polars {polars_rows:,}")

        def rate(seconds: float) -> str:
            return f"{rows / seconds:>12,.0f} rows/s  ({seconds:7.1f}s)"

        print(f"spark start-up (once per pod):      {startup_s:7.1f}s")
        print(f"neuraxis ETL on Spark (local):      {rate(spark_s)}  rows written {spark_rows:,}")
        print(f"polars, same transforms [baseline]: {rate(polars_s)}  rows written {polars_rows:,}")
        print(f"pyarrow raw read+write [limit]:     {rate(arrow_s)}")
        print(f"ratio spark / polars:  {polars_s / spark_s:.2f}x the polars throughput")
        print(f"ratio spark / pyarrow: {arrow_s / spark_s:.2f}x the raw read+write limit")
        total = startup_s + spark_s
        print(
            f"ratio with start-up:   {polars_s / total:.2f}x polars, {arrow_s / total:.2f}x limit"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
