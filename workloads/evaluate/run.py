"""The evaluate workload: a ModelVersion's artifact, scored on held-out data, judged by its gates,
documented by a model card (card.md, card.json, plots) next to the artifact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuraxis.crds.modelversion import ModelVersion
from neuraxis.lake import Lake
from neuraxis.workloads.artifact import artifact_digest, write_card_files
from neuraxis.workloads.drift import read_profile
from neuraxis.workloads.evaluate import plots
from neuraxis.workloads.evaluate.card import CARD_FOLDER, build_card, render_markdown
from neuraxis.workloads.evaluate.gates import GateOutcome, check_gates, gates_summary
from neuraxis.workloads.evaluate.heldout import (
    HeldOut,
    LoadedArtifact,
    folder_of,
    load_artifact,
    load_heldout,
)
from neuraxis.workloads.evaluate.metrics import (
    classification_metrics,
    regression_metrics,
    single_row_latency,
)
from neuraxis.workloads.explain import baseline_for, global_attributions
from neuraxis.workloads.result import now_rfc3339, publish_result
from neuraxis.workloads.train.provenance import code_version

LATENCY_ROWS = 200


def load_model_version(path: str | Path) -> ModelVersion:
    from neuraxis.resources import load_resources

    found = [r for r in load_resources([path]) if isinstance(r, ModelVersion)]
    if len(found) != 1:
        raise ValueError(f"{path}: expected exactly one ModelVersion, found {len(found)}")
    return found[0]


def artifact_folder_for(mv: ModelVersion, lake: Lake, namespace: str, uri: str | None) -> str:
    """--artifact-uri, else spec.source.uri."""
    if uri:
        return folder_of(lake, uri)
    if mv.spec.source.uri:
        return folder_of(lake, mv.spec.source.uri)
    # A version's artifacts live in run folders (models/<ns>/<model>/<version>/<run-id>): which
    # run is the caller's to say (the TrainingJob's status.artifact.uri).
    raise ValueError(
        f"ModelVersion {mv.metadata.name}: no artifact URI: pass --artifact-uri (the "
        "TrainingJob's status.artifact.uri) or set spec.source.uri"
    )


def score(
    artifact: LoadedArtifact, heldout: HeldOut, module: torch.jit.ScriptModule | None = None
) -> tuple[dict[str, Any], np.ndarray[Any, Any]]:
    """Metrics of the TorchScript model (or `module`) on the held-out rows, and its outputs."""
    model = module if module is not None else artifact.torchscript()
    with torch.no_grad():
        out = model(heldout.x).numpy()
    sig = artifact.signature
    if sig.task == "classification":
        return classification_metrics(heldout.y.numpy(), out, sig.classes), out
    return regression_metrics(heldout.y.numpy(), out), out


def feature_attributions(
    lake: Lake, folder: str, artifact: LoadedArtifact, heldout: HeldOut
) -> dict[str, Any]:
    """Global Integrated Gradients attributions on the held-out rows, against the training
    profile's means (zeros for an artifact without profile.json)."""
    sig = artifact.signature
    baseline = baseline_for(read_profile(lake, folder), len(sig.features))
    module = artifact.torchscript()
    return global_attributions(module, heldout.x, baseline, sig.task, sig.feature_names)


def run_evaluation(
    mv: ModelVersion,
    lake: Lake,
    namespace: str,
    run_id: str,
    *,
    artifact_uri: str | None = None,
    dataset: str | None = None,
    expected_digest: str | None = None,
) -> dict[str, Any]:
    """`expected_digest`: the digest the artifact must have (the one the ModelVersion pinned, or
    its training run reported); default spec.source.digest."""
    started = now_rfc3339()
    folder = artifact_folder_for(mv, lake, namespace, artifact_uri)
    artifact = load_artifact(lake, folder, expected_digest or mv.spec.source.digest)
    ref = mv.spec.evaluation.dataset_ref if mv.spec.evaluation else None
    heldout = load_heldout(
        lake,
        (ref.namespace if ref and not dataset else None) or namespace,
        artifact,
        dataset=dataset or (ref.name if ref else None),
        version=ref.version if ref and not dataset else None,
    )
    if len(heldout.x) == 0:
        raise ValueError(f"{heldout.description}: no held-out rows to evaluate on")
    evaluated, outputs, metrics, gates = judge(mv, artifact, heldout)
    passed, reason = gates_summary(gates)
    sig = artifact.signature
    plot_files = {
        "training_curves.png": plots.training_curves(artifact.training.get("history", []))
    }
    if sig.task == "classification":
        plot_files["roc.png"] = plots.roc_curve_plot(heldout.y.numpy(), outputs, sig.classes)
        plot_files["confusion_matrix.png"] = plots.confusion_matrix_plot(
            evaluated["confusionMatrix"], sig.classes
        )
    else:
        plot_files["predicted_vs_actual.png"] = plots.predicted_vs_actual(
            heldout.y.numpy(), outputs
        )
    attributions = feature_attributions(lake, folder, artifact, heldout)
    plot_files["feature_attributions.png"] = plots.feature_attributions(attributions)
    evaluation = {
        "metrics": metrics,
        "confusionMatrix": evaluated.get("confusionMatrix"),
        "calibration": evaluated.get("calibration"),
        "gates": [g.to_dict() for g in gates],
        "passed": passed,
        "reason": reason,
        "data": {"description": heldout.description, "rows": len(heldout.x), **heldout.dataset},
        "attributions": attributions,
    }
    digest = artifact_digest(lake, folder)
    card = build_card(
        mv,
        namespace=namespace,
        artifact={"uri": lake.uri(folder), "digest": digest},
        signature=sig.model_dump(mode="json"),
        training=artifact.training,
        evaluation=evaluation,
        plots=sorted(plot_files),
        code_version=code_version(),
    )
    write_card(lake, folder, card, plot_files)
    result: dict[str, Any] = {
        **verdict_result(mv, namespace, run_id, started, passed, reason, metrics),
        "gates": evaluation["gates"],
        "evaluation": evaluation,
        "artifact": {"uri": lake.uri(folder), "digest": digest},
        "cardUri": lake.uri(f"{folder}/{CARD_FOLDER}/card.md"),
        "lineage": card["lineage"],
    }
    compact = {
        "outcome": "Succeeded",
        "reason": result["reason"],
        "message": reason,
        "passed": passed,
        "metrics": metrics,
        "gates": [
            {k: g[k] for k in ("metric", "value", "min", "max", "passed")} for g in result["gates"]
        ],
        "cardUri": result["cardUri"],
        "artifact": result["artifact"],
    }
    publish_result(lake, namespace, run_id, result, compact)
    return result


def judge(
    mv: ModelVersion, artifact: LoadedArtifact, heldout: HeldOut
) -> tuple[dict[str, Any], Any, dict[str, float], list[GateOutcome]]:
    """Score `heldout`, add single-row latency (so every gate finds its metric) and check the
    gates: (scores, model outputs, metrics, gate results), for an evaluation and a backtest."""
    evaluated, outputs = score(artifact, heldout)
    module = artifact.torchscript()
    rows = [heldout.x[i : i + 1] for i in range(min(LATENCY_ROWS, len(heldout.x)))]
    with torch.no_grad():
        latency = single_row_latency(module, rows)
    metrics: dict[str, float] = {**evaluated["scalars"], **latency}
    gates = check_gates(mv.spec.evaluation.gates if mv.spec.evaluation else [], metrics)
    return evaluated, outputs, metrics, gates


def verdict_result(
    mv: ModelVersion,
    namespace: str,
    run_id: str,
    started: str,
    passed: bool,
    message: str,
    metrics: dict[str, float],
) -> dict[str, Any]:
    """The fields every scoring run's result starts with (an evaluation and a backtest)."""
    return {
        "outcome": "Succeeded",
        "reason": "GatesPassed" if passed else "GatesFailed",
        "message": message,
        "kind": "ModelVersion",
        "name": mv.metadata.name,
        "namespace": namespace,
        "runId": run_id,
        "startTime": started,
        "completionTime": now_rfc3339(),
        "passed": passed,
        "metrics": metrics,
    }


def write_card(
    lake: Lake, folder: str, card: dict[str, Any], plot_files: dict[str, bytes] | None = None
) -> None:
    """The card (card.json, its Markdown rendering card.md, plots) under the artifact's card/
    folder, listed in its manifest's card section (the pinned model digest does not move)."""
    files = {f"plots/{name}": data for name, data in (plot_files or {}).items()}
    files["card.json"] = (json.dumps(card, indent=2, sort_keys=True) + "\n").encode()
    files["card.md"] = render_markdown(card).encode()
    write_card_files(lake, folder, files)
