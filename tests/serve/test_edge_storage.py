"""The edge agent's local storage on real files: bundle cache and inference-log buffer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from neuraxis.lake import Lake
from neuraxis.workloads.artifact import ArtifactIntegrityError, read_verified, write_artifact
from neuraxis.workloads.edge.cache import BundleCache
from neuraxis.workloads.edge.log_buffer import LogBuffer, complete_prefix


def lake_records(lake: Lake, prefix: str) -> list[dict[str, object]]:
    out = []
    for rel in lake.list_files(prefix):
        out += [json.loads(line) for line in lake.read_bytes(rel).splitlines()]
    return out


def test_a_lost_delete_after_upload_does_not_duplicate(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    buffer = LogBuffer(tmp_path / "buf", node="n1")
    buffer.append([{"id": i} for i in range(3)])
    sealed = buffer.seal()
    assert sealed is not None
    kept = tmp_path / "copy"
    shutil.copy(sealed, kept)
    assert buffer.upload(lake, "inference-logs/ns/d/n1") == 3
    shutil.copy(kept, sealed)  # the crash happened after the upload, before the delete
    restarted = LogBuffer(tmp_path / "buf", node="n1")
    assert restarted.upload(lake, "inference-logs/ns/d/n1") == 3
    assert sorted(r["id"] for r in lake_records(lake, "inference-logs")) == [0, 1, 2]  # type: ignore[type-var]
    assert restarted.pending_records() == 0


def test_segment_names_are_never_reused_across_restarts(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    first = LogBuffer(tmp_path / "buf", node="n1")
    first.append([{"id": "a"}])
    name_a = first.seal()
    first.upload(lake, "logs")
    second = LogBuffer(tmp_path / "buf", node="n1")
    second.append([{"id": "b"}])
    name_b = second.seal()
    assert name_a is not None and name_b is not None and name_a.name != name_b.name
    second.upload(lake, "logs")
    assert sorted(str(r["id"]) for r in lake_records(lake, "logs")) == ["a", "b"]
    assert second.seal() is None  # nothing new: no empty segment


def test_a_torn_last_line_is_dropped_on_restart(tmp_path: Path) -> None:
    buffer = LogBuffer(tmp_path / "buf", node="n1")
    buffer.append([{"id": 1}, {"id": 2}])
    buffer.close()
    with open(tmp_path / "buf" / "active.jsonl", "ab") as fh:
        fh.write(b'{"id": 3, "tru')  # the crash hit mid-write: this record was never answered
    restarted = LogBuffer(tmp_path / "buf", node="n1")
    assert restarted.pending_records() == 2
    restarted.append([{"id": 4}])
    lines = (tmp_path / "buf" / "active.jsonl").read_bytes().splitlines()
    assert [json.loads(x)["id"] for x in lines] == [1, 2, 4]
    assert complete_prefix(b'{"a": 1}\n{"b"') == b'{"a": 1}\n'


def test_bundle_cache_verifies_on_load_and_keeps_the_previous_bundle(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    cache = BundleCache(tmp_path / "cache")
    digests = []
    for version in ("v1", "v2", "v3"):
        files = {"model.ts": version.encode() * 10, "signature.json": b"{}"}
        ref = write_artifact(lake, f"edge/ns/m/{version}", files)
        manifest = lake.read_bytes(f"edge/ns/m/{version}/manifest.json")
        got = read_verified(lake, f"edge/ns/m/{version}")
        stored = cache.store(ref.uri, ref.digest, got, manifest)
        digests.append(ref.digest)
        assert cache.load(stored, ["model.ts"]) == {"model.ts": version.encode() * 10}
    current = cache.current()
    assert current is not None and current.digest == digests[-1]
    kept = sorted(p.name for p in cache.bundles.iterdir())
    assert kept == sorted(d.split(":")[1] for d in digests[1:])  # current + previous
    (cache.bundles / current.folder / "model.ts").write_bytes(b"rotten")
    with pytest.raises(ArtifactIntegrityError, match="sha256 mismatch"):
        cache.load(current, ["model.ts"])
    (cache.bundles / ".tmp-crashed").mkdir()
    BundleCache(tmp_path / "cache")  # a restart clears half-written folders
    assert not (cache.bundles / ".tmp-crashed").exists()
