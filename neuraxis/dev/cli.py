"""`neuraxis dev ...`: tool builds and the local control plane."""

from __future__ import annotations

from pathlib import Path

import typer

dev_app = typer.Typer(help="Developer tooling: the pinned toolchain and the local cluster.")
tools_app = typer.Typer(help="The pinned Go toolchain (Kubernetes, etcd, KWOK, ...).")
cluster_app = typer.Typer(help="The local control plane (real Kubernetes, KWOK nodes).")
node_app = typer.Typer(help="The real node of the local cluster (kubelet, containerd).")
dev_app.add_typer(tools_app, name="tools")
dev_app.add_typer(cluster_app, name="cluster")
dev_app.add_typer(node_app, name="node")


@tools_app.command("build")
def tools_build(
    only: list[str] = typer.Option(
        [], "--only", help="Build only this tool or binary (repeatable), e.g. kubernetes, kwokctl."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the cache is valid."),
    jobs: int = typer.Option(2, "--jobs", min=1, help="Tool builds that run at once."),
) -> None:
    """Build the pinned tools into the versioned cache (seconds when already built)."""
    from neuraxis.dev import toolchain

    try:
        bin_dir = toolchain.build(only, force=force, jobs=jobs)
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
    no_real_node: bool = typer.Option(
        False, "--no-real-node", help="Only KWOK nodes: no kubelet, containerd, bridge (root)."
    ),
    node_label: list[str] = typer.Option(
        [], "--node-label", help="A label of the real node, key=value (repeatable)."
    ),
    node_taint: list[str] = typer.Option(
        [], "--node-taint", help="A taint of the real node, key=value:Effect (repeatable)."
    ),
) -> None:
    """Start the local cluster (or reuse a healthy one); prints the kubeconfig path."""
    from neuraxis.dev import cluster, node, toolchain

    try:
        labels = dict(node.parse_label(text) for text in node_label)
        taints = [node.parse_taint(text) for text in node_taint]
        info = cluster.up(bare=bare, real=not no_real_node, node_labels=labels, node_taints=taints)
    except (cluster.ClusterError, node.NodeError, toolchain.ToolchainError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"export KUBECONFIG={info.kubeconfig}")


@cluster_app.command("down")
def cluster_down() -> None:
    """Stop the local cluster, its real node and every process they started."""
    from neuraxis.dev import cluster, node, toolchain

    try:
        cluster.down()
    except (cluster.ClusterError, node.NodeError, toolchain.ToolchainError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@node_app.command("deps")
def node_deps() -> None:
    """Install the node's Debian packages (runc, CNI plugins, iptables, ...) when missing."""
    from neuraxis.dev import node

    try:
        node.install_host_packages()
    except node.NodeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@cluster_app.command("kubeconfig")
def cluster_kubeconfig() -> None:
    """Print the kubeconfig path of the local cluster (`export KUBECONFIG=$(...)`)."""
    from neuraxis.dev import cluster

    typer.echo(str(cluster.kubeconfig_path()))


image_app = typer.Typer(help="The workload image, built offline and imported into the node.")
dev_app.add_typer(image_app, name="image")


@image_app.command("build")
def image_build(
    archive: str = typer.Option(
        "", "--archive", help="Also write the whole image as an OCI archive file here."
    ),
) -> None:
    """Build the workload image's layers (cached by key); prints the image reference."""
    from neuraxis.dev import image

    try:
        built = image.build()
        if archive:
            image.write_archive_file(built, Path(archive))
    except image.ERRORS as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(built.ref)


@image_app.command("ref")
def image_ref() -> None:
    """Print the reference the checkout's image has (no build: the tag hashes the layer keys)."""
    from neuraxis.dev import image

    try:
        typer.echo(image.ref())
    except image.ERRORS as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@image_app.command("import")
def image_import(
    address: str = typer.Option(
        "", "--address", help="containerd's socket; default: the running real node's."
    ),
    ctr: str = typer.Option("", "--ctr", help="The ctr binary; default: the toolset's."),
    namespace: str = typer.Option("k8s.io", "--namespace", help="containerd namespace."),
    if_node_running: bool = typer.Option(
        False, "--if-node-running", help="Succeed without importing when no node runs."
    ),
) -> None:
    """Build if needed, then import the image into containerd (only the layers it lacks)."""
    from neuraxis.dev import image

    try:
        containerd = (
            image.Containerd.at(address, ctr or image.ctr_binary(), namespace)
            if address
            else image.node_containerd(namespace)
        )
        if containerd is None and if_node_running:
            typer.echo("no real node is running: image import skipped", err=True)
            return
        image.build_and_import(containerd)
    except image.ERRORS as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
