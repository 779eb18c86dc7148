"""The model card: a JSON document (card.json) and its Markdown rendering (card.md), both pure
functions of what evaluation and training recorded."""

from __future__ import annotations

from typing import Any

from neuraxis.crds.modelversion import ModelVersion
from neuraxis.lake import Lake

CARD_FOLDER = Lake.CARD_FOLDER


def build_card(
    mv: ModelVersion,
    *,
    namespace: str,
    artifact: dict[str, Any],
    signature: dict[str, Any],
    training: dict[str, Any],
    evaluation: dict[str, Any],
    plots: list[str],
    code_version: dict[str, Any],
) -> dict[str, Any]:
    card = mv.spec.card
    dataset = training.get("dataset") or {}
    return {
        "model": mv.spec.model,
        "version": mv.metadata.name,
        "namespace": namespace,
        "stage": mv.spec.stage,
        "details": {
            "description": card.description,
            "architecture": signature.get("architecture"),
            "task": signature.get("task"),
            "label": signature.get("label"),
            "features": [f["name"] for f in signature.get("features", [])],
            "classes": signature.get("classes", []),
        },
        "intendedUse": card.intended_use,
        "limitations": card.limitations,
        "owners": list(card.owners),
        "ethics": card.ethics,
        "artifact": artifact,
        "evaluation": evaluation,
        "lineage": {
            "dataset": {
                "name": dataset.get("name"),
                "version": dataset.get("version"),
                "digest": dataset.get("digest"),
                "uri": dataset.get("uri"),
            },
            "evaluationData": evaluation.get("data"),
            "trainingJob": training.get("job"),
            "trainingRun": training.get("runId"),
            "trainingCodeVersion": training.get("codeVersion"),
            "evaluationCodeVersion": code_version,
        },
        "dataSources": data_sources(training, evaluation),
        "hyperparameters": training.get("hyperparameters", {}),
        "bestTrial": training.get("bestTrial"),
        "plots": plots,
        "edge": None,
    }


def data_sources(training: dict[str, Any], evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """Which rows each number of the card comes from: the evaluation (metrics, gates, plots) and
    the training run (curves; tuning and early stopping chose on the validation split)."""
    evaluated = evaluation.get("data") or {}
    dataset = training.get("dataset") or {}
    rows = training.get("splitRows") or {}
    sources = [
        {
            "use": "evaluation metrics, gates, plots",
            "dataset": evaluated.get("name"),
            "version": evaluated.get("version"),
            "split": evaluated.get("split"),
            "rows": evaluated.get("rows"),
        }
    ]
    for split, use in (("train", "training (fit)"), ("validation", "tuning, early stopping")):
        sources.append(
            {
                "use": use,
                "dataset": dataset.get("name"),
                "version": dataset.get("version"),
                "split": split,
                "rows": rows.get(split),
            }
        )
    return sources


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(card: dict[str, Any]) -> str:
    details = card["details"]
    evaluation = card["evaluation"]
    lineage = card["lineage"]
    dataset = lineage["dataset"]
    out = [f"# Model card: {card['model']} / {card['version']}", ""]
    out += [details["description"] or "_No description._", ""]
    out += ["## Details", ""]
    out += [
        f"- Architecture: {details['architecture']} ({details['task']})",
        f"- Label: `{details['label']}`; features: "
        + ", ".join(f"`{f}`" for f in details["features"]),
    ]
    if details["classes"]:
        out.append(f"- Classes: {', '.join(details['classes'])}")
    out += [
        f"- Stage: {card['stage']}",
        f"- Artifact: {card['artifact'].get('uri')} ({card['artifact'].get('digest')})",
        "",
    ]
    for title, key in (
        ("Intended use", "intendedUse"),
        ("Limitations", "limitations"),
        ("Ethical considerations", "ethics"),
    ):
        out += [f"## {title}", "", card[key] or "_Not stated._", ""]
    out += ["## Owners", ""] + ([f"- {o}" for o in card["owners"]] or ["_None listed._"]) + [""]
    out += ["## Data", ""]
    out += _table(
        ["used for", "dataset", "version", "split", "rows"],
        [
            [d["use"], d["dataset"], d["version"], d["split"], d["rows"]]
            for d in card.get("dataSources", [])
        ],
    )
    out += ["", "## Evaluation", ""]
    data = evaluation.get("data", {})
    out += [f"Data: {data.get('description', '—')}, {_fmt(data.get('rows'))} rows", ""]
    out += _table(["metric", "value"], [[k, v] for k, v in sorted(evaluation["metrics"].items())])
    out += ["", "### Gates", ""]
    if evaluation["gates"]:
        out += _table(
            ["metric", "value", "min", "max", "result"],
            [
                [g["metric"], g["value"], g["min"], g["max"], "pass" if g["passed"] else "FAIL"]
                for g in evaluation["gates"]
            ],
        )
        out += [
            "",
            f"Overall: {'passed' if evaluation['passed'] else 'failed'} — {evaluation['reason']}",
        ]
    else:
        out.append("_No gates._")
    out += _attributions_section(evaluation.get("attributions"))
    out += ["", "## Lineage", ""]
    out += [
        f"- Dataset: {dataset['name']} version {dataset['version']} ({dataset['digest']})",
        f"- Training job: {lineage['trainingJob']} (run {lineage['trainingRun']})",
        f"- Code: {_code(lineage['trainingCodeVersion'])} (training), "
        f"{_code(lineage['evaluationCodeVersion'])} (evaluation)",
        "",
        "## Hyperparameters",
        "",
    ]
    out += _table(["name", "value"], [[k, v] for k, v in sorted(card["hyperparameters"].items())])
    best = card.get("bestTrial")
    out += ["", "## Best trial", ""]
    out += (
        [f"- {best['id']}: metric {_fmt(best.get('metric'))}, {best['hyperparameters']}"]
        if best
        else ["_No search was run._"]
    )
    if card.get("edge"):
        edge = card["edge"]
        out += ["", "## Edge bundle", ""]
        out += _edge_lines(edge)
    if card["plots"]:
        out += ["", "## Plots", ""] + [f"![{p}](plots/{p})" for p in card["plots"]]
    return "\n".join(out) + "\n"


def _edge_lines(edge: dict[str, Any]) -> list[str]:
    """What the edge bundle ships and why, with int8 against fp32 when int8 was built."""
    shipped = "int8" if edge["quantize"] == "int8" else "fp32"
    out = [
        f"- Ships: {shipped} ({edge['reason']}); bundle {edge['uri']} ({edge['digest']})",
        f"- Bundle model: {edge['shippedBytes']} bytes (fp32 TorchScript {edge['fp32Bytes']})",
    ]
    if edge.get("int8") is None:
        return [*out, f"- {edge['metric']} (fp32): {_fmt(edge['fp32'])} on {edge['heldOut']}"]
    latency = edge["latency"]
    rows = [
        ["TorchScript bytes", edge["fp32Bytes"], edge["int8Bytes"], edge["sizeRatio"]],
        ["single-row latency, ms", latency["fp32Ms"], latency["int8Ms"], latency["ratio"]],
        [f"{edge['metric']} ({edge['heldOut']})", edge["fp32"], edge["int8"], edge["change"]],
    ]
    return [*out, "", *_table(["", "fp32", "int8", "int8 / fp32 or change"], rows)]


def _code(version: dict[str, Any] | None) -> str:
    if not version:
        return "unknown"
    commit = version.get("gitCommit")
    return f"neuraxis {version.get('neuraxis')}" + (f" @ {commit[:12]}" if commit else "")


def _attributions_section(attributions: dict[str, Any] | None) -> list[str]:
    """Global feature attributions (workloads/explain.py), most important feature first."""
    if not attributions:
        return []
    delta = attributions["convergenceDelta"]
    out = ["", "## Feature attributions", ""]
    out += [
        f"{attributions['method']}, {attributions['nSteps']} steps, on {attributions['rows']} "
        f"rows (seed {attributions['seed']}) of the evaluation data ({attributions['sampledFrom']}"
        f" rows); explained output: {attributions['explainedOutput']}.",
        f"Baseline: {attributions['baseline']['description']}. Convergence delta (sum of "
        f"attributions minus the output's change from the baseline): mean |delta| "
        f"{_fmt(delta['meanAbs'])}, max |delta| {_fmt(delta['maxAbs'])}.",
        "",
    ]
    out += _table(
        ["feature", "mean |attribution|", "mean attribution", "baseline"],
        [
            [f["name"], f["meanAbs"], f["mean"], attributions["baseline"]["values"][f["name"]]]
            for f in attributions["features"]
        ],
    )
    return out
