"""The single `neuraxis` command line. Sub-commands import their modules lazily so that
`neuraxis --help` stays fast (torch, Spark and Ray are heavy)."""

from __future__ import annotations

import functools
from typing import Any

import typer

app = typer.Typer(
    name="neuraxis",
    help="Neuraxis: declarative datasets, training, registry, serving and edge rollouts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

crds_app = typer.Typer(help="The custom resource definitions generated from the API models.")
app.add_typer(crds_app, name="crds")


@crds_app.command("generate")
def crds_generate(
    out_dir: str = typer.Option("crds", help="Folder the CRD YAML and kustomization go to."),
) -> None:
    """Write crds/neuraxis.dev_<plural>.yaml and crds/kustomization.yaml from the models."""
    from neuraxis.crds.generate import write_crds

    for path in write_crds(out_dir):
        typer.echo(f"wrote {path}")


@crds_app.command("check")
def crds_check(
    out_dir: str = typer.Option("crds", help="Folder holding the committed CRDs."),
) -> None:
    """Exit non-zero when the committed CRDs differ from what the models generate."""
    from neuraxis.crds.generate import stale_crd_files

    stale = stale_crd_files(out_dir)
    if stale:
        typer.echo("out of date (run `make crds`): " + ", ".join(stale), err=True)
        raise typer.Exit(1)
    typer.echo("crds are up to date")


@app.command("validate")
def validate(paths: list[str] = typer.Argument(..., help="YAML files or folders of them.")) -> None:
    """Validate Neuraxis resources with the same rules the API server enforces."""
    from neuraxis.resources import ResourceError, load_resources

    try:
        resources = load_resources(paths)
    except ResourceError as exc:
        typer.echo(f"invalid: {exc}", err=True)
        raise typer.Exit(1) from exc
    for res in resources:
        typer.echo(f"ok  {res.kind}/{res.metadata.name}")


operator_app = typer.Typer(help="The Kubernetes operator.", invoke_without_command=True)
app.add_typer(operator_app, name="operator")


@operator_app.callback()
def operator_run(
    ctx: typer.Context,
    namespace: list[str] = typer.Option([], "--namespace", "-n", help="Watch these namespaces."),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", help="Watch every namespace."),
    kubeconfig: str | None = typer.Option(
        None, help="Kubeconfig (default: in-cluster or $KUBECONFIG)."
    ),
    metrics_port: int = typer.Option(9090, help="Port of /metrics (0: off)."),
    liveness_port: int = typer.Option(
        8080, help="Port of the /healthz liveness endpoint (0: off)."
    ),
    json_logs: bool = typer.Option(False, help="Structured JSON logs."),
) -> None:
    """Run the operator (namespace or cluster scope)."""
    if ctx.invoked_subcommand is not None:
        return
    if not namespace and not all_namespaces:
        raise typer.BadParameter("give --namespace (repeatable) or --all-namespaces")
    from neuraxis.operator.main import run_operator
    from neuraxis.operator.settings import OperatorSettings, SettingsError

    try:
        settings = OperatorSettings.from_env()
    except SettingsError as exc:
        typer.echo(f"operator settings: {exc}", err=True)
        raise typer.Exit(2) from exc
    run_operator(
        namespace,
        kubeconfig=kubeconfig,
        metrics_port=metrics_port,
        liveness_port=liveness_port,
        json_logs=json_logs,
        settings=settings,
    )


@operator_app.command("manifests")
def operator_manifests(
    out: str | None = typer.Option(
        None, help="Write a kustomize directory here instead of stdout."
    ),
) -> None:
    """Print (or write) the operator's RBAC and Deployment manifests."""
    import yaml

    from neuraxis.operator.manifests import build_manifests, write_deploy_dir

    if out:
        for path in write_deploy_dir(out):
            typer.echo(f"wrote {path}")
    else:
        typer.echo(yaml.safe_dump_all(build_manifests(), sort_keys=False))


@app.command("run")
def run(
    paths: list[str] = typer.Argument(..., help="YAML files or folders of resources."),
    namespace: str = typer.Option("default", "--namespace", "-n", help="Namespace of the run."),
    force: bool = typer.Option(False, help="Run everything again, even what is unchanged."),
) -> None:
    """Run resources on this machine: ETL, training, evaluation, serving smoke test, bundle."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from neuraxis.lake import Lake
    from neuraxis.local.report import console, summary_table
    from neuraxis.local.runner import Runner, load_entries, order
    from neuraxis.local.state import LocalStore

    entries = order(load_entries(paths, namespace))
    for entry in entries:
        if entry.error:
            console.print(f"[red]invalid[/] {entry.error}")
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("starting", total=len(entries))

        def on_step(message: str) -> None:
            progress.update(task, description=message)

        runner = Runner(Lake.from_env(), LocalStore(), force=force, on_step=on_step)
        outcomes = []
        for outcome in runner.run(entries):
            outcomes.append(outcome)
            progress.advance(task)
    console.print(summary_table(outcomes))
    _print_outputs(outcomes, namespace)
    if any(o.phase in ("Failed", "Rejected", "Pending") for o in outcomes):
        raise typer.Exit(1)


def _print_outputs(outcomes: list[Any], namespace: str) -> None:
    """Where to look next: the model card, the lineage picture, the edge bundle."""
    from neuraxis.lake import neuraxis_home
    from neuraxis.local.lineage import build, to_png
    from neuraxis.local.report import console
    from neuraxis.local.state import LocalStore

    for o in outcomes:
        if o.kind == "ModelVersion" and o.status.get("cardUri"):
            console.print(f"model card      {o.status['cardUri']}")
        if o.kind == "EdgeDeployment" and o.status.get("bundle"):
            console.print(f"edge bundle     {o.status['bundle']['uri']}")
            node = build(LocalStore(), o.kind, o.name, namespace)
            picture = to_png(node, neuraxis_home() / "lineage" / f"{o.name}.png")
            console.print(f"lineage picture {picture}")


@app.command("status")
def status() -> None:
    """The recorded status of every resource run locally."""
    from neuraxis.local.report import console, status_table
    from neuraxis.local.state import LocalStore

    console.print(status_table(LocalStore().all()))


@app.command("lineage")
def lineage(
    target: str = typer.Argument(
        ..., help="kind/name, e.g. edgedeployment/anomaly-detector-plants"
    ),
    namespace: str = typer.Option("default", "--namespace", "-n"),
    format: str = typer.Option("tree", help="tree, mermaid, dot or png"),
    out: str | None = typer.Option(
        None, help="File for png (default .neuraxis/lineage/<name>.png)"
    ),
) -> None:
    """The lineage of a resource, back to the raw data."""
    from neuraxis.crds.kinds import KINDS
    from neuraxis.lake import neuraxis_home
    from neuraxis.local.lineage import LineageError, build, to_dot, to_mermaid, to_png
    from neuraxis.local.report import console, lineage_tree
    from neuraxis.local.state import LocalStore

    kinds = {k.lower(): k for k in KINDS} | {i.short_name: k for k, i in KINDS.items()}
    kind_text, _, name = target.partition("/")
    kind = kinds.get(kind_text.lower())
    if kind is None or not name:
        raise typer.BadParameter(f"{target!r}: expected kind/name, kind one of {sorted(kinds)}")
    try:
        root = build(LocalStore(), kind, name, namespace)
    except LineageError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    if format == "tree":
        console.print(lineage_tree(root))
    elif format == "mermaid":
        typer.echo(to_mermaid(root), nl=False)
    elif format == "dot":
        typer.echo(to_dot(root), nl=False)
    elif format == "png":
        from pathlib import Path

        path = to_png(root, Path(out) if out else neuraxis_home() / "lineage" / f"{name}.png")
        typer.echo(str(path))
    else:
        raise typer.BadParameter(f"--format {format!r}: one of tree, mermaid, dot, png")


@app.command("card")
def card(
    model_version: str = typer.Argument(..., help="ModelVersion name."),
    namespace: str = typer.Option("default", "--namespace", "-n"),
) -> None:
    """Print a ModelVersion's model card (Markdown) from the lake."""
    from neuraxis.lake import Lake, LakeError
    from neuraxis.local.state import LocalStore
    from neuraxis.operator.inputs import CR_VERSION

    body = LocalStore().get(CR_VERSION, "ModelVersion", namespace, model_version)
    uri = ((body or {}).get("status") or {}).get("cardUri")
    if not uri:
        typer.echo(f"ModelVersion {model_version}: no model card recorded (run it first)", err=True)
        raise typer.Exit(1)
    lake = Lake.from_env()
    try:
        typer.echo(lake.read_bytes(lake.relative(uri)).decode())
    except LakeError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc


def _kind_and_name(target: str, kind: str) -> str:
    """`name` from `<kind>/<name>` (the kind in any case), or a usage error naming both."""
    kind_text, _, name = target.partition("/")
    if kind_text.lower() != kind.lower() or not name:
        raise typer.BadParameter(f"{target!r}: expected {kind.lower()}/<name>")
    return name


@app.command("backtest")
def backtest(
    target: str = typer.Argument(..., help="modelversion/<name>"),
    namespace: str = typer.Option("default", "--namespace", "-n"),
) -> None:
    """Backtest an Approved ModelVersion now: score it on the newest version of its evaluation
    Dataset with the same gates; the result goes to status.evaluationHistory and a failing gate
    sets Degraded (in a cluster, spec.evaluation.schedule does this on a schedule). Exits 1 when
    the backtest failed."""
    from neuraxis.lake import Lake
    from neuraxis.local.backtest import BacktestError
    from neuraxis.local.backtest import backtest as run_backtest
    from neuraxis.local.report import console, history_table
    from neuraxis.local.runner import Runner
    from neuraxis.local.state import LocalStore

    name = _kind_and_name(target, "ModelVersion")
    runner = Runner(Lake.from_env(), LocalStore())
    try:
        outcome = run_backtest(runner, namespace, name)
    except BacktestError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    console.print(history_table(outcome.status.get("evaluationHistory") or []))
    degraded = next(
        (c for c in outcome.status.get("conditions") or [] if c["type"] == "Degraded"), None
    )
    if degraded is not None:
        console.print(
            f"Degraded={degraded['status']} ({degraded['reason']}): {degraded['message']}"
        )
    if not outcome.entry["passed"]:
        raise typer.Exit(1)


@app.command("reproduce")
def reproduce(
    target: str = typer.Argument(..., help="trainingjob/<name>"),
    namespace: str = typer.Option("default", "--namespace", "-n"),
    tolerance: float = typer.Option(
        1e-4, min=0.0, help="Largest absolute difference per metric that still reproduces."
    ),
) -> None:
    """Train a finished TrainingJob again from the dataset version, seed and hyperparameters its
    artifact pins, into a scratch run folder (the registered version is not touched), and print
    each metric then and now. Exits 1 when a metric differs by more than --tolerance, when the
    code version or the dataset digest differs, or when the run fails."""
    from neuraxis.lake import Lake
    from neuraxis.local.report import console, reproduction_table
    from neuraxis.local.reproduce import ReproduceError
    from neuraxis.local.reproduce import reproduce as run_reproduce
    from neuraxis.local.runner import Runner
    from neuraxis.local.state import LocalStore

    name = _kind_and_name(target, "TrainingJob")
    runner = Runner(Lake.from_env(), LocalStore())
    try:
        outcome = run_reproduce(runner, namespace, name, tolerance)
    except ReproduceError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    pinned = outcome.pinned
    data = pinned.get("dataset") or {}
    console.print(
        f"pinned: {data.get('name')} v{data.get('version')} ({data.get('digest')}), "
        f"seed {pinned.get('seed')}, code {pinned.get('codeVersion')}"
    )
    console.print(reproduction_table(outcome.metrics))
    console.print(f"reproduced artifact {outcome.artifact_uri} (run {outcome.run_id})")
    for warning in outcome.warnings:
        console.print(f"[bold red]WARNING[/] {warning}")
    if not outcome.reproduced:
        raise typer.Exit(1)


workload_app = typer.Typer(
    help="What runs in pods (and locally): etl, train, serve, edge, federated, ..."
)
app.add_typer(workload_app, name="workload")


@functools.cache  # once: typer would register the groups twice
def mount() -> None:
    """Sub-commands whose modules are light to import (their heavy imports are inside)."""
    from neuraxis.dev.cli import dev_app
    from neuraxis.infra.local import infra_app
    from neuraxis.workloads.bundle.cli import bundle_command
    from neuraxis.workloads.edge.cli import edge_command
    from neuraxis.workloads.etl.cli import etl_command
    from neuraxis.workloads.etl.executor import spark_executor_command
    from neuraxis.workloads.etl.server import etl_server_command
    from neuraxis.workloads.evaluate.cli import evaluate_command
    from neuraxis.workloads.federated.cli import federated_app
    from neuraxis.workloads.serve.cli import serve_command
    from neuraxis.workloads.train.cli import train_command

    dev_app.add_typer(infra_app, name="infra")
    app.add_typer(dev_app, name="dev")
    workload_app.command("etl")(etl_command)
    workload_app.command("spark-executor")(spark_executor_command)
    workload_app.command("etl-server", hidden=True)(etl_server_command)
    workload_app.command("train")(train_command)
    workload_app.command("evaluate")(evaluate_command)
    workload_app.command("bundle")(bundle_command)
    workload_app.command("serve")(serve_command)
    workload_app.command("edge")(edge_command)
    workload_app.add_typer(federated_app, name="federated")


def main() -> None:
    mount()
    app()


if __name__ == "__main__":
    main()
