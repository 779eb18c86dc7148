"""Dataset -> spec ConfigMap + ETL Job (or CronJob when scheduled)."""

from __future__ import annotations

import json
from typing import Any

from neuraxis.crds import Dataset
from neuraxis.operator.builders.common import RUN_ID_ENV, job, spec_config_map
from neuraxis.operator.children import (
    SPEC_FILE,
    child_metadata,
    fixed_name,
    run_name,
    standard_labels,
)
from neuraxis.operator.pods import (
    pod_template,
    resource_limits,
    workload_container,
    workload_scheduling,
)
from neuraxis.operator.settings import OperatorSettings

COMPONENT = "etl"
# What the driver pod's Python process (pyspark, pyarrow, the ETL code) needs next to the JVM.
PYTHON_MIB = 512


def secret_env(ds: Dataset) -> list[dict[str, Any]]:
    """The hash salt, from the Secret named in the spec, as the ETL workload expects it."""
    ref = ds.spec.privacy.salt_secret_ref if ds.spec.privacy else None
    if ref is None:
        return []
    var = f"NEURAXIS_SECRET_{ref.name}_{ref.key}".upper().replace("-", "_").replace(".", "_")
    return [{"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]


def spark_on_kubernetes_env(ds: Dataset, settings: OperatorSettings) -> list[dict[str, Any]]:
    """With executors > 0 the driver (this pod) starts executor pods: it needs its own address,
    and for the executors' pod template the image, the account (the workload one: executors
    call no API), the lake Secret and the platform's scheduling of workload pods
    (workloads/etl/spark_session.py reads these)."""
    if not ds.spec.engine.executors:
        return []

    def field(path: str) -> dict[str, Any]:
        return {"fieldRef": {"fieldPath": path}}

    scheduling = json.dumps(workload_scheduling(settings, None), sort_keys=True)
    return [
        {"name": "POD_IP", "valueFrom": field("status.podIP")},
        {"name": "POD_NAME", "valueFrom": field("metadata.name")},
        {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
        {"name": "NEURAXIS_SPARK_IMAGE", "value": settings.image},
        {"name": "NEURAXIS_SPARK_SERVICE_ACCOUNT", "value": settings.spark_service_account},
        {"name": "NEURAXIS_SPARK_EXECUTOR_SERVICE_ACCOUNT", "value": settings.service_account},
        {"name": "NEURAXIS_SPARK_EXECUTOR_SCHEDULING", "value": scheduling},
        {"name": "NEURAXIS_LAKE_SECRET", "value": settings.lake_secret},
    ]


def spark_memory_mib(size: str) -> int:
    """A Spark size (`512m`, `2g`; the Engine model's pattern) in MiB."""
    factor = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}[size[-1]]
    return max(1, int(int(size[:-1]) * factor))


def driver_pod_memory(driver_memory: str) -> str:
    """A Spark driver pod's memory: the JVM heap, the JVM's own overhead (Spark's rule for its
    pods: 10 %, at least 384 MiB) and the Python process that drives it."""
    heap = spark_memory_mib(driver_memory)
    return f"{heap + max(384, heap // 10) + PYTHON_MIB}Mi"


def etl_children_name(ds: Dataset) -> str:
    """The Job (or CronJob) and ConfigMap name for the current generation."""
    return fixed_name(ds, "etl") if ds.spec.schedule else run_name(ds, "etl")


def build_dataset_children(ds: Dataset, settings: OperatorSettings) -> list[dict[str, Any]]:
    name = etl_children_name(ds)
    command = [
        "neuraxis", "workload", "etl", "--spec", SPEC_FILE,
        "--namespace", ds.metadata.namespace or "default", "--run-id", "$(NEURAXIS_RUN_ID)",
    ]  # fmt: skip
    memory = driver_pod_memory(ds.spec.engine.driver_memory) if ds.spec.engine.executors else "2Gi"
    container = workload_container(
        ds,
        settings,
        command,
        resources=resource_limits("1", memory),
        extra_env=[RUN_ID_ENV, *secret_env(ds), *spark_on_kubernetes_env(ds, settings)],
        ports=(
            [
                {"name": "spark-driver", "containerPort": 7078},
                {"name": "spark-blocks", "containerPort": 7079},
            ]
            if ds.spec.engine.executors
            else None
        ),
    )
    spark_driver = ds.spec.engine.executors > 0
    # The driver asks the API server for executor pods: the Spark account, with its token.
    template = pod_template(
        ds,
        settings,
        COMPONENT,
        container,
        name,
        service_account=settings.spark_service_account if spark_driver else None,
        api_token=spark_driver,
    )
    config = spec_config_map(ds, name, COMPONENT)
    if not ds.spec.schedule:
        return [config, job(ds, name, COMPONENT, template)]
    cron = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": child_metadata(ds, name, COMPONENT),
        "spec": {
            "schedule": ds.spec.schedule,
            "concurrencyPolicy": "Forbid",  # two writers of one Delta table would conflict
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            # The labels let the operator find (and watch) the Jobs the CronJob makes.
            "jobTemplate": {
                "metadata": {"labels": standard_labels(ds, COMPONENT)},
                "spec": {"backoffLimit": 0, "template": template},
            },
        },
    }
    return [config, cron]
