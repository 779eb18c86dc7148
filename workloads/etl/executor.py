"""`neuraxis workload spark-executor`: what a Spark executor pod runs in our image.

Spark on Kubernetes starts executor pods from the image and appends the argument `executor` to
the container's args; the official Spark images turn that into the executor JVM with their own
entrypoint script. Our image's entrypoint is `tini -- neuraxis`, so the executor pod template
(spark_session.executor_pod_template) runs this command instead. It reads the variables Spark
sets on every executor pod and replaces itself with
`java <opts> -cp <class path> org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend
--driver-url ... --executor-id ... --cores ... --app-id ... --hostname <pod IP> ...`.

The variables (Spark 4.2, resource-managers/kubernetes BasicExecutorFeatureStep):
SPARK_DRIVER_URL, SPARK_EXECUTOR_ID, SPARK_EXECUTOR_CORES, SPARK_EXECUTOR_MEMORY (the JVM heap,
e.g. 512m), SPARK_APPLICATION_ID, SPARK_RESOURCE_PROFILE_ID, SPARK_EXECUTOR_POD_IP and
SPARK_EXECUTOR_POD_NAME (downward API), SPARK_JAVA_OPT_<n> (the JVM options in order: the
executor's extraJavaOptions, Java module opens, startup confs), SPARK_CLASSPATH
(spark.executor.extraClassPath: the Delta and s3a jars in the image) and SPARK_CONF_DIR (the
driver's conf files, mounted from a ConfigMap). The class path is theirs, then pyspark's jars.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import typer

BACKEND_CLASS = "org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend"
JAVA_OPT_PREFIX = "SPARK_JAVA_OPT_"
ROLE = "executor"
REQUIRED_ENV = (
    "SPARK_DRIVER_URL",
    "SPARK_EXECUTOR_ID",
    "SPARK_EXECUTOR_CORES",
    "SPARK_EXECUTOR_MEMORY",
    "SPARK_APPLICATION_ID",
    "SPARK_EXECUTOR_POD_IP",
)
# Before Spark's own jars, in the order Spark's images use: conf folders, then the app's jars.
LEADING_CLASS_PATH_ENV = ("SPARK_CONF_DIR", "HADOOP_CONF_DIR", "SPARK_CLASSPATH")
TRAILING_CLASS_PATH_ENV = ("SPARK_EXTRA_CLASSPATH", "SPARK_DIST_CLASSPATH")
MEMORY_PATTERN = re.compile(r"^[0-9]+[kmgtKMGT]?$")


class ExecutorEnvError(ValueError):
    """The pod's environment is not that of a Spark executor pod; says which variable."""


def java_options(env: Mapping[str, str]) -> list[str]:
    """SPARK_JAVA_OPT_<n> values ordered by n as a number (10 comes after 9)."""
    numbered = []
    for key, value in env.items():
        if not key.startswith(JAVA_OPT_PREFIX):
            continue
        index = key[len(JAVA_OPT_PREFIX) :]
        if not index.isdigit():
            raise ExecutorEnvError(f"{key}: expected {JAVA_OPT_PREFIX}<number>")
        numbered.append((int(index), value))
    return [value for _, value in sorted(numbered)]


def class_path(env: Mapping[str, str], spark_jars: Path) -> str:
    leading = [env.get(k, "") for k in LEADING_CLASS_PATH_ENV]
    trailing = [env.get(k, "") for k in TRAILING_CLASS_PATH_ENV]
    return ":".join(part for part in [*leading, f"{spark_jars}/*", *trailing] if part)


def _checked(env: Mapping[str, str]) -> None:
    missing = [k for k in REQUIRED_ENV if not env.get(k)]
    if missing:
        raise ExecutorEnvError(
            f"{', '.join(missing)} not set: Spark sets them on the executor pods it creates "
            "(this command runs only in such a pod)"
        )
    if not MEMORY_PATTERN.match(env["SPARK_EXECUTOR_MEMORY"]):
        raise ExecutorEnvError(
            f"SPARK_EXECUTOR_MEMORY={env['SPARK_EXECUTOR_MEMORY']!r}: expected a JVM size "
            "such as 1024m"
        )
    for key in ("SPARK_EXECUTOR_CORES", "SPARK_RESOURCE_PROFILE_ID"):
        if not env.get(key, "0").isdigit():
            raise ExecutorEnvError(f"{key}={env[key]!r}: expected a whole number")


def executor_argv(env: Mapping[str, str], *, java: str, spark_home: Path) -> list[str]:
    """The executor JVM's command line for a pod with environment `env`."""
    _checked(env)
    memory = env["SPARK_EXECUTOR_MEMORY"]
    argv = [
        java,
        *java_options(env),
        f"-Xms{memory}",
        f"-Xmx{memory}",
        "-cp",
        class_path(env, spark_home / "jars"),
        BACKEND_CLASS,
        "--driver-url", env["SPARK_DRIVER_URL"],
        "--executor-id", env["SPARK_EXECUTOR_ID"],
        "--cores", env["SPARK_EXECUTOR_CORES"],
        "--app-id", env["SPARK_APPLICATION_ID"],
        "--hostname", env["SPARK_EXECUTOR_POD_IP"],
        "--resourceProfileId", env.get("SPARK_RESOURCE_PROFILE_ID") or "0",
    ]  # fmt: skip
    if env.get("SPARK_EXECUTOR_POD_NAME"):
        argv += ["--podName", env["SPARK_EXECUTOR_POD_NAME"]]
    return argv


def find_java(env: Mapping[str, str]) -> str:
    """$JAVA_HOME/bin/java (the image sets JAVA_HOME), else java on PATH."""
    home = env.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java", path=env.get("PATH"))
    if found is None:
        raise ExecutorEnvError("no java: JAVA_HOME is unset or wrong, and none is on PATH")
    return found


def spark_executor_command(
    role: str = typer.Argument(
        ROLE, help="What Spark appends to an executor pod's args; only `executor`."
    ),
) -> None:
    """Start a Spark executor JVM in this pod (Spark on Kubernetes executor pods run this)."""
    from neuraxis.dev.jars import JarsError, spark_home

    if role != ROLE:
        raise typer.BadParameter(f"{role!r}: only {ROLE!r}", param_hint="ROLE")
    try:
        home = spark_home()
        argv = executor_argv(os.environ, java=find_java(os.environ), spark_home=home)
    except (ExecutorEnvError, JarsError) as exc:
        typer.echo(f"spark-executor: {exc}", err=True)
        raise typer.Exit(2) from exc
    executor_id = os.environ["SPARK_EXECUTOR_ID"]
    print(f"spark-executor: executor {executor_id}: {BACKEND_CLASS}", file=sys.stderr, flush=True)
    # The JVM takes this process's place (tini is PID 1 and forwards signals to it). Spark's
    # Python workers, if any, find pyspark from SPARK_HOME as on the driver.
    os.execve(argv[0], argv, {**os.environ, "SPARK_HOME": os.environ.get("SPARK_HOME", str(home))})
