"""The single `neuraxis` command line. Sub-commands import their modules lazily so that
`neuraxis --help` stays fast (torch, Spark and Ray are heavy)."""

from __future__ import annotations

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

    run_operator(
        namespace,
        kubeconfig=kubeconfig,
        metrics_port=metrics_port,
        liveness_port=liveness_port,
        json_logs=json_logs,
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


workload_app = typer.Typer(help="What runs in pods (and locally): etl, train, serve, edge, ...")
app.add_typer(workload_app, name="workload")


def _mount() -> None:
    """Sub-commands whose modules are light to import (their heavy imports are inside)."""
    from neuraxis.dev.cli import dev_app
    from neuraxis.workloads.bundle.cli import bundle_command
    from neuraxis.workloads.edge.cli import edge_command
    from neuraxis.workloads.etl.cli import etl_command
    from neuraxis.workloads.evaluate.cli import evaluate_command
    from neuraxis.workloads.serve.cli import serve_command
    from neuraxis.workloads.train.cli import train_command

    app.add_typer(dev_app, name="dev")
    workload_app.command("etl")(etl_command)
    workload_app.command("train")(train_command)
    workload_app.command("evaluate")(evaluate_command)
    workload_app.command("bundle")(bundle_command)
    workload_app.command("serve")(serve_command)
    workload_app.command("edge")(edge_command)


def main() -> None:
    _mount()
    app()


if __name__ == "__main__":
    main()
