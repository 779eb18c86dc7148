# mypy: disable-error-code="no-untyped-call,arg-type,union-attr,index"
# (the kubernetes client takes and returns plain dicts here; its stubs want model classes)
"""Operator scale benchmark (figures, not a test).

On the local KWOK cluster with 100 extra fake nodes: create N Datasets and N TrainingJobs (each
TrainingJob waits for its Dataset), and report
  - p50/p99 from Dataset creation to its ETL Job, and from Dataset Ready to the TrainingJob's Job,
  - the time until every TrainingJob has Succeeded,
  - the operator's CPU seconds and peak RSS, API requests per resource;
and, in the same run, the ceiling: N Jobs created directly with the Python client. Prints the
throughput ratio operator/direct (target >= 0.5), with p99 (target <= 2 s) and RSS (<= 300 MB).

    .venv/bin/python bench/operator_scale.py [--n 1000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch

from neuraxis import API_GROUP, API_VERSION
from neuraxis.dev import cluster as dev_cluster
from neuraxis.operator.children import POD_ANNOTATIONS

NS = "nx-bench"
DIRECT_NS = "nx-bench-direct"
ETL_RESULT = {
    "outcome": "Succeeded",
    "reason": "Succeeded",
    "version": 0,
    "rows": 10,
    "qualityPassed": True,
}
TRAIN_RESULT = {"outcome": "Succeeded", "reason": "Succeeded", "metrics": {"val_loss": 0.1}}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def annotated(result: dict[str, Any]) -> dict[str, str]:
    inner = {"neuraxis.dev/kwok-termination-message": json.dumps(result)}
    return {POD_ANNOTATIONS: json.dumps(inner)}


def dataset(i: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "Dataset",
        "metadata": {"name": f"ds-{i:04d}", "annotations": annotated(ETL_RESULT)},
        "spec": {"source": {"builtin": {"name": "sensors", "rows": 10}}},
    }


def training_job(i: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": f"tj-{i:04d}", "annotations": annotated(TRAIN_RESULT)},
        "spec": {
            "datasetRef": {"name": f"ds-{i:04d}"},
            "task": {"type": "classification", "label": "failure"},
            "model": {"architecture": "mlp", "epochs": 1},
        },
    }


class Recorder:
    """Watches Jobs and Datasets and stamps when each first appears / first becomes Ready."""

    def __init__(self, api_client: k8s.ApiClient):
        self.api_client = api_client
        self.job_seen: dict[str, float] = {}
        self.ready_seen: dict[str, float] = {}
        self.stop = threading.Event()

    def _jobs(self) -> None:
        batch = k8s.BatchV1Api(self.api_client)
        while not self.stop.is_set():
            w = watch.Watch()
            for event in w.stream(batch.list_namespaced_job, NS, timeout_seconds=5):
                # `<name>-<step>-<short uid>-g<generation>` -> `<name>-<step>`
                run = re.sub(r"-[0-9a-z]{8}-g[0-9]+$", "", event["object"].metadata.name)
                self.job_seen.setdefault(run, time.time())
            w.stop()

    def _datasets(self) -> None:
        api = k8s.CustomObjectsApi(self.api_client)
        while not self.stop.is_set():
            w = watch.Watch()
            stream = w.stream(
                api.list_namespaced_custom_object,
                API_GROUP,
                API_VERSION,
                NS,
                "datasets",
                timeout_seconds=5,
            )
            for event in stream:
                obj = event["object"]
                if (obj.get("status") or {}).get("phase") == "Ready":
                    self.ready_seen.setdefault(obj["metadata"]["name"], time.time())
            w.stop()

    def start(self) -> None:
        for target in (self._jobs, self._datasets):
            threading.Thread(target=target, daemon=True).start()


def proc_stats(pid: int) -> tuple[float, float]:
    """CPU seconds (user+system) and peak RSS in MB of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = next(
        line
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmHWM")
    )
    return cpu, int(hwm.split()[1]) / 1024


def scrape_requests(port: int) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("neuraxis_api_requests_total{")
    )


def recreate_namespace(core: k8s.CoreV1Api, name: str) -> None:
    try:
        core.delete_namespace(name)
        while True:
            core.read_namespace(name)
            time.sleep(1)
    except k8s.exceptions.ApiException:
        pass
    core.create_namespace({"metadata": {"name": name}})
    while not [
        sa
        for sa in core.list_namespaced_service_account(name).items
        if sa.metadata.name == "default"
    ]:
        time.sleep(0.2)


def direct_ceiling(api_client: k8s.ApiClient, n: int) -> float:
    """Jobs per second when a client creates them directly (what the operator builds on)."""
    core = k8s.CoreV1Api(api_client)
    batch = k8s.BatchV1Api(api_client)
    recreate_namespace(core, DIRECT_NS)
    start = time.time()
    for i in range(n):
        batch.create_namespaced_job(
            DIRECT_NS,
            {
                "metadata": {"name": f"direct-{i:04d}"},
                "spec": {
                    "backoffLimit": 0,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {"name": "main", "image": "ghcr.io/neuraxis/neuraxis:0.1.0"}
                            ],
                        }
                    },
                },
            },
        )
    elapsed = time.time() - start
    core.delete_namespace(DIRECT_NS)
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000, help="Datasets and TrainingJobs each")
    parser.add_argument("--nodes", type=int, default=100, help="extra fake nodes")
    parser.add_argument("--quick", action="store_true", help="N=100")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    n = 100 if args.quick else args.n

    info = dev_cluster.up()
    nodes = dev_cluster.node_manifests([dev_cluster.NodePool("bench", args.nodes)])
    dev_cluster.kubectl(
        "apply",
        "-f",
        "-",
        kubeconfig=info.kubeconfig,
        input_text="\n---\n".join(json.dumps(x) for x in nodes),
    )
    api_client = k8s_config.new_client_from_config(config_file=str(info.kubeconfig))
    core = k8s.CoreV1Api(api_client)
    recreate_namespace(core, NS)

    metrics_port = 19090
    env = {**os.environ, "KUBECONFIG": str(info.kubeconfig)}
    log = open("/tmp/neuraxis-operator-bench.log", "wb")  # noqa: SIM115
    operator = subprocess.Popen(
        [sys.executable, "-m", "neuraxis.cli", "operator", "--namespace", NS,
         "--metrics-port", str(metrics_port), "--liveness-port", "0"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    time.sleep(4)  # operator start-up (imports, login, first list) is not part of the figures
    cpu_before, _ = proc_stats(operator.pid)
    recorder = Recorder(api_client)
    recorder.start()
    custom = k8s.CustomObjectsApi(api_client)
    created: dict[str, float] = {}
    t0 = time.time()
    for i in range(n):
        created[f"ds-{i:04d}"] = time.time()
        custom.create_namespaced_custom_object(API_GROUP, API_VERSION, NS, "datasets", dataset(i))
        created[f"tj-{i:04d}"] = time.time()
        custom.create_namespaced_custom_object(
            API_GROUP, API_VERSION, NS, "trainingjobs", training_job(i)
        )
    create_seconds = time.time() - t0
    print(f"created {2 * n} resources in {create_seconds:.1f}s", flush=True)

    done_at = None
    while time.time() - t0 < args.timeout:
        items = custom.list_namespaced_custom_object(API_GROUP, API_VERSION, NS, "trainingjobs")[
            "items"
        ]
        succeeded = sum(1 for x in items if (x.get("status") or {}).get("phase") == "Succeeded")
        if succeeded == n:
            done_at = time.time()
            break
        elapsed = time.time() - t0
        jobs = len(recorder.job_seen)
        print(f"  {elapsed:6.1f}s: {succeeded}/{n} TrainingJobs Succeeded, {jobs} Jobs", flush=True)
        time.sleep(5)
    cpu_after, peak_rss = proc_stats(operator.pid)
    requests = scrape_requests(metrics_port)
    recorder.stop.set()
    operator.terminate()
    operator.wait(timeout=30)

    ds_latency = [
        recorder.job_seen[f"ds-{i:04d}-etl"] - created[f"ds-{i:04d}"]
        for i in range(n)
        if f"ds-{i:04d}-etl" in recorder.job_seen
    ]
    tj_latency = [
        recorder.job_seen[f"tj-{i:04d}-train"] - recorder.ready_seen[f"ds-{i:04d}"]
        for i in range(n)
        if f"tj-{i:04d}-train" in recorder.job_seen and f"ds-{i:04d}" in recorder.ready_seen
    ]
    first = min(created.values())
    last_ds_job = max(
        (recorder.job_seen[k] for k in recorder.job_seen if k.startswith("ds-")),
        default=float("nan"),
    )
    operator_rate = len(ds_latency) / (last_ds_job - first)
    direct_rate = direct_ceiling(api_client, n)
    core.delete_namespace(NS)
    dev_cluster.kubectl(
        "delete",
        "nodes",
        "-l",
        "neuraxis.dev/pool=bench",
        "--wait=false",
        kubeconfig=info.kubeconfig,
    )

    total = (done_at - t0) if done_at else float("nan")
    p50, p99 = percentile(ds_latency, 0.5), percentile(ds_latency, 0.99)
    t50, t99 = percentile(tj_latency, 0.5), percentile(tj_latency, 0.99)
    ratio = operator_rate / direct_rate
    cores = os.cpu_count()
    print()
    print(f"Neuraxis operator scale: N={n} Datasets + {n} TrainingJobs, {args.nodes + 9} nodes")
    print(f"  ({cores} cores shared by the control plane, KWOK, the operator and this client)")
    print(f"  Dataset created -> ETL Job      p50 {p50:6.2f}s p99 {p99:6.2f}s (target p99 <= 2 s)")
    print(f"  Dataset Ready -> training Job   p50 {t50:6.2f}s p99 {t99:6.2f}s")
    print(f"  all TrainingJobs Succeeded      {total:6.1f}s after the first create")
    print(f"  operator CPU                    {cpu_after - cpu_before:6.1f}s")
    print(f"  operator peak RSS               {peak_rss:6.0f} MB (target <= 300 MB)")
    print(f"  API requests per resource       {requests / (2 * n):6.1f}")
    print(f"  Jobs/s: operator {operator_rate:.1f}, direct client {direct_rate:.1f} (the ceiling)")
    print(f"  throughput ratio operator/direct {ratio:.2f} (target >= 0.5)")


if __name__ == "__main__":
    main()
