"""The three processes of a federated run, as the operator's pods and `neuraxis run` start them
(`neuraxis workload federated superlink|supernode|server`; the contract, ports, TLS files and
environment, is workloads/federation_contract.py):

- superlink: Flower's SuperLink with the run's TLS certificate. The ServerApp runs under it
  (Flower's `subprocess` isolation), so that pod also needs the lake.
- supernode: Flower's SuperNode for one site, trusting the run's CA only; its node config names
  that site's Dataset version and nothing else.
- server: submits the run through the SuperLink's Control API (`flwr run`), waits for the
  ServerApp's result in the lake and reports it in its own termination message: the run's
  result, as a training Job's is.

Functions that decide (argument lists, the compact result) are apart from the ones that start
processes or wait."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from neuraxis.crds.trainingjob import TrainingJob
from neuraxis.lake import Lake
from neuraxis.workloads.federated import config as keys
from neuraxis.workloads.federation_contract import (
    CA_CERT_FILE,
    CONTROL_ADDRESS_ENV,
    RESULT_KEY,
    SERVER_CERT_FILE,
    SERVER_KEY_FILE,
    SITE_ENV,
    SUPERLINK_ADDRESS_ENV,
    TLS_DIR_ENV,
    compact_federation,
)
from neuraxis.workloads.result import compact_json, now_rfc3339, publish_failure
from neuraxis.workloads.result import termination_log_path as _termination_log_path

APP_DIR = Path(__file__).resolve().parent / "app"
# The SuperNode's own ClientAppIo port (loopback, inside its pod); `neuraxis run` gives each
# SuperNode another.
SUPERNODE_APPIO_PORT = 9094
# A federation without a deadline of its own waits this long for its result.
DEFAULT_RUN_TIMEOUT_SECONDS = 3600.0
# How long the server waits for the SuperLink to accept connections (pods start together).
SUPERLINK_WAIT_SECONDS = 300.0
SUBMIT_TIMEOUT_SECONDS = 600.0
# The name of the SuperLink in the server's Flower config (`flwr run <app> <name>`).
FLWR_SUPERLINK_NAME = "neuraxis"


class RoleError(RuntimeError):
    """A role's input is missing or wrong (an environment variable, a TLS file)."""


def _env(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise RoleError(f"{name}: required in the environment of this role")
    return value


def _tls_file(env: Mapping[str, str], name: str) -> Path:
    path = Path(_env(env, TLS_DIR_ENV)) / name
    if not path.is_file():
        raise RoleError(f"{TLS_DIR_ENV}: {path} is missing")
    return path


def superlink_args(env: Mapping[str, str], host: str, port: int) -> list[str]:
    """`flower-superlink` serving Fleet, Control and the ServerApp's API on one TLS port."""
    return [
        "flower-superlink",
        "--ssl-ca-certfile", str(_tls_file(env, CA_CERT_FILE)),
        "--ssl-certfile", str(_tls_file(env, SERVER_CERT_FILE)),
        "--ssl-keyfile", str(_tls_file(env, SERVER_KEY_FILE)),
        # The app's code is the installed neuraxis: nothing is installed at run time.
        "--disable-runtime-dependency-installation",
        "--host", host, "--port", str(port),
    ]  # fmt: skip


def supernode_node_config(env: Mapping[str, str]) -> str:
    """The node config from the site's environment: its name and its one Dataset version."""
    version = env.get("NEURAXIS_DATASET_VERSION", "")
    try:
        pinned = int(version) if version else None
    except ValueError as exc:
        raise RoleError(f"NEURAXIS_DATASET_VERSION: {version!r} is not an integer") from exc
    return keys.node_config(_env(env, SITE_ENV), _env(env, "NEURAXIS_DATASET"), pinned)


def supernode_args(env: Mapping[str, str], appio_port: int) -> list[str]:
    return [
        "flower-supernode",
        "--superlink", _env(env, SUPERLINK_ADDRESS_ENV),
        "--root-certificates", str(_tls_file(env, CA_CERT_FILE)),
        "--host", "127.0.0.1", "--port", str(appio_port),
        "--node-config", supernode_node_config(env),
    ]  # fmt: skip


def flwr_config(control: str, ca_cert: Path) -> str:
    """The server's Flower config: one SuperLink, reached over TLS trusting the run's CA."""
    return (
        f'[superlink]\ndefault = "{FLWR_SUPERLINK_NAME}"\n\n'
        f"[superlink.{FLWR_SUPERLINK_NAME}]\n"
        f"address = {json.dumps(control)}\nroot-certificates = {json.dumps(str(ca_cert))}\n"
    )


def compact_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """The termination-message copy of a federated run's result: outcome, reason, message,
    metrics, the artifact's uri and digest, and RESULT_KEY as `compact_federation` fits it."""
    out: dict[str, Any] = {
        k: result[k] for k in ("outcome", "reason", "message", "metrics") if result.get(k)
    }
    artifact = result.get("artifact") or {}
    if artifact.get("uri"):
        out["artifact"] = {k: artifact[k] for k in ("uri", "digest") if k in artifact}
    if result.get(RESULT_KEY):
        out[RESULT_KEY] = compact_federation(dict(result[RESULT_KEY]))
    return out


def wait_for_listener(address: str, timeout: float = SUPERLINK_WAIT_SECONDS) -> None:
    """Block until `host:port` accepts TCP connections (the SuperLink may start after us)."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=5.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{address} did not accept connections in {timeout:.0f}s"
                ) from None
            time.sleep(1.0)


def submit(
    job: TrainingJob, namespace: str, run_id: str, env: Mapping[str, str], home: Path,
    record_dir: str = "",
) -> None:  # fmt: skip
    """`flwr run` the app (a copy of APP_DIR) through the SuperLink's Control API."""
    control = _env(env, CONTROL_ADDRESS_ENV)
    ca_cert = _tls_file(env, CA_CERT_FILE)
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(flwr_config(control, ca_cert))
    app = home / "app"
    shutil.copytree(APP_DIR, app, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    wait_for_listener(control)
    args = [_tool("flwr"), "run", str(app), FLWR_SUPERLINK_NAME]
    for value in keys.run_config(job, namespace, run_id, record_dir):
        args += ["--run-config", value]
    done = subprocess.run(
        args, env={**tool_env(env), "FLWR_HOME": str(home)}, capture_output=True,
        timeout=SUBMIT_TIMEOUT_SECONDS, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
        raise RuntimeError(f"flwr run failed ({done.returncode}): {output}")


def wait_for_result(lake: Lake, namespace: str, run_id: str, timeout: float) -> dict[str, Any]:
    """The run's result.json, once the ServerApp (under the SuperLink) has published it."""
    rel = f"{lake.run_path(namespace, run_id)}/result.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lake.exists(rel):
            result: dict[str, Any] = lake.read_json(rel)
            return result
        time.sleep(1.0)
    raise TimeoutError(f"federated run {namespace}/{run_id}: no result after {timeout:.0f}s")


def report(result: Mapping[str, Any], uri: str) -> str:
    """Write the compact result to this process's termination message; returns the text."""
    message = compact_json({**compact_result(result), "resultUri": uri})
    path = _termination_log_path()
    if path is not None:
        path.write_text(message)
    return message


def run_server(
    job: TrainingJob, lake: Lake, namespace: str, run_id: str, env: Mapping[str, str],
    home: Path, record_dir: str = "",
) -> dict[str, Any]:  # fmt: skip
    """The server role: submit, wait, report. A run that could not be submitted or gave no
    result in time is published as Failed (FederationFailed) by this role itself."""
    started = now_rfc3339()
    timeout = float(job.spec.active_deadline_seconds or DEFAULT_RUN_TIMEOUT_SECONDS)
    rel = f"{lake.run_path(namespace, run_id)}/result.json"
    try:
        submit(job, namespace, run_id, env, home, record_dir)
        result = wait_for_result(lake, namespace, run_id, timeout)
    except (RoleError, RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
        publish_failure(lake, namespace, run_id, "FederationFailed", str(exc), started)
        result = lake.read_json(rel)
    report(result, lake.uri(rel))
    return result


def _tool(name: str) -> str:
    """A Flower console script: the one next to this interpreter (a venv), else on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def tool_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with this interpreter's scripts first on PATH: Flower starts its own helpers
    (flower-superexec, flwr-serverapp, flwr-clientapp) by name."""
    scripts = str(Path(sys.executable).parent)
    return {**env, "PATH": os.pathsep.join([scripts, env.get("PATH", "")])}


def exec_tool(args: list[str]) -> None:
    """Replace this process with a Flower server (the pod's main process; signals reach it)."""
    os.execve(_tool(args[0]), [_tool(args[0]), *args[1:]], tool_env(os.environ))
