"""One ETL run: source -> transform -> quality gate -> masking -> Delta commit -> digest, with
OpenLineage START/COMPLETE/FAIL events. Every failure ends as a failed EtlResult with a reason;
nothing is half-written (a failed gate writes nothing, and a Delta commit is all or nothing).

A retried run (same run id, e.g. a Job pod restarted after its commit) recomputes its result but
does not commit a second version: the table history records which run wrote each version."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from neuraxis.crds.dataset import ColumnSchema, Dataset, DataSource
from neuraxis.lake import Lake
from neuraxis.lineage import LineageDataset, emit_run_event, lake_dataset
from neuraxis.workloads.etl import delta_io, privacy, quality, sources, sql_surface, transform
from neuraxis.workloads.etl.builtin_data import builtin_uri
from neuraxis.workloads.etl.errors import SPARK_UNAVAILABLE, EtlError, classify
from neuraxis.workloads.etl.report import EtlResult

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

RUN_ID_COLUMN = "_run_id"


class QualityGateError(EtlError):
    """The quality gate refused the data; carries the per-rule results for the report."""

    def __init__(self, verdict: quality.Verdict):
        super().__init__(verdict.reason, verdict.message)
        self.verdict = verdict


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def describe_source(
    source: DataSource, lake: Lake, namespace: str, upstream: Mapping[str, str]
) -> LineageDataset:
    """The source as a lineage dataset, before anything is read (for the START event)."""
    if source.builtin is not None:
        b = source.builtin
        uri = builtin_uri(b.name, b.rows, b.seed)
        return LineageDataset(
            namespace=sources.BUILTIN_NAMESPACE, name=uri.removeprefix("builtin://")
        )
    if source.from_ is not None and source.from_.edge_deployment_ref is not None:
        rel = Lake.edge_logs_table_path(namespace, source.from_.edge_deployment_ref.name)
        return lake_dataset(lake, rel)
    if source.from_ is not None and source.from_.dataset_ref is not None:
        ref = source.from_.dataset_ref
        if ref.name in upstream:
            return sources.uri_dataset(upstream[ref.name])
        return lake_dataset(lake, lake.table_path(ref.namespace or namespace, ref.name))
    return sources.uri_dataset(source.uri or "")


def jar_sets_for(dataset: Dataset, lake: Lake, upstream: Mapping[str, str]) -> list[str]:
    """Delta always; hadoop-aws when any location is on S3."""
    inputs = dataset.spec.transform.inputs if dataset.spec.transform else []
    locations = [lake.root, dataset.spec.source.uri or "", *upstream.values()]
    locations += [i.uri for i in inputs]
    on_s3 = any(loc.startswith(("s3://", "s3a://")) for loc in locations)
    return ["delta", "s3"] if on_s3 else ["delta"]


def start_spark_for(
    dataset: Dataset, lake: Lake, upstream: Mapping[str, str], env: Mapping[str, str]
) -> SparkSession:
    from neuraxis.dev.jars import ensure_jars
    from neuraxis.workloads.etl import spark_session

    jars = ensure_jars(jar_sets_for(dataset, lake, upstream))
    engine = dataset.spec.engine
    app_name = f"neuraxis-etl-{dataset.metadata.name}"
    if engine.executors > 0:
        placement = spark_session.KubernetesPlacement.from_env(env)
        labels = {
            "app.kubernetes.io/managed-by": "neuraxis",
            "app.kubernetes.io/component": "spark-executor",
            "neuraxis.dev/dataset": dataset.metadata.name,
        }
        template = spark_session.write_pod_template(
            spark_session.executor_pod_template(placement), Path(tempfile.gettempdir())
        )
        conf = spark_session.kubernetes_conf(
            engine,
            lake,
            jars,
            placement,
            app_name=app_name,
            pod_template_file=template,
            labels=labels,
        )
    else:
        cores = spark_session.local_cores(env)
        conf = spark_session.local_conf(engine, lake, jars, app_name=app_name, cores=cores)
    return spark_session.start_spark(conf)


def _schema(df: DataFrame) -> tuple[ColumnSchema, ...]:
    return tuple(
        ColumnSchema(name=f.name, type=f.dataType.simpleString(), pii=privacy.pii_tags(f.metadata))
        for f in df.schema.fields
    )


def _fields(df: DataFrame) -> list[tuple[str, str]]:
    return [(f.name, f.dataType.simpleString()) for f in df.schema.fields]


def _commit_once(
    spark: SparkSession,
    df: DataFrame,
    uri: str,
    run_id: str,
    *,
    mode: str,
    partition_by: list[str],
    metadata: Callable[[], str],
    overwrite_schema: bool,
) -> delta_io.Commit:
    """Write `df` as one Delta commit unless this run already made one; that commit.

    `metadata` is called only when this run writes (it may compute the content digest)."""
    done = delta_io.find_run_commit(spark, uri, run_id)
    if done is None:
        delta_io.write_table(
            df,
            uri,
            mode=mode,
            partition_by=partition_by,
            metadata=metadata(),
            overwrite_schema=overwrite_schema,
        )
        done = delta_io.find_run_commit(spark, uri, run_id)
    if done is None:
        raise EtlError("WriteFailed", f"{uri}: the commit of run {run_id} is not in the history")
    return done


def _content_after_commit(
    spark: SparkSession, df: DataFrame, uri: str, mode: str
) -> tuple[DataFrame, int | None]:
    """What the table version about to be committed holds, and the version it appends to.

    Overwrite: `df` itself. Append: the latest version plus `df` (columns merged as Delta's
    mergeSchema does: existing ones first, new ones after, absent values null)."""
    if mode != "append":
        return df, None
    latest = delta_io.latest_version(spark, uri)
    if latest is None:
        return df, None
    current = delta_io.read_version(spark, uri, latest)
    return current.unionByName(df, allowMissingColumns=True), latest


def _digest_metadata(
    spark: SparkSession,
    df: DataFrame,
    uri: str,
    mode: str,
    run_id: str,
    sources: tuple[str, ...],
    appends_to: list[int | None],
    timings: dict[str, float],
) -> str:
    """The table commit's userMetadata: the run, the root sources, and the content digest and
    row count of the version the commit creates (computed once, here, before the write)."""
    t = time.monotonic()
    content, latest = _content_after_commit(spark, df, uri, mode)
    appends_to.append(latest)
    rows, digest = delta_io.content_digest(content)
    timings["digest"] = time.monotonic() - t
    return delta_io.commit_metadata(run_id, sources, digest=digest, rows=rows)


def run_etl(
    dataset: Dataset,
    lake: Lake,
    *,
    run_id: str,
    namespace: str,
    upstream: Mapping[str, str] | None = None,
    spark: SparkSession | None = None,
    env: Mapping[str, str] | None = None,
    clock: Callable[[], datetime] | None = None,
) -> EtlResult:
    """Run the Dataset's pipeline into `lake`; never raises for data or spec problems (the
    result says what went wrong). `spark` defaults to a session started for the spec's engine;
    `env` (default os.environ) supplies the hash salt."""
    now = clock or (lambda: datetime.now(UTC))
    env = os.environ if env is None else env
    upstream = dict(upstream or {})
    started = now()
    name = dataset.metadata.name
    spec = dataset.spec
    table_rel = lake.table_path(namespace, name)
    base = EtlResult(
        outcome="Failed",
        reason="",
        message="",
        dataset=name,
        namespace=namespace,
        run_id=run_id,
        table_name=spec.output.table or name,
        table_uri=lake.uri(table_rel),
        started_at=_rfc3339(started),
        finished_at=_rfc3339(started),
    )
    job = f"{namespace}.{name}"
    source_ds = describe_source(spec.source, lake, namespace, upstream)
    emit_run_event(
        lake,
        "START",
        job,
        run_id,
        [source_ds],
        [lake_dataset(lake, table_rel)],
        namespace=namespace,
    )
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        result, inputs, outputs = _pipeline(
            dataset, lake, base, namespace, upstream, spark, env, started, timings
        )
    except Exception as exc:
        err = classify(exc)
        verdict = exc.verdict if isinstance(exc, QualityGateError) else None
        timings["total"] = time.monotonic() - t0
        result = replace(
            base,
            reason=err.reason,
            message=err.message,
            finished_at=_rfc3339(now()),
            quality=verdict.results if verdict else (),
            quality_passed=False if verdict else None,
            quarantined_rows=verdict.quarantined_rows if verdict else None,
            timings=timings,
        )
        emit_run_event(
            lake,
            "FAIL",
            job,
            run_id,
            [source_ds],
            [lake_dataset(lake, table_rel)],
            namespace=namespace,
            error=f"{err.reason}: {err.message}",
        )
        return result
    timings["total"] = time.monotonic() - t0
    result = replace(result, finished_at=_rfc3339(now()), timings=timings)
    emit_run_event(lake, "COMPLETE", job, run_id, inputs, outputs, namespace=namespace)
    return result


def _pipeline(
    dataset: Dataset,
    lake: Lake,
    base: EtlResult,
    namespace: str,
    upstream: Mapping[str, str],
    spark: SparkSession | None,
    env: Mapping[str, str],
    started: datetime,
    timings: dict[str, float],
) -> tuple[EtlResult, list[LineageDataset], list[LineageDataset]]:
    # Before any Spark work: a missing salt is known without reading a byte.
    salt = privacy.resolve_salt(dataset.spec.privacy, env)
    args = (dataset, lake, base, namespace, upstream)
    if spark is not None:
        return _process(*args, spark, salt, started, timings)
    t = time.monotonic()
    try:
        spark = start_spark_for(dataset, lake, upstream, env)
    except Exception as exc:
        raise EtlError(SPARK_UNAVAILABLE, f"cannot start Spark: {exc}") from exc
    timings["sparkStart"] = time.monotonic() - t
    try:
        return _process(*args, spark, salt, started, timings)
    finally:
        if dataset.spec.engine.executors > 0:
            # A session with executor pods is stopped here, not by the process exit: the
            # executors are told to shut down (their pods end Succeeded) before the driver's
            # container ends and takes the JVM with it.
            spark.stop()


def _process(
    dataset: Dataset,
    lake: Lake,
    base: EtlResult,
    namespace: str,
    upstream: Mapping[str, str],
    spark: SparkSession,
    salt: str | None,
    started: datetime,
    timings: dict[str, float],
) -> tuple[EtlResult, list[LineageDataset], list[LineageDataset]]:
    from pyspark import StorageLevel
    from pyspark.sql import functions as sf

    spec = dataset.spec
    run_id = base.run_id
    t = time.monotonic()
    if spec.transform is not None and spec.transform.sql:
        # Before the source is read: a transform that reads outside its views reads nothing.
        views = [i.name for i in spec.transform.inputs]
        sql_surface.check_sql(spark, spec.transform.sql, views)
    src = sources.read_source(spark, spec.source, lake, namespace, upstream)
    views_read = sources.read_transform_inputs(spark, spec.transform)
    df = transform.apply_transform(spark, src.df, spec.transform, views_read)
    transform.require_columns("spec.output.partitionBy", spec.output.partition_by, df.columns)
    plan = quality.plan_quality(spec.quality, df.schema)
    quality.check_patterns(spark, plan)
    masks = privacy.plan_masks(spec.privacy, df.schema, salt)
    annotated = quality.annotate(df, plan)
    # The gate's pass, the digest and the writes read the same rows: compute them once (the
    # digest in the commit must describe exactly the rows committed, even if a transform is not
    # deterministic).
    annotated = annotated.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        if plan.empty:
            verdict = quality.no_quality_verdict()
        else:
            verdict = quality.judge(plan, quality.measure(annotated, plan), started)
        timings["quality"] = time.monotonic() - t
        if not verdict.write:
            raise QualityGateError(verdict)

        t = time.monotonic()
        masked = privacy.apply_masks(annotated, masks)
        failed_rows = sf.size(sf.col(quality.FAILED_RULES)) > 0
        metadata = delta_io.commit_metadata(run_id, src.root_sources)
        quarantine_uri = quarantine_version = None
        if verdict.quarantine:
            q_rel = lake.quarantine_path(namespace, dataset.metadata.name)
            quarantine_uri = lake.uri(q_rel)
            bad = masked.filter(failed_rows).withColumn(RUN_ID_COLUMN, sf.lit(run_id))
            quarantine_version = _commit_once(
                spark,
                bad,
                lake.spark_uri(q_rel),
                run_id,
                mode="append",
                partition_by=[],
                metadata=lambda: metadata,
                overwrite_schema=False,
            ).version
            timings["quarantineWrite"] = time.monotonic() - t
        good = masked.filter(~failed_rows) if plan.on_failure == "Quarantine" else masked
        good = good.drop(quality.FAILED_RULES)
        table_uri = lake.spark_uri(lake.table_path(namespace, dataset.metadata.name))
        mode = spec.output.mode
        appends_to: list[int | None] = []
        commit = _commit_once(
            spark,
            good,
            table_uri,
            run_id,
            mode=mode,
            partition_by=list(spec.output.partition_by),
            metadata=lambda: _digest_metadata(
                spark, good, table_uri, mode, run_id, src.root_sources, appends_to, timings
            ),
            overwrite_schema=mode == "overwrite",
        )
        timings["write"] = time.monotonic() - t
    finally:
        annotated.unpersist()

    version, rows, digest = commit.version, commit.rows, commit.digest
    if digest is None or rows is None:
        raise EtlError("WriteFailed", f"{table_uri}: commit {version} records no content digest")
    if appends_to and appends_to[0] is not None and version != appends_to[0] + 1:
        # Another writer committed between our digest and our commit: the recorded digest
        # describes a version that does not exist.
        raise EtlError(
            "ConcurrentWrite",
            f"{table_uri}: version {version} was appended to version {version - 1}, "
            f"not to version {appends_to[0]} whose content the digest covers",
        )
    # Schema only (with the PII tags Delta keeps in column metadata): no data is read.
    written = delta_io.read_version(spark, table_uri, version)
    schema = _schema(written)
    table_rel = lake.table_path(namespace, dataset.metadata.name)
    inputs = [replace(src.dataset, fields=tuple(_fields(src.df)))]
    outputs = [lake_dataset(lake, table_rel, [(c.name, c.type) for c in schema], version)]
    if quarantine_uri is not None:
        q_rel = lake.quarantine_path(namespace, dataset.metadata.name)
        outputs.append(lake_dataset(lake, q_rel, version=quarantine_version))
    result = replace(
        base,
        outcome="Succeeded",
        reason=verdict.reason,
        message=verdict.message,
        version=version,
        rows=rows,
        quarantined_rows=verdict.quarantined_rows,
        quality_passed=verdict.quality_passed,
        quality=verdict.results,
        schema=schema,
        digest=digest,
        quarantine_uri=quarantine_uri,
        quarantine_version=quarantine_version,
        input_uri=src.uri,
        input_version=src.version,
        input_dataset=src.dataset_name,
        input_digest=src.digest,
        input_edge_deployment=src.edge_deployment,
        sources=src.root_sources,
    )
    return result, inputs, outputs
