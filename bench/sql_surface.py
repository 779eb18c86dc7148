"""What the closed SQL surface costs a run: `check_sql` (parse + walk of the unresolved plan through
Py4J) on the examples' transform and on larger queries, in milliseconds, against Spark's parse
alone (the baseline: what `spark.sql` pays for parsing anyway).

    .venv/bin/python bench/sql_surface.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from neuraxis.workloads.etl.sql_surface import check_sql

EXAMPLE = """SELECT temperature, vibration, pressure, rpm,
       temperature * vibration AS heat_stress,
       CASE WHEN status = 'maintenance' THEN 1.0 ELSE 0.0 END AS in_maintenance,
       failure
FROM source"""
WINDOW = """WITH ranked AS (
  SELECT *, row_number() OVER (PARTITION BY machine_id ORDER BY ts DESC) AS rn,
         avg(temperature) OVER (PARTITION BY machine_id) AS mean_t
  FROM source WHERE machine_id IN (SELECT machine_id FROM source WHERE temperature > 90))
SELECT * FROM ranked WHERE rn <= 10"""


def chain(n: int) -> str:
    """n CTEs, each over the one before, with a join and a subquery each."""
    ctes = ["c0 AS (SELECT * FROM source)"]
    for i in range(1, n):
        ctes.append(
            f"c{i} AS (SELECT a.* FROM c{i - 1} a JOIN source b ON a.machine_id = b.machine_id "
            f"WHERE a.temperature > (SELECT avg(temperature) FROM c{i - 1}))"
        )
    return f"WITH {', '.join(ctes)} SELECT * FROM c{n - 1}"


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm the JVM's code paths
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[1]")
        .config("spark.ui.enabled", "false")
        .appName("bench-sql-surface")
        .getOrCreate()
    )
    parser = spark._jsparkSession.sessionState().sqlParser()
    print(f"{'query':<24}{'check_sql ms':>14}{'parse ms':>10}{'ratio':>8}")
    for name, sql, repeat in (
        ("example transform", EXAMPLE, 50),
        ("CTE + window + subq", WINDOW, 50),
        ("20 chained CTEs", chain(20), 10),
    ):
        checked = median_ms(lambda sql=sql: check_sql(spark, sql), repeat)  # type: ignore[misc]
        parsed = median_ms(lambda sql=sql: parser.parsePlan(sql), repeat)  # type: ignore[misc]
        print(f"{name:<24}{checked:>14.1f}{parsed:>10.1f}{checked / parsed:>8.1f}")
    spark.stop()


if __name__ == "__main__":
    main()
