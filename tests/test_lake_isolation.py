"""Tenant isolation proven by the real MinIO (the project's dev lake, `neuraxis.dev.lake`):
two namespaces, every role's credentials minted by STS AssumeRole with the session policy of
`neuraxis.lake_access`. Each role does its job through the same code the workloads use
(`neuraxis.lake.Lake`, delta-rs, lineage), and MinIO itself answers 403 AccessDenied to every
cross-namespace read or write (tables, models, bundles, runs, logs) and to anything beyond the
role inside its own namespace."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from botocore.exceptions import ClientError
from deltalake import DeltaTable, write_deltalake

from neuraxis import lake_access
from neuraxis.dev import lake as dev_lake
from neuraxis.dev.lake import LakeServer
from neuraxis.dev.toolchain import ToolchainError
from neuraxis.lake import Lake, S3Settings
from neuraxis.lake_access import LakeGrant
from neuraxis.lineage import emit_run_event, read_events

pytestmark = pytest.mark.engine

A, B = "team-a", "team-b"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def minio_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("minio-home")


@pytest.fixture(scope="module")
def minio(minio_home: Path) -> Iterator[LakeServer]:
    home = minio_home
    try:
        server = dev_lake.start(home, port=_free_port(), bucket="iso-" + secrets.token_hex(3))
    except (dev_lake.LakeServerError, ToolchainError) as exc:
        pytest.fail(f"MinIO did not start: {exc}")
    try:
        yield server
    finally:
        dev_lake.stop(home)


def root_settings(server: LakeServer) -> S3Settings:
    return S3Settings(server.endpoint, server.access_key, server.secret_key, dev_lake.REGION)


@pytest.fixture(scope="module")
def seeded(minio: LakeServer) -> Lake:
    """Both namespaces' objects, written with the root keys (the operator's)."""
    lake = Lake(minio.lake_uri, s3=root_settings(minio))
    for ns in (A, B):
        write_deltalake(
            lake.uri(Lake.table_path(ns, "raw")),
            pa.table({"machine": [f"{ns}-1", f"{ns}-2"], "temp": [20.5, 21.0]}),
            storage_options=lake.storage_options(),
        )
        lake.write_bytes(f"{Lake.model_path(ns, 'm', '1')}/model.ts", b"weights " + ns.encode())
        lake.write_bytes(f"{Lake.edge_path(ns, 'm', '1')}/bundle.tar", b"bundle " + ns.encode())
        lake.write_json(f"{Lake.run_path(ns, 'r1')}/result.json", {"ns": ns})
        lake.write_bytes(f"{Lake.inference_logs_path(ns, 'd')}/n1/seg-1.jsonl", b"{}\n")
    return lake


def scoped_lake(minio: LakeServer, grant: LakeGrant) -> Lake:
    creds = lake_access.mint(minio.lake_uri, grant, root_settings(minio), duration_s=900)
    env = lake_access.credentials_env(creds, root_settings(minio))
    settings = S3Settings(
        env["AWS_ENDPOINT_URL"],
        env["AWS_ACCESS_KEY_ID"],
        env["AWS_SECRET_ACCESS_KEY"],
        env["AWS_REGION"],
        env["AWS_SESSION_TOKEN"],
    )
    return Lake(minio.lake_uri, s3=settings)


def grants(ns: str) -> dict[str, LakeGrant]:
    return {
        "etl": lake_access.etl_grant(
            ns, "features", [Lake.table_path(ns, "raw")], run=Lake.run_path(ns, "etl-1")
        ),
        "train": lake_access.train_grant(ns, Lake.table_path(ns, "raw"), "r2"),
        "custom-trainer": lake_access.custom_trainer_grant(ns, "r3"),
        "evaluate": lake_access.evaluate_grant(
            ns, Lake.model_path(ns, "m", "1"), Lake.table_path(ns, "raw"), Lake.run_path(ns, "e1")
        ),
        "bundle": lake_access.bundle_grant(
            ns,
            Lake.model_path(ns, "m", "1"),
            Lake.table_path(ns, "raw"),
            Lake.bundle_path(ns, "m", "1", "b1"),
            Lake.run_path(ns, "b1"),
        ),
        "serve": lake_access.serve_grant(ns, Lake.model_path(ns, "m", "1"), "d"),
        "edge": lake_access.edge_grant(ns, Lake.edge_path(ns, "m", "1"), "d"),
    }


def assert_refused(action: Callable[[], Any], what: str) -> None:
    """MinIO's own answer: HTTP 403 with the S3 error code AccessDenied."""
    with pytest.raises(ClientError) as caught:
        action()
    error = caught.value.response
    status = error["ResponseMetadata"]["HTTPStatusCode"]
    assert (status, error["Error"]["Code"]) == (403, "AccessDenied"), what


def other_namespace_attempts(lake: Lake, ns: str) -> dict[str, Callable[[], Any]]:
    """Every kind of object of namespace `ns`, read, written and listed."""
    s3, bucket = lake._s3(), lake_access.bucket_and_root(lake.root)[0]

    def key(rel: str) -> str:
        return lake._bucket_key(rel)[1]

    objects = {
        "table": f"{Lake.table_path(ns, 'raw')}/_delta_log/00000000000000000000.json",
        "model": f"{Lake.model_path(ns, 'm', '1')}/model.ts",
        "bundle": f"{Lake.edge_path(ns, 'm', '1')}/bundle.tar",
        "run": f"{Lake.run_path(ns, 'r1')}/result.json",
        "logs": f"{Lake.inference_logs_path(ns, 'd')}/n1/seg-1.jsonl",
    }
    attempts: dict[str, Callable[[], Any]] = {}
    for kind, rel in objects.items():
        attempts[f"read {kind}"] = partial(s3.get_object, Bucket=bucket, Key=key(rel))
        attempts[f"write {kind}"] = partial(
            s3.put_object, Bucket=bucket, Key=key(rel), Body=b"overwritten"
        )
        folder = key(rel.rsplit("/", 1)[0]) + "/"
        attempts[f"list {kind}"] = partial(s3.list_objects_v2, Bucket=bucket, Prefix=folder)
    attempts["write lineage"] = lambda: s3.put_object(
        Bucket=bucket, Key=key(f"{Lake.LINEAGE_PREFIX}/{ns}/events.jsonl.d/x.json"), Body=b"{}"
    )
    return attempts


@pytest.mark.parametrize("role", lake_access.ROLES)
def test_no_role_reaches_the_other_namespace(minio: LakeServer, seeded: Lake, role: str) -> None:
    lake = scoped_lake(minio, grants(A)[role])
    for what, attempt in other_namespace_attempts(lake, B).items():
        assert_refused(attempt, f"{role} of {A}: {what} in {B}")
    # B's objects are untouched.
    assert seeded.read_bytes(f"{Lake.model_path(B, 'm', '1')}/model.ts") == b"weights team-b"


def test_etl_reads_its_input_and_writes_its_table(minio: LakeServer, seeded: Lake) -> None:
    lake = scoped_lake(minio, grants(A)["etl"])
    opts = lake.storage_options()
    raw = DeltaTable(lake.uri(Lake.table_path(A, "raw")), storage_options=opts)
    rows = raw.to_pyarrow_table()
    assert rows.column("machine").to_pylist() == ["team-a-1", "team-a-2"]
    write_deltalake(lake.uri(Lake.table_path(A, "features")), rows, storage_options=opts)
    write_deltalake(lake.uri(Lake.table_path(A, "features")), rows, storage_options=opts,
                    mode="overwrite")  # fmt: skip
    assert DeltaTable(lake.uri(Lake.table_path(A, "features")), storage_options=opts).version() == 1
    emit_run_event(lake, "COMPLETE", f"{A}.features", "etl-1", [], [], namespace=A)
    assert [e["eventType"] for e in read_events(seeded, namespace=A)] == ["COMPLETE"]
    # Within its namespace: not the input (read only), not a model, not another table.
    with pytest.raises(OSError, match=r"403|AccessDenied|Forbidden"):
        DeltaTable(lake.uri(Lake.table_path(B, "raw")), storage_options=opts)
    s3, bucket = lake._s3(), minio.bucket
    raw_key = lake._bucket_key(f"{Lake.table_path(A, 'raw')}/x.parquet")[1]
    assert_refused(lambda: s3.put_object(Bucket=bucket, Key=raw_key, Body=b"x"), "etl writes input")
    model_key = lake._bucket_key(f"{Lake.model_path(A, 'm', '1')}/model.ts")[1]
    assert_refused(lambda: s3.get_object(Bucket=bucket, Key=model_key), "etl reads a model")


def test_training_reads_its_dataset_and_writes_its_run(minio: LakeServer, seeded: Lake) -> None:
    lake = scoped_lake(minio, grants(A)["train"])
    opts = lake.storage_options()
    assert DeltaTable(lake.uri(Lake.table_path(A, "raw")), storage_options=opts).version() == 0
    lake.write_json(f"{Lake.run_path(A, 'r2')}/result.json", {"loss": 0.1})
    assert lake.read_json(f"{Lake.run_path(A, 'r2')}/result.json") == {"loss": 0.1}
    assert list(lake.list_files(Lake.run_path(A, "r2"))) == [
        f"{Lake.run_path(A, 'r2')}/result.json"
    ]
    s3, bucket = lake._s3(), minio.bucket
    for rel, what in (
        (f"{Lake.run_path(A, 'r1')}/result.json", "another run of its namespace"),
        (f"{Lake.model_path(A, 'm', '1')}/model.ts", "a model"),
        (f"{Lake.table_path(A, 'raw')}/x.parquet", "its Dataset's table"),
    ):
        key = lake._bucket_key(rel)[1]
        assert_refused(partial(s3.put_object, Bucket=bucket, Key=key, Body=b"x"), what)


def test_custom_trainer_reaches_only_its_run_folder(minio: LakeServer, seeded: Lake) -> None:
    lake = scoped_lake(minio, grants(A)["custom-trainer"])
    lake.write_bytes(f"{Lake.run_path(A, 'r3')}/checkpoint.pt", b"ckpt")
    assert lake.read_bytes(f"{Lake.run_path(A, 'r3')}/checkpoint.pt") == b"ckpt"
    s3, bucket = lake._s3(), minio.bucket
    table_key = lake._bucket_key(
        f"{Lake.table_path(A, 'raw')}/_delta_log/00000000000000000000.json"
    )
    assert_refused(lambda: s3.get_object(Bucket=bucket, Key=table_key[1]), "its namespace's table")
    prefix = lake._bucket_key(Lake.table_path(A, "raw"))[1] + "/"
    assert_refused(lambda: s3.list_objects_v2(Bucket=bucket, Prefix=prefix), "lists a table")
    assert_refused(lambda: s3.list_objects_v2(Bucket=bucket), "lists the bucket")


def test_serving_reads_its_model_and_cannot_write_it(minio: LakeServer, seeded: Lake) -> None:
    lake = scoped_lake(minio, grants(A)["serve"])
    assert lake.read_bytes(f"{Lake.model_path(A, 'm', '1')}/model.ts") == b"weights team-a"
    lake.write_bytes(f"{Lake.inference_logs_path(A, 'd')}/pod-1/seg-2.jsonl", b"{}\n")
    s3, bucket = lake._s3(), minio.bucket
    model_key = lake._bucket_key(f"{Lake.model_path(A, 'm', '1')}/model.ts")[1]
    assert_refused(lambda: s3.put_object(Bucket=bucket, Key=model_key, Body=b"x"), "writes model")
    assert_refused(lambda: s3.delete_object(Bucket=bucket, Key=model_key), "deletes its model")
    log_key = lake._bucket_key(f"{Lake.inference_logs_path(A, 'd')}/n1/seg-1.jsonl")[1]
    assert_refused(lambda: s3.get_object(Bucket=bucket, Key=log_key), "reads logs (append only)")
    assert_refused(lambda: s3.delete_object(Bucket=bucket, Key=log_key), "deletes logs")
    bundle_key = lake._bucket_key(f"{Lake.edge_path(A, 'm', '1')}/bundle.tar")[1]
    assert_refused(lambda: s3.get_object(Bucket=bucket, Key=bundle_key), "reads a bundle")
    assert seeded.read_bytes(f"{Lake.model_path(A, 'm', '1')}/model.ts") == b"weights team-a"


def test_edge_agent_reads_its_bundle_and_appends_its_logs(minio: LakeServer, seeded: Lake) -> None:
    lake = scoped_lake(minio, grants(A)["edge"])
    assert lake.read_bytes(f"{Lake.edge_path(A, 'm', '1')}/bundle.tar") == b"bundle team-a"
    lake.write_bytes(f"{Lake.inference_logs_path(A, 'd')}/site-n/seg-9.jsonl", b"{}\n")
    lake.write_bytes(f"{Lake.edge_health_path(A, 'd')}/site-n/h-1.jsonl", b"{}\n")
    s3, bucket = lake._s3(), minio.bucket
    for rel, what in (
        (f"{Lake.model_path(A, 'm', '1')}/model.ts", "reads the model (not its bundle)"),
        (f"{Lake.table_path(A, 'raw')}/_delta_log/00000000000000000000.json", "reads a table"),
        (f"{Lake.inference_logs_path(A, 'd')}/n1/seg-1.jsonl", "reads another node's logs"),
    ):
        key = lake._bucket_key(rel)[1]
        assert_refused(partial(s3.get_object, Bucket=bucket, Key=key), what)
    other = lake._bucket_key(f"{Lake.inference_logs_path(A, 'other')}/n/s.jsonl")[1]
    assert_refused(lambda: s3.put_object(Bucket=bucket, Key=other, Body=b"x"), "other deployment")
    bundle_key = lake._bucket_key(f"{Lake.edge_path(A, 'm', '1')}/bundle.tar")[1]
    assert_refused(lambda: s3.put_object(Bucket=bucket, Key=bundle_key, Body=b"x"), "its bundle")


def test_evaluation_reads_its_model_and_table_and_writes_only_the_card(
    minio: LakeServer, seeded: Lake
) -> None:
    lake = scoped_lake(minio, grants(A)["evaluate"])
    model = Lake.model_path(A, "m", "1")
    assert lake.read_bytes(f"{model}/model.ts") == b"weights team-a"
    table = DeltaTable(lake.uri(Lake.table_path(A, "raw")), storage_options=lake.storage_options())
    assert table.to_pyarrow_table().num_rows == 2
    lake.write_bytes(f"{model}/card/card.json", b"{}")
    lake.write_json(f"{model}/manifest.json", {"card": {}})
    lake.write_json(f"{Lake.run_path(A, 'e1')}/result.json", {"passed": True})
    s3, bucket = lake._s3(), minio.bucket
    for rel, what in (
        (f"{model}/model.ts", "the model's weights"),
        (f"{Lake.table_path(A, 'raw')}/x.parquet", "its held-out table"),
        (f"{Lake.run_path(A, 'r1')}/result.json", "another run"),
        (f"{Lake.model_path(A, 'm', '2')}/card/card.json", "another version's card"),
    ):
        key = lake._bucket_key(rel)[1]
        assert_refused(partial(s3.put_object, Bucket=bucket, Key=key, Body=b"x"), what)
    bundle_key = lake._bucket_key(f"{Lake.edge_path(A, 'm', '1')}/bundle.tar")[1]
    assert_refused(lambda: s3.get_object(Bucket=bucket, Key=bundle_key), "reads a bundle")
    assert seeded.read_bytes(f"{model}/model.ts") == b"weights team-a"


def test_bundle_writes_its_own_bundle_folder_and_no_other(minio: LakeServer, seeded: Lake) -> None:
    lake = scoped_lake(minio, grants(A)["bundle"])
    assert lake.read_bytes(f"{Lake.model_path(A, 'm', '1')}/model.ts") == b"weights team-a"
    lake.write_bytes(f"{Lake.bundle_path(A, 'm', '1', 'b1')}/model.ts", b"int8")
    lake.write_json(f"{Lake.run_path(A, 'b1')}/result.json", {"outcome": "Succeeded"})
    s3, bucket = lake._s3(), minio.bucket
    for rel, what in (
        (f"{Lake.edge_path(A, 'm', '1')}/bundle.tar", "the bundle agents already run"),
        (f"{Lake.bundle_path(A, 'm', '1', 'b2')}/model.ts", "another build's folder"),
        (f"{Lake.model_path(A, 'm', '1')}/model.ts", "the model's weights"),
    ):
        key = lake._bucket_key(rel)[1]
        assert_refused(partial(s3.put_object, Bucket=bucket, Key=key, Body=b"x"), what)
    assert seeded.read_bytes(f"{Lake.edge_path(A, 'm', '1')}/bundle.tar") == b"bundle team-a"


def test_a_card_of_another_namespaces_artifact_is_never_granted() -> None:
    """A granted cross-namespace source is read; writing its card stays its owner's."""
    grant = lake_access.evaluate_grant(
        A, Lake.model_path(B, "m", "1"), Lake.table_path(A, "raw"), Lake.run_path(A, "e2")
    )
    assert grant.write == (Lake.run_path(A, "e2"),) and grant.write_files == ()
    assert Lake.model_path(B, "m", "1") in grant.read


def test_the_grant_itself_refuses_writes_outside_the_namespace(tmp_path: Path) -> None:
    with pytest.raises(lake_access.LakeScopeError, match="cannot write 'tables/team-b/t'"):
        LakeGrant("etl", A, write=(Lake.table_path(B, "t"),))


def test_every_request_is_audited_with_who_made_it(
    minio: LakeServer, minio_home: Path, seeded: Lake
) -> None:
    """The dev lake's audit log (MinIO's audit webhook) names the refused request, its 403 and
    the scoped key that made it, and the allowed ones."""
    lake = scoped_lake(minio, grants(A)["serve"])
    allowed = f"{Lake.model_path(A, 'm', '1')}/model.ts"
    refused = f"{Lake.model_path(B, 'm', '1')}/model.ts"
    lake.read_bytes(allowed)
    s3, key = lake._s3(), lake._bucket_key(refused)[1]
    assert_refused(partial(s3.get_object, Bucket=minio.bucket, Key=key), "serve reads B's model")
    wanted = {(lake._bucket_key(allowed)[1], 200), (key, 403)}

    def by_scoped_key() -> set[tuple[str, int]]:
        return {
            (e["api"].get("object", ""), e["api"].get("statusCode"))
            for e in dev_lake.read_audit(minio_home)
            if f"Credential={lake.s3.access_key}/" in e["requestHeader"].get("Authorization", "")
        }

    # MinIO delivers audit entries asynchronously: wait (bounded) until both arrived.
    deadline = time.monotonic() + 30
    while not wanted <= by_scoped_key() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert wanted <= by_scoped_key()


class ApiObjects:
    """The API server's side of `scope_children`: objects by kind and name (get and apply)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str | None, str], dict[str, Any]] = {}
        self.secrets_applied = 0

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Any:
        return self.objects.get((api_version, kind, namespace, name))

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        key = (manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"])
        self.objects[key] = manifest
        self.secrets_applied += manifest["kind"] == "Secret"
        return manifest


def test_the_operator_mints_a_predictor_its_keys_and_refreshes_them(
    minio: LakeServer, seeded: Lake
) -> None:
    from datetime import UTC, datetime, timedelta

    from neuraxis.crds import ModelVersion
    from neuraxis.operator.builders.modelversion import ClusterFeatures, build_serving_children
    from neuraxis.operator.lake_credentials import (
        PREDICTOR_COMPONENT,
        pods_of,
        scope_children,
        serving_grant,
    )
    from neuraxis.operator.settings import OperatorSettings
    from neuraxis.resources import load_resources
    from tests.conftest import EXAMPLES

    settings = OperatorSettings(
        lake_uri=minio.lake_uri, lake_credentials="scoped", lake_credentials_seconds=900
    )
    (mv,) = [
        r for r in load_resources([EXAMPLES / "smart-manufacturing"]) if r.kind == "ModelVersion"
    ]
    assert isinstance(mv, ModelVersion) and mv.spec.serving is not None
    mv.metadata.namespace, mv.metadata.uid = A, "3f2a9c1b-7d4e-4f60-9a1b-2c3d4e5f6a7b"
    artifact = seeded.uri(Lake.model_path(A, "m", "1"))
    children = build_serving_children(mv, mv.spec.serving, artifact, settings, ClusterFeatures())
    grant = serving_grant(mv, artifact, "pred", settings)
    api, now = ApiObjects(), datetime.now(UTC)

    def reconcile(at: datetime) -> list[dict[str, Any]]:
        out = scope_children(
            api, mv, children, PREDICTOR_COMPONENT, "pred", lambda: grant, settings,
            now=at, caller=root_settings(minio),
        )  # fmt: skip
        for child in out:
            api.apply(child)
        return out

    first = reconcile(now)
    (secret,) = [o for o in api.objects.values() if o["kind"] == "Secret"]
    assert secret["metadata"]["name"] == "neuraxis-lake-serve-pred"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == mv.metadata.uid
    (template,) = pods_of(first, PREDICTOR_COMPONENT)
    env_from = template["spec"]["containers"][0]["envFrom"]
    assert {"secretRef": {"name": "neuraxis-lake-serve-pred"}} in env_from
    # The keys in the Secret do the predictor's job and no more, by MinIO's own answer.
    data = secret["stringData"]
    lake = Lake(minio.lake_uri, s3=S3Settings.from_env(data))
    assert lake.read_bytes(f"{Lake.model_path(A, 'm', '1')}/model.ts") == b"weights team-a"
    model_key = lake._bucket_key(f"{Lake.model_path(A, 'm', '1')}/model.ts")[1]
    s3 = lake._s3()
    assert_refused(partial(s3.put_object, Bucket=minio.bucket, Key=model_key, Body=b"x"), "write")
    other = lake._bucket_key(f"{Lake.model_path(B, 'm', '1')}/model.ts")[1]
    assert_refused(partial(s3.get_object, Bucket=minio.bucket, Key=other), "read B")

    # Fresh keys are kept (no STS call, the template does not change: no rollout) ...
    assert reconcile(now + timedelta(seconds=100)) == first and api.secrets_applied == 1
    # ... until a third of their lifetime is left: new keys, whose expiry the template carries
    # (a later expiry changes the template: the pods roll onto the new keys).
    later = reconcile(now + timedelta(seconds=700))
    assert api.secrets_applied == 2
    (renewed,) = [o for o in api.objects.values() if o["kind"] == "Secret"]
    assert renewed["stringData"]["AWS_ACCESS_KEY_ID"] != data["AWS_ACCESS_KEY_ID"]
    (new_template,) = pods_of(later, PREDICTOR_COMPONENT)
    assert (
        renewed["metadata"]["annotations"].items()
        <= new_template["metadata"]["annotations"].items()
    )


def test_evaluation_backtest_and_bundle_jobs_get_their_own_keys(
    minio: LakeServer, seeded: Lake
) -> None:
    """The operator's children for an evaluation Job, a backtest CronJob and a bundle Job read
    a Secret of their own, whose keys write the card (or the bundle) and not the model."""
    from neuraxis.crds import EdgeDeployment, ModelVersion
    from neuraxis.operator.builders.edge import BUNDLE_COMPONENT, build_bundle_children
    from neuraxis.operator.builders.modelversion import (
        BACKTEST_COMPONENT,
        EVALUATE_COMPONENT,
        build_backtest_children,
        build_evaluation_children,
    )
    from neuraxis.operator.lake_credentials import (
        bundling_grant,
        evaluation_grant,
        pods_of,
        scope_children,
    )
    from neuraxis.operator.settings import OperatorSettings
    from neuraxis.resources import load_resources
    from tests.conftest import EXAMPLES

    settings = OperatorSettings(
        lake_uri=minio.lake_uri, lake_credentials="scoped", lake_credentials_seconds=900
    )
    found = {r.kind: r for r in load_resources([EXAMPLES / "smart-manufacturing"])}
    mv, ed = found["ModelVersion"], found["EdgeDeployment"]
    assert isinstance(mv, ModelVersion) and isinstance(ed, EdgeDeployment)
    for res in (mv, ed):
        res.metadata.namespace, res.metadata.uid = A, "3f2a9c1b-7d4e-4f60-9a1b-2c3d4e5f6a7b"
    artifact, lineage = seeded.uri(Lake.model_path(A, "m", "1")), {"dataset": "raw"}
    cases = (
        (mv, build_evaluation_children(mv, artifact, settings), EVALUATE_COMPONENT, "e1",
         lambda: evaluation_grant(mv, artifact, lineage, Lake.run_path(A, "e1"), settings)),
        (mv, build_backtest_children(mv, artifact, settings), BACKTEST_COMPONENT, "bt",
         lambda: evaluation_grant(mv, artifact, lineage, f"{Lake.run_path(A, 'bt')}-*", settings)),
        (ed, build_bundle_children(ed, "m", settings, artifact), BUNDLE_COMPONENT, "b1",
         lambda: bundling_grant(ed, "m", "b1", artifact, None, lineage, settings)),
    )  # fmt: skip
    writes = {
        "e1": f"{Lake.model_path(A, 'm', '1')}/card/card.json",
        "bt": f"{Lake.run_path(A, 'bt')}-29160000/result.json",
        "b1": f"{Lake.bundle_path(A, 'm', ed.spec.model_version_ref.name, 'b1')}/model.ts",
    }
    for res, children, component, owner, grant_of in cases:
        api = ApiObjects()
        out = scope_children(
            api, res, children, component, owner, grant_of, settings, caller=root_settings(minio)
        )
        (secret,) = [o for o in api.objects.values() if o["kind"] == "Secret"]
        role = "bundle" if component == BUNDLE_COMPONENT else "evaluate"
        assert secret["metadata"]["name"] == f"neuraxis-lake-{role}-{owner}"
        (template,) = pods_of(out, component)
        refs = [s.get("secretRef") for s in template["spec"]["containers"][0]["envFrom"]]
        assert {"name": secret["metadata"]["name"]} in refs, component
        data = secret["stringData"]
        lake = Lake(minio.lake_uri, s3=S3Settings.from_env(data))
        lake.write_bytes(writes[owner], b"{}")
        model_key = lake._bucket_key(f"{Lake.model_path(A, 'm', '1')}/model.ts")[1]
        put = partial(lake._s3().put_object, Bucket=minio.bucket, Key=model_key, Body=b"x")
        assert_refused(put, f"{component} overwrites the model")
    assert seeded.read_bytes(f"{Lake.model_path(A, 'm', '1')}/model.ts") == b"weights team-a"


def test_a_local_etl_run_does_its_job_with_its_scoped_keys(
    minio: LakeServer, minio_home: Path, seeded: Lake, tmp_path: Path
) -> None:
    """`neuraxis run` with NEURAXIS_LAKE_CREDENTIALS=scoped: the ETL process (Spark, delta)
    gets keys minted for its grant and still writes its table and its result."""
    import json
    import os
    import subprocess
    import sys

    spec = tmp_path / "ds.yaml"
    spec.write_text(
        "apiVersion: neuraxis.dev/v1alpha1\nkind: Dataset\nmetadata: {name: readings}\n"
        "spec: {source: {builtin: {name: sensors, rows: 100, seed: 3}}}\n"
    )
    env = {
        **os.environ,
        **minio.env(),
        "NEURAXIS_LAKE_URI": minio.lake_uri,
        "NEURAXIS_HOME": str(tmp_path / "home"),
        "NEURAXIS_LAKE_CREDENTIALS": "scoped",
    }
    run = subprocess.run(
        [sys.executable, "-m", "neuraxis.cli", "run", str(spec), "-n", A],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = DeltaTable(
        seeded.uri(Lake.table_path(A, "readings")), storage_options=seeded.storage_options()
    )
    assert table.to_pyarrow_table().num_rows == 100

    # The table's writes came from a key that is not the runner's (root) key.
    writers = put_object_writers(minio_home, Lake.table_path(A, "readings"))
    assert writers and minio.access_key not in writers, json.dumps(sorted(writers))


def put_object_writers(minio_home: Path, prefix: str, part: str = "", expect: int = 1) -> set[str]:
    """The access keys that wrote objects under `prefix` whose key contains `part`. Audit
    entries arrive asynchronously (later under load): wait, bounded, until `expect` keys are
    seen, then return what is there, so a missing or an extra writer still shows."""

    def writers() -> set[str]:
        return {
            e["requestHeader"].get("Authorization", "").split("Credential=")[1].split("/")[0]
            for e in dev_lake.read_audit(minio_home)
            if e["api"].get("name") == "PutObject"
            and e["api"].get("object", "").startswith(f"lake/{prefix}/")
            and part in e["api"].get("object", "")
        }

    deadline = time.monotonic() + 30
    while len(writers()) < expect and time.monotonic() < deadline:
        time.sleep(0.2)
    return writers()


def test_a_local_chain_evaluates_and_bundles_with_keys_of_their_own(
    minio: LakeServer, minio_home: Path, seeded: Lake, tmp_path: Path
) -> None:
    """The healthcare example under `neuraxis run` with scoped keys, Dataset to edge bundle:
    every step does its job; the card is written by the evaluation's and the bundle's own
    keys, the bundle by the bundle's, never by the runner's."""
    import os
    import subprocess
    import sys

    import yaml

    from tests.conftest import EXAMPLES

    folder = tmp_path / "chain"
    folder.mkdir()
    for source in sorted((EXAMPLES / "smart-healthcare").glob("0*.yaml")):
        doc = yaml.safe_load(source.read_text())
        if doc["kind"] == "TrainingJob":
            doc["spec"]["model"]["epochs"] = 8
        (folder / source.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {
        **os.environ,
        **minio.env(),
        "NEURAXIS_LAKE_URI": minio.lake_uri,
        "NEURAXIS_HOME": str(tmp_path / "home"),
        "NEURAXIS_LAKE_CREDENTIALS": "scoped",
        "NEURAXIS_SECRET_LAKE_SALT_SALT": "test-salt",
    }
    run = subprocess.run(
        [sys.executable, "-m", "neuraxis.cli", "run", str(folder), "-n", A],
        env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    model = Lake.model_path(A, "diagnosis", "diagnosis-v1")
    train_writers = put_object_writers(minio_home, model, "/model.pt")
    card_writers = put_object_writers(minio_home, model, "/card/", expect=2)
    bundle_writers = put_object_writers(minio_home, Lake.edge_path(A, "diagnosis", "diagnosis-v1"))
    assert minio.access_key not in train_writers | card_writers | bundle_writers
    # The card: the evaluation's key, then the bundle's adding its record; the bundle: only
    # the bundle's key; the model: only training's.
    assert len(train_writers) == 1 and len(bundle_writers) == 1, (train_writers, bundle_writers)
    assert len(card_writers) == 2 and bundle_writers < card_writers, card_writers
    assert not train_writers & card_writers
