"""The Grafana dashboards, built in code with grafana-foundation-sdk (Grafana's own typed
builders) rather than hand-edited JSON: a panel is its title, unit and PromQL queries, and the
SDK lays them out and writes the dashboard model Grafana loads.

Every query uses metric names that `neuraxis.operator.metrics` and
`neuraxis.workloads.serve.metrics` export; the Prometheus tests run each of them against a
real Prometheus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

# The Prometheus data source the Monitoring component provisions (uid "prometheus").
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")
REF_IDS = "ABCDEFGH"


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str  # a Grafana unit id: short, s, ops, reqps, percentunit
    queries: tuple[tuple[str, str], ...]  # (PromQL, legend)
    width: int = 12  # of 24 columns


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    tags: tuple[str, ...]
    panels: tuple[Panel, ...]


def _p(quantile: float, by: str, bucket: str, selector: str = "") -> str:
    labels = ", ".join(["le", *([by] if by else [])])
    return f"histogram_quantile({quantile}, sum by ({labels}) (rate({bucket}{selector}[5m])))"


RECONCILE_BUCKET = "neuraxis_reconcile_duration_seconds_bucket"
SERVE_BUCKET = "neuraxis_serve_request_duration_seconds_bucket"

DASHBOARDS = (
    Dashboard(
        "neuraxis-datasets", "Neuraxis / Datasets (ETL and quality)",
        ("neuraxis", "etl", "quality"),
        (
            Panel("Datasets by phase (Failed includes quality-gate failures)", "short",
                  (('sum by (phase) (neuraxis_resources{kind="Dataset"})', "{{phase}}"),)),
            Panel("Dataset reconcile errors by reason", "short",
                  (('sum by (reason) (increase(neuraxis_reconcile_errors_total{kind="Dataset"}'
                    "[1h]))", "{{reason}}"),)),
            Panel("Dataset reconciles per second by outcome", "ops",
                  (('sum by (outcome) (rate(neuraxis_reconcile_total{kind="Dataset"}[5m]))',
                    "{{outcome}}"),)),
            Panel("Dataset reconcile duration p99", "s",
                  ((_p(0.99, "", RECONCILE_BUCKET, '{kind="Dataset"}'), "p99"),)),
        ),
    ),
    Dashboard(
        "neuraxis-operator", "Neuraxis / Operator", ("neuraxis", "operator"),
        (
            Panel("Reconciles per second by kind and outcome", "ops",
                  (("sum by (kind, outcome) (rate(neuraxis_reconcile_total[5m]))",
                    "{{kind}} {{outcome}}"),)),
            Panel("Reconcile errors per second by kind and reason", "ops",
                  (("sum by (kind, reason) (rate(neuraxis_reconcile_errors_total[5m]))",
                    "{{kind}} {{reason}}"),)),
            Panel("Reconcile duration p50 / p99 by kind", "s",
                  ((_p(0.5, "kind", RECONCILE_BUCKET), "p50 {{kind}}"),
                   (_p(0.99, "kind", RECONCILE_BUCKET), "p99 {{kind}}"))),
            Panel("Resources by kind and phase", "short",
                  (("sum by (kind, phase) (neuraxis_resources)", "{{kind}} {{phase}}"),)),
            Panel("Training metrics of TrainingJobs (from status)", "short",
                  (("neuraxis_training_metric",
                    "{{namespace}}/{{trainingjob}} {{metric}}"),)),
            Panel("API server requests per second by verb", "reqps",
                  (("sum by (verb) (rate(neuraxis_api_requests_total[5m]))", "{{verb}}"),)),
        ),
    ),
    Dashboard(
        "neuraxis-serving", "Neuraxis / Serving", ("neuraxis", "serving"),
        (
            Panel("Prediction latency p50 / p99 by route", "s",
                  ((_p(0.5, "route", SERVE_BUCKET), "p50 {{route}}"),
                   (_p(0.99, "route", SERVE_BUCKET), "p99 {{route}}"))),
            Panel("Requests per second by route and code", "reqps",
                  (("sum by (route, code) (rate(neuraxis_serve_requests_total[5m]))",
                    "{{route}} {{code}}"),)),
            Panel("Error ratio (5xx)", "percentunit",
                  (('sum(rate(neuraxis_serve_requests_total{code=~"5.."}[5m])) / '
                    "clamp_min(sum(rate(neuraxis_serve_requests_total[5m])), 1e-9)",
                    "5xx ratio"),)),
            Panel("Rows per model forward p50 / p99", "short",
                  ((_p(0.5, "", "neuraxis_serve_batch_size_bucket"), "p50"),
                   (_p(0.99, "", "neuraxis_serve_batch_size_bucket"), "p99"))),
            Panel("Feature drift (PSI; alert above 0.2)", "short",
                  (("max by (namespace, model, feature) (neuraxis_feature_drift)",
                    "{{namespace}}/{{model}} {{feature}}"),)),
            Panel("In-flight requests and served models", "short",
                  (("sum by (pod) (neuraxis_serve_requests_in_flight)", "in flight {{pod}}"),
                   ("count by (model, version) (neuraxis_serve_model_info)",
                    "{{model}} {{version}}"))),
        ),
    ),
)  # fmt: skip


def _panel(panel: Panel) -> timeseries.Panel:
    built = (
        timeseries.Panel()
        .title(panel.title)
        .unit(panel.unit)
        .datasource(DATASOURCE)
        .height(8)
        .span(panel.width)
    )
    if len(panel.queries) > len(REF_IDS):  # never drop a query silently
        raise ValueError(f"panel {panel.title!r}: at most {len(REF_IDS)} queries")
    for ref_id, (expr, legend) in zip(REF_IDS, panel.queries, strict=False):
        built = built.with_target(
            prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id)
        )
    return built


def dashboard_json(board: Dashboard) -> str:
    """The dashboard model Grafana loads from a provisioned file."""
    builder = (
        dash.Dashboard(board.title)
        .uid(board.uid)
        .tags(list(board.tags))
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
    )
    for panel in board.panels:
        builder = builder.with_panel(_panel(panel))
    return json.dumps(builder.build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def dashboards() -> dict[str, str]:
    """File name -> dashboard JSON (`<uid without the prefix>.json`)."""
    return {f"{b.uid.removeprefix('neuraxis-')}.json": dashboard_json(b) for b in DASHBOARDS}


def queries() -> list[str]:
    """Every panel query of every dashboard."""
    return [expr for b in DASHBOARDS for p in b.panels for expr, _ in p.queries]
