"""Pieces every builder uses: the spec ConfigMap and the run Job."""

from __future__ import annotations

import json
from typing import Any

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
        # JSON is YAML too, and far cheaper to write than PyYAML's emitter at thousands of runs.
        "data": {"resource.yaml": json.dumps(body, sort_keys=True, separators=(",", ":"))},
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


# The resolved spec of a run travels in its Job: a pod annotation, which a downward API volume
# shows at the same path a ConfigMap would (SPEC_FILE). Bigger specs keep their ConfigMap
# (annotations of one object may hold 256 KiB in all).
SPEC_ANNOTATION = "neuraxis.dev/resource"
INLINE_SPEC_MAX = 64 * 1024


def inline_specs(
    children: list[dict[str, Any]], limit: int = INLINE_SPEC_MAX
) -> list[dict[str, Any]]:
    """The children with each Job's spec ConfigMap (used by that Job alone, at most `limit`
    bytes) moved into the Job's pod template; the ConfigMap is then left out."""
    configs = {c["metadata"]["name"]: c for c in children if c["kind"] == "ConfigMap"}
    users: dict[str, int] = {}
    for child in children:
        for volume in _template_volumes(child):
            name = (volume.get("configMap") or {}).get("name")
            if name:
                users[name] = users.get(name, 0) + 1
    out: list[dict[str, Any]] = []
    moved: set[str] = set()
    for child in children:
        if child["kind"] == "Job":
            child, name = _inline_job_spec(child, configs, users, limit)
            if name:
                moved.add(name)
        out.append(child)
    return [c for c in out if not (c["kind"] == "ConfigMap" and c["metadata"]["name"] in moved)]


def _template_volumes(child: dict[str, Any]) -> list[dict[str, Any]]:
    spec = child.get("spec") or {}
    if child["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec") or {}
    template = spec.get("template") or {}
    return list((template.get("spec") or {}).get("volumes") or [])


def _inline_job_spec(
    job: dict[str, Any],
    configs: dict[str, dict[str, Any]],
    users: dict[str, int],
    limit: int,
) -> tuple[dict[str, Any], str | None]:
    template = job["spec"]["template"]
    volumes = list(template["spec"].get("volumes") or [])
    for index, volume in enumerate(volumes):
        name = (volume.get("configMap") or {}).get("name")
        config = configs.get(name or "")
        if volume.get("name") != "spec" or config is None or users.get(name or "") != 1:
            continue
        text = str((config.get("data") or {}).get("resource.yaml", ""))
        if len(text.encode()) > limit:
            return job, None
        field = f"metadata.annotations['{SPEC_ANNOTATION}']"
        volumes[index] = {
            "name": "spec",
            "downwardAPI": {"items": [{"path": "resource.yaml", "fieldRef": {"fieldPath": field}}]},
        }
        meta = dict(template.get("metadata") or {})
        meta["annotations"] = {**(meta.get("annotations") or {}), SPEC_ANNOTATION: text}
        new_template = {
            **template,
            "metadata": meta,
            "spec": {**template["spec"], "volumes": volumes},
        }
        return {**job, "spec": {**job["spec"], "template": new_template}}, name
    return job, None
