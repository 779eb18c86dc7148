"""`neuraxis workload etl-server`: one Spark for every Dataset step of a `neuraxis run`.

A Dataset's pod runs `neuraxis workload etl` and starts its own Spark; locally that start (a JVM,
Delta's classes, the first query's code generation) repeated for every Dataset of a chain. This
process keeps one Spark session for the run and runs each step's `etl` command in it, with the
step's own arguments, environment and log, so the code path after the session is the pod's.

Protocol (the runner, neuraxis/local/spark_server.py, is the only client): one JSON request per
line on stdin, `{"args": [<the etl command's flags>], "env": {...}, "log": "<file>"}`; one JSON
reply per line on the file descriptor `--reply-fd`: `{"exitCode": n}`, or `{"unsupported":
"<why>"}` when the step needs a Spark this session is not (other jars, driver memory, executors
on Kubernetes): the runner then gives that step its own process. End of stdin ends the server.

Steps run one at a time: each gets the step's environment and its stdout/stderr are the step's
log. Spark's own (JVM) log stays in the server's log, which the step log names. Between steps the
session's temporary views and cached data are dropped, so a step sees only its own views."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import click
import typer
import yaml

from neuraxis.lake import Lake

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from neuraxis.crds.dataset import Dataset

# The session a step may share: the jars its JVM loaded and its driver memory (both fixed when
# the JVM starts); None: the step must have its own Spark (executors on Kubernetes).
SessionKey = tuple[tuple[str, ...], str]


def session_key(dataset: Dataset, lake: Lake, upstream: Mapping[str, str]) -> SessionKey | None:
    from neuraxis.workloads.etl.run import jar_sets_for

    if dataset.spec.engine.executors > 0:
        return None
    return tuple(jar_sets_for(dataset, lake, upstream)), dataset.spec.engine.driver_memory


def describe(key: SessionKey) -> str:
    jars, memory = key
    return f"jars {'+'.join(jars)} and driver memory {memory}"


def read_dataset(spec: Path) -> Dataset | None:
    """The step's Dataset, or None when the spec cannot be read (the etl command then reports
    InvalidSpec itself, without needing Spark)."""
    from neuraxis.resources import ResourceError
    from neuraxis.workloads.etl.cli import load_dataset

    try:
        return load_dataset(spec)
    except (OSError, yaml.YAMLError, ResourceError):
        return None


@contextmanager
def step_env(env: Mapping[str, str]) -> Iterator[None]:
    """The step's environment (as its pod or process would have it), restored afterwards."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def step_output(log: Path) -> Iterator[None]:
    """stdout and stderr appended to the step's log, restored afterwards: file descriptors 1
    and 2 (output of child processes and native code too) and sys.stdout/sys.stderr over them
    (whatever those were: a test's capture, for one)."""
    streams = sys.stdout, sys.stderr
    for stream in streams:
        stream.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "ab") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - fd 1 outlives it
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def forget_step_state(spark: SparkSession) -> None:
    """Temporary views and cached data of the last step: the next step must not see them."""
    for table in spark.catalog.listTables():
        if table.isTemporary:
            spark.catalog.dropTempView(table.name)
    spark.catalog.clearCache()


class EtlServer:
    def __init__(self, command: click.Command, server_log: Path | None):
        self.command = command
        self.server_log = server_log
        self.spark: SparkSession | None = None
        self.key: SessionKey | None = None
        self.started_for = ""
        self.start_seconds = 0.0

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        args = [str(a) for a in request.get("args", [])]
        if args[:1] == ["etl"]:
            args = args[1:]
        env = {str(k): str(v) for k, v in dict(request.get("env") or {}).items()}
        log = Path(str(request["log"]))
        with step_env(env):
            try:
                ctx = self.command.make_context("neuraxis workload etl", args)
                dataset = read_dataset(Path(ctx.params["spec"]))
                refusal = self.join(dataset, ctx.params) if dataset is not None else ""
            except click.ClickException as exc:  # bad flags or --upstream: as the CLI says it
                with step_output(log):
                    exc.show()
                return {"exitCode": exc.exit_code}
            if refusal:
                return {"unsupported": refusal}
            with step_output(log):
                code = self.invoke(ctx)
        if self.spark is not None:
            forget_step_state(self.spark)
        return {"exitCode": code}

    def join(self, dataset: Dataset, params: Mapping[str, Any]) -> str:
        """Start the run's session for this step, or check the step can use it; '' when it can."""
        from neuraxis.workloads.etl.cli import upstream_map
        from neuraxis.workloads.etl.run import start_spark_for

        lake = Lake(params["lake"]) if params.get("lake") else Lake.from_env()
        upstream = upstream_map(list(params.get("upstream") or ()))
        key = session_key(dataset, lake, upstream)
        if key is None:
            return "spec.engine.executors > 0: Spark on Kubernetes"
        if self.key is not None:
            if key == self.key:
                return ""
            return f"needs Spark with {describe(key)}; the run's Spark has {describe(self.key)}"
        # Started outside the step's redirection: the JVM keeps the server's log, not the
        # first step's. A failed start is left to the step, which reports SparkUnavailable.
        start = time.monotonic()
        try:
            self.spark = start_spark_for(dataset, lake, upstream, os.environ)
        except Exception:
            traceback.print_exc()
            return ""
        self.key = key
        self.started_for = dataset.metadata.name
        self.start_seconds = time.monotonic() - start
        return ""

    def invoke(self, ctx: click.Context) -> int:
        if self.spark is not None:
            print(
                f"[etl-server] the run's Spark (started for Dataset {self.started_for} in "
                f"{self.start_seconds:.1f} s); its JVM log: {self.server_log or 'the server log'}",
                flush=True,
            )
        try:
            with ctx:
                self.command.invoke(ctx)
            return 0
        except click.exceptions.Exit as exc:
            return exc.exit_code
        except click.ClickException as exc:
            exc.show()
            return exc.exit_code
        except Exception:
            traceback.print_exc()
            return 1

    def serve(self, requests: TextIO, replies: TextIO) -> None:
        for line in requests:
            if not line.strip():
                continue
            try:
                reply = self.handle(json.loads(line))
            except Exception as exc:  # a malformed request: say so, keep serving
                traceback.print_exc()
                reply = {"exitCode": 1, "error": f"{type(exc).__name__}: {exc}"}
            replies.write(json.dumps(reply) + "\n")
            replies.flush()
        if self.spark is not None:
            self.spark.stop()


def etl_server_command(
    reply_fd: int = typer.Option(..., "--reply-fd", help="File descriptor for the replies."),
    server_log: Path | None = typer.Option(
        None, "--server-log", help="Where this process's own output goes (named in step logs)."
    ),
) -> None:
    """Run the Dataset steps of a local run in one Spark (used by `neuraxis run`)."""
    from neuraxis.workloads.etl.cli import etl_app

    command = typer.main.get_command(etl_app())
    with os.fdopen(reply_fd, "w") as replies:
        EtlServer(command, server_log).serve(sys.stdin, replies)
