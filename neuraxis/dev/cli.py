"""`neuraxis dev ...`: tool builds and the local control plane."""

from __future__ import annotations

import typer

dev_app = typer.Typer(help="Developer tooling: the pinned toolchain and the local cluster.")
tools_app = typer.Typer(help="The pinned Go toolchain (Kubernetes, etcd, KWOK, ...).")
cluster_app = typer.Typer(help="The local control plane (real Kubernetes, KWOK nodes).")
dev_app.add_typer(tools_app, name="tools")
dev_app.add_typer(cluster_app, name="cluster")


@tools_app.command("build")
def tools_build(
    only: list[str] = typer.Option(
        [], "--only", help="Build only this tool or binary (repeatable), e.g. kubernetes, kwokctl."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the cache is valid."),
) -> None:
    """Build the pinned tools into the versioned cache (seconds when already built)."""
    from neuraxis.dev import toolchain

    try:
        bin_dir = toolchain.build(only, force=force)
    except toolchain.ToolchainError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(str(bin_dir))


@tools_app.command("path")
def tools_path(
    tool: str = typer.Argument("", help="A binary name; without it, the bin directory."),
) -> None:
    """Print the bin directory of the pinned toolset (or one tool's path)."""
    from neuraxis.dev import toolchain

    try:
        typer.echo(str(toolchain.tool_path(tool) if tool else toolchain.bin_dir()))
    except toolchain.ToolchainError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@cluster_app.command("up")
def cluster_up(
    bare: bool = typer.Option(False, "--bare", help="Control plane and kwok only: no CRDs, nodes."),
) -> None:
    """Start the local cluster (or reuse a healthy one); prints the kubeconfig path."""
    from neuraxis.dev import cluster, toolchain

    try:
        info = cluster.up(bare=bare)
    except (cluster.ClusterError, toolchain.ToolchainError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"export KUBECONFIG={info.kubeconfig}")


@cluster_app.command("down")
def cluster_down() -> None:
    """Stop the local cluster and every process it started."""
    from neuraxis.dev import cluster, toolchain

    try:
        cluster.down()
    except (cluster.ClusterError, toolchain.ToolchainError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@cluster_app.command("kubeconfig")
def cluster_kubeconfig() -> None:
    """Print the kubeconfig path of the local cluster (`export KUBECONFIG=$(...)`)."""
    from neuraxis.dev import cluster

    typer.echo(str(cluster.kubeconfig_path()))
