"""Read a Dataset's source into a Spark DataFrame: raw files (csv, json, parquet, delta), another
Dataset's table (pinned version or latest), or a built-in generator."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from neuraxis.crds.dataset import DataSource, Transform
from neuraxis.lake import Lake
from neuraxis.lineage import LineageDataset
from neuraxis.workloads.etl import builtin_data, delta_io
from neuraxis.workloads.etl.errors import (
    SOURCE_NOT_FOUND,
    SOURCE_UNREADABLE,
    UPSTREAM_NOT_FOUND,
    EtlError,
    classify,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

BUILTIN_NAMESPACE = "builtin"


@dataclass(frozen=True)
class SourceRead:
    """The source as a DataFrame plus what lineage needs to know about it."""

    df: DataFrame
    dataset: LineageDataset
    uri: str
    version: int | None
    # Raw sources at the root of the chain (for a derived dataset: its upstream's).
    root_sources: tuple[str, ...]
    # An upstream Dataset: its name and the content digest recorded in the version read.
    dataset_name: str | None = None
    digest: str | None = None
    # An EdgeDeployment whose inference-log table was read.
    edge_deployment: str | None = None


def spark_path(uri: str) -> str:
    """Spark's Hadoop file systems speak s3a:// for S3."""
    return "s3a://" + uri[len("s3://") :] if uri.startswith("s3://") else uri


def uri_dataset(uri: str) -> LineageDataset:
    """A raw-file source as an OpenLineage dataset (namespace = scheme and authority)."""
    parsed = urlparse(uri)
    namespace = f"{parsed.scheme}://{parsed.netloc}" if parsed.netloc else parsed.scheme
    return LineageDataset(namespace=namespace, name=parsed.path or "/")


def upstream_uri(lake: Lake, namespace: str, name: str, upstream: Mapping[str, str]) -> str:
    return upstream.get(name) or lake.uri(lake.table_path(namespace, name))


def read_source(
    spark: SparkSession,
    source: DataSource,
    lake: Lake,
    namespace: str,
    upstream: Mapping[str, str] | None = None,
) -> SourceRead:
    if source.builtin is not None:
        return _read_builtin(spark, source)
    if source.from_ is not None and source.from_.edge_deployment_ref is not None:
        return _read_edge_logs(spark, source, lake, namespace)
    if source.from_ is not None:
        return _read_upstream(spark, source, lake, namespace, upstream or {})
    return _read_files(spark, source)


def _read_builtin(spark: SparkSession, source: DataSource) -> SourceRead:
    spec = source.builtin
    assert spec is not None
    table = builtin_data.builtin_table(spec.name, spec.rows, spec.seed)
    uri = builtin_data.builtin_uri(spec.name, spec.rows, spec.seed)
    df = spark.createDataFrame(table)
    dataset = LineageDataset(namespace=BUILTIN_NAMESPACE, name=uri.removeprefix("builtin://"))
    return SourceRead(df=df, dataset=dataset, uri=uri, version=None, root_sources=(uri,))


def read_transform_inputs(spark: SparkSession, transform: Transform | None) -> dict[str, DataFrame]:
    """The files spec.transform.inputs declares, by the view name the SQL reads them under."""
    views: dict[str, DataFrame] = {}
    for i, item in enumerate(transform.inputs if transform else []):
        source = DataSource.model_construct(uri=item.uri, format=item.format, options=item.options)
        views[item.name] = _read_files(spark, source, f"spec.transform.inputs[{i}].uri").df
    return views


def _read_files(
    spark: SparkSession, source: DataSource, field: str = "spec.source.uri"
) -> SourceRead:
    from pyspark.errors import AnalysisException

    assert source.uri is not None and source.format is not None
    options = dict(source.options)
    if source.format in ("csv", "json"):
        # A malformed record fails the run (SourceUnreadable) instead of becoming nulls silently.
        options.setdefault("mode", "FAILFAST")
    reader = spark.read.format(source.format).options(**options)
    try:
        df = reader.load(spark_path(source.uri))
    except AnalysisException as exc:
        err = classify(exc, f"{field} {source.uri}")
        reason = err.reason if err.reason in (SOURCE_NOT_FOUND,) else SOURCE_UNREADABLE
        raise EtlError(reason, err.message) from exc
    except Exception as exc:  # Py4J errors while listing or reading footers
        err = classify(exc, f"{field} {source.uri}")
        reason = err.reason if err.reason == SOURCE_NOT_FOUND else SOURCE_UNREADABLE
        raise EtlError(reason, err.message) from exc
    return SourceRead(
        df=df,
        dataset=uri_dataset(source.uri),
        uri=source.uri,
        version=None,
        root_sources=(source.uri,),
    )


def _read_upstream(
    spark: SparkSession,
    source: DataSource,
    lake: Lake,
    namespace: str,
    upstream: Mapping[str, str],
) -> SourceRead:
    assert source.from_ is not None and source.from_.dataset_ref is not None
    ref = source.from_.dataset_ref
    uri = upstream_uri(lake, ref.namespace or namespace, ref.name, upstream)
    what = f"spec.source.from.datasetRef: Dataset {ref.name!r}"
    try:
        version, commit = delta_io.resolve_version(spark, spark_path(uri), ref.version, what)
    except EtlError:
        raise
    except Exception as exc:
        raise EtlError(UPSTREAM_NOT_FOUND, classify(exc, what).message) from exc
    df = delta_io.read_version(spark, spark_path(uri), version)
    rel = lake.table_path(namespace, ref.name)
    dataset = (
        LineageDataset(namespace=lake.root, name=rel, version=str(version))
        if ref.name not in upstream
        else LineageDataset(
            namespace=uri_dataset(uri).namespace, name=uri_dataset(uri).name, version=str(version)
        )
    )
    roots = tuple(commit.sources) or (f"{uri}@v{version}",)
    return SourceRead(
        df=df,
        dataset=dataset,
        uri=uri,
        version=version,
        root_sources=roots,
        dataset_name=ref.name,
        digest=commit.digest,
    )


def _read_edge_logs(
    spark: SparkSession, source: DataSource, lake: Lake, namespace: str
) -> SourceRead:
    """An EdgeDeployment's inference logs: the segments uploaded since the last read are
    ingested first (idempotent, workloads/edge/lake_table.py), then the table version that
    leaves is read; feature columns come out of the `features` map, one column each."""
    from pyspark.sql import functions as sf

    from neuraxis.workloads.edge import lake_table

    assert source.from_ is not None and source.from_.edge_deployment_ref is not None
    name = source.from_.edge_deployment_ref.name
    what = f"spec.source.from.edgeDeploymentRef: EdgeDeployment {name!r}"
    try:
        ingested = lake_table.ingest(lake, namespace, name)
    except lake_table.RecordError as exc:
        raise EtlError(SOURCE_UNREADABLE, f"{what}: {exc}") from exc
    except Exception as exc:
        raise EtlError(SOURCE_UNREADABLE, classify(exc, what).message) from exc
    if ingested.version is None:
        raise EtlError(
            UPSTREAM_NOT_FOUND,
            f"{what}: no inference logs uploaded yet under "
            f"{lake.uri(Lake.inference_logs_path(namespace, name))}",
        )
    rel = Lake.edge_logs_table_path(namespace, name)
    uri = ingested.table_uri
    df = delta_io.read_version(spark, lake.spark_uri(rel), ingested.version)
    if source.from_.hard_examples_only:
        df = df.where(sf.col("hard_example"))
    df = _flatten_features(df, what)
    version = ingested.version
    return SourceRead(
        df=df,
        dataset=LineageDataset(namespace=lake.root, name=rel, version=str(version)),
        uri=uri,
        version=version,
        root_sources=(f"{uri}@v{version}",),
        edge_deployment=name,
    )


def _flatten_features(df: DataFrame, what: str) -> DataFrame:
    """One column per feature name found in the rows (sorted), in place of the map."""
    from pyspark.sql import functions as sf

    from neuraxis.workloads.edge.lake_table import FEATURES

    keys = sorted(
        str(r["k"])
        for r in df.select(sf.explode(sf.map_keys(FEATURES)).alias("k")).distinct().collect()
    )
    clash = sorted(set(keys) & set(df.columns))
    if clash:
        raise EtlError(
            SOURCE_UNREADABLE,
            f"{what}: feature names {', '.join(clash)} clash with the log table's own columns",
        )
    base = [c for c in df.columns if c != FEATURES]
    return df.select(*base, *[sf.col(FEATURES)[k].alias(k) for k in keys])
