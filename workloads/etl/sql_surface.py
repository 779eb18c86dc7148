"""The closed SQL surface of `spec.transform.sql`, checked with Spark's own parser before the run
reads anything: one query that reads only the view `source`, the views of the declared
`spec.transform.inputs` and the CTEs it defines.

The source and the declared inputs are all a transform may read (the operator has checked their
URIs against the namespace rule, neuraxis/references.py). The
parser's unresolved plan names every relation, table-valued function and function the query
uses, inside CTEs and subqueries too, so the check does not depend on how the SQL is written
(quoting, comments, IDENTIFIER('...')). Refused: path-based relations (delta.`s3a://...`),
catalog tables and views (spark_catalog.db.t, global_temp.v, a one-part name that is neither
`source` nor a CTE in scope), table-valued functions other than the row generators below,
read_files, reflect/java_method/try_reflect (JVM calls), catalog functions, streaming reads and
commands (SET, ADD JAR, LOAD, DDL, DML). input_file_name() stays allowed: it names the file a row
of `source` came from, which is this run's own input, and reads nothing."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from neuraxis.crds.dataset import (
    SQL_ONLY_SOURCE,
    SQL_PATH_FORMATS,
    SQL_REFUSED_FUNCTIONS,
    SQL_SOURCE_VIEW,
)
from neuraxis.workloads.etl.errors import INVALID_SQL, SQL_NOT_PERMITTED, EtlError, classify
from neuraxis.workloads.etl.transform import wrap_query

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

FIELD = "spec.transform.sql"
# Table-valued functions that only turn their arguments into rows (they read no data).
ROW_GENERATORS = frozenset(
    {
        "range",
        "explode",
        "explode_outer",
        "inline",
        "inline_outer",
        "posexplode",
        "posexplode_outer",
        "stack",
        "json_tuple",
        "variant_explode",
        "variant_explode_outer",
    }
)
# Plan nodes that read something other than a named relation: a stream, a data source given
# by name, or a relation whose name is only known when the query runs.
_REFUSED_KIND_WORDS = ("Streaming", "DataSource", "UnresolvedIdentifier")


@dataclass(frozen=True)
class PlanNode:
    """A node of Spark's unresolved logical plan (or of one of its expressions), copied out of
    the JVM: its class, the name it refers to (relation, function), the CTEs it defines
    (`WITH`), and everything below it."""

    kind: str
    name: tuple[str, ...] = ()
    ctes: tuple[tuple[str, PlanNode], ...] = ()
    recursive: bool = False
    children: tuple[PlanNode, ...] = ()


def _seq(jseq: Any) -> list[Any]:
    return [jseq.apply(i) for i in range(jseq.size())]


def _names(jseq: Any) -> tuple[str, ...]:
    return tuple(str(part) for part in _seq(jseq))


def _copy_expression(jexpr: Any) -> PlanNode:
    kind = str(jexpr.getClass().getSimpleName())
    name: tuple[str, ...] = ()
    if kind == "UnresolvedFunction":
        name = _names(jexpr.nameParts())
    elif kind == "UnresolvedGenerator":
        ident = jexpr.name()
        database = ident.database()
        name = ((str(database.get()),) if database.isDefined() else ()) + (str(ident.funcName()),)
    children = tuple(_copy_expression(c) for c in _seq(jexpr.children()))
    return PlanNode(kind=kind, name=name, children=children)


def copy_plan(jplan: Any) -> PlanNode:
    """The JVM plan as PlanNodes: children, subqueries (Spark's `innerChildren`) and the
    expressions of each node, with the relation and function names this check needs."""
    kind = str(jplan.getClass().getSimpleName())
    name: tuple[str, ...] = ()
    ctes: tuple[tuple[str, PlanNode], ...] = ()
    recursive = False
    if kind == "UnresolvedRelation":
        name = _names(jplan.multipartIdentifier())
    elif kind == "UnresolvedTableValuedFunction":
        name = _names(jplan.name())
    children = [copy_plan(c) for c in _seq(jplan.children())]
    if kind == "UnresolvedWith":
        # Its inner children are the CTE definitions, kept apart for their scope.
        ctes = tuple((str(t._1()), copy_plan(t._2())) for t in _seq(jplan.cteRelations()))
        recursive = bool(jplan.allowRecursion())
    else:
        children += [copy_plan(c) for c in _seq(jplan.innerChildren())]
    children += [_copy_expression(e) for e in _seq(jplan.expressions())]
    return PlanNode(kind=kind, name=name, ctes=ctes, recursive=recursive, children=tuple(children))


def _quoted(parts: tuple[str, ...]) -> str:
    return ".".join(f"`{p}`" if not p.isidentifier() else p for p in parts)


def _relation_refusal(parts: tuple[str, ...], visible: frozenset[str]) -> str | None:
    if len(parts) == 1 and parts[0].lower() in visible:
        return None
    if len(parts) == 2 and parts[0].lower() in SQL_PATH_FORMATS:
        return f"it reads {parts[0]}.`{parts[1]}`, a path-based relation"
    return f"it reads the table {_quoted(parts)}, which is not a declared view or a CTE in scope"


def _function_refusal(node: PlanNode) -> str | None:
    if len(node.name) > 1:
        return f"it calls the catalog function {_quoted(node.name)}"
    if node.name and node.name[0].lower() in SQL_REFUSED_FUNCTIONS:
        return f"it calls {node.name[0]}(), which reads files or calls the JVM"
    return None


def _node_refusal(node: PlanNode, visible: frozenset[str]) -> str | None:
    if node.kind == "UnresolvedRelation":
        return _relation_refusal(node.name, visible)
    if node.kind == "UnresolvedTableValuedFunction":
        if len(node.name) == 1 and node.name[0].lower() in ROW_GENERATORS:
            return None
        return f"it calls the table-valued function {_quoted(node.name)}"
    if node.kind in ("UnresolvedFunction", "UnresolvedGenerator"):
        return _function_refusal(node)
    if any(word in node.kind for word in _REFUSED_KIND_WORDS):
        return f"it uses {node.kind}, which reads outside `source`"
    return None


def refusals(node: PlanNode, visible: frozenset[str]) -> Iterator[str]:
    """Why the plan reads outside `source`, in plan order; `visible` holds the lower-case
    relation names in scope (the view and the CTEs of enclosing WITH clauses)."""
    reason = _node_refusal(node, visible)
    if reason is not None:
        yield reason
    scope = visible
    for cte_name, definition in node.ctes:
        own = {cte_name.lower()} if node.recursive else set()
        yield from refusals(definition, scope | own)
        # A CTE is visible to the CTEs after it and to the query, not to those before it.
        scope = scope | {cte_name.lower()}
    for child in node.children:
        yield from refusals(child, scope)


def check_sql(spark: SparkSession, sql: str, views: Iterable[str] = ()) -> None:
    """Refuse `sql` (EtlError SqlNotPermitted, or InvalidSql when it does not parse) unless it
    is one query that reads only `source` and `views` (spec.transform.inputs). Parses only:
    nothing is read or resolved."""
    from pyspark.errors import ParseException

    parser = spark._jsparkSession.sessionState().sqlParser()
    try:
        plan = parser.parsePlan(sql.strip().rstrip(";").rstrip())
    except ParseException as exc:
        raise EtlError(INVALID_SQL, classify(exc, FIELD).message) from exc
    try:
        parser.parsePlan(wrap_query(sql))
    except ParseException as exc:
        # It parses as a statement but not as a sub-query: a command, DDL or DML.
        kind = str(plan.getClass().getSimpleName())
        raise EtlError(
            SQL_NOT_PERMITTED,
            f"{FIELD} must be one query over `source`; {kind} is a command or statement "
            "(SET, ADD JAR, LOAD, DDL and DML are refused)",
        ) from exc
    visible = frozenset({SQL_SOURCE_VIEW, *(v.lower() for v in views)})
    first = next(refusals(copy_plan(plan), visible), None)
    if first is not None:
        raise EtlError(SQL_NOT_PERMITTED, f"{FIELD} {SQL_ONLY_SOURCE}: {first}")
