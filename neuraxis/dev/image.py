"""The workload image, assembled offline: `neuraxis dev image build | import | ref`.

Pods run every workload (Spark in local mode, torchrun, Ray) and the operator from one image,
described for container engines by the checkout's `Dockerfile`. No engine or registry runs on
the development machines, so this module builds the same image from four layers, each cached
under a key of what decides its content (`<images root>/layers/<layer>-<key>/`):

- base: Debian bookworm (debootstrap minbase) with python3.11, a JRE 17, tini, CA certificates
  and the user 10001. Key: suite, packages, user.
- deps: requirements.lock installed by uv in /opt/venv on Debian's python3.11 (in a chroot of
  the base, through an overlay), byte-compiled. Key: the base key and the lock's sha256.
- jars: the Delta and s3a jar sets of `neuraxis.dev.jars` in /opt/neuraxis/jars, where
  `ensure_jars` finds them offline. Key: the sets' folder names (coordinates, Spark version).
- source: the tracked project code in /opt/neuraxis, a .pth and the console script in the
  venv. Key: the tracked files' paths, modes and content hashes.

plus the configuration (user, entrypoint, environment). The tag is a short hash of all keys,
so `ref` answers without building, and a code change rebuilds and re-imports only the small
source layer. Layer tars are deterministic (`neuraxis.dev.oci`) and are never stored: each is
measured once (digest, size) and written again straight into `ctr images import -`, leaving
out the layers containerd already holds.

The images root is `$NEURAXIS_IMAGES_DIR`, else `$XDG_CACHE_HOME/neuraxis/images`. Building the
base and deps layers needs root (debootstrap, chroot, mount). Standard library only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import py_compile
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuraxis.dev import oci, rootfs

IMAGES_DIR_ENV = "NEURAXIS_IMAGES_DIR"
REPOSITORY = "neuraxis.local/neuraxis"
NAMESPACE = "k8s.io"  # the namespace the kubelet's CRI reads images from
REPO_ROOT = Path(__file__).resolve().parents[2]

DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
VENV = "/opt/venv"
APP_DIR = "/opt/neuraxis"
JARS_DIR = f"{APP_DIR}/jars"
PYTHON = "/usr/bin/python3.11"
SITE_PACKAGES = f"{VENV}/lib/python3.11/site-packages"
# What the source layer carries. neuraxis/{crds,operator,workloads,infra} are links to the
# top-level folders, so those travel too.
SOURCE_PATHS = ("neuraxis", "crds", "operator", "workloads", "infra", "pyproject.toml")
JAR_SETS = ("delta", "s3")
# Bump a layer's recipe when the way it is built changes, so that caches built the old way are
# not reused.
RECIPES = {"base": 1, "deps": 1, "jars": 1, "source": 1}
# Cached versions kept per layer: the current one and the one before (a deps version is 8 GB
# here and twice that in containerd); more of the small source layer, for switching branches.
KEEP_VERSIONS = 2
KEEP_VERSIONS_BY_LAYER = {"source": 5}
# Tags of this repository kept in containerd: those of the most recent builds on this machine.
KEEP_IMAGES = 5

Progress = Callable[[str], None]


class ImageError(RuntimeError):
    """The image could not be built or imported; the message names the layer or step."""


# Everything building or importing may raise, each message naming the step: what the CLI reports.
ERRORS = (ImageError, rootfs.StepError, oci.ImageArchiveError)


def _stderr_progress(message: str) -> None:
    print(f"[image] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# what the image is (the Dockerfile describes the same; tests/test_image.py keeps them in step)


@dataclass(frozen=True)
class ImageDescription:
    suite: str
    packages: tuple[str, ...]
    uid: int
    user_name: str
    user_home: str
    user_shell: str
    runtime: oci.RuntimeConfig

    def env(self) -> dict[str, str]:
        return dict(self.runtime.env)


DESCRIPTION = ImageDescription(
    suite="bookworm",
    # Debian's Python (the venv runs on it), Java 17 for Spark, tini to reap Spark's and
    # torchrun's children, CA certificates for the lake's TLS endpoints.
    packages=("python3.11", "openjdk-17-jre-headless", "tini", "ca-certificates"),
    uid=10001,
    user_name="neuraxis",
    user_home="/tmp",
    user_shell="/usr/sbin/nologin",
    runtime=oci.RuntimeConfig(
        user="10001",
        env=(
            ("PATH", f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            ("VIRTUAL_ENV", VENV),
            ("HOME", "/tmp"),
            ("NEURAXIS_HOME", "/tmp/neuraxis"),
            ("NEURAXIS_JARS_DIR", JARS_DIR),
            ("JAVA_HOME", "/usr/lib/jvm/java-17-openjdk-amd64"),
            ("LANG", "C.UTF-8"),
            ("PYTHONUNBUFFERED", "1"),
        ),
        entrypoint=("/usr/bin/tini", "--", "neuraxis"),
        cmd=("--help",),
        workdir=APP_DIR,
    ),
)


# ---------------------------------------------------------------------------------------------
# keys and the tag


def _key(document: Mapping[str, object]) -> str:
    return hashlib.sha256(oci.canonical_json(document)).hexdigest()[:16]


def base_key(description: ImageDescription = DESCRIPTION) -> str:
    return _key(
        {
            "layer": "base",
            "recipe": RECIPES["base"],
            "suite": description.suite,
            "variant": "minbase",
            "packages": sorted(description.packages),
            "user": [
                description.uid,
                description.user_name,
                description.user_home,
                description.user_shell,
            ],
        }
    )


def deps_key(base: str, lock: bytes) -> str:
    return _key(
        {
            "layer": "deps",
            "recipe": RECIPES["deps"],
            "base": base,
            "lock": hashlib.sha256(lock).hexdigest(),
        }
    )


def jars_key(set_dir_names: Sequence[str]) -> str:
    # A set's folder name already hashes its Maven coordinates and the Spark version.
    return _key({"layer": "jars", "recipe": RECIPES["jars"], "sets": sorted(set_dir_names)})


@dataclass(frozen=True)
class SourceFile:
    """A tracked file of the checkout: its path, and its content's hash or link target."""

    path: str
    executable: bool
    link: str
    digest: str


def source_key(files: Sequence[SourceFile], cache_tag: str) -> str:
    return _key(
        {
            "layer": "source",
            "recipe": RECIPES["source"],
            # The byte code in the layer depends on the compiling interpreter's version.
            "cache_tag": cache_tag,
            "files": [[f.path, f.executable, f.link, f.digest] for f in files],
        }
    )


def image_tag(keys: Mapping[str, str], runtime: oci.RuntimeConfig) -> str:
    return _key({"layers": dict(keys), "config": runtime.to_json()})[:12]


# ---------------------------------------------------------------------------------------------
# where


def images_root() -> Path:
    override = os.environ.get(IMAGES_DIR_ENV)
    if override:
        return Path(override).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "neuraxis" / "images"


# ---------------------------------------------------------------------------------------------
# the layer cache


@dataclass(frozen=True)
class LayerRecord:
    """What a built layer measured; written last, so a layer folder without it is unfinished."""

    name: str
    key: str
    digest: str
    size: int
    build_s: float
    measure_s: float


RECORD_FILE = "layer.json"


def read_record(directory: Path) -> LayerRecord | None:
    try:
        data = json.loads((directory / RECORD_FILE).read_text())
        return LayerRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def write_record(directory: Path, record: LayerRecord) -> None:
    temporary = directory / f".{RECORD_FILE}.tmp"
    temporary.write_text(json.dumps(dataclasses.asdict(record), indent=2, sort_keys=True) + "\n")
    os.replace(temporary, directory / RECORD_FILE)


TreeBuilder = Callable[[Path, Path, Path, Progress], None]


@dataclass(frozen=True)
class LayerSpec:
    """One layer: its key, how to fill its tree (None: it has no tree of its own) and how to
    list its members from its cache folder.

    `build_tree(tree, work, log, progress)` creates `tree`; `work` is a scratch folder removed
    afterwards, `log` the file long steps write to (kept in <images root>/logs)."""

    name: str
    key: str
    members: Callable[[Path], list[oci.Member]]
    build_tree: TreeBuilder | None = None

    def directory(self, root: Path) -> Path:
        return root / "layers" / f"{self.name}-{self.key}"


def tree_of(directory: Path) -> Path:
    return directory / "tree"


def ensure_layer(spec: LayerSpec, root: Path, progress: Progress) -> oci.LayerBlob:
    """The layer from the cache, building and measuring it first when it is not there."""
    directory = spec.directory(root)
    record = read_record(directory)
    if record is None:
        record = _build_layer(spec, root, directory, progress)
    else:
        os.utime(directory / RECORD_FILE)  # last use, for pruning
        progress(f"{spec.name}: cached ({_mb(record.size)}, {record.digest[:19]})")
    return oci.LayerBlob(
        spec.name, record.digest, record.size, lambda: spec.members(directory), str(directory)
    )


def _build_layer(spec: LayerSpec, root: Path, directory: Path, progress: Progress) -> LayerRecord:
    rootfs.remove_tree(directory)  # an unfinished earlier attempt
    start = time.monotonic()
    if spec.build_tree is not None:
        work = root / "work" / f"{spec.name}-{spec.key}"
        log = root / "logs" / f"{spec.name}-{spec.key}.log"
        rootfs.remove_tree(work)
        work.mkdir(parents=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.unlink(missing_ok=True)
        try:
            staged = work / "tree"
            spec.build_tree(staged, work, log, progress)
            directory.mkdir(parents=True)
            os.replace(staged, tree_of(directory))
        finally:
            rootfs.remove_tree(work)
    else:
        directory.mkdir(parents=True)
    built = time.monotonic()
    measured = oci.measure_tar(spec.members(directory))
    record = LayerRecord(
        name=spec.name,
        key=spec.key,
        digest=measured.digest,
        size=measured.size,
        build_s=round(built - start, 1),
        measure_s=round(time.monotonic() - built, 1),
    )
    write_record(directory, record)
    progress(
        f"{spec.name}: built in {record.build_s:.1f}s, measured in {record.measure_s:.1f}s "
        f"({_mb(record.size)}, {record.digest[:19]})"
    )
    return record


def prune_layers(
    root: Path, keep: int, progress: Progress, keep_by_layer: Mapping[str, int] | None = None
) -> list[Path]:
    """Delete all but the `keep` (or `keep_by_layer[name]`) most recently used cached versions
    of each layer (a lock change would otherwise leave an 8 GB tree behind each time), and
    unfinished ones."""
    by_name: dict[str, list[tuple[float, Path]]] = {}
    removed = []
    for directory in sorted((root / "layers").glob("*-*")):
        record_file = directory / RECORD_FILE
        if not record_file.is_file():
            removed.append(directory)
            continue
        name = directory.name.rsplit("-", 1)[0]
        by_name.setdefault(name, []).append((record_file.stat().st_mtime, directory))
    for name, versions in by_name.items():
        kept = (keep_by_layer or {}).get(name, keep)
        removed.extend(directory for _, directory in sorted(versions, reverse=True)[kept:])
    for directory in removed:
        progress(f"pruning {directory.name}")
        rootfs.remove_tree(directory)
    return removed


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


# ---------------------------------------------------------------------------------------------
# base: Debian minbase + packages + the workload user


def ensure_debootstrap(progress: Progress) -> str:
    """debootstrap, installed from Debian's archive when missing (the set-up is the project's)."""
    found = shutil.which("debootstrap")
    if found:
        return found
    rootfs.require_root("installing debootstrap")
    if not shutil.which("apt-get"):
        raise ImageError("debootstrap is missing and there is no apt-get to install it")
    progress("base: installing debootstrap with apt-get (once)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    rootfs.run(["apt-get", "update", "-q"], what="apt-get update", env=env, timeout=600)
    rootfs.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "debootstrap"],
        what="apt-get install debootstrap",
        env=env,
        timeout=600,
    )
    found = shutil.which("debootstrap")
    if not found:
        raise ImageError("apt-get installed debootstrap, yet it is not on PATH")
    return found


def apt_sources(suite: str) -> str:
    return (
        f"deb {DEBIAN_MIRROR} {suite} main\n"
        f"deb {DEBIAN_MIRROR} {suite}-updates main\n"
        f"deb {DEBIAN_SECURITY_MIRROR} {suite}-security main\n"
    )


# Left behind by debootstrap and apt: caches, logs and backups nobody reads in a pod.
BASE_LEFTOVERS = (
    "var/lib/apt/lists/*",
    "var/cache/apt/*.bin",
    "var/cache/apt/archives/*.deb",
    "var/cache/apt/archives/partial/*",
    "var/cache/debconf/*-old",
    "var/lib/dpkg/*-old",
    "var/log/*.log",
    "var/log/apt/*",
)


def build_base_tree(description: ImageDescription) -> TreeBuilder:
    def build(tree: Path, work: Path, log: Path, progress: Progress) -> None:
        rootfs.require_root("the base layer")
        debootstrap = ensure_debootstrap(progress)
        progress(f"base: debootstrap {description.suite} minbase (log: {log})")
        rootfs.run(
            [
                debootstrap,
                "--variant=minbase",
                "--arch=amd64",
                description.suite,
                str(tree),
                DEBIAN_MIRROR,
            ],
            what="base: debootstrap",
            log=log,
        )
        (tree / "etc" / "apt" / "sources.list").write_text(apt_sources(description.suite))
        rootfs.copy_host_resolver(tree)
        progress(f"base: apt-get install {' '.join(description.packages)}")
        with rootfs.chroot_mounts(tree):
            rootfs.chroot(tree, ["apt-get", "update", "-q"], what="base: apt-get update", log=log)
            rootfs.chroot(
                tree,
                [
                    "apt-get",
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    *description.packages,
                ],
                what="base: apt-get install",
                log=log,
            )
            rootfs.chroot(tree, _useradd_argv(description), what="base: useradd", log=log)
            rootfs.chroot(tree, ["apt-get", "clean"], what="base: apt-get clean", log=log)
            for check in (["java", "-version"], [PYTHON, "--version"], ["tini", "--version"]):
                rootfs.chroot(tree, check, what=f"base: check `{' '.join(check)}`", log=log)
        _tidy_base(tree)

    return build


def _useradd_argv(description: ImageDescription) -> list[str]:
    return [
        "useradd",
        "--uid",
        str(description.uid),
        "--user-group",
        "--no-create-home",
        "--home-dir",
        description.user_home,
        "--shell",
        description.user_shell,
        description.user_name,
    ]


def _tidy_base(tree: Path) -> None:
    for pattern in BASE_LEFTOVERS:
        for path in tree.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    # The kubelet mounts its own resolv.conf and hostname over these.
    (tree / "etc" / "resolv.conf").write_text("")
    (tree / "etc" / "hostname").write_text("localhost\n")


def base_members(directory: Path) -> list[oci.Member]:
    # Owners and times as installed: Debian compiled the standard library's byte code against
    # these modification times. /dev, /proc and /sys are filled by the runtime.
    return oci.scan_tree(tree_of(directory), oci.TreeOptions(skip=_runtime_filled))


def _runtime_filled(path: str) -> bool:
    return path.startswith(("dev/", "proc/", "sys/"))


# ---------------------------------------------------------------------------------------------
# deps: the locked dependencies in /opt/venv, installed by uv inside the base


def find_uv() -> Path:
    """uv from the running venv (the lock pins it), else from PATH."""
    beside = Path(sys.executable).parent / "uv"
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("uv")
    if found:
        return Path(found)
    raise ImageError("deps: uv is not installed; `make venv` installs the pinned uv")


def host_uv_cache(uv: Path) -> Path:
    out = rootfs.run([str(uv), "cache", "dir"], what="deps: uv cache dir").strip()
    return Path(out.splitlines()[-1])


def build_deps_tree(base_dir: Path, lock: Path) -> TreeBuilder:
    def build(tree: Path, work: Path, log: Path, progress: Progress) -> None:
        rootfs.require_root("the deps layer")
        uv = find_uv()
        cache = host_uv_cache(uv)
        cache.mkdir(parents=True, exist_ok=True)
        with rootfs.overlay(tree_of(base_dir), work) as (merged, upper):
            with (
                rootfs.chroot_mounts(merged),
                rootfs.mounted(
                    ["--bind", str(cache)], merged / "tmp" / "uv-cache", "bind uv cache"
                ),
            ):
                shutil.copy2(uv, merged / "tmp" / "uv")
                shutil.copyfile(lock, merged / "tmp" / "requirements.lock")
                rootfs.copy_host_resolver(merged)
                trust = rootfs.copy_host_trust(merged)
                _install_venv(merged, log, progress, trust)
            venv = upper / VENV.lstrip("/")
            if not (venv / "bin" / "python").is_symlink():
                raise ImageError(f"deps: the install left no {VENV}/bin/python (log: {log})")
            (tree / "opt").mkdir(parents=True)
            os.chmod(tree / "opt", 0o755)
            os.rename(venv, tree / VENV.lstrip("/"))

    return build


def _install_venv(root: Path, log: Path, progress: Progress, trust: str | None) -> None:
    uv_env = {
        "UV_CACHE_DIR": "/tmp/uv-cache",
        # The cache is another file system than the overlay: copy, do not try links.
        "UV_LINK_MODE": "copy",
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
    }
    if trust:
        uv_env["SSL_CERT_FILE"] = trust
    for name in ("UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL", "UV_INDEX"):
        if name in os.environ:
            uv_env[name] = os.environ[name]
    progress(f"deps: uv venv {VENV} on {PYTHON}; uv pip sync requirements.lock (log: {log})")
    rootfs.chroot(
        root,
        ["/tmp/uv", "venv", "--no-config", "--no-project", "--python", PYTHON, VENV],
        what="deps: uv venv",
        log=log,
        env=uv_env,
    )
    rootfs.chroot(
        root,
        [
            "/tmp/uv",
            "pip",
            "sync",
            "--no-config",
            "--python",
            f"{VENV}/bin/python",
            "/tmp/requirements.lock",
        ],
        what="deps: uv pip sync",
        log=log,
        env=uv_env,
    )
    # Hash-checked byte code: valid whatever modification time the layer gives the sources, and
    # pods (read-only root) never compile a module again.
    progress("deps: byte-compiling site-packages (checked-hash)")
    _compile_all(root, SITE_PACKAGES, log)
    progress("deps: checking `import torch, pyspark, ray` with the image's Python")
    rootfs.chroot(
        root,
        [f"{VENV}/bin/python", "-B", "-c", "import torch, pyspark, ray"],
        what="deps: import check",
        log=log,
    )


def _compile_all(root: Path, folder: str, log: Path) -> None:
    argv = [PYTHON, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "checked-hash"]
    # compileall exits 1 when some file does not compile (test data written for Python 2,
    # templates named .py): such a module cannot be imported anyway. Anything else fails.
    rootfs.chroot(root, [*argv, folder], what="deps: compileall", log=log, ok=(0, 1))


def deps_members(directory: Path) -> list[oci.Member]:
    return oci.scan_tree(tree_of(directory), oci.TreeOptions(mtime=oci.FIXED_MTIME, owner=(0, 0)))


# ---------------------------------------------------------------------------------------------
# jars: the Spark jar sets, where `ensure_jars` finds them offline in the pod


def _jars_module() -> Any:
    return importlib.import_module("neuraxis.dev.jars")


def locked_version(lock: bytes, package: str) -> str | None:
    prefix = f"{package}=="
    for line in lock.decode().splitlines():
        if line.startswith(prefix):
            return line[len(prefix) :].split()[0].split(";")[0]
    return None


def jar_set_dirs(lock: bytes) -> list[Path]:
    """The cache folders of the jar sets, named (like in the pod) for the locked Spark."""
    jars = _jars_module()
    spark = locked_version(lock, "pyspark")
    if spark is None:
        raise ImageError("jars: requirements.lock pins no pyspark")
    try:
        installed = jars.spark_version()
    except Exception as exc:
        raise ImageError(f"jars: pyspark is not installed in this environment ({exc})") from exc
    if installed != spark:
        raise ImageError(
            f"jars: this environment has pyspark {installed}, requirements.lock pins {spark}; "
            "run `make venv` so the jars resolved here match the image's Spark"
        )
    return [Path(jars.set_dir(name, spark=spark)) for name in JAR_SETS]


def jar_members(set_dirs: Sequence[Path], progress: Progress) -> list[oci.Member]:
    jars = _jars_module()
    try:
        jars.ensure_jars(JAR_SETS, progress=lambda m: progress(f"jars: {m}"))
    except jars.JarsError as exc:
        raise ImageError(f"jars: {exc}") from exc
    members = []
    for folder in set_dirs:
        manifest = json.loads((folder / jars.MANIFEST).read_text())
        names = [entry["file"] for entry in manifest["jars"]] + [jars.MANIFEST]
        for name in names:
            path = folder / name
            members.append(
                oci.Member(
                    f"{JARS_DIR.lstrip('/')}/{folder.name}/{name}",
                    oci.MemberKind.FILE,
                    0o644,
                    size=path.stat().st_size,
                    source=str(path),
                )
            )
    return oci.with_parents(members)


# ---------------------------------------------------------------------------------------------
# source: the tracked project code, importable as `neuraxis` with its console script


def tracked_source(repo: Path) -> list[SourceFile]:
    """The tracked files under SOURCE_PATHS, with their working-tree content (uncommitted
    edits included; files deleted in the working tree left out)."""
    out = rootfs.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--", *SOURCE_PATHS],
        what="source: git ls-files",
    )
    files = []
    for path in sorted(p for p in out.split("\0") if p):
        full = repo / path
        if full.is_symlink():
            files.append(SourceFile(path, False, os.readlink(full), ""))
        elif full.is_file():
            digest = hashlib.sha256(full.read_bytes()).hexdigest()
            executable = bool(full.stat().st_mode & 0o111)
            files.append(SourceFile(path, executable, "", digest))
    if not any(f.path == "pyproject.toml" for f in files):
        raise ImageError(f"source: {repo} has no tracked pyproject.toml")
    return files


def _console_scripts(pyproject: bytes) -> tuple[str, str, dict[str, str]]:
    project = tomllib.loads(pyproject.decode())["project"]
    return project["name"], project["version"], dict(project.get("scripts", {}))


def _script(entry: str) -> bytes:
    module, _, function = entry.partition(":")
    return (
        f"#!{VENV}/bin/python\nimport sys\nfrom {module} import {function}\n\n"
        f'if __name__ == "__main__":\n    sys.exit({function}())\n'
    ).encode()


def build_source_tree(repo: Path, files: Sequence[SourceFile]) -> TreeBuilder:
    def build(tree: Path, work: Path, log: Path, progress: Progress) -> None:
        app = tree / APP_DIR.lstrip("/")
        for source in files:
            target = app / source.path
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.link:
                os.symlink(source.link, target)
                continue
            data = (repo / source.path).read_bytes()
            if hashlib.sha256(data).hexdigest() != source.digest:
                raise ImageError(f"source: {source.path} changed during the build; build again")
            target.write_bytes(data)
            os.chmod(target, 0o755 if source.executable else 0o644)
        _write_entry_points(tree, (app / "pyproject.toml").read_bytes())
        compiled = _compile_source(app, files)
        _normalise_modes(tree)
        progress(f"source: {len(files)} files, {compiled} modules byte-compiled")

    return build


def _write_entry_points(tree: Path, pyproject: bytes) -> None:
    """What an editable install leaves in the venv: a .pth naming the source folder, the
    console scripts, and the distribution's metadata (for importlib.metadata)."""
    name, version, scripts = _console_scripts(pyproject)
    site = tree / SITE_PACKAGES.lstrip("/")
    dist_info = site / f"{name}-{version}.dist-info"
    bin_dir = tree / VENV.lstrip("/") / "bin"
    for folder in (site, dist_info, bin_dir):
        folder.mkdir(parents=True, exist_ok=True)
    (site / f"{name}.pth").write_text(f"{APP_DIR}\n")
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    )
    (dist_info / "INSTALLER").write_text("neuraxis-dev-image\n")
    entry_lines = "".join(f"{k} = {v}\n" for k, v in sorted(scripts.items()))
    (dist_info / "entry_points.txt").write_text(f"[console_scripts]\n{entry_lines}")
    record = [f"{name}.pth,,", *(f"{dist_info.name}/{f},," for f in _DIST_FILES)]
    for script, entry in sorted(scripts.items()):
        (bin_dir / script).write_bytes(_script(entry))
        os.chmod(bin_dir / script, 0o755)
        record.append(f"../../../bin/{script},,")
    (dist_info / "RECORD").write_text("\n".join(sorted(record)) + "\n")


_DIST_FILES = ("METADATA", "INSTALLER", "entry_points.txt", "RECORD")


def _compile_source(app: Path, files: Sequence[SourceFile]) -> int:
    """Hash-checked byte code next to the sources, written only by a 3.11 interpreter (the
    image's Python reads the same format)."""
    if sys.implementation.cache_tag != "cpython-311":
        return 0
    count = 0
    for source in files:
        if source.link or not source.path.endswith(".py"):
            continue
        path = app / source.path
        try:
            py_compile.compile(
                str(path),
                dfile=f"{APP_DIR}/{source.path}",
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
            )
        except py_compile.PyCompileError as exc:
            raise ImageError(f"source: {source.path} does not compile: {exc.msg}") from exc
        count += 1
    return count


def _normalise_modes(tree: Path) -> None:
    # The umask decided the modes of new folders and byte code; the layer must not depend on it.
    for folder, dirs, names in os.walk(tree):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o755)
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if os.stat(path).st_mode & 0o100 else 0o644)


def source_members(directory: Path) -> list[oci.Member]:
    return oci.scan_tree(tree_of(directory), oci.TreeOptions(mtime=oci.FIXED_MTIME, owner=(0, 0)))


# ---------------------------------------------------------------------------------------------
# the image


@dataclass(frozen=True)
class Plan:
    """The layers and tag of the image the checkout describes (nothing built yet)."""

    ref: str
    layers: tuple[LayerSpec, ...]

    @property
    def keys(self) -> dict[str, str]:
        return {layer.name: layer.key for layer in self.layers}


def plan(
    repo: Path = REPO_ROOT,
    description: ImageDescription = DESCRIPTION,
    progress: Progress = _stderr_progress,
    root: Path | None = None,
) -> Plan:
    lock_path = repo / "requirements.lock"
    try:
        lock = lock_path.read_bytes()
    except OSError as exc:
        raise ImageError(f"deps: cannot read {lock_path}: {exc}") from exc
    base = base_key(description)
    base_spec = LayerSpec("base", base, base_members, build_base_tree(description))
    base_dir = base_spec.directory(root or images_root())
    set_dirs = jar_set_dirs(lock)
    files = tracked_source(repo)
    layers = (
        base_spec,
        LayerSpec("deps", deps_key(base, lock), deps_members, build_deps_tree(base_dir, lock_path)),
        LayerSpec(
            "jars",
            jars_key([d.name for d in set_dirs]),
            lambda _directory: jar_members(set_dirs, progress),
        ),
        LayerSpec(
            "source",
            source_key(files, sys.implementation.cache_tag or ""),
            source_members,
            build_source_tree(repo, files),
        ),
    )
    keys = {layer.name: layer.key for layer in layers}
    return Plan(f"{REPOSITORY}:{image_tag(keys, description.runtime)}", layers)


def ref(repo: Path = REPO_ROOT) -> str:
    """The image reference the checkout builds (no build: the tag hashes the layer keys)."""
    return plan(repo, progress=lambda _m: None).ref


def build(
    repo: Path = REPO_ROOT,
    description: ImageDescription = DESCRIPTION,
    progress: Progress = _stderr_progress,
) -> oci.Image:
    """Build (or take from the cache) every layer; the image is ready to import."""
    root = images_root()
    with rootfs.locked(root / ".build.lock"):
        the_plan = plan(repo, description, progress, root)
        for spec in the_plan.layers:
            if spec.name != "source" and read_record(spec.directory(root)) is None:
                ensure_layer(spec, root, progress)
        # Read the checkout again: a cold build takes minutes, and the code may have changed.
        the_plan = plan(repo, description, progress, root)
        blobs = [ensure_layer(spec, root, progress) for spec in the_plan.layers]
        image = oci.assemble(the_plan.ref, description.runtime, blobs)
        _record_image(root, image, the_plan)
        prune_layers(root, KEEP_VERSIONS, progress, KEEP_VERSIONS_BY_LAYER)
    return image


def _record_image(root: Path, image: oci.Image, the_plan: Plan) -> None:
    """A small description per tag (layers, digests), for people and for `import`."""
    folder = root / "refs"
    folder.mkdir(parents=True, exist_ok=True)
    document = {
        "ref": image.ref,
        "manifest": image.manifest_descriptor.digest,
        "config": image.config_descriptor.digest,
        "layers": [
            {"name": blob.name, "key": spec.key, "digest": blob.digest, "size": blob.size}
            for blob, spec in zip(image.layers, the_plan.layers, strict=True)
        ],
    }
    name = image.ref.rsplit(":", 1)[1]
    (folder / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")


def write_archive_file(image: oci.Image, path: Path) -> None:
    """The whole image as an OCI archive file (for tools other than ctr)."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as fh:
        oci.write_archive(image, fh)
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------------
# importing into containerd


@dataclass(frozen=True)
class Containerd:
    """How to reach one containerd with ctr: the argv prefix (binary and --address)."""

    ctr: tuple[str, ...]
    namespace: str = NAMESPACE

    @classmethod
    def at(cls, address: str, ctr_binary: str = "ctr", namespace: str = NAMESPACE) -> Containerd:
        return cls((ctr_binary, "--address", address), namespace)

    def argv(self, *args: str) -> list[str]:
        return [*self.ctr, "--namespace", self.namespace, *args]

    def image_names(self) -> set[str]:
        out = rootfs.run(self.argv("images", "ls", "-q"), what="import: ctr images ls", timeout=60)
        return {line.strip() for line in out.splitlines() if line.strip()}

    def responds(self) -> bool:
        try:
            self.image_names()
        except rootfs.StepError:
            return False
        return True

    def content_digests(self) -> set[str]:
        out = rootfs.run(
            self.argv("content", "ls", "-q"), what="import: ctr content ls", timeout=60
        )
        return {line.strip() for line in out.splitlines() if line.startswith("sha256:")}


@dataclass(frozen=True)
class ImportResult:
    ref: str
    already_present: bool
    blobs_sent: tuple[str, ...]
    bytes_sent: int
    seconds: float


def import_image(
    image: oci.Image, containerd: Containerd, progress: Progress = _stderr_progress
) -> ImportResult:
    """Make `image.ref` present in containerd: nothing when it already is, else stream an
    archive holding only the layers containerd lacks (all of them if that import fails)."""
    start = time.monotonic()
    if image.ref in containerd.image_names():
        progress(f"{image.ref}: already in containerd ({containerd.namespace}); nothing to import")
        return ImportResult(image.ref, True, (), 0, time.monotonic() - start)
    present = containerd.content_digests()
    held = [layer.digest for layer in image.layers if layer.digest in present]
    try:
        sent, size = _stream_import(image, containerd, held, progress)
    except ImageError as exc:
        # Worth a full archive only when containerd is still there to take it (it may have
        # lost a held blob meanwhile), not when it went away.
        if not held or not containerd.responds():
            raise
        progress(
            f"import without the {len(held)} layers containerd holds failed ({exc}); "
            "sending every layer"
        )
        sent, size = _stream_import(image, containerd, (), progress)
    if image.ref not in containerd.image_names():
        raise ImageError(f"import: ctr finished but {image.ref} is not listed in containerd")
    seconds = time.monotonic() - start
    progress(f"{image.ref}: imported {len(sent)} blobs ({_mb(size)}) in {seconds:.1f}s")
    return ImportResult(image.ref, False, tuple(sent), size, seconds)


def _stream_import(
    image: oci.Image, containerd: Containerd, omit: Sequence[str], progress: Progress
) -> tuple[list[str], int]:
    missing = [layer for layer in image.layers if layer.digest not in set(omit)]
    progress(
        f"{image.ref}: streaming {len(missing)} of {len(image.layers)} layers "
        f"({_mb(sum(layer.size for layer in missing))}) into ctr images import"
    )
    argv = containerd.argv("images", "import", "-")
    # ctr's output goes to a file, not a pipe: a full pipe would stall it while we write.
    with tempfile.TemporaryFile("w+") as output:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=output, stderr=output)
        except FileNotFoundError as exc:
            raise ImageError(f"import: {argv[0]} is not installed ({exc})") from exc
        sent, size, broken = _feed(proc, image, omit)
        returncode = proc.wait()
        output.seek(0)
        text = output.read()
    if returncode != 0 or broken:
        raise ImageError(f"import: `{shlex.join(argv)}` exited {returncode}:\n{rootfs.tail(text)}")
    return sent, size


def _feed(
    proc: subprocess.Popen[bytes], image: oci.Image, omit: Sequence[str]
) -> tuple[list[str], int, bool]:
    """Write the archive into ctr's stdin; (blobs sent, bytes sent, whether ctr stopped
    reading early). Any other failure kills ctr before it is raised."""
    assert proc.stdin is not None
    counter = oci.DigestWriter(proc.stdin)
    try:
        sent = oci.write_archive(image, counter, omit)
        proc.stdin.close()
    except BrokenPipeError:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        return [], counter.size, True
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return sent, counter.size, False


def build_and_import(
    containerd: Containerd | None = None, progress: Progress = _stderr_progress
) -> ImportResult:
    """Build the checkout's image (cached layers: seconds) and make it present in `containerd`
    (default: the running real node's). For `make image` and for fixtures of real-pod tests."""
    if containerd is None:
        containerd = node_containerd()
        if containerd is None:
            raise ImageError(
                "import: no real node is running (`neuraxis dev cluster up`); "
                "or pass the containerd socket (--address)"
            )
    result = import_image(build(progress=progress), containerd, progress)
    prune_images(containerd, recent_refs(images_root(), KEEP_IMAGES), progress)
    return result


def recent_refs(root: Path, count: int) -> list[str]:
    """The references of the `count` most recent builds on this machine (refs/<tag>.json)."""
    records = sorted((root / "refs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return [f"{REPOSITORY}:{record.stem}" for record in records[-count:]]


def prune_images(containerd: Containerd, keep: Sequence[str], progress: Progress) -> list[str]:
    """Remove this repository's other tags from containerd; its garbage collector then frees
    the layers only they used (an old deps layer is 8 GB, twice over once unpacked)."""
    stale = sorted(
        name
        for name in containerd.image_names()
        if name.startswith(f"{REPOSITORY}:") and name not in set(keep)
    )
    if stale:
        progress(f"removing {len(stale)} older {REPOSITORY} tags from containerd")
        rootfs.run(containerd.argv("images", "rm", *stale), what="import: ctr images rm")
    return stale


# ---------------------------------------------------------------------------------------------
# the node's containerd


def node_containerd(namespace: str = NAMESPACE) -> Containerd | None:
    """The real node's containerd (neuraxis.dev.node), or None when no node runs. One node runs
    per machine, whichever NEURAXIS_HOME started it; its image store outlives it."""
    try:
        node: Any = importlib.import_module("neuraxis.dev.node")
    except ImportError:
        return None
    if not all(hasattr(node, name) for name in ("ctr_argv", "is_running")):
        return None
    try:
        if not node.is_running():
            return None
        argv = [str(a) for a in node.ctr_argv()]
    except Exception as exc:  # the node module's own errors: not ours to classify
        raise ImageError(f"import: cannot reach the real node's containerd: {exc}") from exc
    return Containerd(tuple(argv), namespace)


def ctr_binary() -> str:
    """ctr from the pinned toolset when built, else from PATH."""
    from neuraxis.dev import toolchain

    try:
        return str(toolchain.tool_path("ctr"))
    except toolchain.ToolchainError:
        found = shutil.which("ctr")
        if found:
            return found
        raise ImageError(
            "import: no ctr binary; build the toolset (`make tools`) or pass --ctr"
        ) from None
