"""spec.transform.sql may read only the view `source` and the CTEs it defines: Spark's own parser
finds every relation and function the query names, and the run is refused before it reads
anything, with the field and the offending relation or function in the message."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from neuraxis.crds.dataset import SQL_ONLY_SOURCE, Dataset, Transform
from neuraxis.lake import Lake
from neuraxis.resources import ResourceError, parse_resource
from neuraxis.workloads.etl import errors
from neuraxis.workloads.etl.run import run_etl
from neuraxis.workloads.etl.sql_surface import check_sql
from tests.conftest import load_bad_inputs, load_good_inputs
from tests.etl.conftest import dataset_from

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.engine
FIELD = f"spec.transform.sql {SQL_ONLY_SOURCE}: "
OTHER_TABLE = "s3a://neuraxis-lake/tables/team-b/orders"


def _transform_sql(obj: dict[str, Any]) -> str:
    return str(obj["spec"]["transform"]["sql"])


BAD_CORPUS = [c for c in load_bad_inputs() if c.field == "spec.transform.sql"]
GOOD_CORPUS = [c for c in load_good_inputs() if "sql" in c.object["spec"].get("transform", {})]

# What each refusal names; several pass the admission patterns (comments, IDENTIFIER, a one-part
# table name, scopes), which is why the parser is the authority.
REFUSED = {
    f"SELECT * FROM delta.`{OTHER_TABLE}`": f"delta.`{OTHER_TABLE}`, a path-based relation",
    f"SELECT * FROM delta/**/.`{OTHER_TABLE}`": f"delta.`{OTHER_TABLE}`, a path-based relation",
    "SELECT * FROM IDENTIFIER('parquet.`/etc`')": "parquet.`/etc`, a path-based relation",
    "SELECT * FROM source WHERE id IN (SELECT id FROM csv.`/tmp/x`)": "csv.`/tmp/x`",
    "SELECT * FROM orders": "the table orders, which is not a declared view or a CTE in scope",
    "SELECT * FROM spark_catalog.default.t": "the table spark_catalog.default.t",
    "SELECT * FROM global_temp.x": "the table global_temp.x",
    "SELECT * FROM read_files('/etc/passwd')": "the table-valued function read_files",
    "SELECT reflect('java.lang.System', 'getenv', 'X') FROM source": "reflect()",
    "SELECT java_method('java.lang.Runtime', 'getRuntime') FROM source": "java_method()",
    "SELECT * FROM source LATERAL VIEW default.f(a) t AS x": "the catalog function default.f",
    "SELECT * FROM IDENTIFIER('delta' || '.`/x`')": "PlanWithUnresolvedIdentifier",
    "SELECT * FROM STREAM source": "NamedStreamingRelation",
    # A CTE may not name itself unless recursive: `t` inside its own definition is a table.
    "WITH t AS (SELECT * FROM t) SELECT * FROM t": "the table t",
    # A CTE defined inside a subquery is out of scope outside it.
    "SELECT * FROM (WITH c AS (SELECT * FROM source) SELECT * FROM c) JOIN c": "the table c",
    "WITH a AS (SELECT * FROM b), b AS (SELECT * FROM source) SELECT * FROM a": "the table b",
}
COMMANDS = [
    "SET spark.sql.caseSensitive=true",
    "ADD JAR /tmp/evil.jar",
    "LOAD DATA LOCAL INPATH '/etc/passwd' INTO TABLE t",
    "DROP TABLE source",
    "INSERT INTO t SELECT * FROM source",
]
ALLOWED = [
    "SELECT * FROM source",
    "select * from SOURCE;",
    "WITH a AS (SELECT * FROM source), b AS (SELECT * FROM a) SELECT * FROM b JOIN a USING (id)",
    "SELECT s.*, e FROM source s LATERAL VIEW explode(array(1, 2)) t AS e",
    "SELECT * FROM range(3) JOIN source",
    "SELECT *, input_file_name() AS file FROM source",
    "FROM source |> WHERE id > 1",
]


@pytest.mark.parametrize("sql", list(REFUSED), ids=range(len(REFUSED)))
def test_reads_outside_source_are_refused(spark: SparkSession, sql: str) -> None:
    with pytest.raises(errors.EtlError) as info:
        check_sql(spark, sql)
    assert info.value.reason == errors.SQL_NOT_PERMITTED
    assert info.value.message.startswith(FIELD), info.value.message
    assert REFUSED[sql] in info.value.message, info.value.message


@pytest.mark.parametrize("sql", COMMANDS)
def test_commands_are_refused(spark: SparkSession, sql: str) -> None:
    with pytest.raises(errors.EtlError) as info:
        check_sql(spark, sql)
    assert info.value.reason == errors.SQL_NOT_PERMITTED
    assert info.value.message.startswith("spec.transform.sql must be one query over `source`")


@pytest.mark.parametrize("case", BAD_CORPUS, ids=[c.name for c in BAD_CORPUS])
def test_parser_refuses_every_admission_case(spark: SparkSession, case: Any) -> None:
    """The admission patterns are a cheap first line; the parser refuses the same queries."""
    with pytest.raises(errors.EtlError) as info:
        check_sql(spark, _transform_sql(case.object))
    assert info.value.reason == errors.SQL_NOT_PERMITTED


def _views(obj: dict[str, Any]) -> list[str]:
    return [str(i["name"]) for i in obj["spec"]["transform"].get("inputs", [])]


ALLOWED_CASES: list[tuple[str, list[str]]] = [(sql, []) for sql in ALLOWED] + [
    (_transform_sql(c.object), _views(c.object)) for c in GOOD_CORPUS
]


@pytest.mark.parametrize(("sql", "views"), ALLOWED_CASES)
def test_queries_over_source_pass(spark: SparkSession, sql: str, views: list[str]) -> None:
    check_sql(spark, sql, views)


def test_syntax_error_stays_invalid_sql(spark: SparkSession) -> None:
    with pytest.raises(errors.EtlError) as info:
        check_sql(spark, "SELEC * FROM source")
    assert info.value.reason == errors.INVALID_SQL
    assert info.value.message.startswith("spec.transform.sql: ")


def test_admission_refuses_a_path_relation() -> None:
    doc = {
        "apiVersion": "neuraxis.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "ds"},
        "spec": {
            "source": {"builtin": {"name": "sensors"}},
            "transform": {"sql": f"SELECT * FROM delta.`{OTHER_TABLE}`"},
        },
    }
    with pytest.raises(ResourceError, match="a path-based relation"):
        parse_resource(doc)


def _unadmitted(spec: dict[str, Any]) -> Dataset:
    """A Dataset whose SQL the admission patterns would refuse: the ETL must not rely on them
    (an object stored before the rule existed, or a run started by hand)."""
    base = dataset_from({"source": spec["source"]})
    transform = Transform.model_construct(sql=spec["transform"]["sql"])
    return base.model_copy(update={"spec": base.spec.model_copy(update={"transform": transform})})


def test_refused_before_the_source_is_read(spark: SparkSession, lake: Lake, tmp_path: Path) -> None:
    """The source does not exist: a run that read it would fail SourceNotFound."""
    missing = f"file://{tmp_path}/missing.csv"
    spec = {
        "source": {"uri": missing, "format": "csv"},
        "transform": {"sql": f"SELECT * FROM source JOIN delta.`{OTHER_TABLE}` USING (id)"},
    }
    result = run_etl(_unadmitted(spec), lake, run_id="run", namespace="team-a", spark=spark, env={})
    assert result.outcome == "Failed"
    assert result.reason == errors.SQL_NOT_PERMITTED
    assert result.message == f"{FIELD}it reads delta.`{OTHER_TABLE}`, a path-based relation"
    assert result.version is None
    assert not lake.exists("tables/team-a/ds/_delta_log")


def test_another_namespaces_table_is_not_read(spark: SparkSession, lake: Lake) -> None:
    """A real Delta table of team-b in the same lake, named through IDENTIFIER(): refused, and
    team-a's table is never written."""
    other = lake.uri(lake.table_path("team-b", "orders"))
    spark.range(3).write.format("delta").save(other)
    spec = {
        "source": {"builtin": {"name": "sensors", "rows": 10}},
        "transform": {"sql": f"SELECT * FROM IDENTIFIER('delta.`{other}`')"},
    }
    result = run_etl(_unadmitted(spec), lake, run_id="run", namespace="team-a", spark=spark, env={})
    assert result.reason == errors.SQL_NOT_PERMITTED
    assert f"delta.`{other}`" in result.message
    assert not lake.exists("tables/team-a/ds/_delta_log")


def test_a_transform_over_source_still_runs(spark: SparkSession, lake: Lake) -> None:
    spec = {
        "source": {"builtin": {"name": "sensors", "rows": 50, "seed": 3}},
        "transform": {
            "sql": "WITH ranked AS (SELECT *, row_number() OVER (PARTITION BY machine_id "
            "ORDER BY temperature DESC) AS rn FROM source) SELECT * FROM ranked WHERE rn = 1"
        },
    }
    dataset = dataset_from(spec)
    result = run_etl(dataset, lake, run_id="run", namespace="team-a", spark=spark, env={})
    assert result.outcome == "Succeeded", result.message


def test_declared_inputs_are_the_only_other_views(spark: SparkSession) -> None:
    sql = "SELECT s.* FROM source s JOIN Feedback f ON s.machine_id = f.machine_id"
    check_sql(spark, sql, ["feedback"])
    with pytest.raises(errors.EtlError, match="the table Feedback, which is not a declared view"):
        check_sql(spark, sql)


def test_a_declared_input_is_joined(spark: SparkSession, lake: Lake, tmp_path: Path) -> None:
    (tmp_path / "ok.jsonl").write_text('{"machine_id": "M-000"}\n{"machine_id": "M-001"}\n')
    spec = {
        "source": {"builtin": {"name": "sensors", "rows": 200, "seed": 4}},
        "transform": {
            "inputs": [
                {"name": "confirmed", "uri": f"file://{tmp_path}/ok.jsonl", "format": "json"}
            ],
            "sql": "SELECT s.* FROM source s LEFT SEMI JOIN confirmed c USING (machine_id)",
        },
    }
    dataset = dataset_from(spec)
    result = run_etl(dataset, lake, run_id="run", namespace="team-a", spark=spark, env={})
    assert result.outcome == "Succeeded", result.message
    table = spark.read.format("delta").load(result.table_uri)
    assert {r.machine_id for r in table.select("machine_id").distinct().collect()} == {
        "M-000",
        "M-001",
    }


def test_a_missing_declared_input_names_its_field(
    spark: SparkSession, lake: Lake, tmp_path: Path
) -> None:
    spec = {
        "source": {"builtin": {"name": "sensors", "rows": 20}},
        "transform": {
            "inputs": [{"name": "c", "uri": f"file://{tmp_path}/nope.json", "format": "json"}],
            "sql": "SELECT * FROM source JOIN c USING (machine_id)",
        },
    }
    dataset = dataset_from(spec)
    result = run_etl(dataset, lake, run_id="run", namespace="team-a", spark=spark, env={})
    assert result.reason == errors.SOURCE_NOT_FOUND
    assert result.message.startswith("spec.transform.inputs[0].uri "), result.message
