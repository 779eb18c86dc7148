"""Load Neuraxis resources from YAML and validate them with the API's models, reporting errors
in the words the Kubernetes API server uses (`<field>: <what is wrong>`), so `neuraxis run`,
the operator and `kubectl apply` say the same thing about the same bad input."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from neuraxis.crds import Resource
from neuraxis.crds.common import ApiModel
from neuraxis.crds.kinds import KINDS

_JSON_TYPES = {
    "int_type": "integer",
    "int_parsing": "integer",
    "float_type": "number",
    "string_type": "string",
    "bool_type": "boolean",
    "dict_type": "object",
    "model_type": "object",
    "model_attributes_type": "object",
    "list_type": "array",
}
_BOUNDS = {
    "greater_than_equal": ("ge", "should be greater than or equal to"),
    "greater_than": ("gt", "should be greater than"),
    "less_than_equal": ("le", "should be less than or equal to"),
    "less_than": ("lt", "should be less than"),
}


@dataclass(frozen=True)
class FieldError:
    """One problem with one field, e.g. `spec.resources.workers` / `Invalid value: 0: ...`."""

    path: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}" if self.path else self.detail


class ManifestLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading floats as YAML 1.2 (and kubectl) do: `1e-05`, which
    json.dumps writes for small numbers (the spec ConfigMaps are JSON), is a number, not the
    string YAML 1.1 makes of it."""


ManifestLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class ResourceError(ValueError):
    """A resource failed validation. `errors` lists every field problem found."""

    def __init__(self, where: str, errors: list[FieldError]):
        self.where = where
        self.errors = errors
        super().__init__(f"{where} is invalid: " + "; ".join(str(e) for e in errors))


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "null"


def _value(value: Any) -> str:
    """A value as the API server quotes it in `Invalid value: ...`."""
    if isinstance(value, dict | list):
        return json.dumps(_json_type(value))
    return _number(value) if isinstance(value, float) else json.dumps(value)


def _number(value: Any) -> str:
    """A bound as Go's %v prints it: 1 rather than 1.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _unwrap(annotation: Any) -> Any:
    """X | None -> X; Annotated[X, ...] -> X."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
            continue
        args = [a for a in get_args(annotation) if a is not type(None)]
        if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
            annotation = args[0]
            continue
        return annotation


def _field_annotation(model: Any, key: str) -> Any:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return _unwrap(info.annotation)
    return None


def _path(loc: Iterable[int | str], model: Any, *, bracket_keys: bool = False) -> str:
    """A field path as the API server writes it: `.field` and `[index]`. Map keys are `.key`
    in schema errors but `[key]` in CEL errors (as the API server does), which needs the model
    since a map key and a field name look alike in `loc`."""
    out = ""
    current = model
    for part in loc:
        is_key = get_origin(current) is dict
        if isinstance(part, int) or is_key:
            out += f"[{part}]" if isinstance(part, int) or bracket_keys else f".{part}"
            args = get_args(current)
            current = _unwrap(args[-1]) if args else None
        else:
            out += ("." if out else "") + part
            current = _field_annotation(current, part)
    return out


def _describe(err: Any, model: type[BaseModel]) -> FieldError:
    """Translate one pydantic error into the API server's wording."""
    kind: str = err["type"]
    ctx: dict[str, Any] = err.get("ctx") or {}
    path = _path(err["loc"], model, bracket_keys=kind == "k8s_rule")
    value = err.get("input")
    if kind == "missing":
        return FieldError(path, "Required value")
    if kind == "extra_forbidden":
        return FieldError("", f'unknown field "{path}"')
    if kind == "k8s_rule":
        return FieldError(path + ctx["field_path"], f"Invalid value: {ctx['message']}")
    if kind == "literal_error":
        allowed = ", ".join(f'"{v}"' for v in re.findall(r"'([^']*)'", ctx["expected"]))
        return FieldError(path, f"Unsupported value: {_value(value)}: supported values: {allowed}")
    if kind in _JSON_TYPES:
        got = _json_type(value)
        return FieldError(
            path,
            f'Invalid value: "{got}": {path} in body must be of type {_JSON_TYPES[kind]}: "{got}"',
        )
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return FieldError(
            path, f"Invalid value: {_value(value)}: {path} in body {words} {_number(ctx[key])}"
        )
    if kind == "string_pattern_mismatch":
        return FieldError(
            path, f"Invalid value: {_value(value)}: {path} in body should match '{ctx['pattern']}'"
        )
    if kind == "string_too_long":
        return FieldError(path, f"Too long: may not be more than {ctx['max_length']} bytes")
    if kind == "string_too_short":
        return FieldError(
            path,
            f"Invalid value: {_value(value)}: {path} in body should be at least "
            f"{ctx['min_length']} chars long",
        )
    if kind in ("too_long", "too_short") and isinstance(value, dict):
        # maxProperties / minProperties
        words, limit = (
            ("at most", ctx["max_length"])
            if kind == "too_long"
            else ("at least", ctx["min_length"])
        )
        return FieldError(
            path,
            f"Invalid value: {len(value)}: {path} in body should have {words} {limit} properties",
        )
    if kind == "too_long":
        return FieldError(
            path, f"Too many: {ctx['actual_length']}: must have at most {ctx['max_length']} items"
        )
    if kind == "too_short":
        return FieldError(
            path,
            f"Invalid value: {ctx['actual_length']}: {path} in body should have at least "
            f"{ctx['min_length']} items",
        )
    return FieldError(path, f"Invalid value: {_value(value)}: {err['msg']}")


def _where(doc: dict[str, Any]) -> str:
    name = (doc.get("metadata") or {}).get("name", "<unnamed>")
    return f'{doc.get("kind", "<no kind>")} "{name}"'


def parse_resource(doc: Any) -> Resource:
    """Validate one object (a dict from YAML or the API) into its model."""
    if not isinstance(doc, dict):
        raise ResourceError("document", [FieldError("", "must be a mapping")])
    kind = doc.get("kind")
    info = KINDS.get(kind) if isinstance(kind, str) else None
    if info is None:
        allowed = ", ".join(f'"{k}"' for k in KINDS)
        detail = f"Unsupported value: {_value(kind)}: supported values: {allowed}"
        raise ResourceError(_where(doc), [FieldError("kind", detail)])
    if doc.get("apiVersion") != info.api_version:
        got = _value(doc.get("apiVersion"))
        detail = f'Unsupported value: {got}: supported values: "{info.api_version}"'
        raise ResourceError(_where(doc), [FieldError("apiVersion", detail)])
    try:
        model: Resource = info.model.model_validate(doc)  # type: ignore[assignment]
    except ValidationError as exc:
        raise ResourceError(_where(doc), [_describe(e, info.model) for e in exc.errors()]) from exc
    return model


def _changed_immutable(old: ApiModel, new: ApiModel, path: str) -> Iterator[FieldError]:
    for name in type(new).immutable_fields:
        alias = type(new).model_fields[name].alias or name
        value = getattr(new, name)
        if getattr(old, name) != value:
            # Like the API server: scalars are quoted, objects are not.
            shown = "" if isinstance(value, BaseModel) else f"{_value(value)}: "
            yield FieldError(f"{path}.{alias}", f"Invalid value: {shown}{alias} is immutable")


def check_update(old: Resource, new: Resource) -> None:
    """Reject an update that changes an immutable field (the CRD's transition rules)."""
    errors = list(_changed_immutable(old.spec, new.spec, "spec"))
    if errors:
        raise ResourceError(_where(new.model_dump(by_alias=True)), errors)


def iter_documents(paths: Iterable[str | Path]) -> Iterator[tuple[Path, Any]]:
    """Every YAML document in the given files and folders (recursively, sorted)."""
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        files = sorted(path.rglob("*.y*ml")) if path.is_dir() else [path]
        for file in files:
            if file.name == "kustomization.yaml":
                continue
            try:
                docs = list(yaml.load_all(file.read_text(), Loader=ManifestLoader))
            except yaml.YAMLError as exc:
                raise ResourceError(str(file), [FieldError("", f"not valid YAML: {exc}")]) from exc
            for doc in docs:
                if doc is not None:
                    yield file, doc


def load_resources(paths: Iterable[str | Path]) -> list[Resource]:
    """Load and validate every resource; the first invalid one raises ResourceError."""
    resources = []
    for file, doc in iter_documents(paths):
        try:
            resources.append(parse_resource(doc))
        except ResourceError as exc:
            raise ResourceError(f"{file}: {exc.where}", exc.errors) from exc
    return resources
