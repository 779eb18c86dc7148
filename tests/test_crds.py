"""The generated CRDs: no drift from the models, one pinned in full, structural everywhere."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from neuraxis.crds.common import ApiModel
from neuraxis.crds.generate import build_crd, render_crds, stale_crd_files
from neuraxis.crds.kinds import KINDS
from tests.conftest import REPO

GOLDEN = REPO / "tests" / "golden" / "neuraxis.dev_edgedeployments.yaml"


def test_committed_crds_match_the_models() -> None:
    assert stale_crd_files(REPO / "crds") == [], "run `make crds` and commit the result"


def test_generation_is_deterministic() -> None:
    assert render_crds() == render_crds()


def test_golden_edgedeployment_crd() -> None:
    # Pins one whole CRD: any change to the API shows up here as a reviewed diff.
    assert build_crd(KINDS["EdgeDeployment"]) == yaml.safe_load(GOLDEN.read_text())


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def test_schemas_are_structural() -> None:
    for info in KINDS.values():
        root = build_crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for part in ("spec", "status"):
            assert "x-kubernetes-preserve-unknown-fields" not in root["properties"][part]
        for path, node in _nodes(root):
            free = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
                "x-kubernetes-int-or-string"
            )
            assert "type" in node or free, f"{info.kind}{path} has no type"
            assert not ({"$ref", "anyOf", "allOf", "oneOf", "const"} & set(node)), path
            assert not ("properties" in node and "additionalProperties" in node), path
            assert node.get("description") or path.count(".") > 0 or path == "", path


def test_names_columns_and_subresources() -> None:
    for info in KINDS.values():
        spec = build_crd(info)["spec"]
        assert spec["names"]["shortNames"] == [info.short_name]
        assert spec["names"]["categories"] == ["neuraxis"]
        version = spec["versions"][0]
        assert version["subresources"] == {"status": {}}
        names = [c["name"] for c in version["additionalPrinterColumns"]]
        assert "Phase" in names and names[-1] == "Age"
    assert {i.short_name for i in KINDS.values()} == {"nxds", "nxtj", "nxmv", "nxed"}


def _models(model: type[ApiModel], seen: set[type[ApiModel]]) -> Iterator[type[ApiModel]]:
    if model in seen:
        return
    seen.add(model)
    yield model
    for info in model.model_fields.values():
        for arg in _flatten(info.annotation):
            if isinstance(arg, type) and issubclass(arg, ApiModel):
                yield from _models(arg, seen)


def _flatten(annotation: Any) -> Iterator[Any]:
    yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _flatten(arg)


def test_every_python_rule_is_also_a_cel_rule() -> None:
    for info in KINDS.values():
        root = build_crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        cel = {
            (v["rule"], v["message"], v.get("fieldPath", ""))
            for _, node in _nodes(root)
            for v in node.get("x-kubernetes-validations", [])
        }
        for model in _models(info.model, set()):
            for rule in model.rules:
                assert (rule.cel, rule.message, rule.field) in cel, rule.cel
            for name in model.immutable_fields:
                assert ("self == oldSelf", f"{name} is immutable", "") in cel, name


def test_descriptions_reach_kubectl_explain() -> None:
    root = build_crd(KINDS["Dataset"])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    quality = root["properties"]["spec"]["properties"]["quality"]
    assert "quality gate" in quality["description"].lower()
    assert quality["properties"]["onFailure"]["enum"] == ["Fail", "Warn", "Quarantine"]
