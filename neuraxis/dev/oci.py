"""Deterministic layer tars and OCI image archives, written as streams.

No container engine runs on the development machines, so images are assembled here: a layer is
a sorted list of `Member`s (directories, files, links) whose tar is written byte-for-byte the same
for the same tree: names sorted, numeric owners and no owner names, PAX headers only where ustar
cannot hold a field, and no clock readings. The layer's digest and size are measured by writing
the tar to a hashing sink; the archive (OCI image layout: `oci-layout`, blobs, `index.json`) is
then written straight into its consumer (`ctr images import -`) by writing each tar again, so a
multi-gigabyte layer never lands on disk as a tar file.

Standard library only: it runs from `make` set-up, before the heavy dependencies matter.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

# 2024-01-01T00:00:00Z: the modification time of every member of a generated layer, so that the
# same content gives the same digest whenever and wherever it is built.
FIXED_MTIME = 1_704_067_200
BLOCK = 512
CHUNK = 1 << 20

OCI_LAYOUT_VERSION = "1.0.0"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
# Uncompressed: compressing 8 GB on two cores costs minutes, and a local containerd stores and
# unpacks an uncompressed layer just as well.
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
# containerd names an imported image after this annotation of its index entry.
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"


class ImageArchiveError(RuntimeError):
    """A layer or archive could not be written as described; the message names the member."""


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class MemberKind(enum.Enum):
    DIR = "dir"
    FILE = "file"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"


_TAR_TYPES = {
    MemberKind.DIR: tarfile.DIRTYPE,
    MemberKind.FILE: tarfile.REGTYPE,
    MemberKind.SYMLINK: tarfile.SYMTYPE,
    MemberKind.HARDLINK: tarfile.LNKTYPE,
}


@dataclass(frozen=True)
class Member:
    """One tar member. `path` is relative to the image root, '/'-separated, without './'.

    A FILE's bytes come from `source` (a file read while the tar is written) or `data`; `link`
    is a symlink's target or, for a HARDLINK, the path of the member it repeats."""

    path: str
    kind: MemberKind
    mode: int
    mtime: int = FIXED_MTIME
    uid: int = 0
    gid: int = 0
    size: int = 0
    source: str | None = None
    data: bytes | None = None
    link: str = ""


def directory(path: str, mode: int = 0o755, mtime: int = FIXED_MTIME) -> Member:
    return Member(path, MemberKind.DIR, mode, mtime)


def generated_file(path: str, data: bytes, mode: int = 0o644, mtime: int = FIXED_MTIME) -> Member:
    return Member(path, MemberKind.FILE, mode, mtime, size=len(data), data=data)


def tree_order(path: str) -> tuple[str, ...]:
    """Sort key that keeps every directory right before its own contents."""
    return tuple(path.split("/"))


# ---------------------------------------------------------------------------------------------
# members from a directory tree


@dataclass(frozen=True)
class TreeOptions:
    """How a directory on disk becomes layer members.

    `prefix` is where the tree's root lands in the image ('' for the image root). `mtime` and
    `owner` replace the files' own values when given. `skip(path)` drops a member (and, for a
    directory, everything below it); the directory's own entry is kept when only its contents
    are skipped by the predicate."""

    prefix: str = ""
    mtime: int | None = None
    owner: tuple[int, int] | None = None
    skip: Callable[[str], bool] | None = None


def scan_tree(root: Path, options: TreeOptions = TreeOptions()) -> list[Member]:
    """The members of the tree under `root` in tree order; the root itself is not a member.

    Files with several names become one FILE and HARDLINKs to it, in the order written."""
    if not root.is_dir():
        raise ImageArchiveError(f"layer tree {root} is not a directory")
    members: list[Member] = []
    first_names: dict[tuple[int, int], str] = {}
    _scan_into(root, options.prefix.strip("/"), options, members, first_names)
    return members


def _scan_into(
    directory_path: Path,
    prefix: str,
    options: TreeOptions,
    members: list[Member],
    first_names: dict[tuple[int, int], str],
) -> None:
    with os.scandir(directory_path) as entries:
        names = sorted(entry.name for entry in entries)
    for name in names:
        path = f"{prefix}/{name}" if prefix else name
        if options.skip is not None and options.skip(path):
            continue
        full = directory_path / name
        st = os.lstat(full)
        member = _member_from_stat(path, full, st, options, first_names)
        members.append(member)
        if member.kind is MemberKind.DIR:
            _scan_into(full, path, options, members, first_names)


def _member_from_stat(
    path: str,
    full: Path,
    st: os.stat_result,
    options: TreeOptions,
    first_names: dict[tuple[int, int], str],
) -> Member:
    mode = stat.S_IMODE(st.st_mode)
    mtime = options.mtime if options.mtime is not None else int(st.st_mtime)
    uid, gid = options.owner if options.owner is not None else (st.st_uid, st.st_gid)
    if stat.S_ISDIR(st.st_mode):
        return Member(path, MemberKind.DIR, mode, mtime, uid, gid)
    if stat.S_ISLNK(st.st_mode):
        return Member(path, MemberKind.SYMLINK, mode, mtime, uid, gid, link=os.readlink(full))
    if stat.S_ISREG(st.st_mode):
        if st.st_nlink > 1:
            inode = (st.st_dev, st.st_ino)
            if inode in first_names:
                link = first_names[inode]
                return Member(path, MemberKind.HARDLINK, mode, mtime, uid, gid, link=link)
            first_names[inode] = path
        return Member(
            path, MemberKind.FILE, mode, mtime, uid, gid, size=st.st_size, source=str(full)
        )
    raise ImageArchiveError(
        f"{full}: not a directory, file or link (mode {stat.filemode(st.st_mode)}); "
        "device nodes, sockets and pipes do not belong in an image layer"
    )


def with_parents(members: Iterable[Member], mtime: int = FIXED_MTIME) -> list[Member]:
    """The members plus a 0755 root-owned entry for every parent directory none of them
    describes, sorted in tree order; two members with one path are an error."""
    by_path: dict[str, Member] = {}
    for member in members:
        if member.path in by_path:
            raise ImageArchiveError(f"two layer members have the path {member.path!r}")
        by_path[member.path] = member
    for path in list(by_path):
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in by_path:
                by_path[parent] = directory(parent, mtime=mtime)
    return sorted(by_path.values(), key=lambda m: tree_order(m.path))


# ---------------------------------------------------------------------------------------------
# tar writing


class DigestWriter:
    """A sink that hashes and counts what passes through it (and forwards it, when given)."""

    def __init__(self, out: Sink | None = None) -> None:
        self._sha = hashlib.sha256()
        self._out = out
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self._sha.update(data)
        self.size += len(data)
        if self._out is not None:
            self._out.write(data)
        return len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self._sha.hexdigest()


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def tar_header(member: Member) -> bytes:
    """The member's header block(s); PAX records only for what ustar cannot hold."""
    info = tarfile.TarInfo(member.path)
    info.type = _TAR_TYPES[member.kind]
    info.mode = member.mode
    info.uid = member.uid
    info.gid = member.gid
    info.uname = ""
    info.gname = ""
    info.mtime = member.mtime
    info.size = member.size if member.kind is MemberKind.FILE else 0
    info.linkname = member.link
    try:
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    except (ValueError, UnicodeError) as exc:
        raise ImageArchiveError(f"layer member {member.path!r}: no tar header ({exc})") from exc


def write_member(member: Member, out: Sink) -> None:
    out.write(tar_header(member))
    if member.kind is not MemberKind.FILE:
        return
    if member.data is not None:
        out.write(member.data)
    elif member.source is not None:
        _copy_exactly(member, member.source, out)
    elif member.size:
        raise ImageArchiveError(f"layer member {member.path!r} has a size but no content")
    out.write(_padding(member.size))


def _copy_exactly(member: Member, source: str, out: Sink) -> None:
    """Copy the file's bytes, failing if it no longer has the size its header announced (the
    tree changed between measuring the layer and writing it). Errors writing to `out` (the
    consumer went away) propagate unchanged."""
    remaining = member.size
    try:
        # Not a `with` around the loop: only reading errors are this member's fault.
        fh = open(source, "rb")  # noqa: SIM115 - closed by the `with fh` below
    except OSError as exc:
        raise ImageArchiveError(
            f"layer member {member.path!r}: cannot read {source}: {exc}"
        ) from exc
    with fh:
        while remaining:
            chunk = _read(fh, min(CHUNK, remaining), member, source)
            if not chunk:
                break
            out.write(chunk)
            remaining -= len(chunk)
        grew = bool(_read(fh, 1, member, source))
    if remaining or grew:
        raise ImageArchiveError(
            f"layer member {member.path!r}: {source} changed size while the layer was written "
            f"(expected {member.size} bytes); build the image again"
        )


def _read(fh: BinaryIO, size: int, member: Member, source: str) -> bytes:
    try:
        return fh.read(size)
    except OSError as exc:
        raise ImageArchiveError(
            f"layer member {member.path!r}: cannot read {source}: {exc}"
        ) from exc


def write_tar(members: Iterable[Member], out: Sink) -> None:
    """A complete tar stream of the members, in the order given."""
    for member in members:
        write_member(member, out)
    out.write(b"\0" * (2 * BLOCK))


@dataclass(frozen=True)
class Measured:
    digest: str
    size: int


def measure_tar(members: Iterable[Member]) -> Measured:
    """The sha256 digest and size of the tar of these members, without storing it."""
    sink = DigestWriter()
    write_tar(members, sink)
    return Measured(sink.digest, sink.size)


# ---------------------------------------------------------------------------------------------
# OCI documents


def canonical_json(document: object) -> bytes:
    """Sorted keys and no spaces: the same document always has the same digest."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")


@dataclass(frozen=True)
class RuntimeConfig:
    """What the image runs: the `config` object of an OCI image configuration."""

    user: str
    env: tuple[tuple[str, str], ...]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    workdir: str
    labels: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "User": self.user,
            "Env": [f"{k}={v}" for k, v in self.env],
            "Entrypoint": list(self.entrypoint),
            "Cmd": list(self.cmd),
            "WorkingDir": self.workdir,
            "Labels": dict(self.labels),
        }


@dataclass(frozen=True)
class LayerBlob:
    """A layer as measured, and how to produce its members again to write it."""

    name: str
    digest: str
    size: int
    members: Callable[[], Sequence[Member]]
    # Where the layer's content is cached, for messages (not part of the image).
    origin: str = ""

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(MEDIA_LAYER, self.digest, self.size)


def image_config(runtime: RuntimeConfig, layers: Sequence[LayerBlob]) -> bytes:
    # No "created" time and one history entry per layer: nothing that changes between builds.
    return canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": runtime.to_json(),
            "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
            "history": [{"created_by": f"neuraxis layer {layer.name}"} for layer in layers],
        }
    )


def image_manifest(config: Descriptor, layers: Sequence[LayerBlob]) -> bytes:
    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": config.to_json(),
            "layers": [layer.descriptor.to_json() for layer in layers],
        }
    )


def image_index(manifest: Descriptor, ref: str) -> bytes:
    entry = Descriptor(MEDIA_MANIFEST, manifest.digest, manifest.size, {ANNOTATION_IMAGE_NAME: ref})
    return canonical_json(
        {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [entry.to_json()]}
    )


@dataclass(frozen=True)
class Image:
    """A complete image: its reference, layers, and the configuration and manifest bytes."""

    ref: str
    layers: tuple[LayerBlob, ...]
    config: bytes
    manifest: bytes

    @property
    def config_descriptor(self) -> Descriptor:
        return Descriptor(MEDIA_CONFIG, sha256_digest(self.config), len(self.config))

    @property
    def manifest_descriptor(self) -> Descriptor:
        return Descriptor(MEDIA_MANIFEST, sha256_digest(self.manifest), len(self.manifest))

    @property
    def index(self) -> bytes:
        return image_index(self.manifest_descriptor, self.ref)

    def blob_digests(self) -> list[str]:
        """Every blob the image consists of: layers, configuration, manifest."""
        return [
            *(layer.digest for layer in self.layers),
            self.config_descriptor.digest,
            self.manifest_descriptor.digest,
        ]


def assemble(ref: str, runtime: RuntimeConfig, layers: Sequence[LayerBlob]) -> Image:
    config = image_config(runtime, layers)
    config_descriptor = Descriptor(MEDIA_CONFIG, sha256_digest(config), len(config))
    return Image(ref, tuple(layers), config, image_manifest(config_descriptor, layers))


# ---------------------------------------------------------------------------------------------
# the archive


def _archive_entry(path: str, size: int, kind: MemberKind = MemberKind.FILE) -> bytes:
    mode = 0o755 if kind is MemberKind.DIR else 0o644
    return tar_header(Member(path, kind, mode, size=size))


def _write_bytes_entry(out: Sink, path: str, data: bytes) -> None:
    out.write(_archive_entry(path, len(data)))
    out.write(data)
    out.write(_padding(len(data)))


def _write_layer_entry(out: Sink, layer: LayerBlob) -> None:
    out.write(_archive_entry(f"blobs/sha256/{layer.descriptor.hex}", layer.size))
    sink = DigestWriter(out)
    write_tar(layer.members(), sink)
    # The header announced `size` bytes: anything else corrupts the rest of the archive.
    if sink.size != layer.size or sink.digest != layer.digest:
        fix = f"remove {layer.origin} and build again" if layer.origin else "build it again"
        raise ImageArchiveError(
            f"layer {layer.name}: its content changed since it was measured "
            f"({sink.digest}, {sink.size} bytes; recorded {layer.digest}, {layer.size} bytes); "
            f"{fix}"
        )
    out.write(_padding(layer.size))


def write_archive(image: Image, out: Sink, omit: Iterable[str] = ()) -> list[str]:
    """Write the image as an OCI image-layout tar; returns the digests of the blobs written.

    Blobs whose digest is in `omit` are left out: the consumer already holds them (containerd
    resolves an index's blobs from its content store). `index.json` comes last, so a stream cut
    short is an incomplete archive rather than an image with missing layers."""
    omitted = set(omit)
    written: list[str] = []
    _write_bytes_entry(
        out, "oci-layout", canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION})
    )
    out.write(_archive_entry("blobs", 0, MemberKind.DIR))
    out.write(_archive_entry("blobs/sha256", 0, MemberKind.DIR))
    for layer in image.layers:
        if layer.digest in omitted:
            continue
        _write_layer_entry(out, layer)
        written.append(layer.digest)
    for document, descriptor in (
        (image.config, image.config_descriptor),
        (image.manifest, image.manifest_descriptor),
    ):
        # The configuration and manifest are small: always sent, so the import names the image.
        _write_bytes_entry(out, f"blobs/sha256/{descriptor.hex}", document)
        written.append(descriptor.digest)
    _write_bytes_entry(out, "index.json", image.index)
    out.write(b"\0" * (2 * BLOCK))
    return written
