"""The operator's federated pods, run as processes: the commands and environment that
operator/builders/federation.py writes into the SuperLink and SuperNode Deployments and the
server Job, the TLS files of the Secret it makes, a 2-site 1-round job on loopback. The server's
termination message is read with the operator's own functions into the status it would write.

What differs from a pod, and only that: `python` is this interpreter; the SuperLink's Service
name is 127.0.0.1 (no cluster DNS here) and the processes get free ports; the spec, TLS and
lake paths are this test's folders."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from neuraxis.crds.trainingjob import TrainingJob, TrainingJobStatus
from neuraxis.lake import Lake
from neuraxis.operator.builders.federation import (
    ResolvedSite,
    build_federation_children,
    federation_run_name,
    superlink_service_name,
    tls_secret,
)
from neuraxis.operator.builders.training import ResolvedDataset
from neuraxis.operator.children import SPEC_FILE
from neuraxis.operator.observe import run_result
from neuraxis.operator.outcomes import add_federation, status_from_draft, training_outcome
from neuraxis.operator.reconcile import site_lineage
from neuraxis.operator.settings import OperatorSettings
from neuraxis.operator.tls import LOOPBACK_NAMES, generate_server_tls, service_dns_names
from neuraxis.workloads.federation_contract import (
    CONTROL_ADDRESS_ENV,
    SUPERLINK_ADDRESS_ENV,
    SUPERLINK_PORT,
    TLS_DIR_ENV,
)
from neuraxis.workloads.result import TERMINATION_LOG_ENV
from tests.train.conftest import NAMESPACE, write_delta

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]
SITES = ("plant-a", "plant-b")
UID = "0b7e4c2a-1d3f-4e5a-8b6c-7d8e9f0a1b2c"


def _write_sites(lake: Lake) -> None:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    order = np.random.default_rng(1).permutation(len(data.target))
    for site, rows in zip(SITES, np.array_split(order, 2), strict=True):
        columns = {f"f{j}": pa.array(data.data[rows, j]) for j in range(6)}
        columns["malignant"] = pa.array((1 - data.target[rows]).astype(np.int64))
        write_delta(lake, f"{site}-records", pa.table(columns))


def _job() -> TrainingJob:
    return TrainingJob.model_validate(
        {
            "apiVersion": "neuraxis.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "plants", "namespace": NAMESPACE, "uid": UID, "generation": 1},
            "spec": {
                "task": {"type": "classification", "label": "malignant"},
                "model": {
                    "architecture": "mlp",
                    "hyperparameters": {"hiddenSize": 8},
                    "learningRate": 0.01,
                    "batchSize": 32,
                },
                "federation": {
                    "sites": [{"name": s, "datasetRef": {"name": f"{s}-records"}} for s in SITES],
                    "rounds": 1,
                    "minSites": 2,
                    "privacy": {
                        "mode": "central",
                        "clippingNorm": 5.0,
                        "noiseMultiplier": 0.5,
                        "targetEpsilon": 1000.0,
                        "delta": 1e-5,
                    },
                    # SecAgg+ needs 3 sites at least: 2 sites aggregate in the clear (over TLS).
                    "secureAggregation": {"enabled": False, "shares": 3, "threshold": 2},
                },
            },
        }
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = obj["spec"]["template"]["spec"]["containers"][0]
    return container


def _pod_env(obj: dict[str, Any], run: str) -> dict[str, str]:
    """The container's environment as the kubelet would set it (the run id from the Job)."""
    env: dict[str, str] = {}
    for item in _container(obj)["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            assert item["name"] == "NEURAXIS_RUN_ID", item  # the Job's name, via its label
            env[item["name"]] = run
    return env


def _pod_command(obj: dict[str, Any], env: dict[str, str]) -> list[str]:
    command = [c.replace("$(NEURAXIS_RUN_ID)", env.get("NEURAXIS_RUN_ID", "")) for c in
               _container(obj)["command"]]  # fmt: skip
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def _local(
    env: dict[str, str], folder: Path, lake: Lake, service: str, port: int
) -> dict[str, str]:
    """The pod environment with this test's paths and loopback for the Service's address."""
    out = {k: v.replace(f"{service}:{SUPERLINK_PORT}", f"127.0.0.1:{port}") for k, v in env.items()}
    out.update(NEURAXIS_LAKE_URI=lake.root, HOME=str(folder), NEURAXIS_HOME=str(folder / "nx"),
               FLWR_HOME=str(folder / "flwr"), PATH=os.environ["PATH"])  # fmt: skip
    out[TLS_DIR_ENV] = str(folder.parent / "tls")
    # This checkout, not another install, in every process Flower starts (an image has one).
    if os.environ.get("PYTHONPATH"):
        out["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return out


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(600):
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"the SuperLink never listened: {log.read_text()[-3000:]}")


def test_the_operators_pods_run_a_federation_and_the_status_comes_from_the_server(
    tmp_path: Path,
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    _write_sites(lake)
    tj = _job()
    sites = [
        ResolvedSite(
            s, ResolvedDataset(f"{s}-records", 0, None, None), {"neuraxis.dev/edge-site": s}
        )
        for s in SITES
    ]
    children = build_federation_children(tj, sites, OperatorSettings())
    run = federation_run_name(tj)
    service = f"{superlink_service_name(tj)}.{NAMESPACE}.svc"
    # The TLS Secret as the operator makes it (reconcile.ensure_federation_tls), as files.
    names = service_dns_names(superlink_service_name(tj), NAMESPACE) + LOOPBACK_NAMES
    made = generate_server_tls("test federation", names)
    secret = tls_secret(tj, made.ca_cert, made.server_cert, made.server_key)
    (tmp_path / "tls").mkdir()
    for name, text in secret["stringData"].items():
        (tmp_path / "tls" / name).write_text(text)
    # The spec ConfigMap, where the pods mount it.
    [config] = [c for c in children if c["kind"] == "ConfigMap"]
    spec = tmp_path / "spec.yaml"
    spec.write_text(config["data"][Path(SPEC_FILE).name])

    def role(obj: dict[str, Any]) -> str:
        return str(obj["spec"]["template"]["metadata"]["labels"]["neuraxis.dev/federation-role"])

    pods = [c for c in children if c["kind"] in ("Deployment", "Job")]
    port = _free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for obj in sorted(pods, key=lambda o: ("superlink", "supernode", "server").index(role(o))):
            name = obj["metadata"]["name"]
            folder = tmp_path / name
            folder.mkdir()
            env = _local(_pod_env(obj, run), folder, lake, service, port)
            command = [c.replace(SPEC_FILE, str(spec)) for c in _pod_command(obj, env)]
            log = tmp_path / f"{name}.log"
            if role(obj) == "superlink":
                command += ["--host", "127.0.0.1", "--port", str(port)]
                procs.append(_spawn(command, env, log))
                _wait_listening(port, procs[-1], log)
            elif role(obj) == "supernode":
                assert env[SUPERLINK_ADDRESS_ENV] == f"127.0.0.1:{port}"
                procs.append(_spawn([*command, "--appio-port", str(_free_port())], env, log))
            else:
                assert env[CONTROL_ADDRESS_ENV] == f"127.0.0.1:{port}"
                env[TERMINATION_LOG_ENV] = str(tmp_path / "termination-log")
                server = _spawn(command, env, log)
                code = server.wait(timeout=800)
                assert code == 0, log.read_text(errors="replace")[-4000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=30)

    # What the kubelet would put in the server pod's status, read as the operator reads it.
    message = (tmp_path / "termination-log").read_text()
    pod = {"status": {"containerStatuses": [{"state": {"terminated": {"message": message}}}]}}
    compact = run_result([pod])
    assert compact is not None and compact["outcome"] == "Succeeded", message
    inputs = ("InputsReady", True, "DatasetsReady", "plant-a, plant-b")
    draft = training_outcome(compact, {"trainingJob": "plants", "trainingJobUid": UID}, inputs)
    add_federation(draft, compact, site_lineage(sites))
    status = TrainingJobStatus.model_validate(status_from_draft(draft, {}, 1)).to_wire()
    federation = status["federation"]
    assert federation["roundsCompleted"] == 1
    (only,) = federation["rounds"]
    assert only["sitesActive"] == list(SITES) and only["sitesDropped"] == []
    assert federation["privacy"]["epsilonSpent"] > 0
    assert federation["privacy"]["noiseMultiplier"] == 0.5
    assert [(s["site"], s["datasetVersion"], s["rounds"]) for s in status["lineage"]["sites"]] == [
        ("plant-a", 0, [1]),
        ("plant-b", 0, [1]),
    ]
    federated = {c["type"]: c for c in status["conditions"]}["Federated"]
    assert (federated["status"], federated["reason"]) == ("True", "RoundsCompleted")
    assert status["artifact"]["uri"] == compact["artifact"]["uri"]
    # The full result in the lake says the same, with everything the message had no room for.
    full = lake.read_json(f"{lake.run_path(NAMESPACE, run)}/result.json")
    assert full["federation"]["rounds"] == federation["rounds"]
