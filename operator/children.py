"""Names, labels and ownership shared by every child the operator creates. Names are
deterministic (a restarted operator finds what it made instead of making it again)."""

from __future__ import annotations

import json
import re
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


# Room for what Kubernetes appends to a run's name: a CronJob's Jobs add 11 characters, an
# Indexed Job's pod hostnames `-<index>`; the Job name is also a label value (63 at most).
RUN_NAME_MAX = 52
SHORT_UID_LENGTH = 8


def short_uid(res: Resource) -> str:
    """The first characters of the resource's uid (letters and digits only): a resource deleted
    and created again under the same name gets a new uid, so its runs get new names."""
    uid = re.sub(r"[^a-z0-9]", "", (res.metadata.uid or "").lower())[:SHORT_UID_LENGTH]
    if not uid:
        raise ValueError(f"{res.kind}/{res.metadata.name} has no uid (not read from the API?)")
    return uid


def run_name(res: Resource, suffix: str) -> str:
    """Name of a per-generation run child, e.g. `sensor-readings-etl-3f2a9c1b-g3`, which is also
    the run id (NEURAXIS_RUN_ID: Delta commits, checkpoints and results are keyed by it).

    The uid part makes a recreated resource start fresh (a new run, not the old one's result or
    checkpoints); the generation part starts a new run on a spec change, and a finished run's
    Job is never recreated under the old name. The resource's name is shortened when needed
    so that the whole stays within RUN_NAME_MAX."""
    tail = f"-{suffix}-{short_uid(res)}-g{res.metadata.generation or 1}"
    return f"{_shorten(res.metadata.name, RUN_NAME_MAX - len(tail))}{tail}"


def fixed_name(res: Resource, suffix: str) -> str:
    """`<name>-<suffix>-<short uid>` within RUN_NAME_MAX: a child that lives across
    generations (a scheduled Dataset's CronJob), still never shared with an earlier
    resource of the same name."""
    tail = f"-{suffix}-{short_uid(res)}"
    return f"{_shorten(res.metadata.name, RUN_NAME_MAX - len(tail))}{tail}"


def _shorten(name: str, room: int) -> str:
    # A name part must end in a letter or digit; the uid keeps shortened names unique.
    return name[: max(room, 1)].rstrip("-.") or "x"


def run_generation(run_id: str) -> int | None:
    """The generation a run name (from `run_name`) was made for."""
    match = re.search(r"-g([0-9]+)$", run_id)
    return int(match.group(1)) if match else None


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
