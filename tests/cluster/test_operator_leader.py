"""Two replicas of the operator: exactly one (the holder of the Lease) reconciles; after a
SIGKILL of that one, the other takes over within the lease time and carries on."""

from __future__ import annotations

import time
from pathlib import Path

from neuraxis.operator.kube import Kube
from neuraxis.operator.leader import LeaderElector, LeaseConfig
from tests.cluster.conftest import Cluster
from tests.cluster.operator_fixtures import example, phase, wait_for, with_result
from tests.cluster.replicas import LEASE_SECONDS, Lease, metrics, reconciles, replicas

ETL_OK = {"outcome": "Succeeded", "reason": "Succeeded", "version": 0, "rows": 10}


def dataset(name: str) -> dict[str, object]:
    doc = with_result(example("01-sensor-readings.yaml"), ETL_OK)
    doc["metadata"]["name"] = name
    return doc


def ready(cluster: Cluster, ns: str, prefix: str) -> bool:
    return all(phase(cluster, "datasets", f"{prefix}-{i}", ns) == "Ready" for i in range(3))


def test_one_replica_reconciles_and_the_other_takes_over_after_a_sigkill(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    first, second = replicas(cluster, ns, tmp_path)
    lease = Lease(cluster, ns)
    try:
        first.start()
        second.start()
        by_name = {first.name: first, second.name: second}
        leader = by_name[lease.wait_holder(set(by_name))]
        follower = second if leader is first else first
        for i in range(3):
            cluster.apply(dataset(f"before-{i}"), ns)
        wait_for(lambda: ready(cluster, ns, "before"), "Ready under the first leader", op=leader)
        wait_for(lambda: metrics(follower), "the follower's metrics", op=follower)
        assert reconciles(leader) > 0
        assert reconciles(follower) == 0, "a follower reconciled"
        assert metrics(leader)["neuraxis_leader"] == 1 and metrics(follower)["neuraxis_leader"] == 0
        assert metrics(follower)["neuraxis_caches_synced"] == 1  # warm, ready to take over

        killed_at = time.monotonic()
        leader.kill()
        assert lease.wait_holder({follower.name}, timeout=4 * LEASE_SECONDS) == follower.name
        failover = time.monotonic() - killed_at
        print(f"leader failover after SIGKILL: {failover:.2f}s (lease {LEASE_SECONDS:g}s)")
        assert failover <= LEASE_SECONDS + 6  # the lease time, plus slack for a loaded machine
        for i in range(3):
            cluster.apply(dataset(f"after-{i}"), ns)
        wait_for(lambda: ready(cluster, ns, "after"), "Ready under the new leader", op=follower)
        assert reconciles(follower) > 0
        # The killed replica, back, stands by: the lease stays with the new leader.
        leader.start()
        wait_for(lambda: metrics(leader), "the restarted replica's metrics", op=leader)
        time.sleep(2 * LEASE_SECONDS)
        assert lease.holder() == follower.name
        assert metrics(leader).get("neuraxis_leader") == 0 and reconciles(leader) == 0
    finally:
        first.stop()
        second.stop()
        lease.close()


def test_the_lease_changes_hands_only_after_it_went_unrenewed(
    cluster: Cluster, namespace: str
) -> None:
    """Two electors on the real API server: B waits while A renews, takes over once A's
    renewals stop for the lease time (by B's own clock), and A then learns it lost."""
    client = cluster.api_client()
    try:
        kube = Kube(client)

        def elector(name: str) -> LeaderElector:
            config = LeaseConfig(
                namespace, "test-lease", name, lease_s=2.0, renew_s=0.5, retry_s=0.2
            )
            return LeaderElector(kube, config)

        a, b = elector("a"), elector("b")
        assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
        a.leading = True
        started = time.monotonic()
        while time.monotonic() - started < 3:  # A renews: B never gets it
            assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
            time.sleep(0.3)
        stopped = time.monotonic()  # A stops renewing
        while not b.try_acquire_or_renew():
            time.sleep(0.1)
        waited = time.monotonic() - stopped
        assert 1.5 <= waited <= 3.5, waited
        assert not a.try_acquire_or_renew() and a.taken_over
        lease = kube.request(
            "GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/test-lease"
        )
        assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
    finally:
        client.close()
