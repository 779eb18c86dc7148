"""Turn a pydantic model's JSON Schema into a Kubernetes structural OpenAPI v3 schema.

pydantic emits JSON Schema 2020-12 with `$ref`s, `anyOf` for optionals and `const` for single
literals; the API server wants every node inlined and typed, OpenAPI 3.0 style exclusive bounds,
no `additionalProperties` beside `properties`, and its own `x-kubernetes-*` extensions. The
cross-field rules and immutable fields declared on the models are added here as CEL."""

from __future__ import annotations

import copy
from typing import Any

from neuraxis.crds.common import VALIDATIONS, ApiModel

JsonDict = dict[str, Any]


class SchemaError(ValueError):
    """The model uses a construct that has no structural-schema equivalent."""


def _merge(target: JsonDict, overlay: JsonDict) -> JsonDict:
    merged = {**target, **overlay}
    if VALIDATIONS in target and VALIDATIONS in overlay:
        merged[VALIDATIONS] = target[VALIDATIONS] + overlay[VALIDATIONS]
    return merged


def _unwrap_any_of(node: JsonDict, defs: JsonDict) -> JsonDict:
    options = [o for o in node["anyOf"] if o != {"type": "null"}]
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    if rest.get("default", 0) is None:
        del rest["default"]
    if len(options) == 1:
        return structural(_merge(options[0], rest), defs)
    types = sorted(o.get("type", "?") for o in options)
    if types == ["integer", "string"]:
        return structural({"x-kubernetes-int-or-string": True, **rest}, defs)
    raise SchemaError(f"union of {types} has no structural schema")


def structural(node: JsonDict, defs: JsonDict) -> JsonDict:
    """Rewrite one JSON Schema node (recursively) into its structural OpenAPI form."""
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        overlay = {k: v for k, v in node.items() if k != "$ref"}
        return structural(_merge(target, overlay), defs)
    if "anyOf" in node:
        return _unwrap_any_of(node, defs)
    out: JsonDict = {}
    for key, value in node.items():
        if key in ("title", "$defs"):
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "additionalProperties":
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, dict):
                out[key] = structural(value, defs)
        elif key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
        elif key == "default" and value is None:
            continue
        elif key == "description":
            out[key] = " ".join(value.split())  # docstrings arrive with their line breaks
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if "type" not in out and not (
        out.get("x-kubernetes-preserve-unknown-fields") or out.get("x-kubernetes-int-or-string")
    ):
        raise SchemaError(f"schema node without a type: {sorted(out)}")
    return out


def openapi_schema(model: type[ApiModel], name_max_length: int, name_pattern: str) -> JsonDict:
    """The openAPIV3Schema of a top-level kind (apiVersion, kind, metadata, spec, status)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    props = raw["properties"]
    root: JsonDict = {
        "type": "object",
        "description": " ".join(raw.get("description", "").split()),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "neuraxis.dev/v1alpha1"},
            "kind": {"type": "string", "description": model.__name__},
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "maxLength": name_max_length,
                        "pattern": name_pattern,
                    }
                },
            },
            "spec": structural(props["spec"], defs),
            "status": structural(props["status"], defs),
        },
    }
    return root
