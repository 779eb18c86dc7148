"""Federated training against centralized training on the union of the sites' data.

The data is examples/federated-hospitals: three hospitals' Datasets (the breast-cancer rows split
across them, skewed by label) and the held-out patients, made by the real ETL (`neuraxis run`'s
Runner, Spark). Then, on the same model, seed and epoch budget (rounds x localEpochs epochs
over every row):

- federated without DP, with central DP at targetEpsilon 8 (noise multiplier 1.0) and with the
  example's privacy (SecAgg+ on in all three): real Flower SuperLink and SuperNodes on loopback
  with TLS (`run_federated`, what `neuraxis run` and the pods use); the DP runs stop where the
  budget does, so they may run fewer rounds;
- centralized: the built-in trainer (`run_training`) on a Dataset holding exactly the union of
  the three sites' rows.

Each model is scored on the held-out patients with the evaluation workload's functions. It prints
accuracy and ROC-AUC, the ratio to centralized (goal >= 0.97 without DP), rounds per minute,
the array bytes the server receives per site per round (the model or its masked vector; the
SecAgg+ key and share exchange and HTTP framing are not counted) and the orchestration share of
a round: 1 - slowest site's training / round time.

`--noise-draws N` measures instead how often the example's ModelVersion gates pass under its
central DP: the example's rounds replayed in-process N times with the sites' own training code
(workloads/federated/site.py) and Flower's own clipping and noise functions, each with fresh
noise, scored on the held-out patients; the baseline is the same replay without noise.

    .venv/bin/python bench/federated.py [--rounds 3] [--local-epochs 5] [--noise-draws N]
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from neuraxis.crds.trainingjob import TrainingJob
from neuraxis.lake import Lake
from neuraxis.local.federated import run_federated
from neuraxis.local.runner import Runner, load_entries
from neuraxis.local.state import LocalStore
from neuraxis.workloads.evaluate.heldout import folder_of, load_artifact, load_heldout
from neuraxis.workloads.evaluate.metrics import classification_metrics
from neuraxis.workloads.evaluate.run import score
from neuraxis.workloads.federated import site
from neuraxis.workloads.federated.privacy import plan_rounds
from neuraxis.workloads.train.data import read_table
from neuraxis.workloads.train.run import run_training

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "federated-hospitals"
NAMESPACE = "default"
HOLDOUT = "tumour-holdout"
POOLED = "tumour-pooled"


def example_docs() -> dict[str, dict[str, Any]]:
    docs = [yaml.safe_load(f.read_text()) for f in sorted(EXAMPLE.glob("0*.yaml"))]
    return {d["metadata"]["name"]: d for d in docs}


def pooled_dataset(holdout: dict[str, Any]) -> dict[str, Any]:
    """The union of the three sites: every row that is not held out (buckets 3-19)."""
    doc = copy.deepcopy(holdout)
    doc["metadata"]["name"] = POOLED
    sql = doc["spec"]["transform"]["sql"]
    doc["spec"]["transform"]["sql"] = sql.replace(") <= 2", ") >= 3")
    assert doc["spec"]["transform"]["sql"] != sql, "the holdout's WHERE clause changed"
    return doc


def build_datasets(work: Path, docs: dict[str, dict[str, Any]]) -> Lake:
    folder = work / "resources"
    folder.mkdir()
    datasets = [d for d in docs.values() if d["kind"] == "Dataset"]
    datasets.append(pooled_dataset(docs[HOLDOUT]))
    for d in datasets:
        (folder / f"{d['metadata']['name']}.yaml").write_text(yaml.safe_dump(d))
    lake = Lake(str(work / "lake"))
    outcomes = Runner(lake, LocalStore(work / "state")).run(load_entries([folder], NAMESPACE))
    failed = [f"{o.name}: {o.message}" for o in outcomes if o.phase != "Ready"]
    if failed:
        raise SystemExit(f"the Datasets did not build: {failed}")
    return lake


def evaluate(lake: Lake, artifact_uri: str) -> dict[str, float]:
    artifact = load_artifact(lake, folder_of(lake, artifact_uri))
    heldout = load_heldout(lake, NAMESPACE, artifact, dataset=HOLDOUT)
    metrics, _ = score(artifact, heldout)
    scalars = metrics["scalars"]
    return {"accuracy": float(scalars["accuracy"]), "roc_auc": float(scalars["roc_auc"])}


def received_bytes_per_site_round(record_dir: Path, sites: int, rounds: int) -> float:
    """Every array the server received in a training-round reply, per site and round (the
    summary query before round 1 is left out)."""
    per_node: dict[str, int] = defaultdict(int)
    for file in record_dir.glob("*.npz"):
        _, message_type, node = file.stem.split("-", 2)
        if message_type == "query":
            continue
        with np.load(file) as arrays:
            per_node[node] += sum(arrays[k].nbytes for k in arrays.files)
    return sum(per_node.values()) / max(sites * rounds, 1)


def federated(lake: Lake, job: TrainingJob, work: Path, name: str) -> dict[str, Any]:
    record = work / f"{name}-received"
    started = time.perf_counter()
    result = run_federated(job, lake, NAMESPACE, f"bench-{name}", work / name, str(record))
    wall = time.perf_counter() - started
    if result.get("outcome") != "Succeeded":
        raise SystemExit(f"{name}: {result.get('reason')}: {result.get('message')}")
    fed = result["federation"]
    rounds = fed["rounds"]
    round_s = [float(r["metrics"]["roundSeconds"]) for r in rounds]
    train_s = [float(r["metrics"]["trainSecondsMax"]) for r in rounds]
    assert job.spec.federation is not None
    return {
        **evaluate(lake, result["artifact"]["uri"]),
        "rounds": fed["roundsCompleted"],
        "epsilon": fed["privacy"]["epsilonSpent"],
        "wall_s": wall,
        "rounds_per_min": 60.0 / float(np.mean(round_s)),
        "bytes_per_site_round": received_bytes_per_site_round(
            record, len(job.spec.federation.sites), len(rounds)
        ),
        "orchestration_share": 1.0 - sum(train_s) / sum(round_s),
    }


def centralized(lake: Lake, train_doc: dict[str, Any], epochs: int) -> dict[str, Any]:
    doc = copy.deepcopy(train_doc)
    doc["metadata"]["name"] = "tumour-centralized"
    spec = doc["spec"]
    spec.pop("federation")
    spec.pop("register", None)
    spec["datasetRef"] = {"name": POOLED}
    spec["model"]["epochs"] = epochs
    job = TrainingJob.model_validate(doc)
    started = time.perf_counter()
    result = run_training(job, lake, NAMESPACE, "bench-centralized")
    wall = time.perf_counter() - started
    if result is None or result.get("outcome") != "Succeeded":
        raise SystemExit(f"centralized training failed: {result}")
    return {**evaluate(lake, result["artifact"]["uri"]), "epochs": epochs, "wall_s": wall}


def federated_job(
    doc: dict[str, Any], privacy: dict[str, Any], rounds: int, local: int
) -> TrainingJob:
    out = copy.deepcopy(doc)
    out["spec"]["federation"].update(rounds=rounds, localEpochs=local, privacy=privacy)
    out["spec"].pop("register", None)
    return TrainingJob.model_validate(out)


def replay_noise(lake: Lake, job: TrainingJob, draws: int) -> list[dict[str, float]]:
    """The job's rounds (as many as its budget allows) replayed `draws` times in-process: each
    site trains from the global weights, its update is clipped (Flower's fixed clipping), the
    row-weighted mean gets the server's Gaussian noise (Flower's formula: sigma * C / sites).
    draws=0: once without noise. The held-out metrics of each final model."""
    from flwr.supercore.differential_privacy import (
        add_gaussian_noise_inplace,
        compute_clip_model_update,
        compute_stdv,
    )

    fed, spec = job.spec.federation, job.spec
    assert fed is not None and spec.model is not None
    refs = [s.dataset_ref for s in fed.sites]
    first = [site.read_site_data(lake, NAMESPACE, job, r, None) for r in refs]
    summaries = [site.site_summary(d) for d in first]
    norm = site.global_normalization(summaries)
    classes = site.global_classes(job, summaries)
    data = [site.read_site_data(lake, NAMESPACE, job, r, classes) for r in refs]
    held = read_table(lake, NAMESPACE, HOLDOUT, label=spec.task.label, task=spec.task.type,
                      features=spec.task.features, classes=classes)  # fmt: skip
    model, _ = site.build_global_model(job, len(summaries[0]["features"]), classes, norm)
    initial = site.get_arrays(model)
    rounds = plan_rounds(fed.privacy, fed.rounds, sample_rate=1.0).rounds
    noisy = draws > 0 and fed.privacy.mode == "central"
    assert fed.privacy.clipping_norm is not None or not noisy
    clip = float(fed.privacy.clipping_norm or 0.0)
    stdv = compute_stdv(float(fed.privacy.noise_multiplier or 0.0), clip, len(refs))
    out = []
    for _ in range(max(draws, 1)):
        weights = [w.copy() for w in initial]
        for r in range(1, rounds + 1):
            updates, rows = [], []
            for d in data:
                new, n, _ = site.train_round(
                    job, d, weights, norm, local_epochs=fed.local_epochs, server_round=r
                )
                if noisy:
                    compute_clip_model_update(new, weights, clip)
                updates.append(new)
                rows.append(n)
            weights = [
                np.average(np.stack(arrays), axis=0, weights=rows).astype(np.float32)
                for arrays in zip(*updates, strict=True)
            ]
            if noisy:
                add_gaussian_noise_inplace(weights, stdv)
        site.set_arrays(model, weights)
        model.eval()
        with torch.no_grad():
            probs = torch.softmax(model(held.train_x), dim=1).numpy()
        scalars = classification_metrics(held.train_y.numpy(), probs, classes)["scalars"]
        out.append({"accuracy": float(scalars["accuracy"]), "roc_auc": float(scalars["roc_auc"])})
    return out


def noise_report(lake: Lake, doc: dict[str, Any], draws: int) -> None:
    """How often the example's ModelVersion gates pass over `draws` noise draws."""
    job = TrainingJob.model_validate(doc)
    gates = example_docs()["tumour-classifier-v1"]["spec"]["evaluation"]["gates"]
    clean = replay_noise(lake, job, 0)[0]
    started = time.perf_counter()
    runs = replay_noise(lake, job, draws)
    wall = time.perf_counter() - started
    passed = [all(r[g["metric"]] >= g["min"] for g in gates) for r in runs]
    print(f"\n{draws} noise draws of the example's central DP ({wall:.0f} s); gates: "
          + ", ".join(f"{g['metric']} >= {g['min']}" for g in gates))  # fmt: skip
    print(f"{'metric':9} {'no noise':>8} {'mean':>6} {'ratio':>6} {'p1':>6} {'p5':>6} {'min':>6}")
    for metric in ("accuracy", "roc_auc"):
        values = np.array([r[metric] for r in runs])
        print(
            f"{metric:9} {clean[metric]:8.3f} {values.mean():6.3f}"
            f" {values.mean() / clean[metric]:6.3f} {np.percentile(values, 1):6.3f}"
            f" {np.percentile(values, 5):6.3f} {values.min():6.3f}"
        )
    print(f"gates passed: {sum(passed)} of {draws} ({sum(passed) / draws:.1%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--noise-draws", type=int, default=0)
    args = parser.parse_args()
    docs = example_docs()
    train_doc = docs["tumour-federated"]
    example_privacy = train_doc["spec"]["federation"]["privacy"]
    # Epsilon 8: noise multiplier 1.0 allows 2 rounds (7.08); the example's 0.5 allows none.
    eps8 = dict(example_privacy, noiseMultiplier=1.0, targetEpsilon=8.0)
    variants = [
        ("federated, no DP", {"mode": "none"}),
        ("federated, DP eps 8", eps8),
        (f"federated, DP eps {example_privacy['targetEpsilon']:g}", example_privacy),
    ]
    os.environ.setdefault("NEURAXIS_SECRET_LAKE_SALT_SALT", "bench-salt")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        lake = build_datasets(work, docs)
        print(f"datasets (real ETL, 5 Spark runs): {time.perf_counter() - t0:.0f} s", flush=True)
        if args.noise_draws > 0:
            noise_report(lake, train_doc, args.noise_draws)
            return
        rows: dict[str, dict[str, Any]] = {}
        rows["centralized"] = centralized(lake, train_doc, args.rounds * args.local_epochs)
        for name, privacy in variants:
            job = federated_job(train_doc, privacy, args.rounds, args.local_epochs)
            slug = "".join(c if c.isalnum() else "-" for c in name)
            rows[name] = federated(lake, job, work, slug)
    base = rows["centralized"]
    epochs = args.rounds * args.local_epochs
    print(f"\nsame model and seed; {args.rounds} rounds x {args.local_epochs} local epochs ="
          f" {epochs} centralized epochs; scored on the held-out patients")  # fmt: skip
    print(f"{'run':22} {'accuracy':>8} {'ratio':>6} {'roc_auc':>7} {'rounds':>6} {'epsilon':>7}"
          f" {'rounds/min':>10} {'array B/site/rd':>16} {'orchestration':>13}"
          f" {'wall s':>6}")  # fmt: skip
    for name, r in rows.items():
        fed = "rounds" in r
        print(
            f"{name:22} {r['accuracy']:8.3f} {r['accuracy'] / base['accuracy']:6.3f}"
            f" {r['roc_auc']:7.3f} {r['rounds'] if fed else '-':>6}"
            f" {r['epsilon'] if fed else 0.0:7.2f}"
            f" {r['rounds_per_min'] if fed else 0.0:10.1f}"
            f" {r['bytes_per_site_round'] if fed else 0.0:16,.0f}"
            f" {r['orchestration_share'] if fed else 0.0:13.1%} {r['wall_s']:6.0f}"
        )
    print("goal: federated without DP >= 0.97x centralized accuracy")


if __name__ == "__main__":
    main()
