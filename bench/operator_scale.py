"""Operator scale benchmark (figures, not a test).

On the local control plane with extra KWOK nodes, in one run:

1. the ideal controller: a script that performs the minimal writes of a controller directly
   (create the Dataset, create its Job, patch its status; the same for each TrainingJob), with
   as many threads as the operator has workers, as fast as the API server lets it;
2. the operator (`neuraxis operator`, a subprocess): N Datasets and then N TrainingJobs are
   created (each TrainingJob waits for its Dataset; workload results are fabricated on the KWOK
   nodes), until every TrainingJob has Succeeded.

Printed: the operator's end-to-end rate (Datasets reaching their ETL Job per second) as a ratio
of the ideal controller's, p50/p99 Dataset created -> ETL Job and Dataset Ready -> training Job,
the operator's API requests per resource by verb (its own count, by the kind it reconciled),
kube-apiserver's `apiserver_request_total` per verb and resource in both phases, and the
operator's peak RSS and CPU seconds per 1k resources.

    .venv/bin/python bench/operator_scale.py            # 1,000 + 1,000 on 500 KWOK nodes
    .venv/bin/python bench/operator_scale.py --quick    # 100 + 100 on 50 nodes
    .venv/bin/python bench/operator_scale.py --full     # 10,000 + 10,000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import config as k8s_config

from neuraxis import API_GROUP, API_VERSION
from neuraxis.dev import cluster as dev_cluster
from neuraxis.operator.children import POD_ANNOTATIONS
from neuraxis.operator.kube import ApiError, Kube, RetryPolicy

NS = "nx-bench"
IDEAL_NS = "nx-bench-ideal"
CR = f"/apis/{API_GROUP}/{API_VERSION}/namespaces"
ETL_RESULT = {"outcome": "Succeeded", "reason": "Succeeded", "version": 0, "rows": 10}
TRAIN_RESULT = {"outcome": "Succeeded", "reason": "Succeeded", "metrics": {"val_loss": 0.1}}
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
OPERATOR_ENV = {
    "NEURAXIS_WORKLOAD_TOLERATIONS": json.dumps([{**KWOK_TAINT, "operator": "Equal"}]),
    "NEURAXIS_WORKLOAD_NODE_SELECTOR": json.dumps({"type": "kwok"}),
    "NEURAXIS_ALLOW_KWOK_ANNOTATIONS": "true",
}
Obj = dict[str, Any]


# ---- resources --------------------------------------------------------------------------------
def annotated(result: Obj) -> dict[str, str]:
    inner = {"neuraxis.dev/kwok-termination-message": json.dumps(result)}
    return {POD_ANNOTATIONS: json.dumps(inner)}


def dataset(i: int) -> Obj:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "Dataset",
        "metadata": {"name": f"ds-{i:05d}", "annotations": annotated(ETL_RESULT)},
        "spec": {"source": {"builtin": {"name": "sensors", "rows": 10}}},
    }


def training_job(i: int) -> Obj:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": f"tj-{i:05d}", "annotations": annotated(TRAIN_RESULT)},
        "spec": {
            "datasetRef": {"name": f"ds-{i:05d}"},
            "task": {"type": "classification", "label": "failure"},
            "model": {"architecture": "mlp", "epochs": 1},
        },
    }


def plain_job(name: str, owner: Obj) -> Obj:
    """What the ideal controller creates: a Job of the size the operator makes (one container,
    the spec in a pod annotation), owned by the resource."""
    meta = owner["metadata"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "bench-ideal"},
            "ownerReferences": [
                {
                    "apiVersion": owner["apiVersion"],
                    "kind": owner["kind"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {
                    "annotations": {
                        **json.loads(meta["annotations"][POD_ANNOTATIONS]),
                        "neuraxis.dev/resource": json.dumps(owner.get("spec")),
                    }
                },
                "spec": {
                    "restartPolicy": "Never",
                    "tolerations": [{**KWOK_TAINT, "operator": "Equal"}],
                    "nodeSelector": {"type": "kwok"},
                    "containers": [{"name": "main", "image": "ghcr.io/neuraxis/neuraxis:0.1.0"}],
                },
            },
        },
    }


# ---- the API server's own counts ---------------------------------------------------------------
METRIC = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def apiserver_requests(kube: Kube) -> dict[tuple[str, str], float]:
    """apiserver_request_total summed by (verb, resource[/subresource]) (`kubectl get --raw
    /metrics`)."""
    url, headers = kube._prepare("GET", "/metrics", None)
    headers["Accept"] = "text/plain"
    resp = kube.pool.request("GET", url, headers=headers, timeout=urllib3.Timeout(30))
    out: dict[tuple[str, str], float] = defaultdict(float)
    for line in resp.data.decode().splitlines():
        match = METRIC.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += f"/{labels['subresource']}"
        out[(labels.get("verb", ""), resource)] += float(match["value"])
    return out


def delta(after: dict[Any, float], before: dict[Any, float]) -> dict[Any, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


# ---- the operator's own counts ------------------------------------------------------------------
def operator_metrics(port: int) -> list[tuple[str, dict[str, str], float]]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = []
    for line in body.splitlines():
        match = re.match(r"^(\w+)\{([^}]*)\} (\S+)$", line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match[2]))
            out.append((match[1], labels, float(match[3])))
    return out


def requests_by(metrics: list[tuple[str, dict[str, str], float]], *keys: str) -> dict[Any, float]:
    out: dict[Any, float] = defaultdict(float)
    for name, labels, value in metrics:
        if name == "neuraxis_api_requests_total":
            out[tuple(labels.get(k, "") for k in keys)] += value
    return out


def proc_stats(pid: int) -> tuple[float, float]:
    """CPU seconds (user+system) and peak RSS in MB of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    hwm = next(line for line in status if line.startswith("VmHWM"))
    return cpu, int(hwm.split()[1]) / 1024


# ---- helpers ----------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def delete_namespace(kube: Kube, name: str) -> None:
    """Delete a namespace and wait until it is gone."""
    try:
        kube.request("DELETE", f"/api/v1/namespaces/{name}")
    except ApiError as exc:
        if exc.status != 404:
            raise
    while True:
        try:
            kube.request("GET", f"/api/v1/namespaces/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return
            raise
        time.sleep(1)


def recreate_namespace(kube: Kube, name: str) -> None:
    delete_namespace(kube, name)
    kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": name}})
    while True:
        found = kube.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts", verb="list")
        if any(sa["metadata"]["name"] == "default" for sa in found.get("items") or []):
            return
        time.sleep(0.2)


def in_parallel(threads: int, work: Callable[[int], None], items: Iterable[int]) -> None:
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(work, items):
            pass


def paced(
    threads: int, rate: float, items: list[tuple[str, Obj]], create: Callable[[str, Obj], None]
) -> None:
    """Submit the creates at a steady `rate` per second (a stream of users, not one burst)."""
    with ThreadPoolExecutor(threads) as pool:
        start = time.monotonic()
        futures = []
        for index, (plural, body) in enumerate(items):
            time.sleep(max(0.0, start + index / rate - time.monotonic()))
            futures.append(pool.submit(create, plural, body))
        for future in futures:
            future.result()


class Stamps:
    """Watches a namespace's Jobs and Datasets; stamps when each first appears / is Ready."""

    def __init__(self, kube: Kube, namespace: str):
        self.kube = kube
        self.namespace = namespace
        self.job_for: dict[tuple[str, str], float] = {}  # (owner kind label, owner) -> time
        self.ready: dict[str, float] = {}
        self.stop = threading.Event()

    def _follow(self, path: str, on: Callable[[Obj], None]) -> None:
        version = self.kube.request("GET", path, query={"limit": 1}, verb="list")["metadata"][
            "resourceVersion"
        ]
        while not self.stop.is_set():
            try:
                for event in self.kube.watch_lines(
                    path, {"resourceVersion": version, "timeoutSeconds": 5}, 30
                ):
                    obj = event.get("object") or {}
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        on(obj)
            except ApiError:
                time.sleep(0.5)

    def _job(self, job: Obj) -> None:
        labels = job["metadata"].get("labels") or {}
        for kind in ("dataset", "trainingjob"):
            if f"neuraxis.dev/{kind}" in labels:
                self.job_for.setdefault((kind, labels[f"neuraxis.dev/{kind}"]), time.time())

    def _dataset(self, ds: Obj) -> None:
        if (ds.get("status") or {}).get("phase") == "Ready":
            self.ready.setdefault(ds["metadata"]["name"], time.time())

    def start(self) -> None:
        jobs = f"/apis/batch/v1/namespaces/{self.namespace}/jobs"
        datasets = f"{CR}/{self.namespace}/datasets"
        for path, on in ((jobs, self._job), (datasets, self._dataset)):
            threading.Thread(target=self._follow, args=(path, on), daemon=True).start()


# ---- phase 1: the ideal controller -------------------------------------------------------------
@dataclass
class Phase:
    seconds: float
    rate: float  # resources per second
    apiserver: dict[tuple[str, str], float]
    extra: dict[str, Any] = field(default_factory=dict)


def ideal_controller(kube: Kube, n: int, threads: int) -> Phase:
    recreate_namespace(kube, IDEAL_NS)
    before = apiserver_requests(kube)

    def one(resource: Obj, plural: str, step: str) -> None:
        created = kube.request("POST", f"{CR}/{IDEAL_NS}/{plural}", body=resource)
        kube.request(
            "POST",
            f"/apis/batch/v1/namespaces/{IDEAL_NS}/jobs",
            body=plain_job(f"{created['metadata']['name']}-{step}", created),
        )
        kube.request(
            "PATCH",
            f"{CR}/{IDEAL_NS}/{plural}/{created['metadata']['name']}/status",
            body={"status": {"phase": "Running", "observedGeneration": 1}},
            content_type="application/merge-patch+json",
        )

    started = time.monotonic()
    in_parallel(threads, lambda i: one(dataset(i), "datasets", "etl"), range(n))
    ds_seconds = time.monotonic() - started
    in_parallel(threads, lambda i: one(training_job(i), "trainingjobs", "train"), range(n))
    seconds = time.monotonic() - started
    used = delta(apiserver_requests(kube), before)
    # Gone before the operator's phase: its garbage collection would load that phase.
    delete_namespace(kube, IDEAL_NS)
    return Phase(seconds, n / ds_seconds, used, {"all_rate": 2 * n / seconds})


# ---- phase 2: the operator ----------------------------------------------------------------------
def start_operator(kubeconfig: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), **OPERATOR_ENV}
    env["NEURAXIS_WORKERS"] = str(workers)
    log = open("/tmp/neuraxis-operator-bench.log", "wb")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "neuraxis.cli", "operator", "--namespace", NS,
         "--metrics-port", str(port), "--liveness-port", "0"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def wait_operator_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    """Until its caches are synced (the gauge), or 10 s for an operator without it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the operator exited; see /tmp/neuraxis-operator-bench.log")
        try:
            metrics = operator_metrics(port)
        except OSError:
            time.sleep(0.5)
            continue
        synced = [v for name, _, v in metrics if name == "neuraxis_caches_synced"]
        if synced and synced[0] == 1:
            return
        if not synced and time.monotonic() > deadline - 50:
            return  # an operator without the gauge: give it 10 s
        time.sleep(0.5)


def operator_phase(
    kube: Kube, kubeconfig: Path, n: int, threads: int, timeout: float, rate: float
) -> Phase:
    recreate_namespace(kube, NS)
    port = 19090
    proc = start_operator(kubeconfig, port, threads)
    try:
        wait_operator_ready(port, proc)
        cpu_before, _ = proc_stats(proc.pid)
        own_before = requests_by(operator_metrics(port), "kind", "verb", "resource")
        stamps = Stamps(kube, NS)
        stamps.start()
        time.sleep(1)
        before = apiserver_requests(kube)
        created: dict[str, float] = {}

        def create(plural: str, body: Obj) -> None:
            created[body["metadata"]["name"]] = time.time()
            kube.request("POST", f"{CR}/{NS}/{plural}", body=body)

        t0 = time.time()
        if rate > 0:  # paced: each Dataset then its TrainingJob, `rate` resources a second
            paced(threads, rate, [("datasets", dataset(i)) for i in range(n)]
                  + [("trainingjobs", training_job(i)) for i in range(n)], create)  # fmt: skip
        else:  # as fast as the API server takes them
            in_parallel(threads, lambda i: create("datasets", dataset(i)), range(n))
            in_parallel(threads, lambda i: create("trainingjobs", training_job(i)), range(n))
        print(f"  created {2 * n} resources in {time.time() - t0:.1f}s", flush=True)
        done_at = wait_succeeded(kube, n, t0, timeout, stamps)
        cpu_after, peak_rss = proc_stats(proc.pid)
        used = delta(apiserver_requests(kube), before)
        own = delta(requests_by(operator_metrics(port), "kind", "verb", "resource"), own_before)
        stamps.stop.set()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    ds_latency = [
        stamps.job_for[("dataset", f"ds-{i:05d}")] - created[f"ds-{i:05d}"]
        for i in range(n)
        if ("dataset", f"ds-{i:05d}") in stamps.job_for
    ]
    # From the moment the TrainingJob could start: its Dataset Ready, or the TrainingJob
    # created if that came later (the TrainingJobs are created after all the Datasets).
    tj_latency = [
        stamps.job_for[("trainingjob", f"tj-{i:05d}")]
        - max(stamps.ready[f"ds-{i:05d}"], created[f"tj-{i:05d}"])
        for i in range(n)
        if ("trainingjob", f"tj-{i:05d}") in stamps.job_for and f"ds-{i:05d}" in stamps.ready
    ]
    last_etl_job = max(v for (kind, _), v in stamps.job_for.items() if kind == "dataset")
    first = min(created.values())
    extra = {
        "ds_latency": ds_latency,
        "tj_latency": tj_latency,
        "total": (done_at - t0) if done_at else float("nan"),
        "cpu": cpu_after - cpu_before,
        "rss": peak_rss,
        "own": own,
    }
    return Phase(last_etl_job - first, len(ds_latency) / (last_etl_job - first), used, extra)


def wait_succeeded(kube: Kube, n: int, t0: float, timeout: float, stamps: Stamps) -> float | None:
    while time.time() - t0 < timeout:
        items = kube.request("GET", f"{CR}/{NS}/trainingjobs", verb="list")["items"]
        succeeded = sum(1 for x in items if (x.get("status") or {}).get("phase") == "Succeeded")
        if succeeded == n:
            return time.time()
        etl = sum(1 for (kind, _) in stamps.job_for if kind == "dataset")
        print(
            f"  {time.time() - t0:6.1f}s: {etl}/{n} ETL Jobs, {len(stamps.ready)} Datasets Ready,"
            f" {succeeded}/{n} TrainingJobs Succeeded",
            flush=True,
        )
        time.sleep(5)
    return None


# ---- report -----------------------------------------------------------------------------------
def print_requests(n: int, ideal: Phase, op: Phase) -> None:
    own: dict[tuple[str, str, str], float] = op.extra["own"]
    print("\n  operator API requests by the kind it reconciled (its own count), per resource:")
    kinds = sorted({k for k, _, _ in own})
    for kind in kinds:
        rows = {(v, r): c for (k, v, r), c in own.items() if k == kind}
        total = sum(rows.values())
        label = kind or "(caches: list/watch, leader lease)"
        detail = ", ".join(f"{v} {r} {c / n:.2f}" for (v, r), c in sorted(rows.items()))
        print(f"    {label:<14} {total / n:5.2f} per resource: {detail}")
    print("\n  kube-apiserver apiserver_request_total, per verb and resource (all clients):")
    print(f"    {'verb':<8} {'resource':<28} {'ideal':>9} {'operator':>9}  (per resource pair)")
    keys = sorted(set(ideal.apiserver) | set(op.apiserver), key=lambda k: (k[1], k[0]))
    for verb, resource in keys:
        a, b = ideal.apiserver.get((verb, resource), 0), op.apiserver.get((verb, resource), 0)
        if max(a, b) >= n / 10:
            print(f"    {verb:<8} {resource:<28} {a / n:9.2f} {b / n:9.2f}")


def p50_p99(values: list[float]) -> str:
    return f"p50 {percentile(values, 0.5):6.2f}s p99 {percentile(values, 0.99):6.2f}s"


def report(n: int, nodes: int, ideal: Phase, op: Phase) -> None:
    ds, tj = op.extra["ds_latency"], op.extra["tj_latency"]
    per_k = 2 * n / 1000
    dataset_requests = sum(c for (k, _, _), c in op.extra["own"].items() if k == "Dataset") / n
    cpu, rss, every = op.extra["cpu"], op.extra["rss"], ideal.extra["all_rate"]
    lines = [
        "",
        f"Neuraxis operator scale: {n} Datasets + {n} TrainingJobs, {nodes} extra KWOK nodes",
        f"  ({os.cpu_count()} cores shared by the control plane, KWOK, the operator, this client)",
        f"  ideal controller: {ideal.rate:7.1f} Datasets/s ({every:.1f} resources/s in all)",
        f"  operator:         {op.rate:7.1f} Datasets/s reached their ETL Job",
        f"  end-to-end ratio operator/ideal  {op.rate / ideal.rate:5.2f}   (goal >= 0.5)",
        f"  Dataset created -> ETL Job       {p50_p99(ds)} (goal p99 <= 1 s)",
        f"  Dataset Ready -> training Job    {p50_p99(tj)} (or TrainingJob created, if later)",
        f"  all TrainingJobs Succeeded       {op.extra['total']:6.1f}s after the first create",
        f"  API requests per Dataset run     {dataset_requests:6.2f}   (goal <= 6)",
        f"  operator peak RSS                {rss:6.0f} MB (goal <= 250 MB at 10k)",
        f"  operator CPU                     {cpu:6.1f}s = {cpu / per_k:.1f}s per 1k resources",
    ]
    print("\n".join(lines))
    print_requests(n, ideal, op)


def run_chaos(n: int) -> None:
    """The chaos test at bench size: 10 leader SIGKILLs and an API server restart while n
    resources (half Datasets, half TrainingJobs) reconcile on this machine's cluster."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "NEURAXIS_CHAOS_RESOURCES": str(n // 2)}
    test = "tests/cluster/test_operator_chaos.py"
    argv = [sys.executable, "-m", "pytest", test, "-q", "-s", "-o", "timeout=7200"]
    raise SystemExit(subprocess.run(argv, cwd=repo, env=env, check=False).returncode)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000, help="Datasets and TrainingJobs each")
    parser.add_argument("--nodes", type=int, default=500, help="extra KWOK nodes")
    parser.add_argument("--quick", action="store_true", help="100 of each on 50 nodes")
    parser.add_argument("--full", action="store_true", help="10,000 of each")
    parser.add_argument(
        "--threads", type=int, default=8, help="ideal controller threads = operator workers"
    )
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="create the operator's resources at this many per second (default: all at once)",
    )
    parser.add_argument(
        "--chaos",
        action="store_true",
        help="run the chaos test (tests/cluster/test_operator_chaos.py) at N/2 + N/2 instead",
    )
    args = parser.parse_args()
    if args.chaos:
        run_chaos(args.n)
        return
    n, nodes = (
        (100, 50) if args.quick else (10_000, args.nodes) if args.full else (args.n, args.nodes)
    )

    # A running cluster is used as it is (its real node, if any, is not ours to stop).
    info_kubeconfig = dev_cluster.kubeconfig_path()
    if not dev_cluster.is_running():
        info_kubeconfig = dev_cluster.up(real=False).kubeconfig
    pool = dev_cluster.NodePool("bench", nodes, taints=(dev_cluster.KWOK_NODE_TAINT,))
    manifest = json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": dev_cluster.node_manifests([pool])}
    )
    dev_cluster.kubectl(
        "apply", "--filename=-", kubeconfig=info_kubeconfig, input_text=manifest, timeout=300
    )
    api_client = k8s_config.new_client_from_config(config_file=str(info_kubeconfig))  # type: ignore[no-untyped-call]
    kube = Kube(
        api_client, qps=100_000, burst=100_000, timeout_s=60, retry=RetryPolicy(attempts=10)
    )
    try:
        print(
            f"ideal controller: {n} Datasets + {n} TrainingJobs, {args.threads} threads", flush=True
        )
        ideal = ideal_controller(kube, n, args.threads)
        print(f"operator: {n} Datasets + {n} TrainingJobs, {args.threads} workers", flush=True)
        op = operator_phase(kube, info_kubeconfig, n, args.threads, args.timeout, args.rate)
        report(n, nodes, ideal, op)
    finally:
        for name in (NS, IDEAL_NS):
            with contextlib.suppress(ApiError):
                kube.request("DELETE", f"/api/v1/namespaces/{name}")
        dev_cluster.kubectl(
            "delete",
            "nodes",
            "-l",
            "neuraxis.dev/pool=bench",
            "--wait=false",
            kubeconfig=info_kubeconfig,
            timeout=300,
        )


if __name__ == "__main__":
    main()
