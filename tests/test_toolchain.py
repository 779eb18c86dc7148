"""Unit tests of the toolchain pins, go.mod handling and cache layout (no Go, no cluster)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from neuraxis.dev import cluster, toolchain
from neuraxis.dev.toolchain import GoMod, Replace, ToolchainError, ToolSpec

KUBERNETES_GO_MOD = """\
module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
\tgithub.com/kylelemons/godebug v1.1.0 // indirect
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go // the staging copy
)

replace github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d

replace example.com/pinned v1.2.3 => example.com/fork v1.2.4

exclude (
\tgithub.com/grpc-ecosystem/grpc-gateway v1.14.7
)

exclude golang.org/x/net v0.0.1
"""


def test_pinned_toolset_has_the_control_plane() -> None:
    toolset = toolchain.load_toolset()
    kube = toolset.tool("kubernetes")
    assert kube.module == "k8s.io/kubernetes"
    assert kube.version == "v1.36.3"
    assert kube.local_replaces == "v0.36.3"
    assert set(kube.binaries) == {
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubectl",
        "kubelet",
        "kube-proxy",
    }
    assert toolset.tool("etcd").version.startswith("v3.6.")
    assert toolset.tool("kwok").version == "v0.8.0"
    # A binary name finds the table that builds it (`tools build --only kubectl`).
    assert toolset.tool("kwokctl").name == "kwok"
    assert toolset.tool("kubectl").args_for("kubectl") == ("version", "--client")
    assert toolset.tool("etcd").args_for("etcd") == ("--version",)
    # The later entries share the table shape.
    assert toolset.tool("pulumi").args_for("pulumi") == ("version",)
    assert toolset.tool("pulumi-resource-kubernetes").copy_main
    assert {"minio", "prometheus"} <= {spec.name for spec in toolset.tools}
    # The real node's runtime and DNS.
    containerd = toolset.tool("containerd-shim-runc-v2")
    assert (containerd.name, containerd.version) == ("containerd", "v2.4.2")
    assert containerd.args_for("containerd-shim-runc-v2") == ("-v",)
    assert toolset.tool("coredns").args_for("coredns") == ("-version",)


def test_kubernetes_ldflags_carry_the_version() -> None:
    kube = toolchain.load_toolset().tool("kubernetes")
    flags = toolchain.build_flags(kube)
    assert flags[0] == "-trimpath"
    (ldflags,) = [flag for flag in flags if flag.startswith("-ldflags=")]
    assert ldflags.startswith("-ldflags=-s -w ")
    assert "-X k8s.io/component-base/version.gitVersion=v1.36.3" in ldflags
    assert "-X k8s.io/component-base/version.gitMinor=36" in ldflags


def test_toolset_version_follows_content() -> None:
    a = toolchain.parse_toolset(_toml("v1.0.0"))
    b = toolchain.parse_toolset(_toml("v1.0.1"))
    assert a.version == toolchain.toolset_version(_toml("v1.0.0"))
    assert len(a.version) == 12
    assert a.version != b.version
    assert toolchain.parse_toolset(_toml("v1.0.0")).version == a.version
    commented = b"# a comment does not change the pins\n" + _toml("v1.0.0").replace(b"\n", b"  \n")
    assert toolchain.parse_toolset(commented).version == a.version


def test_unknown_tool_lists_the_known_ones() -> None:
    toolset = toolchain.parse_toolset(_toml("v1.0.0"))
    with pytest.raises(ToolchainError, match=r"unknown tool 'nope'.*demo"):
        toolset.tool("nope")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"[tools", "not valid TOML"),
        (b"x = 1\n", "no \\[tools"),
        (b'[tools.a]\nmodule = "m"\nversion = "v1"\n', "binaries"),
        (b'[tools.a]\nversion = "v1"\nbinaries = { a = "m/a" }\n', "module"),
        (b'[tools.a]\nmodule="m"\nversion="v1"\nbinaries={a="m"}\ntags="x"\n', "tags"),
    ],
)
def test_bad_toolset_is_reported(text: bytes, message: str) -> None:
    with pytest.raises(ToolchainError, match=message):
        toolchain.parse_toolset(text)


def test_parse_go_mod_reads_blocks_lines_and_comments() -> None:
    gomod = toolchain.parse_go_mod(KUBERNETES_GO_MOD)
    assert gomod.godebug == ("default=go1.26",)
    assert gomod.excludes == (
        ("github.com/grpc-ecosystem/grpc-gateway", "v1.14.7"),
        ("golang.org/x/net", "v0.0.1"),
    )
    assert [r.old for r in gomod.replaces] == [
        "k8s.io/api",
        "k8s.io/client-go",
        "github.com/atotto/clipboard",
        "example.com/pinned",
    ]
    assert gomod.replaces[1] == Replace(
        "k8s.io/client-go", None, "./staging/src/k8s.io/client-go", None
    )
    assert gomod.replaces[3] == Replace(
        "example.com/pinned", "v1.2.3", "example.com/fork", "v1.2.4"
    )


def test_staging_replaces_become_published_versions() -> None:
    gomod = toolchain.parse_go_mod(KUBERNETES_GO_MOD)
    flags = [r.edit_flag() for r in toolchain.wrapper_replaces(gomod, "v0.36.3")]
    assert flags == [
        "-replace=k8s.io/api=k8s.io/api@v0.36.3",
        "-replace=k8s.io/client-go=k8s.io/client-go@v0.36.3",
        "-replace=github.com/atotto/clipboard="
        "github.com/tgummerer/clipboard@v0.0.0-20241001131231-d02d",
        "-replace=example.com/pinned@v1.2.3=example.com/fork@v1.2.4",
    ]


def test_local_replaces_are_dropped_without_a_version() -> None:
    gomod = GoMod(
        replaces=(
            Replace("go.etcd.io/etcd/api/v3", None, "../api", None),
            Replace("a.example/x", None, "b.example/x", "v1.0.0"),
        ),
        excludes=(),
        godebug=(),
    )
    kept = toolchain.wrapper_replaces(gomod, None)
    assert [r.old for r in kept] == ["a.example/x"]


def test_go_mod_edit_args_copy_excludes_and_godebug() -> None:
    gomod = toolchain.parse_go_mod(KUBERNETES_GO_MOD)
    spec = _spec(local_replaces="v0.36.3")
    args = toolchain.go_mod_edit_args(spec, gomod)
    assert "-exclude=golang.org/x/net@v0.0.1" in args
    assert args[-1] == "-godebug=default=go1.26"
    overridden = toolchain.go_mod_edit_args(_spec(godebug=("default=go1.24",)), gomod)
    assert overridden[-1] == "-godebug=default=go1.24"
    assert "-godebug=default=go1.26" not in overridden


@pytest.mark.parametrize(
    ("package", "name"),
    [
        ("k8s.io/kubernetes/cmd/kubectl", "kubectl"),
        ("go.etcd.io/etcd/server/v3", "server"),
        ("github.com/minio/minio", "minio"),
        ("sigs.k8s.io/kwok/cmd/kwokctl/", "kwokctl"),
    ],
)
def test_go_default_binary_name(package: str, name: str) -> None:
    assert toolchain.go_default_binary_name(package) == name


def test_tools_root_override_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEURAXIS_TOOLS_DIR", str(tmp_path / "tools"))
    toolset = toolchain.parse_toolset(_toml("v1.0.0"))
    assert toolchain.bin_dir(toolset) == tmp_path / "tools" / "toolsets" / toolset.version / "bin"
    spec = toolset.tool("demo")
    assert toolchain.spec_dir(spec) == (
        tmp_path / "tools" / "by-spec" / f"demo-{toolchain.spec_key(spec)}"
    )
    monkeypatch.delenv("NEURAXIS_TOOLS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert toolchain.tools_root() == tmp_path / "cache" / "neuraxis" / "tools"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert toolchain.tools_root() == tmp_path / "home" / ".cache" / "neuraxis" / "tools"


def test_tool_path_names_the_fix_when_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NEURAXIS_TOOLS_DIR", str(tmp_path))
    toolset = toolchain.parse_toolset(_toml("v1.0.0"))
    with pytest.raises(ToolchainError, match="tools build --only demo"):
        toolchain.tool_path("demo-cli", toolset)
    binary = _install(toolset.tool("demo"), "demo-cli", "echo demo v1.0.0")
    assert toolchain.tool_path("demo-cli", toolset) == binary
    # The toolset's one folder links to it.
    linked = toolchain.bin_dir(toolset) / "demo-cli"
    assert linked.is_symlink() and linked.resolve() == binary.resolve()


def test_warm_build_only_checks_versions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A second run finds the binaries, runs their version check and builds nothing."""
    monkeypatch.setenv("NEURAXIS_TOOLS_DIR", str(tmp_path))
    toolset = toolchain.parse_toolset(_toml("v1.0.0"))
    _install(toolset.tool("demo"), "demo-cli", "echo demo v1.0.0")

    def no_build(*_: object) -> None:
        raise AssertionError("a warm run must not build")

    monkeypatch.setattr(toolchain, "_build_in_wrapper", no_build)
    lines: list[str] = []
    bin_dir = toolchain.build(toolset=toolset, progress=lines.append)
    assert bin_dir == toolchain.bin_dir(toolset)
    assert len(lines) == 1
    assert "ok, cached" in lines[0]
    assert not (toolchain.spec_dir(toolset.tool("demo")) / ".work").exists()
    # The folder for PATH runs the binary through its link.
    assert "demo v1.0.0" in toolchain.check_binary(
        toolset.tool("demo"), "demo-cli", bin_dir / "demo-cli"
    )


def test_failing_cached_binary_is_rebuilt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEURAXIS_TOOLS_DIR", str(tmp_path))
    toolset = toolchain.parse_toolset(_toml("v1.0.0"))
    binary = _install(toolset.tool("demo"), "demo-cli", "exit 3")
    builds = _fake_builds(monkeypatch)
    lines: list[str] = []
    toolchain.build(toolset=toolset, progress=lines.append)
    assert any("rebuilding" in line for line in lines)
    assert "built in" in lines[-1]
    assert builds == [("demo", ["demo-cli"])]
    assert "v1.0.0" in toolchain.check_binary(toolset.tool("demo"), "demo-cli", binary)


TWO_TABLES = """\
[tools.first]
module = "example.com/first"
version = "{first}"
binaries = {{ first-cli = "example.com/first/cmd/first-cli" }}

[tools.second]
module = "example.com/second"
version = "v2.0.0"
binaries = {{ {second_binaries} }}
"""


def _two_tables(first: str = "v1.0.0", *, with_extra: bool = False) -> toolchain.Toolset:
    second = 'second-cli = "example.com/second/cmd/second-cli"'
    if with_extra:
        second += ', second-extra = "example.com/second/cmd/second-extra"'
    text = TWO_TABLES.format(first=first, second_binaries=second)
    return toolchain.parse_toolset(text.encode())


def test_editing_one_table_keeps_the_other_tables_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NEURAXIS_TOOLS_DIR", str(tmp_path))
    builds = _fake_builds(monkeypatch)
    before = _two_tables("v1.0.0")
    toolchain.build(toolset=before, progress=lambda _m: None)
    assert sorted(builds) == [("first", ["first-cli"]), ("second", ["second-cli"])]

    after = _two_tables("v1.0.1")
    assert after.version != before.version
    assert toolchain.spec_dir(after.tool("second")) == toolchain.spec_dir(before.tool("second"))
    assert toolchain.spec_dir(after.tool("first")) != toolchain.spec_dir(before.tool("first"))
    builds.clear()
    lines: list[str] = []
    bin_dir = toolchain.build(toolset=after, progress=lines.append)
    assert builds == [("first", ["first-cli"])]
    assert "second v2.0.0: ok, cached" in " ".join(lines)
    assert "v1.0.1" in (bin_dir / "first-cli").read_text()
    # The old toolset's folder still points at the old build.
    assert "v1.0.0" in (toolchain.bin_dir(before) / "first-cli").read_text()


def test_adding_a_binary_builds_only_that_binary(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NEURAXIS_TOOLS_DIR", str(tmp_path))
    builds = _fake_builds(monkeypatch)
    toolchain.build(toolset=_two_tables(), progress=lambda _m: None)
    builds.clear()
    grown = _two_tables(with_extra=True)
    bin_dir = toolchain.build(only=["second"], toolset=grown, progress=lambda _m: None)
    assert builds == [("second", ["second-extra"])]
    assert os.access(bin_dir / "second-extra", os.X_OK)
    assert os.access(bin_dir / "second-cli", os.X_OK)


# `go version -m` of a binary built by the old layout's wrapper (trimmed).
OLD_BUILD_INFO = """\
{path}: go1.26.8
\tpath\texample.com/second/cmd/second-cli
\tmod\texample.com/second\tv2.0.0\th1:abc=
\tdep\texample.com/other\tv0.1.0\th1:xyz=
\tdep\texample.com/staged\tv0.0.0
\t=>\texample.com/staged\tv0.2.0\th1:def=
\tbuild\t-buildmode=exe
\tbuild\t-compiler=gc
\tbuild\t-gcflags=all=-dwarf=false
\tbuild\t-trimpath=true
\tbuild\tCGO_ENABLED=0
\tbuild\tGOOS=linux
"""


def test_build_info_decides_whether_an_old_binary_matches() -> None:
    spec = _two_tables().tool("second")
    info = toolchain.parse_build_info(OLD_BUILD_INFO.format(path="/x/second-cli"))
    assert info.package == "example.com/second/cmd/second-cli"
    assert (info.main_module, info.main_version) == ("example.com/second", "v2.0.0")
    assert info.deps["example.com/other"] == "v0.1.0"
    assert info.replaced == {"example.com/staged": "example.com/staged@v0.2.0"}
    assert toolchain.build_info_matches(spec, "second-cli", info)
    assert not toolchain.build_info_matches(
        dataclasses.replace(spec, version="v2.0.1"), "second-cli", info
    )
    assert not toolchain.build_info_matches(
        dataclasses.replace(spec, tags=("x",)), "second-cli", info
    )
    staged = dataclasses.replace(spec, local_replaces="v0.3.0")
    assert not toolchain.build_info_matches(staged, "second-cli", info)
    # Built with DWARF (before COMPILE_FLAGS): not what a build makes now.
    with_dwarf = OLD_BUILD_INFO.replace("\tbuild\t-gcflags=all=-dwarf=false\n", "")
    info = toolchain.parse_build_info(with_dwarf.format(path="/x/second-cli"))
    assert not toolchain.build_info_matches(spec, "second-cli", info)
    quoted = toolchain.parse_build_info('\tbuild\t-ldflags="-s -w -X a.b=c d"\n')
    assert quoted.settings["-ldflags"] == "-s -w -X a.b=c d"


def test_binaries_of_the_old_layout_are_adopted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The old `<root>/<toolset version>/bin/` binaries are reused when their build info matches."""
    monkeypatch.setenv("NEURAXIS_TOOLS_DIR", str(tmp_path))
    old_bin = tmp_path / "0123456789ab" / "bin"
    old_bin.mkdir(parents=True)
    for name in ("second-cli", "first-cli"):
        (old_bin / name).write_text(f"#!/bin/sh\necho {name.split('-')[0]} v2.0.0 v1.0.0\n")
        (old_bin / name).chmod(0o755)
    old = old_bin / "second-cli"
    # `go version -m` is Go's reader of build information; this stand-in prints a real sample.
    fake_go = tmp_path / "go"
    fake_go.write_text(f"#!/bin/sh\ncat <<'EOF'\n{OLD_BUILD_INFO.format(path=old)}EOF\n")
    fake_go.chmod(0o755)
    monkeypatch.setattr(toolchain, "find_go", lambda: str(fake_go))
    builds = _fake_builds(monkeypatch)
    lines: list[str] = []
    bin_dir = toolchain.build(only=["second"], toolset=_two_tables(), progress=lines.append)
    assert builds == []
    assert any("taken from the old cache" in line for line in lines)
    assert (bin_dir / "second-cli").read_text() == old.read_text()
    # A binary the old layout built from other pins is not taken.
    builds.clear()
    toolchain.build(only=["first"], toolset=_two_tables(), progress=lines.append)
    assert builds == [("first", ["first-cli"])]


def _install(spec: ToolSpec, binary: str, body: str) -> Path:
    """A binary as a finished build leaves it in its table's folder."""
    folder = toolchain.spec_dir(spec)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / binary
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    toolchain._record_packages(folder, {binary: spec.binaries[binary]})
    return path


def test_two_tables_build_at_once_and_one_failure_spares_the_other(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With jobs=2 both builds run together; a failing table is reported, the other lands."""
    monkeypatch.setenv("NEURAXIS_TOOLS_DIR", str(tmp_path))
    both_started = threading.Barrier(2, timeout=10)

    def build_when_both_run(spec: ToolSpec, work: Path, out_dir: Path, progress: object) -> None:
        both_started.wait()  # a broken barrier (one build at a time) fails the test
        if spec.name == "first":
            raise ToolchainError("first: go build failed")
        out_dir.mkdir()
        (out_dir / "second-cli").write_text("#!/bin/sh\necho second v2.0.0\n")
        (out_dir / "second-cli").chmod(0o755)

    monkeypatch.setattr(toolchain, "_build_in_wrapper", build_when_both_run)
    toolset = _two_tables()
    with pytest.raises(ToolchainError, match="first: go build failed"):
        toolchain.build(toolset=toolset, progress=lambda _m: None, jobs=2)
    assert "second v2.0.0" in toolchain.check_binary(
        toolset.tool("second"), "second-cli", toolchain.tool_path("second-cli", toolset)
    )


def _fake_builds(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """Replace the Go build with scripts that print the table's version; records each build."""
    builds: list[tuple[str, list[str]]] = []

    def fake_build(spec: ToolSpec, work: Path, out_dir: Path, progress: object) -> None:
        builds.append((spec.name, sorted(spec.binaries)))
        out_dir.mkdir()
        for binary in spec.binaries:
            (out_dir / binary).write_text(f"#!/bin/sh\necho {spec.name} {spec.version}\n")
            (out_dir / binary).chmod(0o755)

    monkeypatch.setattr(toolchain, "_build_in_wrapper", fake_build)
    return builds


def test_missing_go_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.setattr(os, "access", lambda *_args: False)
    with pytest.raises(ToolchainError, match="`go` was not found"):
        toolchain.find_go()


def test_go_failure_names_the_tool_and_the_output_tail(tmp_path: Path) -> None:
    fake_go = tmp_path / "go"
    fake_go.write_text(
        "#!/bin/sh\necho 'dial tcp: lookup proxy.golang.org: no such host'\nexit 1\n"
    )
    fake_go.chmod(0o755)
    runner = toolchain._GoRunner(_spec(), str(fake_go), tmp_path, lambda _m: None)
    with pytest.raises(ToolchainError) as info:
        runner("get", "-tool", "example.com/demo/cmd/demo-cli@v1.0.0")
    message = str(info.value)
    assert "building demo v1.0.0 failed" in message
    assert "`go get -tool example.com/demo/cmd/demo-cli@v1.0.0` exited 1" in message
    assert "no such host" in message
    assert "module proxy looks unreachable" in message


def test_copied_main_package_gets_its_generated_files(tmp_path: Path) -> None:
    """pulumi-resource-kubernetes embeds files its release generates: the main is copied out."""
    toolset = toolchain.parse_toolset(
        b"""
[tools.provider]
module = "example.com/provider/v4"
version = "v4.0.0-20260115033456-f47bc2d6f199"
release = "4.25.0"
copy_main = true
main_files = { "schema-embed.json" = "schema.json" }
generate_env = { VERSION = "{release}" }
ldflags = ["-X example.com/provider/v4/pkg/version.Version={release}"]
check = false
binaries = { pulumi-resource-demo = "example.com/provider/v4/cmd/pulumi-resource-demo" }
"""
    )
    spec = toolset.tool("provider")
    assert spec.copy_main and not spec.check
    assert spec.expand(spec.generate_env["VERSION"]) == "4.25.0"
    assert spec.expanded_ldflags() == ["-X example.com/provider/v4/pkg/version.Version=4.25.0"]
    module_dir = tmp_path / "modcache"
    main_dir = module_dir / "cmd" / "pulumi-resource-demo"
    main_dir.mkdir(parents=True)
    (main_dir / "main.go").write_text("package main\n")
    (main_dir / "schema.json").write_text('{"name": "demo"}')
    for path in (main_dir / "main.go", main_dir / "schema.json", main_dir):
        path.chmod(0o555 if path.is_dir() else 0o444)  # the module cache is read-only
    work = tmp_path / "work"
    package = toolchain._copy_main(
        spec, module_dir, work, "pulumi-resource-demo", spec.binaries["pulumi-resource-demo"]
    )
    assert package == "./cmd/pulumi-resource-demo"
    copied = work / "cmd" / "pulumi-resource-demo"
    assert (copied / "schema-embed.json").read_text() == '{"name": "demo"}'
    (copied / "main.go").write_text("package main // writable\n")
    # A plugin without a version command is only checked for being executable.
    assert toolchain.check_binary(spec, "pulumi-resource-demo", Path("/bin/sh")) == ""
    with pytest.raises(ToolchainError, match="not an executable"):
        toolchain.check_binary(spec, "pulumi-resource-demo", copied / "main.go")


def test_language_host_ships_its_exec_script() -> None:
    """The Python language host of sdk v3.68.0 runs programs through a script of its module."""
    host = toolchain.load_toolset().tool("pulumi-language-python")
    assert (host.module, host.version) == ("github.com/pulumi/pulumi/sdk/v3", "v3.68.0")
    assert host.module_files == {
        "pulumi-language-python-exec": "python/cmd/pulumi-language-python-exec"
    }
    # The files are part of the cache key; a table without them keeps its old key.
    assert host.build_pins()["module_files"] == dict(host.module_files)
    assert "module_files" not in toolchain.load_toolset().tool("etcd").build_pins()


def test_module_files_are_installed_executable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module_dir = tmp_path / "modcache"
    (module_dir / "python" / "cmd").mkdir(parents=True)
    script = module_dir / "python" / "cmd" / "exec-script"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o444)  # read-only, as in the module cache
    spec = dataclasses.replace(
        _spec(), module_files={"demo-exec": "python/cmd/exec-script", "gone": "no/such/file"}
    )
    monkeypatch.setattr(toolchain, "find_go", lambda: "go")
    monkeypatch.setattr(toolchain._GoRunner, "json", lambda self, *a: {"Dir": str(module_dir)})
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(ToolchainError, match=r"no/such/file is not a file of example\.com/demo"):
        toolchain._install_module_files(spec, target, force=False)
    spec = dataclasses.replace(spec, module_files={"demo-exec": "python/cmd/exec-script"})
    toolchain._install_module_files(spec, target, force=False)
    installed = target / "demo-exec"
    assert installed.read_text() == script.read_text()
    assert os.access(installed, os.X_OK)


def _toml(version: str) -> bytes:
    return (
        "[tools.demo]\n"
        'module = "example.com/demo"\n'
        f'version = "{version}"\n'
        'expect = "v1.0.0"\n'
        "[tools.demo.binaries]\n"
        '"demo-cli" = "example.com/demo/cmd/demo-cli"\n'
    ).encode()


def _spec(local_replaces: str | None = None, godebug: tuple[str, ...] | None = None) -> ToolSpec:
    base = toolchain.parse_toolset(_toml("v1.0.0")).tool("demo")
    return dataclasses.replace(base, local_replaces=local_replaces, godebug=godebug)


# ---------------------------------------------------------------------------------------------
# The local cluster's pure helpers (no processes started).


def test_fake_node_pools() -> None:
    nodes = cluster.node_manifests()
    by_pool: dict[str, list[dict[str, Any]]] = {}
    for node in nodes:
        metadata = node["metadata"]
        assert metadata["annotations"] == {"kwok.x-k8s.io/node": "fake"}
        by_pool.setdefault(metadata["labels"]["neuraxis.dev/pool"], []).append(node)
    assert {pool: len(members) for pool, members in by_pool.items()} == {
        "cpu": 4,
        "gpu": 2,
        "edge": 3,
    }
    gpu = by_pool["gpu"][0]
    assert gpu["status"] == {
        "allocatable": {**cluster.BASE_RESOURCES, "nvidia.com/gpu": "8"},
        "capacity": {**cluster.BASE_RESOURCES, "nvidia.com/gpu": "8"},
    }
    # Every KWOK node keeps its pool's taints and gets the KWOK one: ordinary pods go to the
    # real node only.
    kwok_taint = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
    assert gpu["spec"] == {
        "taints": [
            {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
            kwok_taint,
        ]
    }
    assert by_pool["cpu"][0]["spec"] == {"taints": [kwok_taint]}
    sites = [n["metadata"]["labels"]["neuraxis.dev/edge-site"] for n in by_pool["edge"]]
    assert sites == ["plant-a", "plant-a", "plant-b"]


def test_crd_files_skip_the_kustomization(tmp_path: Path) -> None:
    for name in ("kustomization.yaml", "b.yaml", "a.yaml", "notes.txt"):
        (tmp_path / name).write_text("x: 1\n")
    assert [p.name for p in cluster.crd_files(tmp_path)] == ["a.yaml", "b.yaml"]
    assert cluster.crd_files(tmp_path / "missing") == []


def test_cluster_paths_follow_neuraxis_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NEURAXIS_HOME", str(tmp_path / "home"))
    paths = cluster.cluster_paths()
    assert paths.kubeconfig == tmp_path / "home" / "kubeconfig"
    assert paths.cluster_dir == tmp_path / "home" / "kwok" / "clusters" / "neuraxis"
    monkeypatch.delenv("NEURAXIS_HOME")
    monkeypatch.chdir(tmp_path)
    assert cluster.kubeconfig_path() == tmp_path / ".neuraxis" / "kubeconfig"


def test_recorded_ports_come_from_kwokctl_saved_config(tmp_path: Path) -> None:
    paths = cluster.ClusterPaths(tmp_path)
    paths.cluster_dir.mkdir(parents=True)
    (paths.cluster_dir / "kwok.yaml").write_text(
        "options:\n  kubeApiserverPort: 32764\n  etcdPort: 32765\n  prometheusPort: 0\n"
        "components:\n- name: etcd\n  ports:\n  - hostPort: 32766\n    port: 2379\n"
    )
    assert sorted(cluster._recorded_ports(paths)) == [32764, 32765, 32766]


def test_every_build_compiles_without_dwarf_and_says_so_in_the_key() -> None:
    etcd = toolchain.load_toolset().tool("etcd")
    flags = toolchain.build_flags(etcd)
    assert "-gcflags=all=-dwarf=false" in flags
    # The linker drops DWARF anyway: -s -w stay.
    assert any(f.startswith("-ldflags=-s -w") for f in flags)
    assert etcd.build_pins()["compile_flags"] == ["-gcflags=all=-dwarf=false"]


OWN_MAIN_TABLE = """
[tools.dns]
module = "example.com/dns"
version = "v1.2.0"
own_main = {{ dns = "{main}" }}
binaries = {{ dns = "example.com/dns" }}
"""


def _own_main_spec(monkeypatch: pytest.MonkeyPatch, folder: Path, source: str) -> ToolSpec:
    monkeypatch.setattr(toolchain, "OWN_MAINS_DIR", folder)
    (folder / "dns.go").write_text(source)
    toml = OWN_MAIN_TABLE.format(main="dns.go").encode()
    return toolchain.parse_toolset(toml).tool("dns")


SLIM_MAIN = """// a comment with "quotes"
package main

import (
\t"example.com/dns/coremain"

\t_ "example.com/dns/plugin/cache"
\tlog "log"
)

import "fmt"

func main() { fmt.Println("x"); coremain.Run() }
"""


def test_own_main_is_built_with_its_imports_pinned(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """CoreDNS with only our plugins: our main file, its imports at the table's version."""
    spec = _own_main_spec(monkeypatch, tmp_path, SLIM_MAIN)
    assert toolchain.go_imports(SLIM_MAIN) == [
        "example.com/dns/coremain",
        "example.com/dns/plugin/cache",
        "log",
        "fmt",
    ]
    calls: list[tuple[str, ...]] = []

    def go(*args: str) -> str:
        calls.append(args)
        return ""

    work = tmp_path / "work"
    package = toolchain._install_own_main(spec, go, work, "dns")
    assert package == "./cmd/dns"
    assert (work / "cmd" / "dns" / "main.go").read_text() == SLIM_MAIN
    assert calls == [
        ("get", "example.com/dns/coremain@v1.2.0", "example.com/dns/plugin/cache@v1.2.0")
    ]
    # Its content is part of the cache key: an edit rebuilds, the same text does not.
    key = toolchain.spec_key(spec)
    assert toolchain.spec_key(_own_main_spec(monkeypatch, tmp_path, SLIM_MAIN)) == key
    edited = SLIM_MAIN.replace("plugin/cache", "plugin/errors")
    assert toolchain.spec_key(_own_main_spec(monkeypatch, tmp_path, edited)) != key


def test_own_main_importing_another_module_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = SLIM_MAIN.replace('"log"', '"example.org/unpinned/x"')
    spec = _own_main_spec(monkeypatch, tmp_path, source)
    with pytest.raises(
        ToolchainError, match=re.escape("imports example.org/unpinned/x, outside example.com/dns")
    ):
        toolchain._install_own_main(spec, lambda *args: "", tmp_path / "work", "dns")


@pytest.mark.parametrize(
    ("extra", "main", "message"),
    [
        ("", "missing.go", "`own_main.dns`: no file"),
        ("copy_main = true\n", "dns.go", "`own_main` and `copy_main` exclude each other"),
    ],
)
def test_bad_own_main_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, extra: str, main: str, message: str
) -> None:
    monkeypatch.setattr(toolchain, "OWN_MAINS_DIR", tmp_path)
    (tmp_path / "dns.go").write_text("package main\n")
    toml = OWN_MAIN_TABLE.format(main=main).replace("version =", extra + "version =")
    with pytest.raises(ToolchainError, match=re.escape(message)):
        toolchain.parse_toolset(toml.encode())


def test_own_main_must_name_a_binary_of_the_table(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(toolchain, "OWN_MAINS_DIR", tmp_path)
    (tmp_path / "dns.go").write_text("package main\n")
    toml = OWN_MAIN_TABLE.format(main="dns.go").replace('{ dns = "dns.go', '{ dnz = "dns.go')
    with pytest.raises(ToolchainError, match="`own_main` names 'dnz', which is not in `binaries`"):
        toolchain.parse_toolset(toml.encode())
