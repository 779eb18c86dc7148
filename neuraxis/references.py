"""Who may reference what: the rule the operator and `neuraxis run` both apply (through
operator/inputs.py) before a resource reads another one.

A reference stays in its namespace. A reference into another namespace (a `datasetRef` with
`namespace`, or a URI under another namespace's part of the lake) is refused with the reason
ReferenceNotPermitted unless the referenced object grants it: its annotation
`neuraxis.dev/grant-to-namespaces` lists the namespaces that may read it (comma-separated, no
wildcard). The grant lives with the owner, in the owner's namespace, as with Gateway API's
ReferenceGrant; an annotation rather than a new kind because the grant is per object and reads
in one `kubectl annotate`, with no new CRD or RBAC for the operator to learn.

A URI is mapped to its owner by the lake layout: `tables/<ns>/<name>` is Dataset <name>,
`edge-logs/<ns>/<name>` is EdgeDeployment <name>, `models/<ns>/...` belongs to the ModelVersion
whose evaluated artifact it is. Runs, quarantine, raw inference logs and edge bundles have no
object that could grant them: they are never readable from another namespace."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

GRANT_ANNOTATION = "neuraxis.dev/grant-to-namespaces"
REFERENCE_NOT_PERMITTED = "ReferenceNotPermitted"

# Lake areas whose second path segment is a namespace (neuraxis/lake.py's layout), and the kind
# that owns each grantable one.
NAMESPACED_AREAS = (
    "tables",
    "quarantine",
    "models",
    "edge",
    "runs",
    "inference-logs",
    "edge-logs",
)
OWNER_KINDS = {"tables": "Dataset", "edge-logs": "EdgeDeployment", "models": "ModelVersion"}


@dataclass(frozen=True)
class LakeOwner:
    """The namespace part of the lake a URI falls in: its area, namespace, and the owning
    object's kind and name where the layout names one (tables, edge-logs), else None."""

    area: str
    namespace: str
    kind: str | None
    name: str | None


def granted_namespaces(annotations: Mapping[str, str] | None) -> frozenset[str]:
    """The namespaces an object's grant annotation lists."""
    raw = (annotations or {}).get(GRANT_ANNOTATION, "")
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def grants(annotations: Mapping[str, str] | None, namespace: str) -> bool:
    return namespace in granted_namespaces(annotations)


def _normalised(uri: str) -> str:
    # Spark spells the lake's s3:// as s3a://; a plain path is a file:// URI.
    if uri.startswith("s3a://"):
        return "s3://" + uri.removeprefix("s3a://")
    if uri.startswith("/"):
        return "file://" + uri
    return uri


def lake_owner(uri: str, lake_root: str) -> LakeOwner | None:
    """Where in the namespaced lake `uri` points, or None outside the lake or its namespaced
    areas (a raw source elsewhere is not a reference)."""
    root = _normalised(lake_root).rstrip("/") + "/"
    target = _normalised(uri)
    if not target.startswith(root):
        return None
    parts = [p for p in target.removeprefix(root).split("/") if p]
    if len(parts) < 2 or parts[0] not in NAMESPACED_AREAS:
        return None
    area, namespace = parts[0], parts[1]
    kind = OWNER_KINDS.get(area)
    name = parts[2] if kind is not None and kind != "ModelVersion" and len(parts) > 2 else None
    return LakeOwner(area, namespace, kind, name)


def not_permitted(field: str, namespace: str, target: str, owner_namespace: str) -> str:
    """The message of a refused reference, naming the field, the namespace and the grant."""
    return (
        f"{field}: {target} is in namespace {owner_namespace}, not {namespace}; a reference "
        f"across namespaces needs the annotation {GRANT_ANNOTATION} listing {namespace} on "
        f"the referenced object in {owner_namespace}"
    )
