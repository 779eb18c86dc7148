"""The ETL workload: what a Dataset's Job runs (`neuraxis workload etl`) and `neuraxis run` runs
locally. Source -> transform -> quality gate -> privacy masking -> Delta table, with a result in
the lake and OpenLineage events.

Light on import: Spark is imported by the modules that use it, so `--help` stays fast."""
