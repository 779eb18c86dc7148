"""Spark on Kubernetes executors in our image: the JVM command `neuraxis workload spark-executor`
builds from the variables Spark sets on executor pods, and the executor pod template the driver
hands Spark."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from neuraxis.dev.jars import spark_home
from neuraxis.operator.pods import security_context
from neuraxis.workloads.etl.executor import (
    BACKEND_CLASS,
    ExecutorEnvError,
    class_path,
    executor_argv,
    find_java,
    java_options,
)
from neuraxis.workloads.etl.spark_session import (
    EXECUTOR_COMMAND,
    KubernetesPlacement,
    container_security_context,
    executor_pod_template,
    write_pod_template,
)

SPARK_HOME = Path("/opt/venv/lib/python3.11/site-packages/pyspark")
# What Spark 4.2 puts on an executor pod (BasicExecutorFeatureStep), values as in a real run.
EXECUTOR_ENV = {
    "SPARK_USER": "neuraxis",
    "SPARK_DRIVER_URL": "spark://CoarseGrainedScheduler@10.88.1.7:7078",
    "SPARK_EXECUTOR_CORES": "1",
    "SPARK_EXECUTOR_MEMORY": "512m",
    "SPARK_APPLICATION_ID": "spark-0b1c2d3e4f",
    "SPARK_CONF_DIR": "/opt/spark/conf",
    "SPARK_EXECUTOR_ID": "2",
    "SPARK_RESOURCE_PROFILE_ID": "0",
    "SPARK_CLASSPATH": "/opt/neuraxis/jars/delta/a.jar:/opt/neuraxis/jars/s3/b.jar",
    "SPARK_JAVA_OPT_0": "-XX:+IgnoreUnrecognizedVMOptions",
    "SPARK_JAVA_OPT_1": "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "SPARK_JAVA_OPT_2": "-Dspark.driver.port=7078",
    "SPARK_EXECUTOR_POD_IP": "10.88.1.9",
    "SPARK_EXECUTOR_POD_NAME": "neuraxis-etl-readings-exec-2",
    "PATH": "/opt/venv/bin:/usr/bin:/bin",
}


def test_the_executor_command_starts_spark_s_kubernetes_executor_backend() -> None:
    argv = executor_argv(EXECUTOR_ENV, java="/usr/bin/java", spark_home=SPARK_HOME)
    assert argv == [
        "/usr/bin/java",
        "-XX:+IgnoreUnrecognizedVMOptions",
        "--add-opens=java.base/java.lang=ALL-UNNAMED",
        "-Dspark.driver.port=7078",
        "-Xms512m",
        "-Xmx512m",
        "-cp",
        "/opt/spark/conf:/opt/neuraxis/jars/delta/a.jar:/opt/neuraxis/jars/s3/b.jar"
        f":{SPARK_HOME}/jars/*",
        BACKEND_CLASS,
        "--driver-url", "spark://CoarseGrainedScheduler@10.88.1.7:7078",
        "--executor-id", "2",
        "--cores", "1",
        "--app-id", "spark-0b1c2d3e4f",
        "--hostname", "10.88.1.9",
        "--resourceProfileId", "0",
        "--podName", "neuraxis-etl-readings-exec-2",
    ]  # fmt: skip


def test_java_options_keep_spark_s_numeric_order() -> None:
    env = {f"SPARK_JAVA_OPT_{i}": f"-Dopt{i}" for i in (10, 2, 0, 1, 9)}
    assert java_options({**env, "SPARK_OTHER": "x"}) == [
        "-Dopt0", "-Dopt1", "-Dopt2", "-Dopt9", "-Dopt10",
    ]  # fmt: skip
    with pytest.raises(ExecutorEnvError, match="SPARK_JAVA_OPT_x: expected SPARK_JAVA_OPT_<n"):
        java_options({"SPARK_JAVA_OPT_x": "-Dbad"})


def test_class_path_puts_conf_and_app_jars_before_spark_and_extras_after() -> None:
    env = {
        "SPARK_CLASSPATH": "/app.jar",
        "HADOOP_CONF_DIR": "/etc/hadoop",
        "SPARK_EXTRA_CLASSPATH": "/extra.jar",
        "SPARK_DIST_CLASSPATH": "/dist/*",
    }
    assert class_path(env, Path("/spark/jars")) == (
        "/etc/hadoop:/app.jar:/spark/jars/*:/extra.jar:/dist/*"
    )
    assert class_path({}, Path("/spark/jars")) == "/spark/jars/*"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"SPARK_DRIVER_URL": ""}, "SPARK_DRIVER_URL not set: Spark sets them"),
        (
            {"SPARK_EXECUTOR_ID": "", "SPARK_EXECUTOR_POD_IP": ""},
            "SPARK_EXECUTOR_ID, SPARK_EXECUTOR_POD_IP not set",
        ),
        ({"SPARK_EXECUTOR_MEMORY": "1 GB"}, "SPARK_EXECUTOR_MEMORY='1 GB': expected a JVM size"),
        ({"SPARK_EXECUTOR_CORES": "1.5"}, "SPARK_EXECUTOR_CORES='1.5': expected a whole"),
    ],
)
def test_a_pod_that_is_no_executor_is_told_which_variable_is_wrong(
    change: dict[str, str], message: str
) -> None:
    with pytest.raises(ExecutorEnvError, match=message.replace("(", r"\(")):
        executor_argv({**EXECUTOR_ENV, **change}, java="java", spark_home=SPARK_HOME)


def test_without_a_pod_name_or_profile_the_backend_gets_the_defaults() -> None:
    env = {**EXECUTOR_ENV}
    del env["SPARK_EXECUTOR_POD_NAME"], env["SPARK_RESOURCE_PROFILE_ID"]
    argv = executor_argv(env, java="java", spark_home=SPARK_HOME)
    assert "--podName" not in argv
    assert argv[argv.index("--resourceProfileId") + 1] == "0"


def test_java_comes_from_java_home(tmp_path: Path) -> None:
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text("#!/bin/sh\n")
    java.chmod(0o755)
    assert find_java({"JAVA_HOME": str(tmp_path / "jdk")}) == str(java)
    with pytest.raises(ExecutorEnvError, match="no java"):
        find_java({"JAVA_HOME": str(tmp_path / "nowhere"), "PATH": str(tmp_path)})


def test_the_command_refuses_to_run_outside_an_executor_pod() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_")}
    done = subprocess.run(
        [sys.executable, "-m", "neuraxis.cli", "workload", "spark-executor", "executor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "SPARK_DRIVER_URL, SPARK_EXECUTOR_ID" in done.stderr


@pytest.mark.engine
def test_the_real_jvm_starts_the_backend_and_dials_the_driver() -> None:
    """The argv runs: Java finds the backend class on the class path it builds and the
    backend tries the driver URL (nobody listens there, so it gives up)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the JVM dials it
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SPARK_")},
        **{k: v for k, v in EXECUTOR_ENV.items() if k.startswith("SPARK_")},
        "SPARK_DRIVER_URL": f"spark://CoarseGrainedScheduler@127.0.0.1:{port}",
        "SPARK_EXECUTOR_POD_IP": "127.0.0.1",
        "SPARK_CLASSPATH": "",
        "SPARK_CONF_DIR": "",
        "SPARK_JAVA_OPT_2": f"-Dspark.driver.port={port}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "neuraxis.cli", "workload", "spark-executor", "executor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode != 0
    assert "KubernetesExecutorBackend: Started daemon" in done.stderr, done.stderr[-3000:]
    assert f"Failed to connect to /127.0.0.1:{port}" in done.stderr, done.stderr[-3000:]
    assert spark_home().is_dir()


# ---------------------------------------------------------------------------------------------
# the executor pod template

PLACEMENT = KubernetesPlacement(
    image="neuraxis.local/neuraxis:abc",
    namespace="ml",
    service_account="neuraxis-spark",
    pod_ip="10.88.1.7",
    pod_name="readings-etl-g1-xyz",
    executor_service_account="wl-account",
    lake_secret="lake-creds",
    executor_scheduling={
        "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
        "nodeSelector": {"pool": "etl"},
    },
)


def test_executor_pods_are_as_locked_down_as_every_workload_pod() -> None:
    spec = executor_pod_template(PLACEMENT)["spec"]
    assert container_security_context() == security_context()  # operator/pods.py
    [container] = spec["containers"]
    assert container["securityContext"] == security_context()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    # No API token: executors never call the API server; the workload account has no rights.
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == "wl-account"


def test_executor_pods_run_our_executor_entry_with_a_writable_tmp_and_the_lake() -> None:
    spec = executor_pod_template(PLACEMENT)["spec"]
    [container] = spec["containers"]
    assert container["name"] == "executor"
    assert container["command"] == list(EXECUTOR_COMMAND)
    assert EXECUTOR_COMMAND[-3:] == ("neuraxis", "workload", "spark-executor")
    assert "args" not in container  # Spark appends `executor`
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert spec["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    assert container["envFrom"] == [{"secretRef": {"name": "lake-creds", "optional": True}}]
    assert spec["tolerations"] == [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["nodeSelector"] == {"pool": "etl"}


def test_without_platform_settings_the_template_names_nothing_extra() -> None:
    bare = KubernetesPlacement(image="i", namespace="ml", service_account="s", pod_ip="10.0.0.1")
    spec = executor_pod_template(bare)["spec"]
    assert "envFrom" not in spec["containers"][0]
    assert "tolerations" not in spec and "nodeSelector" not in spec


def test_the_template_file_is_the_json_spark_loads(tmp_path: Path) -> None:
    path = write_pod_template(executor_pod_template(PLACEMENT), tmp_path / "tmp")
    assert path.parent == tmp_path / "tmp"
    loaded = json.loads(path.read_text())
    assert (loaded["apiVersion"], loaded["kind"]) == ("v1", "Pod")
    assert loaded == executor_pod_template(PLACEMENT)


def test_placement_reads_the_executor_settings_from_the_driver_env() -> None:
    env = {
        "NEURAXIS_SPARK_IMAGE": "img:1",
        "POD_IP": "10.0.0.9",
        "POD_NAMESPACE": "ml",
        "NEURAXIS_SPARK_EXECUTOR_SERVICE_ACCOUNT": "wl",
        "NEURAXIS_LAKE_SECRET": "lake",
        "NEURAXIS_SPARK_EXECUTOR_SCHEDULING": '{"nodeSelector": {"type": "real"}}',
    }
    placement = KubernetesPlacement.from_env(env)
    assert placement.executor_service_account == "wl"
    assert placement.lake_secret == "lake"
    assert placement.executor_scheduling == {"nodeSelector": {"type": "real"}}
    for bad, message in [
        ("[", "not JSON"),
        ('{"affinity": {}}', "expected an object with only tolerations, nodeSelector"),
        ('{"tolerations": {}}', "tolerations must be a list"),
    ]:
        with pytest.raises(ValueError, match=f"NEURAXIS_SPARK_EXECUTOR_SCHEDULING: {message}"):
            KubernetesPlacement.from_env({**env, "NEURAXIS_SPARK_EXECUTOR_SCHEDULING": bad})
