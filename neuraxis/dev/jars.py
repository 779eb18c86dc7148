"""Resolve the pinned Spark jars (Delta Lake, optionally hadoop-aws for s3a) from Maven Central
once, and cache them outside the checkout, so that no Spark session ever resolves at run time.

A *jar set* is a list of Maven coordinates. Resolution runs Spark's own Ivy (`spark-submit
--packages`, the mechanism Spark documents) into a throwaway directory, keeps only the jars Spark
does not already ship (pyspark bundles Hadoop, Parquet, Jackson, log4j: duplicates of older
versions would only shadow or conflict), and moves them into
`<jars root>/<set>-<key>/` with a `manifest.json` written last. The key is a short sha256 of the
coordinates and the pyspark version, so a changed pin or a new Spark gets a fresh directory.
The jars root is `$NEURAXIS_JARS_DIR`, else `$XDG_CACHE_HOME/neuraxis/jars` (`~/.cache/...`).

Standard library only (it runs from `make` set-up); pyspark is located, not imported.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

JARS_DIR_ENV = "NEURAXIS_JARS_DIR"
MAVEN_REPO_ENV = "NEURAXIS_MAVEN_REPO"
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"

# Delta publishes one artifact per Spark minor version (`delta-spark_<spark>_<scala>`).
# 4.4.0 is the newest on Maven Central built for Spark 4.2 (there is no 4.4.1 jar, although
# the delta-spark 4.4.1 Python package exists; the Python package is not used, only the jars).
DELTA_COORDINATE = "io.delta:delta-spark_4.2_2.13:4.4.0"
# hadoop-aws must match the Hadoop that pyspark bundles (hadoop-client-api-3.5.0.jar); it brings
# the AWS SDK v2 bundle it was built against.
HADOOP_AWS_COORDINATE = "org.apache.hadoop:hadoop-aws:3.5.0"

JAR_SETS: Mapping[str, tuple[str, ...]] = {
    "delta": (DELTA_COORDINATE,),
    "s3": (HADOOP_AWS_COORDINATE,),
}
DEFAULT_SETS: tuple[str, ...] = ("delta",)
MANIFEST = "manifest.json"
# The AWS SDK bundle alone is ~700 MB: give a slow mirror time, but never hang CI for ever.
RESOLVE_TIMEOUT_S = 1800.0
REACHABILITY_TIMEOUT_S = 15.0

Progress = Callable[[str], None]


class JarsError(RuntimeError):
    """The jars could not be resolved or the cache is unusable; the message says what to do."""


def _stderr_progress(message: str) -> None:
    print(f"[jars] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# pure helpers


def spark_home() -> Path:
    """The pyspark installation (it holds bin/spark-submit and the bundled jars/)."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        raise JarsError("pyspark is not installed in this Python environment")
    return Path(spec.origin).parent


def spark_version() -> str:
    return importlib.metadata.version("pyspark")


def set_key(coordinates: Sequence[str], spark: str) -> str:
    """A short, stable hash of what decides a set's content."""
    text = "\n".join([f"spark={spark}", *sorted(coordinates)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def jars_root() -> Path:
    override = os.environ.get(JARS_DIR_ENV)
    if override:
        return Path(override).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "neuraxis" / "jars"


def set_dir(name: str, root: Path | None = None, spark: str | None = None) -> Path:
    coordinates = _coordinates(name)
    key = set_key(coordinates, spark or spark_version())
    return (root or jars_root()) / f"{name}-{key}"


def _coordinates(name: str) -> tuple[str, ...]:
    try:
        return JAR_SETS[name]
    except KeyError:
        raise JarsError(f"unknown jar set {name!r}; known: {sorted(JAR_SETS)}") from None


def is_bundled(ivy_jar: str, bundled: Iterable[str]) -> bool:
    """Whether an Ivy-retrieved jar (`<group>_<artifact>-<version>.jar`) is an artifact that
    Spark already ships (`<artifact>-<version>.jar` in pyspark/jars), in any version."""
    rest = ivy_jar.split("_", 1)[1] if "_" in ivy_jar else ivy_jar
    for jar in bundled:
        artifact = _artifact_of(jar)
        if artifact and rest.startswith(artifact + "-") and rest[len(artifact) + 1 :][:1].isdigit():
            return True
    return False


def _artifact_of(bundled_jar: str) -> str:
    """`jackson-core-2.21.2.jar` -> `jackson-core` (the name before the first `-<digit>`)."""
    stem = bundled_jar.removesuffix(".jar")
    parts = stem.split("-")
    for i, part in enumerate(parts):
        if part[:1].isdigit():
            return "-".join(parts[:i])
    return stem


def select_jars(resolved: Iterable[str], bundled: Iterable[str]) -> list[str]:
    """The resolved jars worth adding to Spark's class path, sorted."""
    bundled = list(bundled)
    return sorted(j for j in resolved if j.endswith(".jar") and not is_bundled(j, bundled))


# ---------------------------------------------------------------------------------------------
# cache


def _read_manifest(directory: Path) -> list[Path] | None:
    """The cached jars of a set, or None when the set is absent or incomplete."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    paths = []
    for entry in manifest.get("jars", []):
        path = directory / entry["file"]
        if not path.is_file() or path.stat().st_size != entry["size"]:
            return None
        paths.append(path)
    return paths


def cached_jars(sets: Sequence[str] = DEFAULT_SETS) -> list[Path] | None:
    """The jars of every set if all are cached (no network); None otherwise."""
    found: list[Path] = []
    for name in sets:
        paths = _read_manifest(set_dir(name))
        if paths is None:
            return None
        found.extend(paths)
    return found


def ensure_jars(sets: Sequence[str] = DEFAULT_SETS, progress: Progress | None = None) -> list[Path]:
    """The local jar files of the given sets, resolving from Maven Central the first time.

    Idempotent and safe to run concurrently (a file lock serialises resolutions)."""
    say = progress or _stderr_progress
    out: list[Path] = []
    for name in sets:
        directory = set_dir(name)
        paths = _read_manifest(directory)
        if paths is None:
            with _locked(directory.parent / f".{directory.name}.lock"):
                paths = _read_manifest(directory)  # another process may have finished meanwhile
                if paths is None:
                    paths = _resolve_into(name, directory, say)
        else:
            say(f"{name}: {len(paths)} jars cached in {directory}")
        out.extend(paths)
    return out


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def maven_repository() -> str:
    return os.environ.get(MAVEN_REPO_ENV, MAVEN_CENTRAL).rstrip("/")


def check_reachable(url: str, timeout: float = REACHABILITY_TIMEOUT_S) -> None:
    """Fail fast, with the fix, when the Maven repository cannot be reached."""
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url + "/", method="HEAD"), timeout=timeout
        ):
            pass
    except urllib.error.HTTPError:
        return  # the server answered: reachable (a listing may be forbidden)
    except (urllib.error.URLError, OSError) as exc:
        raise JarsError(
            f"Maven repository {url} is unreachable ({exc}). The Spark jars are resolved from it "
            f"once and then cached in {jars_root()}; connect to the network (or set "
            f"{MAVEN_REPO_ENV} to a mirror) and run `make setup` again."
        ) from exc


def _resolve_into(name: str, directory: Path, say: Progress) -> list[Path]:
    coordinates = _coordinates(name)
    repo = maven_repository()
    say(f"{name}: resolving {', '.join(coordinates)} from {repo} (once; cached in {directory})")
    check_reachable(repo)
    home = spark_home()
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{name}-") as tmp:
        work = Path(tmp)
        ivy = work / "ivy"
        noop = work / "noop.py"
        noop.write_text("")
        cmd = [
            str(home / "bin" / "spark-submit"),
            "--packages",
            ",".join(coordinates),
            "--conf",
            f"spark.jars.ivy={ivy}",
            "--conf",
            "spark.ui.enabled=false",
        ]
        if repo != MAVEN_CENTRAL:
            cmd += ["--repositories", repo]
        cmd.append(str(noop))
        env = {**os.environ, "SPARK_HOME": str(home), "PYSPARK_PYTHON": sys.executable}
        try:
            proc = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=RESOLVE_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as exc:
            raise JarsError(f"{name}: resolution took over {RESOLVE_TIMEOUT_S:.0f}s") from exc
        retrieved = ivy / "jars"
        if proc.returncode != 0 or not retrieved.is_dir():
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
            raise JarsError(f"{name}: spark-submit --packages failed ({proc.returncode}):\n{tail}")
        bundled = [p.name for p in (home / "jars").glob("*.jar")]
        keep = select_jars((p.name for p in retrieved.iterdir()), bundled)
        staged = work / "set"
        staged.mkdir()
        entries = []
        for jar in keep:
            target = staged / jar
            shutil.move(str(retrieved / jar), target)
            entries.append({"file": jar, "size": target.stat().st_size, "sha256": _sha256(target)})
        manifest = {"coordinates": list(coordinates), "spark": spark_version(), "jars": entries}
        # The manifest is written last: a set without one is incomplete and resolved again.
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if directory.exists():
            shutil.rmtree(directory)  # an incomplete earlier attempt
        os.replace(staged, directory)
    say(f"{name}: {len(keep)} jars cached in {directory}")
    paths = _read_manifest(directory)
    if paths is None:
        raise JarsError(f"{name}: {directory} is incomplete right after resolution")
    return paths


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m neuraxis.dev.jars [set ...]`: resolve and print the jar paths."""
    sets = list(argv if argv is not None else sys.argv[1:]) or list(DEFAULT_SETS)
    try:
        for path in ensure_jars(sets):
            print(path)
    except JarsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
