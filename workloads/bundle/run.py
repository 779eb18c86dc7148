"""The edge bundle: the registry artifact, int8-quantized and exported to TorchScript, written
under `edge/<ns>/<model>/<version>/` (model.ts + signature.json + sha256 manifest). The accuracy
change against fp32 on the held-out data goes into the result and the model card."""

from __future__ import annotations

from typing import Any, Literal

from neuraxis.lake import Lake, LakeError
from neuraxis.workloads.artifact import write_artifact
from neuraxis.workloads.bundle.quantize import quantize_int8
from neuraxis.workloads.evaluate.card import CARD_FOLDER
from neuraxis.workloads.evaluate.heldout import load_artifact, load_heldout, load_torchscript
from neuraxis.workloads.evaluate.run import score, write_card
from neuraxis.workloads.result import now_rfc3339, publish_result
from neuraxis.workloads.train.export import load_weights, torchscript_bytes
from neuraxis.workloads.train.models import serving_module


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
) -> dict[str, Any]:
    """Quantize and export the registered version; publish the result; returns it."""
    started = now_rfc3339()
    folder = source_folder or Lake.model_path(namespace, model, version)
    artifact = load_artifact(lake, folder)
    trainable, _config = load_weights(artifact.files["model.pt"])
    sig = artifact.signature
    served = serving_module(trainable, sig.task)
    edge_module = quantize_int8(served) if quantize == "int8" else served
    edge_ts = torchscript_bytes(edge_module, len(sig.features))
    heldout = load_heldout(lake, namespace, artifact)
    metric = headline_metric(sig.task)
    fp32 = score(artifact, heldout)[0]["scalars"][metric]
    edge_value = score(artifact, heldout, load_torchscript(edge_ts))[0]["scalars"][metric]
    ref = write_artifact(
        lake,
        Lake.edge_path(namespace, model, version),
        {"model.ts": edge_ts, "signature.json": artifact.files["signature.json"]},
    )
    edge = {
        "quantize": quantize,
        "uri": ref.uri,
        "digest": ref.digest,
        "metric": metric,
        "fp32": fp32,
        "quantized": edge_value,
        "change": edge_value - fp32,
        "fp32Bytes": len(artifact.files["model.ts"]),
        "quantizedBytes": len(edge_ts),
        "heldOut": heldout.description,
    }
    card_updated = _add_to_card(lake, f"{folder}/{CARD_FOLDER}", edge)
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
    compact = {
        "outcome": "Succeeded",
        "reason": "Bundled",
        "bundle": {"uri": ref.uri, "digest": ref.digest},
        "metrics": {f"{metric}_fp32": fp32, f"{metric}_{quantize}": edge_value},
    }
    publish_result(lake, namespace, run_id, result, compact)
    return result


def _add_to_card(lake: Lake, card_folder: str, edge: dict[str, Any]) -> bool:
    """Record the bundle in the model card when evaluation has written one."""
    try:
        card = lake.read_json(f"{card_folder}/card.json")
    except LakeError:
        return False
    card["edge"] = edge
    write_card(lake, card_folder, card)
    return True
