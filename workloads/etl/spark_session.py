"""Where Spark runs, decided by pure functions (the Spark conf as a dict), and one thin function
that starts a session from such a conf.

`spec.engine.executors == 0`: Spark local mode inside the pod (or on the laptop), using the
pod's cores. `> 0`: Spark on Kubernetes in client mode: the ETL pod is the driver and asks the API
server for executor pods; they connect back to the driver at the pod IP, so the driver's host,
ports, image, namespace and service account come from the pod (downward API env vars)."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from neuraxis.crds.dataset import Engine
from neuraxis.lake import Lake

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

KUBERNETES_MASTER = "k8s://https://kubernetes.default.svc"
DRIVER_PORT = 7078
BLOCK_MANAGER_PORT = 7079
CORES_ENV = "NEURAXIS_SPARK_CORES"
# Env vars the operator sets on the ETL pod (downward API and its own settings).
IMAGE_ENV = "NEURAXIS_SPARK_IMAGE"
SERVICE_ACCOUNT_ENV = "NEURAXIS_SPARK_SERVICE_ACCOUNT"
POD_IP_ENV = "POD_IP"
POD_NAME_ENV = "POD_NAME"
POD_NAMESPACE_ENV = "POD_NAMESPACE"
DEFAULT_SERVICE_ACCOUNT = "neuraxis-spark"


@dataclass(frozen=True)
class KubernetesPlacement:
    """What Spark on Kubernetes needs to know about the driver pod."""

    image: str
    namespace: str
    service_account: str
    pod_ip: str
    pod_name: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KubernetesPlacement:
        env = os.environ if env is None else env
        missing = [k for k in (IMAGE_ENV, POD_IP_ENV, POD_NAMESPACE_ENV) if not env.get(k)]
        if missing:
            raise ValueError(
                "spec.engine.executors > 0 needs Spark on Kubernetes, but the pod lacks "
                + ", ".join(missing)
                + " (set by the operator from the downward API)"
            )
        return cls(
            image=env[IMAGE_ENV],
            namespace=env[POD_NAMESPACE_ENV],
            service_account=env.get(SERVICE_ACCOUNT_ENV) or DEFAULT_SERVICE_ACCOUNT,
            pod_ip=env[POD_IP_ENV],
            pod_name=env.get(POD_NAME_ENV) or None,
        )


def local_cores(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    raw = env.get(CORES_ENV)
    if raw:
        return max(1, int(raw))
    return max(1, len(os.sched_getaffinity(0)))


def base_conf(
    app_name: str, jars: Sequence[Path], lake: Lake, driver_memory: str
) -> dict[str, str]:
    """Settings every ETL session has, wherever it runs."""
    conf = {
        "spark.app.name": app_name,
        "spark.jars": ",".join(str(j) for j in jars),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        # Timestamps render the same everywhere (the content digest hashes them as text).
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.memory": driver_memory,
        # No managed tables are used; keep Spark from creating spark-warehouse/ in the cwd.
        "spark.sql.warehouse.dir": str(Path(tempfile.gettempdir()) / "neuraxis-spark-warehouse"),
        # Delta's log replay defaults to 50 partitions, far too many for one small table log.
        "spark.databricks.delta.snapshotPartitions": "2",
    }
    conf.update(lake.spark_conf())
    return conf


def local_conf(
    engine: Engine, lake: Lake, jars: Sequence[Path], *, app_name: str, cores: int
) -> dict[str, str]:
    """Spark local mode with `cores` threads."""
    return {
        **base_conf(app_name, jars, lake, engine.driver_memory),
        "spark.master": f"local[{cores}]",
        "spark.sql.shuffle.partitions": str(max(2, 2 * cores)),
        "spark.default.parallelism": str(max(2, 2 * cores)),
    }


def _pod_name_prefix(app_name: str) -> str:
    """Executor pods are named `<prefix>-exec-<n>`: a DNS label, so at most 47 characters."""
    clean = re.sub(r"[^a-z0-9-]+", "-", app_name.lower()).strip("-") or "neuraxis-etl"
    return clean[:47].rstrip("-")


def kubernetes_conf(
    engine: Engine,
    lake: Lake,
    jars: Sequence[Path],
    placement: KubernetesPlacement,
    *,
    app_name: str,
    labels: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Spark on Kubernetes, client mode: this pod is the driver, `engine.executors` executor
    pods run the tasks."""
    if engine.executors < 1:
        raise ValueError("spec.engine.executors: Kubernetes placement needs at least 1 executor")
    partitions = max(2, 2 * engine.executors * engine.executor_cores)
    conf = {
        **base_conf(app_name, jars, lake, engine.driver_memory),
        "spark.master": KUBERNETES_MASTER,
        "spark.submit.deployMode": "client",
        "spark.executor.instances": str(engine.executors),
        "spark.executor.cores": str(engine.executor_cores),
        "spark.executor.memory": engine.executor_memory,
        "spark.kubernetes.executor.request.cores": str(engine.executor_cores),
        "spark.kubernetes.container.image": placement.image,
        "spark.kubernetes.namespace": placement.namespace,
        "spark.kubernetes.authenticate.driver.serviceAccountName": placement.service_account,
        "spark.kubernetes.executor.podNamePrefix": _pod_name_prefix(app_name),
        # Executors connect back to the driver: the pod IP, on fixed ports the pod exposes.
        "spark.driver.host": placement.pod_ip,
        "spark.driver.bindAddress": "0.0.0.0",
        "spark.driver.port": str(DRIVER_PORT),
        "spark.driver.blockManager.port": str(BLOCK_MANAGER_PORT),
        "spark.blockManager.port": str(BLOCK_MANAGER_PORT),
        "spark.dynamicAllocation.enabled": "false",
        # No executor uses a PVC, and the driver's Role grants none: do not look for them.
        "spark.kubernetes.driver.ownPersistentVolumeClaim": "false",
        "spark.kubernetes.driver.reusePersistentVolumeClaim": "false",
        "spark.sql.shuffle.partitions": str(partitions),
        "spark.default.parallelism": str(partitions),
    }
    if placement.pod_name:
        # Executors get the driver pod as owner: they are deleted with it, never orphaned.
        conf["spark.kubernetes.driver.pod.name"] = placement.pod_name
    for key, value in sorted((labels or {}).items()):
        conf[f"spark.kubernetes.executor.label.{key}"] = value
    return conf


def start_spark(conf: Mapping[str, str]) -> SparkSession:
    """Start (or join) the process's Spark session with `conf`."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
