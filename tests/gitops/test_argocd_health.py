"""The Argo CD health checks in gitops/argocd/ run by a real Lua 5.1 interpreter: gopher-lua's
`glua`, the interpreter Argo CD embeds, at the version Argo CD pins. Each case of a kind's
`health_test.yaml` (Argo's own layout) is run the way Argo runs a health script: the object as
the global `obj`, the script's returned table read as the health status and message. Every test
object is also a valid resource of its kind, so the scripts read fields that exist."""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from neuraxis.crds import Dataset, EdgeDeployment, ModelVersion, TrainingJob
from neuraxis.dev.toolchain import tool_path

REPO = Path(__file__).resolve().parents[2]
CHECKS = REPO / "gitops" / "argocd" / "neuraxis.dev"
KINDS: dict[str, type[BaseModel]] = {
    kind.__name__: kind for kind in (Dataset, TrainingJob, ModelVersion, EdgeDeployment)
}


def lua_literal(value: Any) -> str:
    """A Lua table constructor for a JSON-like value (null fields are absent, as in Argo)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"no Lua literal for {value}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid Lua escapes for this text
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        fields = [
            f"[{json.dumps(k)}] = {lua_literal(v)}" for k, v in value.items() if v is not None
        ]
        return "{" + ", ".join(fields) + "}"
    raise TypeError(f"no Lua literal for {type(value).__name__}")


def run_health(script: Path, obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) as Argo would read them from the script for `obj`."""
    program = (
        f"obj = {lua_literal(obj)}\n"
        f"local check = function()\n{script.read_text()}\nend\n"
        "local hs = check()\n"
        'io.write(hs.status, "\\n", hs.message or "", "\\n")\n'
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "check.lua"  # glua reads a file, not stdin
        path.write_text(program)
        done = subprocess.run(
            [str(tool_path("glua")), str(path)], capture_output=True, text=True, timeout=30
        )
    assert done.returncode == 0, f"glua failed: {done.stdout}{done.stderr}"
    status, message = done.stdout.split("\n")[:2]
    return status, message


def cases() -> list[Any]:
    found = []
    for kind in sorted(KINDS):
        tests = yaml.safe_load((CHECKS / kind / "health_test.yaml").read_text())["tests"]
        found += [pytest.param(kind, case, id=f"{kind}/{case['inputPath']}") for case in tests]
    return found


def test_every_kind_has_a_check() -> None:
    assert sorted(p.name for p in CHECKS.iterdir() if (p / "health.lua").is_file()) == sorted(KINDS)


@pytest.mark.parametrize(("kind", "case"), cases())
def test_health_check_fixture(kind: str, case: dict[str, Any]) -> None:
    obj = yaml.safe_load((CHECKS / kind / case["inputPath"]).read_text())
    KINDS[kind].model_validate(obj)  # the fixture is a real resource of the kind
    status, message = run_health(CHECKS / kind / "health.lua", obj)
    assert (status, message) == (case["healthStatus"]["status"], case["healthStatus"]["message"])


def test_a_script_error_fails_the_check() -> None:
    # The harness itself can fail: an object without metadata is a Lua error, not a status.
    with pytest.raises(AssertionError, match="attempt to index"):
        run_health(CHECKS / "Dataset" / "health.lua", {"status": {"phase": "Ready"}})


def test_the_kustomization_puts_every_check_into_argocd_cm() -> None:
    # Rendered by the real kubectl's kustomize, as `kubectl apply -k gitops/argocd` would.
    rendered = subprocess.run(
        [str(tool_path("kubectl")), "kustomize", str(CHECKS.parent)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    config_map = yaml.safe_load(rendered)
    assert (config_map["kind"], config_map["metadata"]["name"]) == ("ConfigMap", "argocd-cm")
    assert config_map["metadata"]["namespace"] == "argocd"
    assert config_map["data"] == {
        f"resource.customizations.health.neuraxis.dev_{kind}": (
            CHECKS / kind / "health.lua"
        ).read_text()
        for kind in KINDS
    }


def test_the_flux_example_checks_resources_the_example_creates() -> None:
    docs = list(yaml.safe_load_all((REPO / "gitops" / "flux" / "smart-manufacturing.yaml").open()))
    kustomization = next(d for d in docs if d["kind"] == "Kustomization")
    example = REPO / kustomization["spec"]["path"]
    created = {
        (d["kind"], d["metadata"]["name"])
        for path in sorted(example.glob("*.yaml"))
        for d in yaml.safe_load_all(path.read_text())
        if d and d.get("apiVersion") == "neuraxis.dev/v1alpha1"
    }
    checked = {(c["kind"], c["name"]) for c in kustomization["spec"]["healthChecks"]}
    assert checked <= created
    assert {kind for kind, _ in checked} == set(KINDS)
