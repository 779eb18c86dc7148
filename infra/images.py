"""Pinned third-party images, and the one rule for what counts as pinned.

The policy pack and the config check both use `image_problem`, so a stack that passes its own
config check also passes the `no-latest-images` policy.
"""

from __future__ import annotations

MINIO = "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z"
GRAFANA = "docker.io/grafana/grafana:12.2.0"
PROMETHEUS_VERSION = "v3.7.3"
PROMETHEUS = f"quay.io/prometheus/prometheus:{PROMETHEUS_VERSION}"
NVIDIA_DEVICE_PLUGIN = "nvcr.io/nvidia/k8s-device-plugin:v0.17.4"


def image_problem(image: str) -> str | None:
    """Why `image` is not pinned (None when it is): a tag other than `latest`, or a digest."""
    if not image or image != image.strip():
        return f"image {image!r} is empty or has surrounding spaces"
    if "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {image!r} has no tag (it would mean :latest); pin a version or digest"
    tag = last.rsplit(":", 1)[1]
    if tag == "latest":
        return f"image {image!r} uses :latest; pin a version or digest"
    return None
