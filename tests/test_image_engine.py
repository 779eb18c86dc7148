"""Importing an image built by the offline image code into a real containerd (the toolset's
v2 build), in a folder of its own: listed afterwards, unpacked, a second import does nothing,
and a changed top layer sends only that layer."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from neuraxis.dev import image, oci, rootfs, toolchain

pytestmark = pytest.mark.engine

RUNTIME = oci.RuntimeConfig(
    user="65534",
    env=(("PATH", "/bin"),),
    entrypoint=("/bin/app",),
    cmd=("--help",),
    workdir="/srv",
)


def containerd_binaries() -> tuple[Path, Path]:
    try:
        return toolchain.tool_path("containerd"), toolchain.tool_path("ctr")
    except toolchain.ToolchainError as exc:
        pytest.skip(f"containerd is not built: {exc}")


@pytest.fixture(scope="module")
def containerd() -> Iterator[image.Containerd]:
    if os.geteuid() != 0:
        pytest.skip("containerd's snapshotter mounts: needs root")
    daemon, ctr = containerd_binaries()
    # A short folder of its own: unix socket paths are limited to 108 bytes.
    folder = Path(tempfile.mkdtemp(prefix="nx-ctrd-", dir="/tmp"))
    socket = folder / "containerd.sock"
    q = json.dumps
    (folder / "config.toml").write_text(
        f"version = 3\nroot = {q(str(folder / 'root'))}\nstate = {q(str(folder / 'state'))}\n"
        # Only the image store and snapshotter are exercised: no CRI, NRI or opt plugins.
        'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", '
        '"io.containerd.cri.v1.runtime", "io.containerd.internal.v1.opt", '
        '"io.containerd.nri.v1.nri"]\n'
        f"[grpc]\n  address = {q(str(socket))}\n"
        f"[ttrpc]\n  address = {q(str(socket) + '.ttrpc')}\n"
    )
    with open(folder / "containerd.log", "w") as log:
        proc = subprocess.Popen(
            [str(daemon), "--config", str(folder / "config.toml")], stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 30
        while not socket.is_socket():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"containerd did not start:\n{(folder / 'containerd.log').read_text()}")
            time.sleep(0.1)
        yield image.Containerd.at(str(socket), str(ctr))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        rootfs.remove_tree(folder)


def tree_layer(name: str, files: dict[str, str]) -> image.LayerSpec:
    """A layer built the way the workload image's are: a tree filled once, cached by key."""

    def fill(tree: Path, work: Path, log: Path, progress: image.Progress) -> None:
        for path, text in files.items():
            (tree / path).parent.mkdir(parents=True, exist_ok=True)
            (tree / path).write_text(text)

    key = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    return image.LayerSpec(name, key, image.source_members, fill)


def tiny_image(cache: Path, ref: str, app: str) -> oci.Image:
    layers = [
        tree_layer("base", {"etc/os-release": "ID=tiny\n", "bin/app": "#!/bin/sh\n"}),
        tree_layer("source", {"srv/app.txt": app}),
    ]
    blobs = [image.ensure_layer(spec, cache, lambda _m: None) for spec in layers]
    return oci.assemble(ref, RUNTIME, blobs)


def chain_id(diff_ids: list[str]) -> str:
    """The snapshot key containerd gives the unpacked top layer (OCI chain ID)."""
    chain = diff_ids[0]
    for diff_id in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
    return chain


def ctr(containerd: image.Containerd, *args: str) -> str:
    return subprocess.run(containerd.argv(*args), capture_output=True, text=True, check=True).stdout


def test_import_lists_and_unpacks_the_image_and_a_second_import_is_a_no_op(
    containerd: image.Containerd, tmp_path: Path
) -> None:
    img = tiny_image(tmp_path, "neuraxis.local/tiny:one", "one\n")
    first = image.import_image(img, containerd, lambda _m: None)
    assert not first.already_present
    assert sorted(first.blobs_sent) == sorted(img.blob_digests())
    listing = ctr(containerd, "images", "ls")
    line = next(row for row in listing.splitlines() if row.startswith(img.ref + " "))
    assert img.manifest_descriptor.digest in line
    snapshots = ctr(containerd, "snapshots", "--snapshotter", "overlayfs", "ls")
    assert chain_id([layer.digest for layer in img.layers]) in snapshots

    again = image.import_image(img, containerd, lambda _m: None)
    assert again.already_present and again.blobs_sent == () and again.bytes_sent == 0


def test_a_changed_top_layer_imports_only_that_layer(
    containerd: image.Containerd, tmp_path: Path
) -> None:
    old = tiny_image(tmp_path, "neuraxis.local/tiny:two", "two\n")
    image.import_image(old, containerd, lambda _m: None)
    new = tiny_image(tmp_path, "neuraxis.local/tiny:three", "three\n")
    assert new.layers[0].digest == old.layers[0].digest
    result = image.import_image(new, containerd, lambda _m: None)
    assert new.layers[0].digest not in result.blobs_sent
    assert new.layers[1].digest in result.blobs_sent
    assert new.ref in containerd.image_names()
    snapshots = ctr(containerd, "snapshots", "--snapshotter", "overlayfs", "ls")
    assert chain_id([layer.digest for layer in new.layers]) in snapshots


def test_older_tags_of_the_repository_are_removed(
    containerd: image.Containerd, tmp_path: Path
) -> None:
    old = tiny_image(tmp_path, f"{image.REPOSITORY}:old", "old\n")
    new = tiny_image(tmp_path, f"{image.REPOSITORY}:new", "new\n")
    other = tiny_image(tmp_path, "neuraxis.local/other:1", "other\n")
    for img in (old, new, other):
        image.import_image(img, containerd, lambda _m: None)
    removed = image.prune_images(containerd, [new.ref], lambda _m: None)
    assert removed == [old.ref]
    names = containerd.image_names()
    assert new.ref in names and other.ref in names and old.ref not in names
