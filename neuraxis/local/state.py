"""Local state: one JSON body per resource under `$NEURAXIS_HOME/state/<ns>/<kind>/<name>.json`,
shaped like the API server's objects (metadata, spec, status), so the operator's input rules
read it through the same `Store` interface."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from neuraxis.lake import neuraxis_home

Obj = dict[str, Any]


def state_dir() -> Path:
    return neuraxis_home() / "state"


def spec_digest(spec: Any) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class LocalStore:
    """A `neuraxis.operator.inputs.Store` over files."""

    def __init__(self, root: Path | None = None):
        self.root = root or state_dir()

    def path(self, kind: str, namespace: str | None, name: str) -> Path:
        return self.root / (namespace or "default") / kind / f"{name}.json"

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj | None:
        path = self.path(kind, namespace, name)
        if not path.exists():
            return None
        body: Obj = json.loads(path.read_text())
        return body

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        labels: dict[str, str] | None = None,
    ) -> list[Obj]:
        namespaces = [namespace] if namespace else sorted(p.name for p in self.root.glob("*"))
        out = []
        for ns in namespaces:
            for path in sorted((self.root / ns / kind).glob("*.json")):
                body = json.loads(path.read_text())
                have = (body.get("metadata") or {}).get("labels") or {}
                if all(have.get(k) == v for k, v in (labels or {}).items()):
                    out.append(body)
        return out

    def create(self, manifest: Obj) -> Obj | None:
        meta = manifest["metadata"]
        if self.get(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"]):
            return None
        body = {**manifest, "metadata": {**meta, "generation": 1}}
        self.save(body)
        return body

    def save(self, body: Obj) -> None:
        """Write atomically: a killed run leaves the previous state, never half a file."""
        meta = body["metadata"]
        path = self.path(body["kind"], meta.get("namespace"), meta["name"])
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as fh:
            json.dump(body, fh, indent=2, sort_keys=True)
        os.replace(tmp, path)

    def all(self) -> builtins.list[Obj]:
        return [json.loads(p.read_text()) for p in sorted(self.root.glob("*/*/*.json"))]
