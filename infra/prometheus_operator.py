"""The prometheus-operator manifests, read from its Go module (no Helm repository is reachable):
`go mod download` puts the module zip's files in the Go module cache, read-only and keyed by
version, so the second read is a cache hit with no network. The version is pinned here only.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MODULE = "github.com/prometheus-operator/prometheus-operator"
VERSION = "v0.85.0"
CRD_DIR = "example/prometheus-operator-crd"


class PrometheusOperatorError(RuntimeError):
    """The module could not be downloaded or read; the message says which and how to fix it."""


@dataclass(frozen=True)
class PrometheusOperatorBundle:
    version: str
    crds: list[dict[str, Any]]
    # The operator itself (ServiceAccount, ClusterRole(Binding), Deployment, Service), without
    # the CRDs the bundle repeats.
    operator: list[dict[str, Any]]


def module_dir(version: str = VERSION) -> Path:
    """The module's files in the Go module cache (downloading once)."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOWORK": "off"}
    try:
        proc = subprocess.run(
            [go, "mod", "download", "-json", f"{MODULE}@{version}"],
            capture_output=True, text=True, timeout=300, env=env, cwd="/", stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PrometheusOperatorError(f"could not run `go mod download` ({go}): {exc}") from exc
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        info = {}
    if proc.returncode != 0 or "Error" in info or "Dir" not in info:
        reason = info.get("Error") or proc.stderr.strip() or f"exit {proc.returncode}"
        raise PrometheusOperatorError(
            f"could not download {MODULE}@{version} from the Go module proxy "
            f"({os.environ.get('GOPROXY', 'default GOPROXY')}): {reason}. The Monitoring "
            "component needs it once; later runs read the Go module cache offline."
        )
    return Path(info["Dir"])


@functools.cache
def load_bundle(version: str = VERSION) -> PrometheusOperatorBundle:
    root = module_dir(version)
    crd_files = sorted((root / CRD_DIR).glob("*.yaml"))
    if not crd_files:
        raise PrometheusOperatorError(f"{root / CRD_DIR}: no CRD files in {MODULE}@{version}")
    loader = _loader()
    crds = [yaml.load(path.read_text(), Loader=loader) for path in crd_files]
    bundle = [d for d in yaml.load_all((root / "bundle.yaml").read_text(), Loader=loader) if d]
    operator = [d for d in bundle if d["kind"] != "CustomResourceDefinition"]
    return PrometheusOperatorBundle(version=version, crds=crds, operator=operator)


def _loader() -> Any:
    """A safe loader (the C one: the CRDs are ~4 MB) that reads a bare `=` as the string "="
    (PromQL match-type enums); PyYAML's safe loader rejects YAML 1.1's `value` tag."""
    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[misc]
        pass

    Loader.add_constructor(
        "tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node)
    )
    return Loader


def in_namespace(manifests: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    """The bundle's objects moved from `default` to `namespace` (binding subjects included)."""
    moved: list[dict[str, Any]] = json.loads(json.dumps(manifests))
    for manifest in moved:
        if "namespace" in manifest["metadata"]:
            manifest["metadata"]["namespace"] = namespace
        for subject in manifest.get("subjects", []):
            if subject.get("kind") == "ServiceAccount":
                subject["namespace"] = namespace
    return moved
