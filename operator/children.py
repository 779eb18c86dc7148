"""Names, labels and ownership shared by every child the operator creates. Names are
deterministic (a restarted operator finds what it made instead of making it again)."""

from __future__ import annotations

import json
from typing import Any

from neuraxis import API_GROUP, API_VERSION
from neuraxis.crds import Resource
from neuraxis.operator.errors import InvalidSpecError
from neuraxis.operator.settings import ALLOW_KWOK_ANNOTATIONS_ENV

MANAGED_BY = "app.kubernetes.io/managed-by"
POD_ANNOTATIONS = "neuraxis.dev/pod-annotations"
RUN_LABEL = "neuraxis.dev/run"
SPEC_MOUNT = "/etc/neuraxis"
SPEC_FILE = f"{SPEC_MOUNT}/resource.yaml"
KWOK_ANNOTATION_PREFIX = f"{API_GROUP}/kwok-"


def owner_label(kind: str) -> str:
    """`neuraxis.dev/dataset`, `neuraxis.dev/trainingjob`, ..."""
    return f"{API_GROUP}/{kind.lower()}"


def standard_labels(res: Resource, component: str) -> dict[str, str]:
    return {
        MANAGED_BY: "neuraxis",
        "app.kubernetes.io/name": "neuraxis",
        "app.kubernetes.io/component": component,
        owner_label(res.kind): res.metadata.name,
    }


def run_name(res: Resource, suffix: str) -> str:
    """Name of a per-generation run child, e.g. `sensor-readings-etl-g3`: a spec change starts a
    new run under a new name, and a finished run's Job is never recreated under the old one."""
    return f"{res.metadata.name}-{suffix}-g{res.metadata.generation or 1}"


def owner_reference(res: Resource) -> dict[str, Any]:
    if not res.metadata.uid:
        raise ValueError(f"{res.kind}/{res.metadata.name} has no uid (not read from the API?)")
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": res.kind,
        "name": res.metadata.name,
        "uid": res.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(res: Resource, name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": res.metadata.namespace,
        "labels": standard_labels(res, component),
        "ownerReferences": [owner_reference(res)],
    }


def pod_annotations(res: Resource, *, allow_kwok: bool = False) -> dict[str, str]:
    """Extra pod annotations asked for on the parent (`neuraxis.dev/pod-annotations`, a JSON
    map of strings), e.g. for a service mesh or the cluster autoscaler.

    KWOK fault-injection annotations (`neuraxis.dev/kwok-*`) decide a pod's outcome on a fake
    node; a user must not be able to fabricate results, so they are refused unless the operator
    runs with NEURAXIS_ALLOW_KWOK_ANNOTATIONS=true (test clusters only)."""
    raw = res.metadata.annotations.get(POD_ANNOTATIONS)
    if not raw:
        return {}
    field = f"metadata.annotations[{POD_ANNOTATIONS}]"
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidSpecError("InvalidAnnotation", f"{field}: not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
        raise InvalidSpecError("InvalidAnnotation", f"{field}: must be a JSON object of strings")
    annotations = {str(k): v for k, v in parsed.items()}
    refused = sorted(k for k in annotations if k.startswith(KWOK_ANNOTATION_PREFIX))
    if refused and not allow_kwok:
        raise InvalidSpecError(
            "InvalidAnnotation",
            f"{field}: {', '.join(refused)} is a KWOK fault-injection annotation, allowed only "
            f"when the operator runs with {ALLOW_KWOK_ANNOTATIONS_ENV}=true (test clusters)",
        )
    return annotations
