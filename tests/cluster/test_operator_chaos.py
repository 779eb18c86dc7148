"""Chaos: two operator replicas reconcile 200 resources (100 Datasets, 100 TrainingJobs, each
waiting for its Dataset) while the leader is SIGKILLed 10 times at random moments and
kube-apiserver is stopped and started once in the middle. Afterwards every resource converges
with 0 duplicate Jobs per run id, 0 orphans and 0 lost or regressed status; the leader
failover times are printed. A replica that exits (a leader that cannot renew its lease while
the API server is away) is started again, as a kubelet would.

`NEURAXIS_CHAOS_RESOURCES=500` makes it 500 + 500 (bench/operator_scale.py --chaos runs it
at 1k); the default is sized for about 3 minutes in `make test`."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch

from tests.cluster.apiserver import ControlPlane
from tests.cluster.conftest import Cluster
from tests.cluster.operator_fixtures import OperatorProcess, wait_for, with_result
from tests.cluster.replicas import LEASE_SECONDS, Lease, replicas

PER_KIND = int(os.environ.get("NEURAXIS_CHAOS_RESOURCES", "100"))
KILLS = 10
SEED = int(os.environ.get("NEURAXIS_CHAOS_SEED", "13"))
ORDER = {
    "Dataset": ("Pending", "Running", "Ready"),
    "TrainingJob": ("Pending", "Running", "Succeeded"),
}
ETL_OK = {"outcome": "Succeeded", "reason": "Succeeded", "version": 0, "rows": 10}
TRAIN_OK = {"outcome": "Succeeded", "reason": "Succeeded", "metrics": {"val_loss": 0.1}}


def resources() -> list[dict[str, Any]]:
    docs = []
    for i in range(PER_KIND):
        docs.append(with_result({
            "apiVersion": "neuraxis.dev/v1alpha1", "kind": "Dataset",
            "metadata": {"name": f"ds-{i:04d}"},
            "spec": {"source": {"builtin": {"name": "sensors", "rows": 10}}},
        }, ETL_OK))  # fmt: skip
        docs.append(with_result({
            "apiVersion": "neuraxis.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": f"tj-{i:04d}"},
            "spec": {
                "datasetRef": {"name": f"ds-{i:04d}"},
                "task": {"type": "classification", "label": "failure"},
                "model": {"architecture": "mlp", "epochs": 1},
            },
        }, TRAIN_OK))  # fmt: skip
    return docs


class StatusHistory:
    """Every status of the namespace's Datasets and TrainingJobs as the API server sends them
    (watches resume after the API server's outage, listing again when they must)."""

    def __init__(self, cluster: Cluster, ns: str):
        self.api_client = cluster.api_client()
        self.api = k8s.CustomObjectsApi(self.api_client)
        self.ns = ns
        self.seen: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._follow, args=(kind, plural), daemon=True)
            for kind, plural in (("Dataset", "datasets"), ("TrainingJob", "trainingjobs"))
        ]

    def _record(self, kind: str, obj: dict[str, Any]) -> None:
        status = obj.get("status") or {}
        with self.lock:
            history = self.seen.setdefault((kind, obj["metadata"]["name"]), [])
            if not history or history[-1] != status:
                history.append(status)

    def _follow(self, kind: str, plural: str) -> None:
        version = None
        while not self.stop.is_set():
            try:
                if version is None:
                    listed: Any = self.api.list_namespaced_custom_object(
                        "neuraxis.dev", "v1alpha1", self.ns, plural
                    )
                    for item in listed["items"]:
                        self._record(kind, item)
                    version = listed["metadata"]["resourceVersion"]
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    self.api.list_namespaced_custom_object, "neuraxis.dev", "v1alpha1",
                    self.ns, plural, resource_version=version, timeout_seconds=2,
                )  # fmt: skip
                for event in stream:
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        version = None
                        break
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "DELETED":
                        self._record(kind, obj)
            except Exception:  # the API server is away, or the version too old
                version = None
                self.stop.wait(0.5)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)
        self.api_client.close()

    def problems(self) -> list[str]:
        """Regressions (a phase going back, a status field lost) and failures."""
        out = []
        with self.lock:
            for (kind, name), history in sorted(self.seen.items()):
                order = ORDER[kind]
                rank = -1
                fields: set[str] = set()
                for status in history:
                    phase = status.get("phase")
                    if not fields <= set(status):  # a field once written never goes away
                        lost = sorted(fields - set(status))
                        out.append(f"{kind}/{name}: status lost {lost}: {status}")
                    fields |= set(status)
                    if phase is None:
                        continue
                    if phase not in order:
                        out.append(f"{kind}/{name}: phase {phase}: {status.get('message')}")
                        continue
                    if order.index(phase) < rank:
                        phases = [s.get("phase") for s in history]
                        out.append(f"{kind}/{name}: regressed to {phase}: {phases}")
                    rank = max(rank, order.index(phase))
        return out


def supervise(ops: list[OperatorProcess], control: ControlPlane) -> None:
    """Start again any replica or control-plane component that exited (what a kubelet or
    systemd does): a leader that could not renew its lease while the API server was away
    exits, and so do the controller manager and the scheduler."""
    control.revive()
    for op in ops:
        if op.proc is not None and op.proc.poll() is not None:
            op.start()


def wait_takeover(lease: Lease, standbys: list[OperatorProcess], timeout: float) -> list[str]:
    """Wait until one of `standbys` holds the Lease. A standby that exited meanwhile is
    started again, as a kubelet would, and reported (with its exit code and last log lines)
    so that the failure shows in the test output instead of as a lease nobody takes."""
    exited: list[str] = []
    names = {op.name for op in standbys}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lease.holder() in names:
            return exited
        for op in standbys:
            if op.proc is not None and op.proc.poll() is not None:
                exited.append(f"{op.name} exit {op.proc.returncode}")
                print(f"\nstandby {op.name} had exited ({op.proc.returncode}):\n{op.log_tail()}")
                op.start()
        time.sleep(0.02)
    tails = "\n".join(f"--- {op.name} alive={op.proc is not None and op.proc.poll() is None}\n"
                      f"{op.log_tail()}" for op in standbys)  # fmt: skip
    raise AssertionError(f"no replica of {sorted(names)} took the lease in {timeout:.0f}s\n{tails}")


def test_leader_kills_and_an_api_server_restart_leave_nothing_wrong(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    rng = random.Random(SEED)
    ops = replicas(cluster, ns, tmp_path, NEURAXIS_DEGRADED_RETRY_SECONDS="3")
    by_name = {op.name: op for op in ops}
    lease = Lease(cluster, ns)
    history = StatusHistory(cluster, ns)
    control = ControlPlane(cluster)
    failovers: list[float] = []
    restarts: list[str] = []
    outage = 0.0
    started = time.monotonic()
    converged_after = float("nan")
    try:
        history.start()
        for op in ops:
            op.start()
        lease.wait_holder(set(by_name), timeout=60)
        docs = resources()
        wave = len(docs) // KILLS
        for kill in range(KILLS):
            # A wave of resources, then a kill while they reconcile.
            items = docs[kill * wave : (kill + 1) * wave]
            batch = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
            cluster.kubectl("apply", "--namespace", ns, "--filename=-", input_text=batch)
            time.sleep(rng.uniform(0.5, 4.0))
            if kill == KILLS // 2:
                stopped, outage = control.restart_apiserver(down_for=rng.uniform(2.0, 6.0))
                print(f"\nkube-apiserver stopped in {stopped:.1f}s, ready {outage:.1f}s later")
                supervise(ops, control)
            holder = lease.wait_holder(set(by_name), timeout=90)
            by_name[holder].kill()
            killed = time.monotonic()
            standbys = [op for op in ops if op.name != holder]
            exited = wait_takeover(lease, standbys, timeout=90)
            if exited:  # a restarted standby's takeover is not a failover time
                restarts.extend(exited)
            else:
                failovers.append(time.monotonic() - killed)
            supervise(ops, control)
        chaos_done = time.monotonic()

        def converged() -> bool:
            supervise(ops, control)
            return _phases(cluster, ns) == {"Ready": PER_KIND, "Succeeded": PER_KIND}

        leader = by_name.get(lease.holder(), ops[0])
        wait_for(converged, f"all {2 * PER_KIND} resources converged", timeout=600, op=leader)
        converged_after = time.monotonic() - chaos_done
    finally:
        for op in ops:
            op.stop()
        lease.close()
        history.close()
        control.revive()  # the cluster stays whole for the tests that follow

    print(
        f"\nchaos: {2 * PER_KIND} resources, {KILLS} leader SIGKILLs, kube-apiserver down "
        f"{outage:.1f}s; converged {converged_after:.1f}s after the last kill "
        f"({time.monotonic() - started:.0f}s in all)\n"
        f"leader failover after SIGKILL (s): {', '.join(f'{f:.2f}' for f in failovers)}; "
        f"max {max(failovers, default=0.0):.2f}, lease {LEASE_SECONDS:g}s; "
        f"standbys that had exited and were started again: {restarts or 'none'}"
    )
    assert history.problems() == []
    _assert_one_job_per_run_and_no_orphans(cluster, ns)
    assert max(failovers, default=0.0) <= LEASE_SECONDS + 6, failovers  # takeover, not a timeout


def _phases(cluster: Cluster, ns: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for plural in ("datasets", "trainingjobs"):
        for item in cluster.kubectl_json("get", plural, "--namespace", ns)["items"]:
            phase = str((item.get("status") or {}).get("phase"))
            counts[phase] = counts.get(phase, 0) + 1
    return counts


def _assert_one_job_per_run_and_no_orphans(cluster: Cluster, ns: str) -> None:
    owners = {}
    for kind, plural in (("Dataset", "datasets"), ("TrainingJob", "trainingjobs")):
        for item in cluster.kubectl_json("get", plural, "--namespace", ns)["items"]:
            owners[(kind, item["metadata"]["name"])] = item
    jobs: dict[tuple[str, str], list[str]] = {}
    for kind_plural in ("jobs", "pods", "services", "configmaps"):
        items = cluster.kubectl_json(
            "get", kind_plural, "--namespace", ns, "-l", "app.kubernetes.io/managed-by=neuraxis"
        )["items"]
        for item in items:
            meta = item["metadata"]
            labels = meta.get("labels") or {}
            owner_kind = "Dataset" if "neuraxis.dev/dataset" in labels else "TrainingJob"
            owner = owners.get((owner_kind, labels.get(f"neuraxis.dev/{owner_kind.lower()}", "")))
            assert owner is not None, f"orphan {kind_plural}/{meta['name']}"
            if kind_plural != "pods":
                [ref] = meta["ownerReferences"]
                assert ref["uid"] == owner["metadata"]["uid"], f"{meta['name']}: owner uid"
            if kind_plural == "jobs":
                jobs.setdefault((owner_kind, owner["metadata"]["name"]), []).append(meta["name"])
    assert set(jobs) == set(owners), set(owners) ^ set(jobs)
    for key, names in jobs.items():
        runs = owners[key]["status"]["runs"]
        assert names == [runs[0]["id"]] and len(runs) == 1, (key, names, runs)
        assert runs[0]["phase"] == "Succeeded", (key, runs)
