"""Where Spark runs, decided by pure functions (the Spark conf as a dict), and one thin function
that starts a session from such a conf.

`spec.engine.executors == 0`: Spark local mode inside the pod (or on the laptop), using the
pod's cores. `> 0`: Spark on Kubernetes in client mode: the ETL pod is the driver and asks the API
server for executor pods; they connect back to the driver at the pod IP, so the driver's host,
ports, image, namespace and service account come from the pod (downward API env vars).

Executor pods are built by Spark from a pod template the driver writes at start
(`executor_pod_template`): our image's executor entry (`neuraxis workload spark-executor`, see
executor.py), the platform's security context, a writable /tmp, the lake Secret, no API token,
and the scheduling the operator gives every workload pod. The Delta and s3a jars are in the
image at the same paths as in the driver pod, so both JVMs put them on their class path at
start: nothing is shipped to executors at run time."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
EXECUTOR_SERVICE_ACCOUNT_ENV = "NEURAXIS_SPARK_EXECUTOR_SERVICE_ACCOUNT"
EXECUTOR_SCHEDULING_ENV = "NEURAXIS_SPARK_EXECUTOR_SCHEDULING"
LAKE_SECRET_ENV = "NEURAXIS_LAKE_SECRET"
DEFAULT_SERVICE_ACCOUNT = "neuraxis-spark"
DEFAULT_EXECUTOR_SERVICE_ACCOUNT = "neuraxis-workload"
# The executor pod: its container (named for Spark's podTemplateContainerName) runs the image's
# executor entry; Spark appends the argument `executor` to it.
EXECUTOR_CONTAINER = "executor"
EXECUTOR_COMMAND = ("/usr/bin/tini", "--", "neuraxis", "workload", "spark-executor")
POD_TEMPLATE_FILE = "neuraxis-executor-pod.json"
# The image's user; the same security settings as every workload pod (operator/pods.py).
WORKLOAD_UID = 10001
SCHEDULING_KEYS = ("tolerations", "nodeSelector")


@dataclass(frozen=True)
class KubernetesPlacement:
    """What Spark on Kubernetes needs to know about the driver pod and the executors' pods."""

    image: str
    namespace: str
    service_account: str
    pod_ip: str
    pod_name: str | None = None
    executor_service_account: str = DEFAULT_EXECUTOR_SERVICE_ACCOUNT
    lake_secret: str | None = None
    # Tolerations and node selector of every workload pod (the operator's platform settings).
    executor_scheduling: Mapping[str, Any] = field(default_factory=dict)

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
            executor_service_account=(
                env.get(EXECUTOR_SERVICE_ACCOUNT_ENV) or DEFAULT_EXECUTOR_SERVICE_ACCOUNT
            ),
            lake_secret=env.get(LAKE_SECRET_ENV) or None,
            executor_scheduling=parse_scheduling(env.get(EXECUTOR_SCHEDULING_ENV) or "{}"),
        )


def parse_scheduling(text: str) -> dict[str, Any]:
    """`{"tolerations": [...], "nodeSelector": {...}}` (either may be absent)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{EXECUTOR_SCHEDULING_ENV}: not JSON ({exc})") from None
    if not isinstance(value, dict) or set(value) - set(SCHEDULING_KEYS):
        raise ValueError(
            f"{EXECUTOR_SCHEDULING_ENV}: expected an object with only {', '.join(SCHEDULING_KEYS)}"
        )
    if not isinstance(value.get("tolerations", []), list):
        raise ValueError(f"{EXECUTOR_SCHEDULING_ENV}: tolerations must be a list")
    if not isinstance(value.get("nodeSelector", {}), dict):
        raise ValueError(f"{EXECUTOR_SCHEDULING_ENV}: nodeSelector must be an object")
    return value


def local_cores(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    raw = env.get(CORES_ENV)
    if raw:
        return max(1, int(raw))
    return max(1, len(os.sched_getaffinity(0)))


def base_conf(app_name: str, lake: Lake, driver_memory: str) -> dict[str, str]:
    """Settings every ETL session has, wherever it runs."""
    conf = {
        "spark.app.name": app_name,
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
        **base_conf(app_name, lake, engine.driver_memory),
        "spark.master": f"local[{cores}]",
        "spark.jars": ",".join(str(j) for j in jars),
        "spark.sql.shuffle.partitions": str(max(2, 2 * cores)),
        "spark.default.parallelism": str(max(2, 2 * cores)),
    }


def executor_name_prefix(app_name: str, driver_pod: str | None) -> str:
    """Executor pods are named `<prefix>-exec-<n>`; the prefix is a DNS label of at most 47
    characters (Spark's rule). It ends in a hash of the driver pod's name: finished executor
    pods stay until their driver pod goes, so the next run (a new spec, a scheduled run) must
    not reuse their names."""
    clean = re.sub(r"[^a-z0-9-]+", "-", app_name.lower()).strip("-") or "neuraxis-etl"
    unique = driver_pod or uuid.uuid4().hex
    return f"{clean[:38].rstrip('-')}-{hashlib.sha256(unique.encode()).hexdigest()[:8]}"


def container_security_context() -> dict[str, Any]:
    """The same as every workload container's (operator/pods.py; a test keeps them equal)."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def executor_pod_template(placement: KubernetesPlacement) -> dict[str, Any]:
    """The pod Spark starts from for each executor. Spark adds the name, labels, owner (the
    driver pod), image, resources, its env (SPARK_DRIVER_URL, ...), ports, a conf volume and
    local-dir volumes, and appends `executor` to the container's args."""
    container: dict[str, Any] = {
        "name": EXECUTOR_CONTAINER,
        "command": list(EXECUTOR_COMMAND),
        "securityContext": container_security_context(),
        # The root file system is read-only: the JVM's temporary files go to an emptyDir.
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if placement.lake_secret:
        # The lake's AWS_* settings, as in the driver pod (optional there too).
        container["envFrom"] = [{"secretRef": {"name": placement.lake_secret, "optional": True}}]
    spec: dict[str, Any] = {
        "serviceAccountName": placement.executor_service_account,
        # Executors never call the API server.
        "automountServiceAccountToken": False,
        "restartPolicy": "Never",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKLOAD_UID,
            "fsGroup": WORKLOAD_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    for key in SCHEDULING_KEYS:
        if placement.executor_scheduling.get(key):
            spec[key] = placement.executor_scheduling[key]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": spec}


def write_pod_template(template: Mapping[str, Any], directory: Path) -> Path:
    """Write the template where Spark reads it (the driver's /tmp: its root is read-only)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / POD_TEMPLATE_FILE
    path.write_text(json.dumps(template, indent=1, sort_keys=True) + "\n")
    return path


def kubernetes_conf(
    engine: Engine,
    lake: Lake,
    jars: Sequence[Path],
    placement: KubernetesPlacement,
    *,
    app_name: str,
    pod_template_file: Path,
    labels: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Spark on Kubernetes, client mode: this pod is the driver, `engine.executors` executor
    pods (from `pod_template_file`, see `executor_pod_template`) run the tasks."""
    if engine.executors < 1:
        raise ValueError("spec.engine.executors: Kubernetes placement needs at least 1 executor")
    partitions = max(2, 2 * engine.executors * engine.executor_cores)
    # The jars are in the image at the same paths in every pod: on both JVMs' class path from
    # the start, instead of spark.jars, which executors would download from the driver
    # (hundreds of MB for the AWS SDK) into each pod.
    class_path = ":".join(str(j) for j in jars)
    conf = {
        **base_conf(app_name, lake, engine.driver_memory),
        "spark.master": KUBERNETES_MASTER,
        "spark.submit.deployMode": "client",
        "spark.driver.extraClassPath": class_path,
        "spark.executor.extraClassPath": class_path,
        "spark.executor.instances": str(engine.executors),
        "spark.executor.cores": str(engine.executor_cores),
        "spark.executor.memory": engine.executor_memory,
        "spark.kubernetes.executor.request.cores": (
            engine.executor_cpu_request or str(engine.executor_cores)
        ),
        "spark.kubernetes.executor.limit.cores": str(engine.executor_cores),
        "spark.kubernetes.container.image": placement.image,
        # Images come with the node (no registry is needed for one that is present).
        "spark.kubernetes.container.image.pullPolicy": "IfNotPresent",
        "spark.kubernetes.namespace": placement.namespace,
        "spark.kubernetes.authenticate.driver.serviceAccountName": placement.service_account,
        "spark.kubernetes.authenticate.executor.serviceAccountName": (
            placement.executor_service_account
        ),
        "spark.kubernetes.executor.podTemplateFile": str(pod_template_file),
        "spark.kubernetes.executor.podTemplateContainerName": EXECUTOR_CONTAINER,
        "spark.kubernetes.executor.podNamePrefix": executor_name_prefix(
            app_name, placement.pod_name
        ),
        # Finished executor pods stay, with their logs, until the driver pod (their owner) is
        # deleted with its Job: like the driver's own pod, they are the run's history.
        "spark.kubernetes.executor.deleteOnTermination": "false",
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
