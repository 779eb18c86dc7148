"""Scoped lake keys on real pods. The operator runs with `NEURAXIS_LAKE_CREDENTIALS=scoped` and
the MinIO root keys as its own; the namespace holds no shared `neuraxis-lake` Secret at all (a
pod that still referred to it, optionally, would run without lake keys and fail). Two ETL runs
(the second reads the first's table) and a training run do their jobs on the real kubelet node
with the keys the operator minted for each, and a pod holding one run's keys is refused by
MinIO itself (403) everywhere outside that run's grant: another namespace's table (read,
write, list).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from neuraxis.workloads.artifact import MANIFEST
from tests.cluster.conftest import Cluster, NodeLake
from tests.cluster.operator_fixtures import (
    example,
    get,
    phase,
    run_client_pod,
    running_operator,
    wait_for,
)

OTHER_NAMESPACE = "other-team"
OTHER_TABLE = f"tables/{OTHER_NAMESPACE}/payroll"
OTHER_OBJECT = f"{OTHER_TABLE}/_delta_log/00000000000000000000.json"

# What a pod holding a run's keys gets from MinIO, by HTTP status. boto3 reads the keys (and
# the session token) from the environment the Secret gives the pod.
PROBE = """
import json, os, boto3
from botocore.exceptions import ClientError
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                  region_name=os.environ.get("AWS_REGION", "us-east-1"))
def status(call):
    try:
        call()
        return 200
    except ClientError as exc:
        return exc.response["ResponseMetadata"]["HTTPStatusCode"]
print(json.dumps({
    "own_input_read": status(lambda: s3.get_object(Bucket=BUCKET, Key=OWN)),
    "other_read": status(lambda: s3.get_object(Bucket=BUCKET, Key=OTHER)),
    "other_write": status(lambda: s3.put_object(Bucket=BUCKET, Key=OTHER, Body=b"{}")),
    "other_list": status(lambda: s3.list_objects_v2(Bucket=BUCKET, Prefix=OTHER_PREFIX)),
}))
"""


def _probe_script(lake_uri: str, own: str, other: str, other_prefix: str) -> str:
    parsed = urlparse(lake_uri)
    prefix = parsed.path.strip("/")

    def key(rel: str) -> str:
        return f"{prefix}/{rel}" if prefix else rel

    values = (
        f"BUCKET = {parsed.netloc!r}\nOWN = {key(own)!r}\nOTHER = {key(other)!r}\n"
        f"OTHER_PREFIX = {key(other_prefix) + '/'!r}\n"
    )
    return values + PROBE


def _resources() -> list[dict[str, Any]]:
    readings = example("01-sensor-readings.yaml")
    features = example("02-sensor-features.yaml")
    train = example("03-anomaly-detector-train.yaml")
    del train["spec"]["tuning"], train["spec"]["register"]
    train["spec"]["resources"] = {"workers": 1, "cpu": "500m", "memory": "1536Mi"}
    train["spec"]["model"]["epochs"] = 2
    return [readings, features, train]


def _lake_secrets_of_pods(cluster: Cluster, ns: str) -> dict[str, set[str]]:
    """Secret names each workload component's pods take their environment from."""
    found: dict[str, set[str]] = {}
    for pod in cluster.kubectl_json("get", "pods", "--namespace", ns)["items"]:
        component = pod["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")
        for container in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            for source in container.get("envFrom") or []:
                if "secretRef" in source:
                    found.setdefault(component, set()).add(source["secretRef"]["name"])
    return found


def test_runs_work_with_their_minted_keys_and_minio_refuses_the_rest(
    cluster: Cluster,
    namespace: str,
    real_node: str,
    workload_image: str,
    node_lake: NodeLake,
    tmp_path: Path,
) -> None:
    ns, server, root = namespace, node_lake.server, node_lake.client()
    root.write_bytes(OTHER_OBJECT, b'{"protocol": {}}')
    salt = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "lake-salt"},
        "stringData": {"salt": "scoped-test-salt"},
    }
    cluster.apply(salt, ns)
    env = {
        **server.env(),  # the operator's own keys: MinIO's root user
        "NEURAXIS_IMAGE": workload_image,
        "NEURAXIS_LAKE_URI": server.lake_uri,
        "NEURAXIS_LAKE_CREDENTIALS": "scoped",
    }
    with running_operator(cluster, ns, tmp_path, env=env) as op:
        for doc in _resources():
            cluster.apply(doc, ns)
        wait_for(
            lambda: (
                phase(cluster, "trainingjobs", "anomaly-detector-train", ns)
                in ("Succeeded", "Failed")
            ),
            "TrainingJob finished",
            timeout=900,
            op=op,
        )
        for name in ("sensor-readings", "sensor-features"):
            ds = get(cluster, "datasets", name, ns)
            assert ds is not None and ds["status"]["phase"] == "Ready", ds and ds["status"]
        tj = get(cluster, "trainingjobs", "anomaly-detector-train", ns)
        assert tj is not None
        assert tj["status"]["phase"] == "Succeeded", json.dumps(tj["status"], indent=1)
        artifact = tj["status"]["artifact"]["uri"].removeprefix(server.lake_uri + "/")
        assert root.exists(f"{artifact}/{MANIFEST}")

        secrets = _lake_secrets_of_pods(cluster, ns)
        etl, train = secrets.get("etl", set()), secrets.get("train", set())
        assert etl and all(s.startswith("neuraxis-lake-etl-") for s in etl), secrets
        assert train and all(s.startswith("neuraxis-lake-train-") for s in train), secrets
        assert not any("neuraxis-lake" in names for names in secrets.values()), secrets

        readings = get(cluster, "datasets", "sensor-readings", ns)["status"]  # type: ignore[index]
        readings_table = readings["table"]["uri"].removeprefix(server.lake_uri + "/")
        [features_secret] = [s for s in etl if "sensor-features" in s]
        script = _probe_script(
            server.lake_uri,
            own=f"{readings_table}/_delta_log/00000000000000000000.json",
            other=OTHER_OBJECT,
            other_prefix=OTHER_TABLE,
        )
        out = run_client_pod(
            cluster, ns, workload_image, "scope-probe", script, env_secret=features_secret
        )
    statuses = json.loads(out.strip().splitlines()[-1])
    assert statuses == {
        "own_input_read": 200,
        "other_read": 403,
        "other_write": 403,
        "other_list": 403,
    }, statuses
    assert root.read_bytes(OTHER_OBJECT) == b'{"protocol": {}}'
