"""The edge bundle: the registry artifact, int8-quantized and exported to TorchScript, written
under `edge/<ns>/<model>/<version>/` (model.ts + signature.json + compression.json + sha256
manifest). int8 ships only where it pays (compress.py): otherwise the fp32 TorchScript ships with
the reason. Size, single-row latency and the held-out metric of both go into the result, the
bundle's compression.json and the model card."""

from __future__ import annotations

import json
from typing import Any, Literal

from neuraxis.crds.common import DatasetRef
from neuraxis.lake import Lake, LakeError
from neuraxis.workloads.artifact import write_artifact
from neuraxis.workloads.bundle.compress import choose, latency_record, single_row_latency_ms
from neuraxis.workloads.bundle.quantize import quantize_int8
from neuraxis.workloads.drift import profile_files
from neuraxis.workloads.evaluate.card import CARD_FOLDER
from neuraxis.workloads.evaluate.heldout import (
    HeldOut,
    LoadedArtifact,
    load_artifact,
    load_heldout,
    load_torchscript,
)
from neuraxis.workloads.evaluate.run import score, write_card
from neuraxis.workloads.result import now_rfc3339, publish_result
from neuraxis.workloads.train.export import load_weights, torchscript_bytes
from neuraxis.workloads.train.models import serving_module

COMPRESSION = "compression.json"


def headline_metric(task: str) -> str:
    return "accuracy" if task == "classification" else "rmse"


def build_edge_bundle(
    lake: Lake,
    namespace: str,
    model: str,
    version: str,
    run_id: str,
    *,
    quantize: Literal["int8", "none"] = "int8",
    source_folder: str | None = None,
    expected_digest: str | None = None,
    heldout: DatasetRef | None = None,
) -> dict[str, Any]:
    """Quantize and export the registered version; publish the result; returns it. int8 and
    fp32 are compared on `heldout` (every row) or else on the training job's test split."""
    started = now_rfc3339()
    if source_folder is None:
        raise ValueError(
            f"ModelVersion {version}: no artifact folder: pass --artifact-uri (the version's "
            "status.artifact.uri; artifacts live in run folders)"
        )
    folder = source_folder
    artifact = load_artifact(lake, folder, expected_digest)
    held = load_heldout(
        lake,
        (heldout.namespace if heldout else None) or namespace,
        artifact,
        dataset=heldout.name if heldout else None,
        version=heldout.version if heldout else None,
    )
    edge, edge_ts = compress(artifact, held, quantize)
    ref = write_artifact(
        lake,
        Lake.bundle_path(namespace, model, version, run_id),
        {
            "model.ts": edge_ts,
            "signature.json": artifact.files["signature.json"],
            COMPRESSION: (json.dumps(edge, indent=2, sort_keys=True) + "\n").encode(),
            **profile_files(lake, folder),  # the agent's drift reference and IG baseline
        },
    )
    edge = {**edge, "uri": ref.uri, "digest": ref.digest}
    card_updated = _add_to_card(lake, folder, edge)
    result = {
        "outcome": "Succeeded",
        "reason": "Bundled",
        "kind": "EdgeBundle",
        "namespace": namespace,
        "runId": run_id,
        "startTime": started,
        "completionTime": now_rfc3339(),
        "bundle": {"uri": ref.uri, "digest": ref.digest, "sizeBytes": ref.size_bytes},
        "source": {"uri": lake.uri(folder)},
        "edge": edge,
        "cardUpdated": card_updated,
    }
    metric = edge["metric"]
    metrics = {f"{metric}_fp32": edge["fp32"], "edge_bytes": edge["shippedBytes"]}
    if edge["int8"] is not None:
        metrics[f"{metric}_int8"] = edge["int8"]
        metrics["int8_size_ratio"] = edge["sizeRatio"]
        metrics["int8_latency_ratio"] = edge["latency"]["ratio"]
    compact = {
        "outcome": "Succeeded",
        "reason": "Bundled",
        "bundle": {"uri": ref.uri, "digest": ref.digest},
        "metrics": metrics,
    }
    publish_result(lake, namespace, run_id, result, compact)
    return result


def compress(
    artifact: LoadedArtifact, heldout: HeldOut, quantize: Literal["int8", "none"]
) -> tuple[dict[str, Any], bytes]:
    """The edge record and the TorchScript to ship: int8 where it pays, else fp32 (reason)."""
    sig = artifact.signature
    fp32_ts = artifact.files["model.ts"]
    metric = headline_metric(sig.task)
    fp32_value = score(artifact, heldout)[0]["scalars"][metric]
    record: dict[str, Any] = {
        "requested": quantize,
        "metric": metric,
        "fp32": fp32_value,
        "fp32Bytes": len(fp32_ts),
        "heldOut": heldout.description,
        "int8": None,
        "int8Bytes": None,
        "sizeRatio": None,
        "change": None,
        "latency": None,
        "int8Layers": [],
        "fp32Layers": [],
    }
    if quantize == "none":
        record.update(quantize="none", reason="int8 not requested (optimize.quantize: none)")
        return {**record, "shippedBytes": len(fp32_ts)}, fp32_ts
    trainable, _config = load_weights(artifact.files["model.pt"])
    int8 = quantize_int8(serving_module(trainable, sig.task))
    int8_ts = torchscript_bytes(int8.module, len(sig.features))
    int8_module = load_torchscript(int8_ts)
    int8_value = score(artifact, heldout, int8_module)[0]["scalars"][metric]
    latency = single_row_latency_ms(
        {"fp32": artifact.torchscript(), "int8": int8_module}, len(sig.features)
    )
    choice = choose(metric, fp32_value, int8_value, len(fp32_ts), len(int8_ts))
    shipped = int8_ts if choice.ship == "int8" else fp32_ts
    record.update(
        quantize=choice.ship,
        reason=choice.reason,
        int8=int8_value,
        int8Bytes=len(int8_ts),
        sizeRatio=round(len(int8_ts) / len(fp32_ts), 4),
        change=int8_value - fp32_value,
        latency=latency_record(latency["fp32"], latency["int8"]),
        int8Layers=int8.int8_layers,
        fp32Layers=int8.fp32_layers,
        shippedBytes=len(shipped),
    )
    return record, shipped


def _add_to_card(lake: Lake, folder: str, edge: dict[str, Any]) -> bool:
    """Record the bundle in the model card when evaluation has written one."""
    try:
        card = lake.read_json(f"{folder}/{CARD_FOLDER}/card.json")
    except LakeError:
        return False
    card["edge"] = edge
    write_card(lake, folder, card)
    return True
