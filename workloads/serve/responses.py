"""Response bodies for the KServe v1 and Open Inference Protocol v2 routes (pure functions).

v1 `:predict` answers `{"model_name", "model_version", "predictions": [...]}`. For classification
`predictions` are class labels (the signature's `classes`, or the class index when it has none),
with `probabilities` (one row per instance, in `classes` order) and `classes` alongside; for
regression `predictions` are numbers.
v1 `:explain` answers `explanations`, one per instance (see `explain_response`).
v2 `infer` answers `outputs`: classification `probabilities` (FP32 [n, k]) and `label` (BYTES
[n]); regression `prediction` (FP32 [n]).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import neuraxis
from neuraxis.workloads.artifact import Signature
from neuraxis.workloads.serve.validation import InvalidInputError

SERVER_NAME = "neuraxis"
# Open Inference Protocol extensions served in full (binary tensor inputs are read, but the
# answers are JSON, so `binary_tensor_data` is not claimed).
EXTENSIONS: list[str] = []

if TYPE_CHECKING:
    from neuraxis.workloads.explain import Baseline, Explanation


def check_finite_outputs(outputs: list[Any], row_field: str) -> None:
    """A model can overflow on extreme but valid inputs; answer 422 naming the row, not 500."""
    for i, out in enumerate(outputs):
        values = out if isinstance(out, list) else [out]
        if not all(math.isfinite(v) for v in values):
            raise InvalidInputError(
                row_field.format(i=i),
                "the model's output is not finite for this input (values beyond its range)",
                status=422,
            )


def labels(signature: Signature, probabilities: list[list[float]]) -> list[str | int]:
    out: list[str | int] = []
    for row in probabilities:
        best = max(range(len(row)), key=row.__getitem__)
        out.append(signature.classes[best] if signature.classes else best)
    return out


def v1_response(name: str, signature: Signature, outputs: list[Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"model_name": name, "model_version": signature.model_version}
    if signature.task == "classification":
        body["predictions"] = labels(signature, outputs)
        body["probabilities"] = outputs
        body["classes"] = signature.classes
    else:
        body["predictions"] = outputs
    return body


def v2_server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": neuraxis.__version__, "extensions": EXTENSIONS}


def v2_response(
    name: str,
    signature: Signature,
    outputs: list[Any],
    request_id: str | None = None,
    requested: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The infer answer; `requested` names the outputs to include, in that order (None: all)."""
    n = len(outputs)
    tensors: list[dict[str, Any]]
    if signature.task == "classification":
        k = len(outputs[0]) if outputs else len(signature.classes)
        tensors = [
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [n, k],
                "data": [v for row in outputs for v in row],
            },
            {
                "name": "label",
                "datatype": "BYTES",
                "shape": [n],
                "data": [str(x) for x in labels(signature, outputs)],
            },
        ]
    else:
        tensors = [{"name": "prediction", "datatype": "FP32", "shape": [n], "data": outputs}]
    if requested is not None:
        by_name = {t["name"]: t for t in tensors}
        tensors = [by_name[n] for n in requested]
    body: dict[str, Any] = {
        "model_name": name,
        "model_version": signature.model_version,
        "outputs": tensors,
    }
    if request_id is not None:
        body["id"] = request_id
    return body


def v2_metadata(name: str, signature: Signature, digest: str) -> dict[str, Any]:
    n_features = len(signature.features)
    outputs: list[dict[str, Any]]
    if signature.task == "classification":
        k = len(signature.classes) or -1
        outputs = [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, k]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ]
    else:
        outputs = [{"name": "prediction", "datatype": "FP32", "shape": [-1]}]
    return {
        "name": name,
        "versions": [signature.model_version],
        "platform": "pytorch_torchscript",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, n_features]}],
        "outputs": outputs,
        "parameters": {
            "features": signature.feature_names,
            "task": signature.task,
            "classes": signature.classes,
            "digest": digest,
        },
    }


def explain_response(
    name: str, signature: Signature, baseline: Baseline, explanation: Explanation
) -> dict[str, Any]:
    """Per instance: `attributions` by feature name (they sum to `output - baseline_output` up
    to `convergence_delta`), the `prediction`, the class explained (`target`, classification)
    and the explained `output` (that class's probability, or the regression prediction)."""
    from neuraxis.workloads.explain import METHOD, N_STEPS

    names = signature.feature_names
    explanations = []
    for i, attributions in enumerate(explanation.attributions):
        values = [float(v) for v in attributions]
        if not all(math.isfinite(v) for v in values):
            raise InvalidInputError(
                f"instances[{i}]", "the attributions are not finite for this input", status=422
            )
        item: dict[str, Any] = {
            "attributions": dict(zip(names, values, strict=True)),
            "output": float(explanation.outputs[i]),
            "baseline_output": float(explanation.baseline_outputs[i]),
            "convergence_delta": float(explanation.deltas[i]),
        }
        if explanation.targets is not None:
            target = explanation.targets[i]
            label = signature.classes[target] if signature.classes else target
            item.update(prediction=label, target=label)
        else:
            item["prediction"] = float(explanation.outputs[i])
        explanations.append(item)
    explained = "probability of target" if signature.task == "classification" else "prediction"
    return {
        "model_name": name,
        "model_version": signature.model_version,
        "method": "integrated_gradients",
        "n_steps": N_STEPS,
        "integration": METHOD,
        "explained_output": explained,
        "baseline": {
            "kind": baseline.kind,
            "values": dict(zip(names, baseline.values, strict=True)),
        },
        "explanations": explanations,
    }
