"""The offline workload image: Dockerfile parity, deterministic layer tars and OCI archives,
layer keys and the source layer (no cluster, no container engine; tiny inputs)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from neuraxis.dev import image, oci, rootfs

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# Dockerfile parity


@dataclass
class Dockerfile:
    base: str = ""
    runs: list[str] = field(default_factory=list)
    user: str = ""
    workdir: str = ""
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)


def parse_dockerfile(text: str) -> Dockerfile:
    """The instructions this test compares (continuation lines joined, comments dropped)."""
    out = Dockerfile()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if keyword == "FROM":
            out.base = rest
        elif keyword == "RUN":
            out.runs.append(rest)
        elif keyword == "USER":
            out.user = rest
        elif keyword == "WORKDIR":
            out.workdir = rest
        elif keyword == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                out.env[key] = value
        elif keyword == "ENTRYPOINT":
            out.entrypoint = json.loads(rest)
        elif keyword == "CMD":
            out.cmd = json.loads(rest)
    return out


def command_after(runs: list[str], words: tuple[str, ...]) -> list[str]:
    """The arguments that follow `words` in the one RUN command holding them, up to `&&`."""
    found = []
    for run in runs:
        tokens = shlex.split(run)
        for i in range(len(tokens) - len(words) + 1):
            if tuple(tokens[i : i + len(words)]) == words:
                rest = tokens[i + len(words) :]
                found.append(rest[: rest.index("&&")] if "&&" in rest else rest)
    assert len(found) == 1, f"expected one `{' '.join(words)}` in the Dockerfile, found {found}"
    return found[0]


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile((REPO / "Dockerfile").read_text())


def test_dockerfile_base_and_packages_match_the_offline_build(dockerfile: Dockerfile) -> None:
    assert dockerfile.base == f"debian:{image.DESCRIPTION.suite}-slim"
    install = command_after(dockerfile.runs, ("apt-get", "install"))
    packages = [token for token in install if not token.startswith("-")]
    assert "--no-install-recommends" in install
    assert sorted(packages) == sorted(image.DESCRIPTION.packages)


def test_dockerfile_user_matches_the_offline_build(dockerfile: Dockerfile) -> None:
    useradd = ["useradd", *command_after(dockerfile.runs, ("useradd",))]
    assert useradd == image._useradd_argv(image.DESCRIPTION)
    assert dockerfile.user == image.DESCRIPTION.runtime.user == str(image.DESCRIPTION.uid)


def test_dockerfile_runtime_config_matches_the_offline_build(dockerfile: Dockerfile) -> None:
    runtime = image.DESCRIPTION.runtime
    assert dockerfile.env == dict(runtime.env)
    assert tuple(dockerfile.entrypoint) == runtime.entrypoint
    assert tuple(dockerfile.cmd) == runtime.cmd
    assert dockerfile.workdir == runtime.workdir == image.APP_DIR


def test_dockerfile_venv_and_jars_are_where_the_offline_build_puts_them(
    dockerfile: Dockerfile,
) -> None:
    venv = command_after(dockerfile.runs, ("uv", "venv"))
    assert venv[-1] == image.VENV
    assert venv[venv.index("--python") + 1] == image.PYTHON
    jars_run = next(run for run in dockerfile.runs if "jars.py" in run)
    assert f"NEURAXIS_JARS_DIR={image.JARS_DIR}" in jars_run
    jars_argv = shlex.split(jars_run.split("&&")[0])
    assert sorted(jars_argv[jars_argv.index("/tmp/jars.py") + 1 :]) == sorted(image.JAR_SETS)
    assert image.DESCRIPTION.env()["NEURAXIS_JARS_DIR"] == image.JARS_DIR


def test_parity_check_notices_a_difference() -> None:
    changed = (REPO / "Dockerfile").read_text().replace(" tini ", " tini procps ")
    packages = command_after(parse_dockerfile(changed).runs, ("apt-get", "install"))
    assert sorted(p for p in packages if not p.startswith("-")) != sorted(
        image.DESCRIPTION.packages
    )


# ---------------------------------------------------------------------------------------------
# deterministic layer tars


def make_tree(root: Path) -> Path:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "b.py").write_text("print('b')\n")
    (root / "pkg" / "a.txt").write_text("alpha\n")
    (root / "pkg" / "sub" / "run.sh").write_text("#!/bin/sh\necho run\n")
    os.chmod(root / "pkg" / "sub" / "run.sh", 0o755)
    (root / "pkg" / "link").symlink_to("a.txt")
    os.link(root / "pkg" / "a.txt", root / "pkg" / "z-hard.txt")
    long_dir = root / ("d" * 60) / ("e" * 60)
    long_dir.mkdir(parents=True)
    (long_dir / "long-name.txt").write_text("long\n")
    return root


def read_tar(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def tar_bytes(members: list[oci.Member]) -> bytes:
    buffer = io.BytesIO()
    oci.write_tar(members, buffer)
    return buffer.getvalue()


GENERATED = oci.TreeOptions(mtime=oci.FIXED_MTIME, owner=(0, 0))


def test_layer_tar_is_sorted_with_numeric_owners_and_fixed_times(tmp_path: Path) -> None:
    members = oci.scan_tree(make_tree(tmp_path / "t"), GENERATED)
    infos = read_tar(tar_bytes(members))
    names = [info.name for info in infos]
    assert names == sorted(names, key=oci.tree_order)
    assert names.index("pkg") < names.index("pkg/sub") < names.index("pkg/sub/run.sh")
    assert {(i.uid, i.gid, i.uname, i.gname, i.mtime) for i in infos} == {
        (0, 0, "", "", oci.FIXED_MTIME)
    }
    by_name = {info.name: info for info in infos}
    assert by_name["pkg/link"].issym() and by_name["pkg/link"].linkname == "a.txt"
    # The second name of a file is a hard link to the first one written.
    assert by_name["pkg/z-hard.txt"].islnk() and by_name["pkg/z-hard.txt"].linkname == "pkg/a.txt"
    assert by_name["pkg/sub/run.sh"].mode == 0o755
    assert by_name["pkg/b.py"].mode == 0o644
    long_name = f"{'d' * 60}/{'e' * 60}/long-name.txt"
    assert long_name in by_name  # longer than ustar's 100 characters: a PAX record


def test_layer_tar_content_round_trips(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t")
    data = tar_bytes(oci.scan_tree(tree, GENERATED))
    out = tmp_path / "out"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(out, filter="tar")
    assert (out / "pkg" / "sub" / "run.sh").read_text() == "#!/bin/sh\necho run\n"
    assert (out / "pkg" / "z-hard.txt").read_text() == "alpha\n"


def test_same_tree_gives_the_same_digest_whenever_built(tmp_path: Path) -> None:
    first = oci.measure_tar(oci.scan_tree(make_tree(tmp_path / "one"), GENERATED))
    second_tree = make_tree(tmp_path / "two")
    os.utime(second_tree / "pkg" / "b.py", (1, 1))  # other times, other folder
    second = oci.measure_tar(oci.scan_tree(second_tree, GENERATED))
    assert first == second
    assert first.size % oci.BLOCK == 0
    assert (
        first.digest
        == "sha256:"
        + hashlib.sha256(tar_bytes(oci.scan_tree(tmp_path / "one", GENERATED))).hexdigest()
    )


def test_one_changed_byte_changes_the_digest(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t")
    before = oci.measure_tar(oci.scan_tree(tree, GENERATED))
    (tree / "pkg" / "b.py").write_text("print('c')\n")
    assert oci.measure_tar(oci.scan_tree(tree, GENERATED)) != before


def test_own_times_and_owners_are_kept_without_options(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t")
    os.utime(tree / "pkg" / "b.py", (1_600_000_000, 1_600_000_000))
    by_path = {m.path: m for m in oci.scan_tree(tree)}
    assert by_path["pkg/b.py"].mtime == 1_600_000_000
    assert by_path["pkg/b.py"].uid == os.getuid()


def test_skip_keeps_a_folder_but_drops_its_contents(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t")
    (tree / "dev").mkdir()
    os.mkfifo(tree / "dev" / "pipe")
    with pytest.raises(oci.ImageArchiveError, match="dev/pipe"):
        oci.scan_tree(tree)
    paths = [m.path for m in oci.scan_tree(tree, oci.TreeOptions(skip=image._runtime_filled))]
    assert "dev" in paths and "dev/pipe" not in paths


def test_a_file_changed_after_measuring_is_refused(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t")
    members = oci.scan_tree(tree, GENERATED)
    (tree / "pkg" / "a.txt").write_text("alpha, longer now\n")
    with pytest.raises(oci.ImageArchiveError, match=r"pkg/a\.txt.*changed size"):
        tar_bytes(members)


def test_with_parents_adds_missing_folders_and_refuses_duplicates() -> None:
    members = oci.with_parents([oci.generated_file("opt/app/x.txt", b"x")])
    assert [m.path for m in members] == ["opt", "opt/app", "opt/app/x.txt"]
    assert members[0].kind is oci.MemberKind.DIR and members[0].mode == 0o755
    with pytest.raises(oci.ImageArchiveError, match="two layer members"):
        oci.with_parents([oci.generated_file("a", b"1"), oci.generated_file("a", b"2")])


# ---------------------------------------------------------------------------------------------
# OCI archive


def blob(name: str, members: list[oci.Member]) -> oci.LayerBlob:
    measured = oci.measure_tar(members)
    return oci.LayerBlob(name, measured.digest, measured.size, lambda: members)


RUNTIME = oci.RuntimeConfig(
    user="65534", env=(("A", "1"),), entrypoint=("/srv/x",), cmd=(), workdir="/srv"
)


def tiny_image(tmp_path: Path, ref: str = "neuraxis.local/tiny:1") -> oci.Image:
    layers = [
        blob(name, oci.with_parents([oci.generated_file(f"srv/{name}.txt", content)]))
        for name, content in (("one", b"first\n"), ("two", b"second\n"))
    ]
    return oci.assemble(ref, RUNTIME, layers)


def archive_members(data: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for info in tar.getmembers():
            handle = tar.extractfile(info)
            out[info.name] = handle.read() if handle else b""
    return out


def test_archive_is_a_complete_oci_layout(tmp_path: Path) -> None:
    img = tiny_image(tmp_path)
    buffer = io.BytesIO()
    written = oci.write_archive(img, buffer)
    files = archive_members(buffer.getvalue())
    assert list(files)[-1] == "index.json"  # last: a cut stream is no image
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/") and data:
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    index = json.loads(files["index.json"])
    entry = index["manifests"][0]
    assert entry["annotations"] == {oci.ANNOTATION_IMAGE_NAME: img.ref}
    manifest = json.loads(files[f"blobs/sha256/{entry['digest'].split(':')[1]}"])
    config = json.loads(files[f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}"])
    assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in manifest["layers"]]
    assert config["config"]["User"] == "65534" and config["config"]["Env"] == ["A=1"]
    assert {layer["mediaType"] for layer in manifest["layers"]} == {oci.MEDIA_LAYER}
    assert sorted(written) == sorted(img.blob_digests())
    with tarfile.open(fileobj=io.BytesIO(files[f"blobs/sha256/{img.layers[1].digest[7:]}"])) as t:
        assert t.extractfile("srv/two.txt").read() == b"second\n"  # type: ignore[union-attr]


def test_archive_leaves_out_the_blobs_the_consumer_holds(tmp_path: Path) -> None:
    img = tiny_image(tmp_path)
    buffer = io.BytesIO()
    written = oci.write_archive(img, buffer, omit=[img.layers[0].digest])
    files = archive_members(buffer.getvalue())
    assert f"blobs/sha256/{img.layers[0].digest[7:]}" not in files
    assert f"blobs/sha256/{img.layers[1].digest[7:]}" in files
    assert img.layers[0].digest not in written
    assert img.config_descriptor.digest in written and img.manifest_descriptor.digest in written


def test_archive_and_documents_are_deterministic(tmp_path: Path) -> None:
    first, second = io.BytesIO(), io.BytesIO()
    oci.write_archive(tiny_image(tmp_path), first)
    oci.write_archive(tiny_image(tmp_path), second)
    assert first.getvalue() == second.getvalue()
    assert tiny_image(tmp_path, "other:1").manifest == tiny_image(tmp_path).manifest


def test_archive_refuses_a_layer_that_changed_since_it_was_measured(tmp_path: Path) -> None:
    img = tiny_image(tmp_path)
    changed = oci.with_parents([oci.generated_file("srv/one.txt", b"FIRST\n")])
    stale = oci.LayerBlob("one", img.layers[0].digest, img.layers[0].size, lambda: changed)
    broken = oci.Image(img.ref, (stale, img.layers[1]), img.config, img.manifest)
    with pytest.raises(oci.ImageArchiveError, match="layer one: its content changed"):
        oci.write_archive(broken, io.BytesIO())


def test_import_reports_why_the_consumer_stopped_reading(tmp_path: Path) -> None:
    # A real process in ctr's place that reads a little of the archive, complains and exits.
    (tmp_path / "tree" / "srv").mkdir(parents=True)
    (tmp_path / "tree" / "srv" / "big").write_bytes(b"x" * (8 << 20))  # read while streamed
    big = blob("big", oci.scan_tree(tmp_path / "tree", GENERATED))
    img = oci.assemble("neuraxis.local/big:1", RUNTIME, [big])
    stops_early = image.Containerd(
        ("sh", "-c", 'head -c 1000 >/dev/null; echo "ctr: unexpected EOF" >&2; exit 3', "sh")
    )
    with pytest.raises(image.ImageError, match=r"(?s)exited 3.*ctr: unexpected EOF"):
        image._stream_import(img, stops_early, (), lambda _m: None)


# ---------------------------------------------------------------------------------------------
# keys and the tag


def test_keys_follow_what_decides_each_layer() -> None:
    base = image.base_key()
    more = dataclasses.replace(image.DESCRIPTION, packages=(*image.DESCRIPTION.packages, "procps"))
    assert image.base_key(more) != base
    assert image.deps_key(base, b"a==1\n") != image.deps_key(base, b"a==2\n")
    assert image.deps_key(base, b"a==1\n") != image.deps_key("other", b"a==1\n")
    file = image.SourceFile("neuraxis/x.py", False, "", "00")
    edited = image.SourceFile("neuraxis/x.py", False, "", "01")
    assert image.source_key([file], "cpython-311") != image.source_key([edited], "cpython-311")
    keys = {"base": base, "deps": "d", "jars": "j", "source": "s"}
    tag = image.image_tag(keys, image.DESCRIPTION.runtime)
    assert len(tag) == 12 and int(tag, 16) >= 0
    assert image.image_tag({**keys, "source": "s2"}, image.DESCRIPTION.runtime) != tag
    other_runtime = dataclasses.replace(image.DESCRIPTION.runtime, cmd=("operator",))
    assert image.image_tag(keys, other_runtime) != tag


def test_locked_version_reads_the_lock() -> None:
    lock = b"# comment\npyspark==4.2.0\n    # via -r requirements.in\npysparkling==1\n"
    assert image.locked_version(lock, "pyspark") == "4.2.0"
    assert image.locked_version(lock, "torch") is None


# ---------------------------------------------------------------------------------------------
# the source layer


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    repo = tmp_path / "checkout"
    (repo / "neuraxis").mkdir(parents=True)
    (repo / "workloads").mkdir()
    (repo / "neuraxis" / "__init__.py").write_text("")
    (repo / "neuraxis" / "cli.py").write_text("def main() -> int:\n    return 0\n")
    (repo / "workloads" / "job.py").write_text("VALUE = 1\n")
    (repo / "neuraxis" / "workloads").symlink_to("../workloads")
    (repo / "pyproject.toml").write_text(
        '[project]\nname = "neuraxis"\nversion = "0.1.0"\n\n'
        '[project.scripts]\nneuraxis = "neuraxis.cli:main"\n'
    )
    (repo / "notes.txt").write_text("not part of the image\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    return repo


def build_source(repo: Path, work: Path) -> tuple[Path, oci.Measured]:
    files = image.tracked_source(repo)
    tree = work / "tree"
    work.mkdir(parents=True)
    image.build_source_tree(repo, files)(tree, work, work / "log", lambda _m: None)
    return tree, oci.measure_tar(image.source_members(work))


def test_tracked_source_sees_uncommitted_edits_and_links(checkout: Path) -> None:
    files = {f.path: f for f in image.tracked_source(checkout)}
    assert set(files) == {
        "neuraxis/__init__.py",
        "neuraxis/cli.py",
        "neuraxis/workloads",
        "workloads/job.py",
        "pyproject.toml",
    }
    assert files["neuraxis/workloads"].link == "../workloads"
    key = image.source_key(list(files.values()), "cpython-311")
    (checkout / "workloads" / "job.py").write_text("VALUE = 2\n")
    assert image.source_key(image.tracked_source(checkout), "cpython-311") != key


def test_source_layer_is_installed_and_deterministic(checkout: Path, tmp_path: Path) -> None:
    tree, first = build_source(checkout, tmp_path / "one")
    app = tree / "opt" / "neuraxis"
    site = tree / image.SITE_PACKAGES.lstrip("/")
    assert (site / "neuraxis.pth").read_text() == "/opt/neuraxis\n"
    script = (tree / "opt" / "venv" / "bin" / "neuraxis").read_text()
    assert (
        script.startswith("#!/opt/venv/bin/python\n") and "from neuraxis.cli import main" in script
    )
    assert (
        "neuraxis = neuraxis.cli:main"
        in (site / "neuraxis-0.1.0.dist-info" / "entry_points.txt").read_text()
    )
    assert os.readlink(app / "neuraxis" / "workloads") == "../workloads"
    assert not (app / "notes.txt").exists()
    pyc = app / "workloads" / "__pycache__" / "job.cpython-311.pyc"
    # Flags 0b11: hash-based and checked, so the layer's fixed times cannot make it stale.
    assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0b11
    _, second = build_source(checkout, tmp_path / "two")
    assert first == second
    (checkout / "workloads" / "job.py").write_text("VALUE = 3\n")
    _, third = build_source(checkout, tmp_path / "three")
    assert third != first


def test_source_layer_refuses_code_that_does_not_compile(checkout: Path, tmp_path: Path) -> None:
    (checkout / "workloads" / "job.py").write_text("def broken(:\n")
    with pytest.raises(image.ImageError, match=r"workloads/job\.py does not compile"):
        build_source(checkout, tmp_path / "w")


def test_source_layer_imports_through_its_links(checkout: Path, tmp_path: Path) -> None:
    tree, _ = build_source(checkout, tmp_path / "w")
    # -S and another working folder: the real checkout's neuraxis must not be found instead.
    out = subprocess.run(
        [sys.executable, "-S", "-c", "import neuraxis.workloads.job as j; print(j.VALUE)"],
        env={"PYTHONPATH": str(tree / "opt" / "neuraxis")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == "1\n"


# ---------------------------------------------------------------------------------------------
# the layer cache


def test_layer_cache_builds_once_and_records_the_digest(tmp_path: Path) -> None:
    built: list[Path] = []

    def fill(tree: Path, work: Path, log: Path, progress: image.Progress) -> None:
        built.append(tree)
        (tree / "etc").mkdir(parents=True)
        (tree / "etc" / "motd").write_text("hello\n")

    spec = image.LayerSpec("demo", "k1", image.source_members, fill)
    first = image.ensure_layer(spec, tmp_path, lambda _m: None)
    again = image.ensure_layer(spec, tmp_path, lambda _m: None)
    assert len(built) == 1
    assert (first.digest, first.size) == (again.digest, again.size)
    record = image.read_record(spec.directory(tmp_path))
    assert record is not None and record.digest == first.digest
    assert [m.path for m in again.members()] == ["etc", "etc/motd"]
    assert not (tmp_path / "work" / "demo-k1").exists()


def test_a_failed_layer_build_leaves_nothing_behind(tmp_path: Path) -> None:
    def fail(tree: Path, work: Path, log: Path, progress: image.Progress) -> None:
        tree.mkdir(parents=True)
        raise image.ImageError("demo: broke on purpose")

    spec = image.LayerSpec("demo", "k2", image.source_members, fail)
    with pytest.raises(image.ImageError, match="broke on purpose"):
        image.ensure_layer(spec, tmp_path, lambda _m: None)
    assert image.read_record(spec.directory(tmp_path)) is None
    assert not (tmp_path / "work" / "demo-k2").exists()


def test_pruning_keeps_the_most_recently_used_versions(tmp_path: Path) -> None:
    def fill(tree: Path, work: Path, log: Path, progress: image.Progress) -> None:
        tree.mkdir(parents=True)

    specs = [image.LayerSpec("demo", f"k{i}", image.source_members, fill) for i in range(4)]
    for spec in specs:
        image.ensure_layer(spec, tmp_path, lambda _m: None)
    for i, spec in enumerate(specs):  # k0 used last, k1 longest ago
        os.utime(spec.directory(tmp_path) / image.RECORD_FILE, (100 + i, 100 + i))
    os.utime(specs[0].directory(tmp_path) / image.RECORD_FILE, (200, 200))
    (tmp_path / "layers" / "demo-unfinished").mkdir()
    removed = image.prune_layers(tmp_path, 3, lambda _m: None)
    assert sorted(p.name for p in removed) == ["demo-k1", "demo-unfinished"]
    assert sorted(p.name for p in (tmp_path / "layers").iterdir()) == [
        "demo-k0",
        "demo-k2",
        "demo-k3",
    ]
    removed = image.prune_layers(tmp_path, 3, lambda _m: None, {"demo": 1})
    assert sorted(p.name for p in removed) == ["demo-k2", "demo-k3"]


def test_recent_refs_are_the_latest_builds(tmp_path: Path) -> None:
    (tmp_path / "refs").mkdir()
    for i, tag in enumerate(("aaa", "bbb", "ccc")):
        (tmp_path / "refs" / f"{tag}.json").write_text("{}")
        os.utime(tmp_path / "refs" / f"{tag}.json", (100 - i, 100 - i))  # aaa newest
    assert image.recent_refs(tmp_path, 2) == [f"{image.REPOSITORY}:bbb", f"{image.REPOSITORY}:aaa"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_remove_tree_unmounts_before_deleting(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("must survive\n")
    work = tmp_path / "work"
    (work / "bound").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(outside), str(work / "bound")], check=True)
    rootfs.remove_tree(work)
    assert not work.exists()
    assert (outside / "keep.txt").read_text() == "must survive\n"
