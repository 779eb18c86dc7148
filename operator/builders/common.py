"""Pieces every builder uses: the spec ConfigMap and the run Job."""

from __future__ import annotations

from typing import Any

import yaml

from neuraxis.crds import Resource
from neuraxis.operator.children import child_metadata

RUN_ID_ENV = {
    "name": "NEURAXIS_RUN_ID",
    "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}},
}


def spec_config_map(res: Resource, name: str, component: str) -> dict[str, Any]:
    """The resource as the workload reads it (refs already resolved and pinned)."""
    body = res.to_wire()
    body.pop("status", None)
    meta = body["metadata"]
    body["metadata"] = {k: meta[k] for k in ("name", "namespace", "uid", "generation") if k in meta}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(res, name, component),
        "data": {"resource.yaml": yaml.safe_dump(body, sort_keys=True)},
    }


def job(
    res: Resource,
    name: str,
    component: str,
    template: dict[str, Any],
    *,
    backoff_limit: int = 0,
    active_deadline_seconds: int | None = None,
    suspend: bool = False,
    completions: int = 1,
    indexed: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "backoffLimit": backoff_limit,
        "completions": completions,
        "parallelism": completions,
        "suspend": suspend,
        "template": template,
    }
    if indexed:
        spec["completionMode"] = "Indexed"
    if active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": child_metadata(res, name, component),
        "spec": spec,
    }
