"""The Spark driver pod the operator builds, and the executor pods its env leads to: the driver
(workloads/etl/spark_session.py) builds the executors' template from what the operator puts in
its env, so the two are checked together here."""

from __future__ import annotations

import json
from typing import Any

import pytest

from neuraxis.crds import Dataset
from neuraxis.operator.builders.accounts import accounts_for
from neuraxis.operator.builders.dataset import (
    build_dataset_children,
    driver_pod_memory,
    spark_memory_mib,
)
from neuraxis.operator.settings import OperatorSettings
from neuraxis.workloads.etl.spark_session import KubernetesPlacement, executor_pod_template
from tests.operator.test_builders import _example
from tests.operator.test_pod_references import references

TOLERATION = {"key": "pool", "operator": "Equal", "value": "etl", "effect": "NoSchedule"}
SETTINGS = OperatorSettings(
    image="neuraxis.local/neuraxis:abc",
    service_account="wl-account",
    spark_service_account="spark-account",
    lake_secret="lake-creds",
    workload_tolerations=(TOLERATION,),
    workload_node_selector={"type": "real"},
)
# What the downward API would give the driver.
FIELD_VALUES = {
    "status.podIP": "10.88.1.7",
    "metadata.name": "sensor-readings-etl-g1-abcde",
    "metadata.namespace": "ml",
}


def _driver_pod(ds: Dataset, settings: OperatorSettings = SETTINGS) -> dict[str, Any]:
    [job] = [c for c in build_dataset_children(ds, settings) if c["kind"] == "Job"]
    pod: dict[str, Any] = job["spec"]["template"]
    return pod


def _driver_env(pod: dict[str, Any]) -> dict[str, str]:
    env = {}
    for var in pod["spec"]["containers"][0]["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "fieldRef" in var["valueFrom"]:
            env[var["name"]] = FIELD_VALUES.get(var["valueFrom"]["fieldRef"]["fieldPath"], "")
    return env


def _spark_dataset(executors: int = 2) -> Dataset:
    ds: Dataset = _example("Dataset")
    ds.spec.engine.executors = executors
    return ds


def test_executor_pods_name_only_what_the_operator_creates_for_the_namespace() -> None:
    ds = _spark_dataset()
    placement = KubernetesPlacement.from_env(_driver_env(_driver_pod(ds)))
    template = executor_pod_template(placement)
    built = {(a["kind"], a["metadata"]["name"]) for a in accounts_for(ds, SETTINGS)}
    for kind, name, optional in references(template):
        if (kind, name) == ("Secret", SETTINGS.lake_secret):
            assert optional, "the lake Secret is the platform's and may be absent"
        else:
            assert (kind, name) in built, f"executor pods name {kind} {name}, nobody creates it"
    # The workload account (no token, no rights), not the driver's account.
    assert template["spec"]["serviceAccountName"] == "wl-account"


def test_executor_pods_are_scheduled_like_the_driver_pod() -> None:
    ds = _spark_dataset()
    driver = _driver_pod(ds)
    placement = KubernetesPlacement.from_env(_driver_env(driver))
    executor = executor_pod_template(placement)["spec"]
    assert executor["tolerations"] == driver["spec"]["tolerations"] == [TOLERATION]
    assert executor["nodeSelector"] == driver["spec"]["nodeSelector"] == {"type": "real"}
    # Without platform settings neither pod gets any.
    plain = _driver_pod(ds, OperatorSettings())
    env = _driver_env(plain)
    assert json.loads(env["NEURAXIS_SPARK_EXECUTOR_SCHEDULING"]) == {}
    assert "tolerations" not in executor_pod_template(KubernetesPlacement.from_env(env))["spec"]


def test_the_driver_env_names_the_image_namespace_and_address() -> None:
    placement = KubernetesPlacement.from_env(_driver_env(_driver_pod(_spark_dataset())))
    assert placement.image == SETTINGS.image
    assert (placement.namespace, placement.pod_ip) == ("ml", "10.88.1.7")
    assert placement.pod_name == "sensor-readings-etl-g1-abcde"
    assert placement.service_account == "spark-account"
    assert placement.lake_secret == "lake-creds"


@pytest.mark.parametrize(
    ("driver_memory", "pod_memory"),
    [("1g", "1920Mi"), ("512m", "1408Mi"), ("8g", "9523Mi"), ("2048k", "898Mi")],
)
def test_the_driver_pod_has_room_for_the_heap_the_jvm_and_python(
    driver_memory: str, pod_memory: str
) -> None:
    assert driver_pod_memory(driver_memory) == pod_memory
    ds = _spark_dataset()
    ds.spec.engine.driver_memory = driver_memory
    resources = _driver_pod(ds)["spec"]["containers"][0]["resources"]
    assert resources["limits"]["memory"] == resources["requests"]["memory"] == pod_memory


def test_spark_sizes_in_mib() -> None:
    assert [spark_memory_mib(s) for s in ("1g", "512m", "1t", "1024k")] == [1024, 512, 1048576, 1]
