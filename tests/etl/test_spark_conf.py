"""The Spark conf generated for local mode and for Spark on Kubernetes (client mode)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from neuraxis.crds.dataset import Engine
from neuraxis.lake import Lake, S3Settings
from neuraxis.workloads.etl.spark_session import (
    KUBERNETES_MASTER,
    KubernetesPlacement,
    executor_name_prefix,
    kubernetes_conf,
    local_conf,
    local_cores,
)

JARS = [Path("/cache/jars/delta.jar"), Path("/cache/jars/storage.jar")]
PLACEMENT = KubernetesPlacement(
    image="ghcr.io/neuraxis/neuraxis:0.1.0",
    namespace="ml",
    service_account="neuraxis-spark",
    pod_ip="10.1.2.3",
    pod_name="sensor-readings-etl-abcde",
)
TEMPLATE = Path("/tmp/neuraxis-executor-pod.json")


def test_local_mode_uses_the_cores_and_the_cached_jars(tmp_path: Path) -> None:
    conf = local_conf(Engine(), Lake(str(tmp_path)), JARS, app_name="etl", cores=3)
    assert conf["spark.master"] == "local[3]"
    assert conf["spark.jars"] == "/cache/jars/delta.jar,/cache/jars/storage.jar"
    assert conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert "spark.jars.packages" not in conf  # never resolved at run time
    assert not any(k.startswith("spark.hadoop.fs.s3a") for k in conf)


def test_kubernetes_conf_runs_executors_that_connect_back_to_the_pod(tmp_path: Path) -> None:
    engine = Engine(executors=4, executor_cores=2, executor_memory="4g", driver_memory="2g")
    conf = kubernetes_conf(
        engine,
        Lake(str(tmp_path)),
        JARS,
        PLACEMENT,
        app_name="neuraxis-etl-Sensor_Readings",
        pod_template_file=TEMPLATE,
        labels={"neuraxis.dev/dataset": "sensor-readings"},
    )
    assert conf["spark.master"] == KUBERNETES_MASTER == "k8s://https://kubernetes.default.svc"
    assert conf["spark.submit.deployMode"] == "client"
    assert conf["spark.executor.instances"] == "4"
    assert conf["spark.executor.cores"] == "2"
    assert conf["spark.executor.memory"] == "4g"
    assert conf["spark.driver.memory"] == "2g"
    assert conf["spark.kubernetes.container.image"] == PLACEMENT.image
    assert conf["spark.kubernetes.namespace"] == "ml"
    assert conf["spark.kubernetes.authenticate.driver.serviceAccountName"] == "neuraxis-spark"
    assert conf["spark.driver.host"] == "10.1.2.3"
    assert conf["spark.driver.bindAddress"] == "0.0.0.0"
    assert conf["spark.driver.port"] == "7078"
    assert conf["spark.driver.blockManager.port"] == "7079"
    assert conf["spark.kubernetes.driver.pod.name"] == PLACEMENT.pod_name
    assert conf["spark.kubernetes.driver.reusePersistentVolumeClaim"] == "false"
    prefix = conf["spark.kubernetes.executor.podNamePrefix"]
    assert re.fullmatch(r"neuraxis-etl-sensor-readings-[0-9a-f]{8}", prefix), prefix
    assert conf["spark.kubernetes.executor.label.neuraxis.dev/dataset"] == "sensor-readings"
    assert conf["spark.sql.shuffle.partitions"] == "16"
    # Executor pods come from the driver's template, run as the workload account (no token).
    assert conf["spark.kubernetes.executor.podTemplateFile"] == str(TEMPLATE)
    assert conf["spark.kubernetes.executor.podTemplateContainerName"] == "executor"
    assert conf["spark.kubernetes.authenticate.executor.serviceAccountName"] == "neuraxis-workload"
    assert conf["spark.kubernetes.executor.deleteOnTermination"] == "false"
    assert conf["spark.kubernetes.executor.request.cores"] == "2"
    assert conf["spark.kubernetes.executor.limit.cores"] == "2"
    # The jars are in the image: on both class paths, never shipped by the driver.
    assert "spark.jars" not in conf
    assert conf["spark.driver.extraClassPath"] == "/cache/jars/delta.jar:/cache/jars/storage.jar"
    assert conf["spark.executor.extraClassPath"] == conf["spark.driver.extraClassPath"]


def test_executor_cpu_request_can_be_smaller_than_its_cores(tmp_path: Path) -> None:
    engine = Engine(executors=2, executor_memory="512m", executor_cpu_request="250m")
    conf = kubernetes_conf(
        engine, Lake(str(tmp_path)), JARS, PLACEMENT, app_name="a", pod_template_file=TEMPLATE
    )
    assert conf["spark.kubernetes.executor.request.cores"] == "250m"
    assert conf["spark.kubernetes.executor.limit.cores"] == "1"
    assert conf["spark.executor.cores"] == "1"
    with pytest.raises(ValidationError, match="executorCpuRequest"):
        Engine.model_validate({"executors": 1, "executorCpuRequest": "a quarter"})


def test_kubernetes_conf_carries_the_s3_settings(tmp_path: Path) -> None:
    s3 = S3Settings(endpoint="http://minio:9000", access_key="ak", secret_key="sk", region="eu-1")
    conf = kubernetes_conf(
        Engine(executors=1),
        Lake("s3://bucket/lake", s3=s3),
        JARS,
        PLACEMENT,
        app_name="a",
        pod_template_file=TEMPLATE,
    )
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://minio:9000"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"


def test_kubernetes_needs_executors_and_a_pod(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1 executor"):
        kubernetes_conf(
            Engine(), Lake(str(tmp_path)), JARS, PLACEMENT, app_name="a", pod_template_file=TEMPLATE
        )
    with pytest.raises(ValueError, match="NEURAXIS_SPARK_IMAGE, POD_IP"):
        KubernetesPlacement.from_env({"POD_NAMESPACE": "ml"})
    placement = KubernetesPlacement.from_env(
        {"NEURAXIS_SPARK_IMAGE": "img:1", "POD_IP": "10.0.0.9", "POD_NAMESPACE": "ml"}
    )
    assert placement.service_account == "neuraxis-spark"
    assert placement.pod_name is None
    assert placement.executor_service_account == "neuraxis-workload"
    assert (placement.lake_secret, placement.executor_scheduling) == (None, {})


def test_local_cores_from_env() -> None:
    assert local_cores({"NEURAXIS_SPARK_CORES": "3"}) == 3
    assert local_cores({}) >= 1


def test_executor_names_differ_per_driver_pod_and_fit_spark_s_limit() -> None:
    long_name = "neuraxis-etl-" + "a-very-long-dataset-name-" * 3
    first = executor_name_prefix(long_name, "x-etl-g1-abcde")
    assert first == executor_name_prefix(long_name, "x-etl-g1-abcde")
    assert first != executor_name_prefix(long_name, "x-etl-g2-fghij")
    assert len(first) <= 47 and re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", first)
    # Without a driver pod name (not in a pod), every session gets new names.
    assert executor_name_prefix("etl", None) != executor_name_prefix("etl", None)
