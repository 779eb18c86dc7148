"""Build the pinned Go toolchain (Kubernetes control plane, etcd, KWOK, ...) from module sources.

Standard library only: this runs before any heavy dependency matters (CI's first step, a bare
checkout). Versions come from `toolset.toml` beside this file. The tools root is
`$NEURAXIS_TOOLS_DIR` or `~/.cache/neuraxis/tools`; under it:

    by-spec/<table>-<key>/<binary>     one [tools.<table>]'s binaries; the key is a short sha256
                                       of the table's build pins (module, version, flags, ...)
    toolsets/<version>/bin/<binary>    symbolic links to all of them, one folder for PATH
                                       (the version is a short sha256 of the whole toml)

so editing one table rebuilds that table only, and adding a binary to a table builds only the
new binary. Binaries from the layout before this one (`<version>/bin/`) are adopted when their
embedded Go build information matches the table.

Every tool is built in a throwaway *wrapper module* (`go mod init`, `go get -tool`, `go build`):
`go install module/cmd@version` refuses modules whose go.mod has replace or exclude directives,
so the wrapper re-creates what upstream's go.mod meant with published versions instead.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

TOOLSET_FILE = Path(__file__).with_name("toolset.toml")
# `own_main` files are named relative to this folder (beside toolset.toml).
OWN_MAINS_DIR = TOOLSET_FILE.parent
# Every build compiles without DWARF: `-ldflags=-w` drops it at link time anyway, so generating
# it only costs compile time (kube-apiserver from an empty Go build cache: 0.87x the CPU).
COMPILE_FLAGS = ("-gcflags=all=-dwarf=false",)
TOOLS_DIR_ENV = "NEURAXIS_TOOLS_DIR"
DEFAULT_VERSION_ARGS: tuple[str, ...] = ("--version",)
# A stuck `go` (a proxy that never answers) must not hang CI for its whole budget.
GO_STEP_TIMEOUT_S = 3600.0
HEARTBEAT_S = 60.0
ERROR_TAIL_LINES = 25

Progress = Callable[[str], None]


class ToolchainError(RuntimeError):
    """A tool could not be built or found; the message names the tool and what failed."""


@dataclass(frozen=True)
class ToolSpec:
    """One `[tools.<name>]` table: one module at one version, built by one `go build`."""

    name: str
    module: str
    version: str
    binaries: Mapping[str, str]
    local_replaces: str | None = None
    godebug: tuple[str, ...] | None = None
    tags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()
    version_args: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default_version_args: tuple[str, ...] = DEFAULT_VERSION_ARGS
    expect: str | None = None
    release: str | None = None
    copy_main: bool = False
    main_files: Mapping[str, str] = field(default_factory=dict)
    generate_env: Mapping[str, str] = field(default_factory=dict)
    check: bool = True
    module_files: Mapping[str, str] = field(default_factory=dict)
    own_main: Mapping[str, str] = field(default_factory=dict)

    def args_for(self, binary: str) -> tuple[str, ...]:
        return self.version_args.get(binary, self.default_version_args)

    def expand(self, text: str) -> str:
        return text.replace("{version}", self.version).replace("{release}", self.release or "")

    def expanded_ldflags(self) -> list[str]:
        return [self.expand(flag) for flag in self.ldflags]

    def own_main_file(self, binary: str) -> Path:
        return OWN_MAINS_DIR / self.own_main[binary]

    def build_pins(self) -> dict[str, object]:
        """What decides the bytes of the binaries, in a form new ToolSpec fields do not change.

        The binaries map and the checks (expect, version_args) are left out: adding a binary
        to a table must not invalidate the binaries already built from it.
        """
        return {
            "module": self.module,
            "version": self.version,
            "local_replaces": self.local_replaces,
            "godebug": None if self.godebug is None else list(self.godebug),
            "tags": list(self.tags),
            "ldflags": self.expanded_ldflags(),
            "compile_flags": list(COMPILE_FLAGS),
            "copy_main": self.copy_main,
            "main_files": dict(self.main_files),
            "generate_env": {k: self.expand(v) for k, v in self.generate_env.items()},
            # Only when set, so that tables without files keep their cache key.
            **({"module_files": dict(self.module_files)} if self.module_files else {}),
            # The content, not the name: editing our own main rebuilds its binary.
            **({"own_main": self._own_main_digests()} if self.own_main else {}),
        }

    def _own_main_digests(self) -> dict[str, str]:
        return {
            binary: hashlib.sha256(self.own_main_file(binary).read_bytes()).hexdigest()
            for binary in sorted(self.own_main)
        }


@dataclass(frozen=True)
class Toolset:
    version: str
    tools: tuple[ToolSpec, ...]

    def tool(self, name: str) -> ToolSpec:
        """The table named `name`, or the table that builds the binary `name`."""
        for spec in self.tools:
            if spec.name == name or name in spec.binaries:
                return spec
        known = sorted({s.name for s in self.tools} | {b for s in self.tools for b in s.binaries})
        raise ToolchainError(f"unknown tool {name!r}; known: {', '.join(known)}")


# ---------------------------------------------------------------------------------------------
# toolset.toml


def toolset_version(content: bytes) -> str:
    """The cache key of a toolset: any change to the pins gives a fresh directory.

    It hashes the parsed tables, not the bytes, so that editing a comment keeps the cache.
    """
    canonical = json.dumps(tomllib.loads(content.decode()), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def parse_toolset(content: bytes) -> Toolset:
    try:
        data = tomllib.loads(content.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ToolchainError(f"toolset.toml is not valid TOML: {exc}") from exc
    tables = data.get("tools")
    if not isinstance(tables, dict) or not tables:
        raise ToolchainError("toolset.toml has no [tools.<name>] tables")
    specs = tuple(_parse_spec(name, table) for name, table in tables.items())
    return Toolset(version=toolset_version(content), tools=specs)


def load_toolset(path: Path = TOOLSET_FILE) -> Toolset:
    return parse_toolset(path.read_bytes())


def _parse_spec(name: str, table: object) -> ToolSpec:
    if not isinstance(table, dict):
        raise ToolchainError(f"toolset.toml: [tools.{name}] must be a table")
    where = f"toolset.toml [tools.{name}]"
    binaries = table.get("binaries")
    if not isinstance(binaries, dict) or not binaries:
        raise ToolchainError(f"{where}: `binaries` must map binary names to main packages")
    raw_args = table.get("version_args", {})
    default_args = DEFAULT_VERSION_ARGS
    per_binary: dict[str, tuple[str, ...]] = {}
    if isinstance(raw_args, list):
        default_args = _str_tuple(raw_args, where, "version_args")
    elif isinstance(raw_args, dict):
        per_binary = {b: _str_tuple(a, where, f"version_args.{b}") for b, a in raw_args.items()}
    else:
        raise ToolchainError(f"{where}: `version_args` must be a list or a table")
    godebug = table.get("godebug")
    return ToolSpec(
        name=name,
        module=_required_str(table, "module", where),
        version=_required_str(table, "version", where),
        binaries={str(b): str(p) for b, p in binaries.items()},
        local_replaces=_optional_str(table, "local_replaces", where),
        godebug=None if godebug is None else _str_tuple(godebug, where, "godebug"),
        tags=_str_tuple(table.get("tags", []), where, "tags"),
        ldflags=_str_tuple(table.get("ldflags", []), where, "ldflags"),
        version_args=per_binary,
        default_version_args=default_args,
        expect=_optional_str(table, "expect", where),
        release=_optional_str(table, "release", where),
        copy_main=_bool(table, "copy_main", where, default=False),
        main_files=_str_table(table, "main_files", where),
        generate_env=_str_table(table, "generate_env", where),
        check=_bool(table, "check", where, default=True),
        module_files=_str_table(table, "module_files", where),
        own_main=_own_main(table, where, binaries),
    )


def _own_main(
    table: Mapping[str, object], where: str, binaries: Mapping[str, object]
) -> dict[str, str]:
    own = _str_table(table, "own_main", where)
    unknown = sorted(set(own) - set(binaries))
    if unknown:
        raise ToolchainError(
            f"{where}: `own_main` names {unknown[0]!r}, which is not in `binaries`"
        )
    if own and table.get("copy_main"):
        raise ToolchainError(f"{where}: `own_main` and `copy_main` exclude each other")
    for binary, name in own.items():
        if not (OWN_MAINS_DIR / name).is_file():
            raise ToolchainError(f"{where}: `own_main.{binary}`: no file {OWN_MAINS_DIR / name}")
    return own


def _bool(table: Mapping[str, object], key: str, where: str, *, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ToolchainError(f"{where}: `{key}` must be true or false")
    return value


def _str_table(table: Mapping[str, object], key: str, where: str) -> dict[str, str]:
    value = table.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ToolchainError(f"{where}: `{key}` must be a table of strings")
    return {str(k): v for k, v in value.items()}


def _required_str(table: Mapping[str, object], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise ToolchainError(f"{where}: `{key}` must be a non-empty string")
    return value


def _optional_str(table: Mapping[str, object], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise ToolchainError(f"{where}: `{key}` must be a string")
    return value


def _str_tuple(value: object, where: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ToolchainError(f"{where}: `{key}` must be a list of strings")
    return tuple(value)


# ---------------------------------------------------------------------------------------------
# go.mod text -> wrapper directives


@dataclass(frozen=True)
class Replace:
    old: str
    old_version: str | None
    new: str
    new_version: str | None

    @property
    def is_local(self) -> bool:
        # go.mod's rule: a replacement path starting with ./ or ../ (or absolute) is a directory.
        return self.new.startswith(("./", "../", "/")) or self.new in (".", "..")

    def edit_flag(self) -> str:
        old = f"{self.old}@{self.old_version}" if self.old_version else self.old
        new = f"{self.new}@{self.new_version}" if self.new_version else self.new
        return f"-replace={old}={new}"


@dataclass(frozen=True)
class GoMod:
    replaces: tuple[Replace, ...]
    excludes: tuple[tuple[str, str], ...]
    godebug: tuple[str, ...]


def parse_go_mod(text: str) -> GoMod:
    """The replace, exclude and godebug directives of a go.mod (single-line and block forms)."""
    replaces: list[Replace] = []
    excludes: list[tuple[str, str]] = []
    godebug: list[str] = []
    for verb, args in _go_mod_directives(text):
        if verb == "replace":
            replaces.append(_parse_replace(args))
        elif verb == "exclude" and len(args) == 2:
            excludes.append((args[0], args[1]))
        elif verb == "godebug":
            godebug.extend(args)
    return GoMod(tuple(replaces), tuple(excludes), tuple(godebug))


def _go_mod_directives(text: str) -> Iterator[tuple[str, list[str]]]:
    block: str | None = None
    for raw in text.splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        if block is not None:
            if line == ")":
                block = None
            else:
                yield block, line.split()
            continue
        verb, _, rest = line.partition(" ")
        rest = rest.strip()
        if rest == "(":
            block = verb
        elif rest:
            yield verb, rest.split()


def _parse_replace(args: list[str]) -> Replace:
    if "=>" not in args:
        raise ToolchainError(f"cannot read go.mod replace directive: {' '.join(args)}")
    arrow = args.index("=>")
    left, right = args[:arrow], args[arrow + 1 :]
    if not 1 <= len(left) <= 2 or not 1 <= len(right) <= 2:
        raise ToolchainError(f"cannot read go.mod replace directive: {' '.join(args)}")
    return Replace(
        old=left[0],
        old_version=left[1] if len(left) == 2 else None,
        new=right[0],
        new_version=right[1] if len(right) == 2 else None,
    )


def wrapper_replaces(gomod: GoMod, local_version: str | None) -> list[Replace]:
    """The replaces a wrapper module needs to build what upstream's go.mod describes.

    Local-directory replaces point into upstream's own tree, which a module zip cannot provide:
    with `local_version` they become `old => old <local_version>` (the published copies of
    Kubernetes' staging modules); without it they are dropped (tagged sibling modules that the
    requirement graph already resolves). Non-local replaces are kept as they are.
    """
    result: list[Replace] = []
    for rep in gomod.replaces:
        if not rep.is_local:
            result.append(rep)
        elif local_version is not None:
            result.append(Replace(rep.old, rep.old_version, rep.old, local_version))
    return result


def go_mod_edit_args(spec: ToolSpec, gomod: GoMod) -> list[str]:
    """`go mod edit` flags that copy upstream's replaces, excludes and godebug settings."""
    flags = [rep.edit_flag() for rep in wrapper_replaces(gomod, spec.local_replaces)]
    flags += [f"-exclude={path}@{version}" for path, version in gomod.excludes]
    godebug = spec.godebug if spec.godebug is not None else gomod.godebug
    flags += [f"-godebug={setting}" for setting in godebug]
    return flags


def go_default_binary_name(package: str) -> str:
    """The file name `go build -o dir/` gives a main package (a /vN suffix is skipped)."""
    parts = package.rstrip("/").split("/")
    if len(parts) > 1 and re.fullmatch(r"v[0-9]+", parts[-1]):
        return parts[-2]
    return parts[-1]


# ---------------------------------------------------------------------------------------------
# cache layout

BY_SPEC_DIR = "by-spec"
TOOLSETS_DIR = "toolsets"
PACKAGES_FILE = "packages.json"
# The layout before per-table caching: <tools root>/<toolset version>/bin/<binary>.
LEGACY_TOOLSET_NAME = re.compile(r"[0-9a-f]{12}")


def tools_root() -> Path:
    override = os.environ.get(TOOLS_DIR_ENV)
    if override:
        return Path(override).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "neuraxis" / "tools"


def spec_key(spec: ToolSpec) -> str:
    """The cache key of one table: a short sha256 of its build pins."""
    canonical = json.dumps(spec.build_pins(), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def spec_dir(spec: ToolSpec) -> Path:
    """Where one table's binaries live, keyed by that table's pins only."""
    return tools_root() / BY_SPEC_DIR / f"{spec.name}-{spec_key(spec)}"


def toolset_dir(toolset: Toolset | None = None) -> Path:
    return tools_root() / TOOLSETS_DIR / (toolset or load_toolset()).version


def bin_dir(toolset: Toolset | None = None) -> Path:
    """One folder holding every binary of the toolset (links into the per-table cache).

    The links are checked on every call, so the folder is complete as soon as the tables are
    built, whoever built them; the link of a table not built yet dangles (not executable).
    """
    toolset = toolset or load_toolset()
    target = toolset_dir(toolset) / "bin"
    target.mkdir(parents=True, exist_ok=True)
    for spec in toolset.tools:
        for binary in [*spec.binaries, *spec.module_files]:
            _link(target / binary, spec_dir(spec) / binary)
    return target


def _link(link: Path, to: Path) -> None:
    # Relative, so that moving the whole tools root keeps the links working.
    relative = os.path.relpath(to, link.parent)
    with contextlib.suppress(OSError):
        if os.readlink(link) == relative:
            return
    temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    os.symlink(relative, temporary)
    # Atomic: a process running the old link never sees a missing file.
    os.replace(temporary, link)


def tool_path(binary: str, toolset: Toolset | None = None) -> Path:
    """The built binary `binary`; raises ToolchainError with the fix when it is not built."""
    toolset = toolset or load_toolset()
    spec = toolset.tool(binary)
    if binary not in spec.binaries:
        raise ToolchainError(f"{binary!r} is a tool group; ask for one of {sorted(spec.binaries)}")
    path = spec_dir(spec) / binary
    if not os.access(path, os.X_OK):
        raise ToolchainError(
            f"{binary} ({spec.module} {spec.version}) is not built at {path}; "
            f"run `neuraxis dev tools build --only {spec.name}`"
        )
    return path


def _read_packages(target: Path) -> dict[str, str]:
    """binary -> the main package it was built from, as recorded in a table's folder."""
    try:
        data = json.loads((target / PACKAGES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _record_packages(target: Path, packages: Mapping[str, str]) -> None:
    merged = {**_read_packages(target), **packages}
    temporary = target / f".{PACKAGES_FILE}.tmp"
    temporary.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, target / PACKAGES_FILE)


# ---------------------------------------------------------------------------------------------
# building


def _stderr_progress(message: str) -> None:
    print(f"[tools] {message}", file=sys.stderr, flush=True)


def find_go() -> str:
    found = shutil.which("go")
    if found:
        return found
    # The Go distribution's default location, not always on a non-login shell's PATH.
    fallback = Path("/usr/local/go/bin/go")
    if os.access(fallback, os.X_OK):
        return str(fallback)
    raise ToolchainError(
        "`go` was not found on PATH or at /usr/local/go/bin/go; install Go >= 1.26 to build "
        "the pinned tools"
    )


def build(
    only: Sequence[str] = (),
    *,
    toolset: Toolset | None = None,
    force: bool = False,
    progress: Progress = _stderr_progress,
    jobs: int = 2,
) -> Path:
    """Make sure every tool (or those named in `only`) is built; returns the bin directory.

    Idempotent: a tool whose binaries exist and pass their version check is left alone, so a
    warm run takes seconds.
    """
    toolset = toolset or load_toolset()
    specs = _select(toolset, only)
    # Two builds at once: one `go build` leaves a core idle while it loads packages, links a
    # large binary or waits on a package everything else imports; a second build fills those
    # gaps (cold set-up on 2 cores is mostly these builds). Tables start in the given order.
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(ensure_tool, s, force=force, progress=progress) for s in specs]
        errors = [error for f in futures if (error := f.exception()) is not None]
    if errors:
        raise ToolchainError("; ".join(str(e) for e in errors)) from errors[0]
    return bin_dir(toolset)


def ensure_tool(
    spec: ToolSpec, *, force: bool = False, progress: Progress = _stderr_progress
) -> Path:
    """Make sure one table's binaries are built; returns the table's folder.

    Only the binaries that are missing or fail their check are built (or adopted from the old
    layout). A build goes to a temporary directory and each binary is renamed into place, so
    an interrupted build never leaves a half-written tool behind.
    """
    target = spec_dir(spec)
    files_present = all((target / name).is_file() for name in spec.module_files)
    if not force and files_present and _cached(spec, target, progress):
        # The warm path takes no lock: a long cold build of another tool must not block it.
        return target
    target.mkdir(parents=True, exist_ok=True)
    with _locked(target / ".lock"):
        # Another process may have built the table while this one waited for the lock.
        missing = list(spec.binaries) if force else sorted(_problems(spec, target))
        if missing and not force:
            missing = _adopt_legacy(spec, target, missing, progress)
        if missing:
            _build_binaries(spec, target, missing, progress)
        _install_module_files(spec, target, force=force)
    return target


def _select(toolset: Toolset, only: Sequence[str]) -> list[ToolSpec]:
    if not only:
        return list(toolset.tools)
    chosen: list[ToolSpec] = []
    for name in only:
        spec = toolset.tool(name)
        if spec not in chosen:
            chosen.append(spec)
    return chosen


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two builds at once (CI and a developer on one machine) would fight over the same files.
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_binaries(
    spec: ToolSpec, target: Path, binaries: Sequence[str], progress: Progress
) -> None:
    start = time.monotonic()
    label = f"{spec.name} {spec.version}"
    progress(f"{label}: building {', '.join(binaries)} (cold builds take minutes)")
    part = dataclasses.replace(spec, binaries={b: spec.binaries[b] for b in binaries})
    work = target / ".work"
    # Left-overs of a killed build: nothing in here is worth keeping.
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        out_dir = work / "out"
        _build_in_wrapper(part, work, out_dir, progress)
        for binary in binaries:
            check_binary(spec, binary, out_dir / binary)
        for binary in binaries:
            # rename(2) within one file system is atomic: readers see the old or the new file.
            os.replace(out_dir / binary, target / binary)
        _record_packages(target, part.binaries)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(f"{label}: built in {time.monotonic() - start:.1f}s")


def _install_module_files(spec: ToolSpec, target: Path, *, force: bool) -> None:
    """Copy the table's `module_files` out of the (read-only) module cache, executable."""
    wanted = {n: f for n, f in spec.module_files.items() if force or not (target / n).is_file()}
    if not wanted:
        return
    with tempfile.TemporaryDirectory(prefix=f"{spec.name}-files-") as scratch:
        runner = _GoRunner(spec, find_go(), Path(scratch), _stderr_progress)
        module_dir = runner.json("mod", "download", "-json", f"{spec.module}@{spec.version}").get(
            "Dir"
        )
    if not isinstance(module_dir, str):
        raise ToolchainError(f"{spec.name}: `go mod download` did not report the module dir")
    for name, relative in wanted.items():
        source = Path(module_dir) / relative
        if not source.is_file():
            raise ToolchainError(f"{spec.name}: {relative} is not a file of {spec.module}")
        temporary = target / f".{name}.copy"
        shutil.copyfile(source, temporary)
        temporary.chmod(0o755)
        os.replace(temporary, target / name)


NOT_BUILT = "not built"


def _problems(spec: ToolSpec, target: Path) -> dict[str, str]:
    """binary -> why it cannot be used as it is (not built, other package, failing check)."""
    recorded = _read_packages(target)
    problems: dict[str, str] = {}
    for binary, package in spec.binaries.items():
        path = target / binary
        if not os.access(path, os.X_OK):
            problems[binary] = NOT_BUILT
        elif recorded.get(binary) != package:
            problems[binary] = f"{binary} was built from {recorded.get(binary)}, not {package}"
        else:
            try:
                check_binary(spec, binary, path)
            except ToolchainError as exc:
                problems[binary] = str(exc)
    return problems


def _cached(spec: ToolSpec, target: Path, progress: Progress) -> bool:
    """Whether the spec's binaries are all in place and pass their check (reported either way)."""
    start = time.monotonic()
    label = f"{spec.name} {spec.version}"
    problems = _problems(spec, target)
    if not problems:
        progress(f"{label}: ok, cached ({time.monotonic() - start:.1f}s)")
        return True
    failing = [why for why in problems.values() if why != NOT_BUILT]
    if failing:
        progress(f"{label}: cached binaries fail their check, rebuilding ({'; '.join(failing)})")
    return False


# ---------------------------------------------------------------------------------------------
# adopting binaries of the layout before per-table caching


@dataclass(frozen=True)
class BuildInfo:
    """What `go version -m` reads from a Go binary: how and from what it was built."""

    package: str
    main_module: str
    main_version: str
    deps: Mapping[str, str]
    replaced: Mapping[str, str]
    settings: Mapping[str, str]


def parse_build_info(text: str) -> BuildInfo:
    package = main_module = main_version = ""
    deps: dict[str, str] = {}
    replaced: dict[str, str] = {}
    settings: dict[str, str] = {}
    last_dep = ""
    for line in text.splitlines():
        fields = line.strip().split("\t")
        kind, rest = fields[0], fields[1:]
        if kind == "path" and rest:
            package = rest[0]
        elif kind == "mod" and rest:
            main_module, main_version = rest[0], rest[1] if len(rest) > 1 else ""
        elif kind == "dep" and len(rest) >= 2:
            last_dep = rest[0]
            deps[last_dep] = rest[1]
        elif kind == "=>" and len(rest) >= 2 and last_dep:
            replaced[last_dep] = f"{rest[0]}@{rest[1]}"
        elif kind == "build" and rest:
            key, _, value = rest[0].partition("=")
            # Go quotes values with spaces the way strconv.Quote does, which JSON reads.
            settings[key] = json.loads(value) if value.startswith('"') else value
    return BuildInfo(package, main_module, main_version, deps, replaced, settings)


def read_build_info(path: Path) -> BuildInfo | None:
    """The build information of a Go binary, or None when it cannot be read."""
    try:
        go = find_go()
        proc = subprocess.run(
            [go, "version", "-m", str(path)],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (ToolchainError, OSError, subprocess.TimeoutExpired):
        return None
    return parse_build_info(proc.stdout) if proc.returncode == 0 else None


def build_info_matches(spec: ToolSpec, binary: str, info: BuildInfo) -> bool:
    """Whether a binary is what this table would build now: package, module version, flags.

    Go leaves -ldflags out of the build information of a -trimpath build; the version check
    that adoption runs afterwards (`expect`) stands in for them.
    """
    wrapper = f"neuraxis.local/tools/{spec.name}"
    if spec.copy_main or binary in spec.own_main:
        # A copied (or our own) main belongs to the wrapper module; upstream is a dependency.
        source_ok = (
            info.package == f"{wrapper}/cmd/{binary}"
            and info.main_module == wrapper
            and info.deps.get(spec.module) == spec.version
        )
    else:
        # Go records the module holding the main package as the main module.
        source_ok = info.package == spec.binaries[binary] and (
            info.main_module,
            info.main_version,
        ) == (spec.module, spec.version)
    staging_ok = spec.local_replaces is None or all(
        target == f"{old}@{spec.local_replaces}"
        for old, target in info.replaced.items()
        if target.startswith(f"{old}@")
    )
    return (
        source_ok
        and info.settings.get("-trimpath") == "true"
        and info.settings.get("-tags", "") == ",".join(spec.tags)
        and info.settings.get("-gcflags", "") == _gcflags_setting()
        and info.settings.get("CGO_ENABLED") == "0"
        and staging_ok
    )


def _legacy_candidates(binary: str) -> list[Path]:
    """`binary` in every toolset folder of the old layout, newest first."""
    root = tools_root()
    if not root.is_dir():
        return []
    found = [
        folder / "bin" / binary
        for folder in root.iterdir()
        if LEGACY_TOOLSET_NAME.fullmatch(folder.name)
    ]
    usable = [path for path in found if os.access(path, os.X_OK) and not path.is_symlink()]
    return sorted(usable, key=lambda path: path.stat().st_mtime, reverse=True)


def _adopt_legacy(
    spec: ToolSpec, target: Path, missing: Sequence[str], progress: Progress
) -> list[str]:
    """Take missing binaries from the old layout when they match the table; returns the rest."""
    still_missing: list[str] = []
    for binary in missing:
        source = next(
            (
                path
                for path in _legacy_candidates(binary)
                if (info := read_build_info(path)) and build_info_matches(spec, binary, info)
            ),
            None,
        )
        if source is None or not _install_copy(spec, binary, source, target):
            still_missing.append(binary)
            continue
        _record_packages(target, {binary: spec.binaries[binary]})
        progress(f"{spec.name}: {binary} taken from the old cache {source}")
    return still_missing


def _install_copy(spec: ToolSpec, binary: str, source: Path, target: Path) -> bool:
    temporary = target / f".{binary}.adopt"
    try:
        # A hard link costs nothing; a copy when the old folder is on another file system.
        temporary.unlink(missing_ok=True)
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copy2(source, temporary)
        check_binary(spec, binary, temporary)
    except (OSError, ToolchainError):
        temporary.unlink(missing_ok=True)
        return False
    os.replace(temporary, target / binary)
    return True


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    # Never fetch a different Go toolchain behind the user's back: fail with the version instead.
    env["GOTOOLCHAIN"] = "local"
    # A wrapper module lives in a temporary directory, never inside a workspace.
    env["GOWORK"] = "off"
    return env


def _build_in_wrapper(spec: ToolSpec, work: Path, out_dir: Path, progress: Progress) -> None:
    go = find_go()
    run = _GoRunner(spec, go, work, progress)
    upstream = run.json("mod", "download", "-json", f"{spec.module}@{spec.version}")
    gomod_path = upstream.get("GoMod")
    if not isinstance(gomod_path, str):
        raise ToolchainError(f"{spec.name}: `go mod download` did not report a go.mod path")
    gomod = parse_go_mod(Path(gomod_path).read_text())
    run("mod", "init", f"neuraxis.local/tools/{spec.name}")
    edits = go_mod_edit_args(spec, gomod)
    if edits:
        run("mod", "edit", *edits)
    upstream_mains = [p for b, p in spec.binaries.items() if b not in spec.own_main]
    if upstream_mains:
        run("get", "-tool", *(f"{pkg}@{spec.version}" for pkg in upstream_mains))
    packages = [
        _install_own_main(spec, run, work, b) if b in spec.own_main else p
        for b, p in spec.binaries.items()
    ]
    if spec.copy_main:
        module_dir = upstream.get("Dir")
        if not isinstance(module_dir, str):
            raise ToolchainError(f"{spec.name}: `go mod download` did not report the module dir")
        packages = [
            _copy_main(spec, Path(module_dir), work, b, p) for b, p in spec.binaries.items()
        ]
        if spec.generate_env:
            env = {k: spec.expand(v) for k, v in spec.generate_env.items()}
            run.with_env(env)("generate", *packages)
    out_dir.mkdir()
    run("build", *build_flags(spec), "-o", f"{out_dir}/", *packages)
    for binary, package in zip(spec.binaries, packages, strict=True):
        produced = out_dir / go_default_binary_name(package)
        if produced != out_dir / binary:
            os.replace(produced, out_dir / binary)


def _copy_main(spec: ToolSpec, module_dir: Path, work: Path, binary: str, package: str) -> str:
    """Copy a main package into the wrapper module, adding the files upstream generates.

    For mains that embed files which are generated at release time and so are absent from the
    module zip (pulumi-resource-kubernetes' schema-embed.json).
    """
    if not package.startswith(spec.module + "/"):
        raise ToolchainError(f"{spec.name}: {package} is not inside module {spec.module}")
    source = module_dir / package.removeprefix(spec.module + "/")
    target = work / "cmd" / binary
    shutil.copytree(source, target)
    for path in (target, *target.rglob("*")):
        # The module cache is read-only; generate steps write next to these files.
        path.chmod(path.stat().st_mode | 0o200)
    for name, origin in spec.main_files.items():
        shutil.copyfile(target / origin, target / name)
    return f"./cmd/{binary}"


GO_IMPORT = re.compile(r'^\s*(?:[\w.]+\s+)?"([^"]+)"', re.MULTILINE)
IMPORT_BLOCKS = re.compile(r"^import\s*(\([^)]*\)|\"[^\"]*\")", re.MULTILINE)


def go_imports(source: str) -> list[str]:
    """The import paths of one Go file (its import declarations only)."""
    return [
        path
        for block in IMPORT_BLOCKS.findall(source)
        for path in GO_IMPORT.findall(block.strip("()"))
    ]


def _install_own_main(spec: ToolSpec, run: Callable[..., str], work: Path, binary: str) -> str:
    """Put our own main for `binary` into the wrapper and require what it imports, pinned.

    For binaries we need only part of (CoreDNS with the plugins our Corefile uses): the
    upstream main links everything. Its imports must come from the table's module, so that
    one version pins them all.
    """
    source = spec.own_main_file(binary)
    text = source.read_text()
    # Standard-library paths have no dot in their first element.
    imports = [path for path in go_imports(text) if "." in path.split("/")[0]]
    outside = [p for p in imports if p != spec.module and not p.startswith(spec.module + "/")]
    if outside:
        raise ToolchainError(f"{spec.name}: {source} imports {outside[0]}, outside {spec.module}")
    target = work / "cmd" / binary
    target.mkdir(parents=True)
    (target / "main.go").write_text(text)
    if imports:
        run("get", *(f"{path}@{spec.version}" for path in imports))
    return f"./cmd/{binary}"


def _gcflags_setting() -> str:
    """How Go's build information records COMPILE_FLAGS' -gcflags (`go version -m`)."""
    return next((f.partition("=")[2] for f in COMPILE_FLAGS if f.startswith("-gcflags=")), "")


def build_flags(spec: ToolSpec) -> list[str]:
    flags = [
        "-trimpath",
        *COMPILE_FLAGS,
        "-ldflags=" + " ".join(["-s", "-w", *spec.expanded_ldflags()]),
    ]
    if spec.tags:
        flags.append("-tags=" + ",".join(spec.tags))
    return flags


class _GoRunner:
    """Runs go commands in a wrapper module, with a heartbeat and an error naming the tool."""

    def __init__(self, spec: ToolSpec, go: str, work: Path, progress: Progress) -> None:
        self.spec, self.go, self.work, self.progress = spec, go, work, progress
        self.env = go_env()

    def with_env(self, extra: Mapping[str, str]) -> _GoRunner:
        runner = _GoRunner(self.spec, self.go, self.work, self.progress)
        runner.env = {**self.env, **extra}
        return runner

    def __call__(self, *args: str) -> str:
        log_path = self.work / "go.log"
        start = time.monotonic()
        with log_path.open("w+") as log:
            proc = subprocess.Popen(
                [self.go, *args],
                cwd=self.work,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            rc = self._wait(proc, args, start)
            log.seek(0)
            output = log.read()
        if rc != 0:
            raise ToolchainError(self._failure(args, rc, output))
        return output

    def json(self, *args: str) -> dict[str, object]:
        output = self(*args)
        try:
            data = json.loads(output[output.index("{") :])
        except (ValueError, json.JSONDecodeError) as exc:
            raise ToolchainError(f"{self.spec.name}: unreadable output of go {args[0]}") from exc
        if not isinstance(data, dict):
            raise ToolchainError(f"{self.spec.name}: unexpected output of go {args[0]}")
        if "Error" in data:
            raise ToolchainError(self._failure(args, 1, str(data["Error"])))
        return data

    def _wait(self, proc: subprocess.Popen[bytes], args: Sequence[str], start: float) -> int:
        while True:
            try:
                return proc.wait(timeout=HEARTBEAT_S)
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - start
                if elapsed > GO_STEP_TIMEOUT_S:
                    proc.kill()
                    proc.wait()
                    raise ToolchainError(
                        f"{self.spec.name}: `go {args[0]}` ran over {GO_STEP_TIMEOUT_S:.0f}s"
                    ) from None
                self.progress(f"{self.spec.name}: go {args[0]} still running ({elapsed:.0f}s)")

    def _failure(self, args: Sequence[str], rc: int, output: str) -> str:
        tail = "\n".join(output.strip().splitlines()[-ERROR_TAIL_LINES:])
        hint = ""
        if re.search(r"dial tcp|no such host|proxyconnect|i/o timeout|connection refused", output):
            hint = "\n(the Go module proxy looks unreachable: check GOPROXY and the network)"
        shown = " ".join(args[:3]) + (" ..." if len(args) > 3 else "")
        return (
            f"building {self.spec.name} {self.spec.version} failed: `go {shown}` exited {rc}\n"
            f"{tail}{hint}"
        )


def check_binary(spec: ToolSpec, binary: str, path: Path) -> str:
    """Run the binary's version command; returns its output or raises naming the binary."""
    if not spec.check:
        # Some binaries (plugins that serve gRPC at once) have no version command.
        if not os.access(path, os.X_OK):
            raise ToolchainError(f"{binary}: {path} is not an executable file")
        return ""
    args = spec.args_for(binary)
    try:
        proc = subprocess.run(
            [str(path), *args],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolchainError(f"{binary}: `{path} {' '.join(args)}` could not run: {exc}") from exc
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise ToolchainError(
            f"{binary}: `{path} {' '.join(args)}` exited {proc.returncode}: {output[-500:]}"
        )
    if spec.expect and spec.expect not in output:
        raise ToolchainError(f"{binary}: version output lacks {spec.expect!r}: {output[:300]!r}")
    return output


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m neuraxis.dev.toolchain [--jobs N] [tool ...]`: build, print the bin directory.

    The same as `neuraxis dev tools build`, but this module needs only the standard library,
    so `make` starts the long cold builds before (and beside) the venv's download.
    """
    args = list(argv if argv is not None else sys.argv[1:])
    jobs = 2
    if args[:1] == ["--jobs"] and len(args) > 1 and args[1].isdigit():
        jobs, args = int(args[1]), args[2:]
    try:
        print(build(args, jobs=jobs))
    except ToolchainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
