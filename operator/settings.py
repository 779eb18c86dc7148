"""Operator settings: read once at start-up from the environment, with defaults in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_IMAGE = "ghcr.io/neuraxis/neuraxis:0.1.0"


@dataclass(frozen=True)
class OperatorSettings:
    """What every child resource needs to know about the platform it runs on."""

    image: str = DEFAULT_IMAGE
    lake_uri: str = "s3://neuraxis-lake/lake"
    # Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL for the lake.
    lake_secret: str = "neuraxis-lake"
    service_account: str = "neuraxis-workload"
    # Spark drivers with executors > 0 create executor pods as this account (it needs RBAC to
    # manage pods in the namespace; the platform's Pulumi stack grants it).
    spark_service_account: str = "neuraxis-spark"
    gpu_pool_label: tuple[str, str] = ("neuraxis.dev/pool", "gpu")
    gpu_taint: tuple[str, str, str] = ("nvidia.com/gpu", "present", "NoSchedule")
    edge_site_label: str = "neuraxis.dev/edge-site"
    edge_taint: tuple[str, str, str] = ("neuraxis.dev/edge", "true", "NoSchedule")
    # Periodic level-based resync: restores edited/deleted children and refreshes status.
    resync_seconds: float = 30.0
    serving_port: int = 8080
    edge_port: int = 8090

    @classmethod
    def from_env(cls) -> OperatorSettings:
        d = cls()
        return cls(
            image=os.environ.get("NEURAXIS_IMAGE", d.image),
            lake_uri=os.environ.get("NEURAXIS_LAKE_URI", d.lake_uri),
            lake_secret=os.environ.get("NEURAXIS_LAKE_SECRET", d.lake_secret),
            service_account=os.environ.get("NEURAXIS_WORKLOAD_SERVICE_ACCOUNT", d.service_account),
            resync_seconds=float(os.environ.get("NEURAXIS_RESYNC_SECONDS", d.resync_seconds)),
        )
