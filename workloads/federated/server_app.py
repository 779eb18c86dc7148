"""The Flower ServerApp of a federated TrainingJob.

Before round 1 it asks every site for a summary (rows, feature sums, label values, data version)
to build the pooled normalisation and the class list; it plans the rounds the epsilon budget
allows (privacy.py); then Flower's DefaultWorkflow runs them with the strategy (FedAvg or FedProx,
wrapped for central DP) and, when enabled, the SecAgg+ fit workflow. At the end it writes the
artifact (the TrainingJob contract: TorchScript, signature, sha256 manifest) and the result with
`federation` (status.federation) and per-site lineage."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import (
    Context,
    FitIns,
    FitRes,
    GetPropertiesIns,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.compat.common import recorddict_compat as compat
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAvg,
    FedProx,
    Strategy,
)
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

from neuraxis.crds.trainingjob import Federation, FederationStatus, TrainingJob
from neuraxis.lake import Lake
from neuraxis.workloads.artifact import write_artifact
from neuraxis.workloads.federated import client_app as cfg_keys
from neuraxis.workloads.federated import config as keys
from neuraxis.workloads.federated.privacy import RoundPlan, plan_rounds
from neuraxis.workloads.federated.roles import compact_result
from neuraxis.workloads.federated.site import (
    build_global_model,
    get_arrays,
    global_classes,
    global_normalization,
    set_arrays,
)
from neuraxis.workloads.federation_contract import BUDGET_EXHAUSTED, NOT_ENOUGH_SITES
from neuraxis.workloads.result import (
    now_rfc3339,
    publish_failure,
    publish_result,
)
from neuraxis.workloads.train.custom import artifact_folder
from neuraxis.workloads.train.export import artifact_files, build_signature
from neuraxis.workloads.train.provenance import code_version

log = logging.getLogger(__name__)
# How long the server waits for the sites' SuperNodes to connect before round 1.
SITE_WAIT_SECONDS = 300.0
# How long each SecAgg+ stage waits for the sites: a site silent for longer counts as dropped
# (its share holders let the others finish the round without it).
SECAGG_STAGE_TIMEOUT_SECONDS = 300.0


@dataclass
class RoundLog:
    """Which sites each round asked and which answered (node id -> site name)."""

    sites: dict[int, str]
    asked: dict[int, list[int]] = field(default_factory=dict)
    answered: dict[int, list[int]] = field(default_factory=dict)
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    started: dict[int, float] = field(default_factory=dict)  # monotonic clock at configure_fit

    def status(self, plan: RoundPlan, federation: Federation) -> FederationStatus:
        rounds = []
        for r in sorted(self.answered):
            active = sorted(self.sites[n] for n in self.answered[r] if n in self.sites)
            dropped = sorted(
                self.sites[n] for n in self.asked.get(r, []) if n not in self.answered[r]
            )
            rounds.append(
                {"round": r, "sitesActive": active, "sitesDropped": dropped,
                 "metrics": self.metrics.get(r, {})}
            )  # fmt: skip
        privacy = federation.privacy
        done = len(rounds)
        wire: dict[str, Any] = {"roundsCompleted": done, "rounds": rounds}
        wire["privacy"] = {
            "epsilonSpent": plan.epsilons[done - 1] if plan.epsilons and done else 0.0,
            "delta": privacy.delta,
            **({"clippingNorm": privacy.clipping_norm} if privacy.clipping_norm else {}),
            **({"noiseMultiplier": privacy.noise_multiplier} if privacy.noise_multiplier else {}),
        }
        return FederationStatus.model_validate(wire)


class RecordingStrategy(Strategy):
    """Delegates to the real strategy and notes, per round, the sites asked and answered."""

    def __init__(self, inner: Strategy, rounds: RoundLog):
        self.inner = inner
        self.rounds = rounds

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        chosen = self.inner.configure_fit(server_round, parameters, client_manager)
        self.rounds.asked[server_round] = [int(proxy.cid) for proxy, _ in chosen]
        self.rounds.started[server_round] = time.monotonic()
        return chosen

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self.rounds.answered[server_round] = [int(proxy.cid) for proxy, _ in results]
        aggregated, metrics = self.inner.aggregate_fit(server_round, results, failures)
        self.rounds.metrics[server_round] = {
            **_mean_metrics(results),
            **_round_timing(results, time.monotonic() - self.rounds.started[server_round]),
        }
        return aggregated, metrics

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[Any]:
        return []  # sites validate inside fit (their validation split), reported as metrics

    def aggregate_evaluate(
        self, server_round: int, results: list[Any], failures: list[Any]
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return None  # the server holds no data


def _mean_metrics(results: list[tuple[ClientProxy, FitRes]]) -> dict[str, float]:
    """Row-weighted mean of the sites' numeric metrics (validation loss, accuracy, ...)."""
    total = sum(res.num_examples for _, res in results)
    out: dict[str, float] = {}
    for _, res in results:
        for key, value in res.metrics.items():
            if key == cfg_keys.TRAIN_SECONDS:
                continue  # a mean of sites' times says little; _round_timing keeps the slowest
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[key] = out.get(key, 0.0) + float(value) * res.num_examples / max(total, 1)
    return out


def _round_timing(results: list[tuple[ClientProxy, FitRes]], seconds: float) -> dict[str, float]:
    """A round's wall time on the server (asking the sites to aggregating their answer: SecAgg+
    stages and transport included) and its slowest site's local training; the difference is
    what orchestration costs."""
    train = [float(res.metrics.get(cfg_keys.TRAIN_SECONDS, 0.0)) for _, res in results]
    return {"roundSeconds": seconds, "trainSecondsMax": max(train, default=0.0)}


def wait_for_sites(grid: Grid, wanted: int, minimum: int) -> list[int]:
    """Node ids once every site's SuperNode is connected, or at least `minimum` at the deadline."""
    deadline = time.monotonic() + SITE_WAIT_SECONDS
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= wanted or (time.monotonic() > deadline):
            return nodes
        time.sleep(1.0)


def query_sites(grid: Grid, nodes: list[int]) -> dict[int, dict[str, Any]]:
    """Each site's summary (site.site_summary), keyed by node id."""
    content = compat.getpropertiesins_to_recorddict(GetPropertiesIns(config={}))
    messages = [grid.create_message(content, "get_properties", n, "summary") for n in nodes]
    out: dict[int, dict[str, Any]] = {}
    for reply in grid.send_and_receive(messages, timeout=SITE_WAIT_SECONDS):
        if reply.has_error():
            continue
        props = compat.recorddict_to_getpropertiesres(reply.content).properties
        out[reply.metadata.src_node_id] = {
            **json.loads(str(props["summary"])),
            "site": str(props["site"]),
        }
    return out


def build_strategy(
    fed: Federation, n_sites: int, fit_config: dict[str, Scalar], initial: Parameters
) -> Strategy:
    common: dict[str, Any] = {
        "fraction_fit": 1.0,
        "fraction_evaluate": 0.0,
        "min_fit_clients": fed.min_sites,
        "min_available_clients": fed.min_sites,
        "initial_parameters": initial,
        "on_fit_config_fn": lambda r: {**fit_config, cfg_keys.CFG_ROUND: r},
        "accept_failures": True,
    }
    strategy: Strategy
    if fed.strategy.name == "FedProx":
        strategy = FedProx(proximal_mu=float(fed.strategy.proximal_mu or 0.0), **common)
    else:
        strategy = FedAvg(**common)
    privacy = fed.privacy
    if privacy.mode == "central":
        assert privacy.noise_multiplier is not None and privacy.clipping_norm is not None
        strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy, privacy.noise_multiplier, privacy.clipping_norm, n_sites
        )
    return strategy


class RecordingGrid:
    """Tests only: passes everything to the real grid and saves every array the server
    receives in a reply, so a test can show what the server saw."""

    def __init__(self, grid: Grid, folder: Path):
        self.grid = grid
        self.folder = folder
        self.count = 0
        folder.mkdir(parents=True, exist_ok=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        from flwr.common import bytes_to_ndarray

        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if reply.has_error():
                continue
            arrays: list[np.ndarray[Any, Any]] = []
            for record in reply.content.array_records.values():
                arrays += [a.numpy() for a in record.values()]
            for configs in reply.content.config_records.values():
                for value in configs.values():
                    if isinstance(value, list) and value and isinstance(value[0], bytes):
                        arrays += [bytes_to_ndarray(b) for b in value if b[:6] == b"\x93NUMPY"]
            self.count += 1
            name = f"{self.count:04d}-{reply.metadata.message_type}-{reply.metadata.src_node_id}"
            np.savez(self.folder / f"{name}.npz", *arrays)
        return replies


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    job = keys.decode_job(str(context.run_config[keys.RUN_JOB]))
    namespace = str(context.run_config[keys.RUN_NAMESPACE])
    run_id = str(context.run_config[keys.RUN_ID])
    record_dir = str(context.run_config.get(keys.RUN_RECORD_DIR, ""))
    if record_dir:
        grid = RecordingGrid(grid, Path(record_dir))  # type: ignore[assignment]
    run_federation(grid, context, job, namespace, run_id, Lake.from_env())


def run_federation(
    grid: Grid, context: Context, job: TrainingJob, namespace: str, run_id: str, lake: Lake
) -> dict[str, Any] | None:
    started = now_rfc3339()
    fed = job.spec.federation
    assert fed is not None and job.spec.model is not None
    nodes = wait_for_sites(grid, len(fed.sites), fed.min_sites)
    summaries = query_sites(grid, nodes)
    if len(summaries) < fed.min_sites:
        message = (
            f"{len(summaries)} of {len(fed.sites)} sites answered; minSites is {fed.min_sites}"
        )
        publish_failure(lake, namespace, run_id, NOT_ENOUGH_SITES, message, started)
        return None
    sites = {n: s["site"] for n, s in summaries.items()}
    listed = list(summaries.values())
    norm = global_normalization(listed)
    classes = global_classes(job, listed)
    if job.spec.task.type == "classification" and len(classes) < 2:
        message = f"the sites hold {len(classes)} label value(s) together; classification needs 2"
        publish_failure(lake, namespace, run_id, "DataError", message, started)
        return None
    features = listed[0]["features"]
    model, cfg = build_global_model(job, len(features), classes, norm)
    plan = plan_rounds(fed.privacy, fed.rounds, sample_rate=1.0)
    rounds = RoundLog(sites=sites)
    if plan.rounds > 0:
        fit_config: dict[str, Scalar] = {
            cfg_keys.CFG_NORMALIZATION: norm.to_json(),
            cfg_keys.CFG_CLASSES: json.dumps(classes),
            cfg_keys.CFG_LOCAL_EPOCHS: fed.local_epochs,
        }
        if fed.privacy.mode == "local":
            fit_config[cfg_keys.CFG_LOCAL_NOISE] = (
                f"{fed.privacy.clipping_norm},{fed.privacy.noise_multiplier}"
            )
        initial = ndarrays_to_parameters(get_arrays(model))
        strategy = RecordingStrategy(
            build_strategy(fed, len(summaries), fit_config, initial), rounds
        )
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=plan.rounds), strategy=strategy
        )
        secagg = fed.secure_aggregation
        fit_workflow = (
            SecAggPlusWorkflow(
                num_shares=secagg.shares,
                reconstruction_threshold=secagg.threshold,
                # FedAvg's weight is a site's row count; SecAgg+ needs a bound on it.
                max_weight=float(max(int(s["rows"]) for s in listed) + 1),
                timeout=SECAGG_STAGE_TIMEOUT_SECONDS,
            )
            if secagg.enabled
            else None
        )
        DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)
        final = legacy.state.array_records[MAIN_PARAMS_RECORD]
        set_arrays(model, parameters_to_ndarrays(compat.arrayrecord_to_parameters(final, True)))
    status = rounds.status(plan, fed)
    reason = BUDGET_EXHAUSTED if plan.budget_exhausted else "Trained"
    if status.rounds_completed == 0:
        if plan.rounds == 0:
            message = "not one round fits within privacy.targetEpsilon"
            publish_failure(lake, namespace, run_id, BUDGET_EXHAUSTED, message, started)
        else:
            message = "no round completed (too few sites answered in time)"
            publish_failure(lake, namespace, run_id, NOT_ENOUGH_SITES, message, started)
        return None
    return _publish(job, lake, namespace, run_id, model, cfg, classes, features, listed, sites,
                    rounds, status, reason, started)  # fmt: skip


def _publish(
    job: TrainingJob,
    lake: Lake,
    namespace: str,
    run_id: str,
    model: Any,
    cfg: Any,
    classes: list[str],
    features: list[str],
    summaries: list[dict[str, Any]],
    sites: dict[int, str],
    rounds: RoundLog,
    status: FederationStatus,
    reason: str,
    started: str,
) -> dict[str, Any]:
    from neuraxis.workloads.train.run import model_version_name

    version = model_version_name(job)
    by_site = {s["site"]: s for s in summaries}
    site_lineage = [
        {
            "site": name,
            "dataset": by_site[name]["dataset"],
            "datasetVersion": by_site[name]["datasetVersion"],
            "datasetDigest": by_site[name]["datasetDigest"],
            "rounds": [r.round for r in status.rounds if name in r.sites_active],
        }
        for name in sorted(by_site)
    ]
    federation = status.to_wire()
    training_meta: dict[str, Any] = {
        "job": job.metadata.name,
        "namespace": namespace,
        "runId": run_id,
        "federation": federation,
        "sites": site_lineage,
        "codeVersion": code_version(),
    }
    signature = build_signature(
        features=features,
        task=job.spec.task.type,
        classes=classes,
        label=job.spec.task.label,
        architecture=cfg.architecture,
        model_version=version,
    )
    ref = write_artifact(
        lake,
        artifact_folder(job, namespace, run_id),
        artifact_files(model, cfg, signature, training_meta),
    )
    metrics = status.rounds[-1].metrics if status.rounds else {}
    result: dict[str, Any] = {
        "outcome": "Succeeded",
        "reason": reason,
        "kind": "TrainingJob",
        "name": job.metadata.name,
        "namespace": namespace,
        "runId": run_id,
        "startTime": started,
        "completionTime": now_rfc3339(),
        "metrics": metrics,
        "artifact": {"uri": ref.uri, "digest": ref.digest, "sizeBytes": ref.size_bytes},
        "modelVersion": version if job.spec.register_ else None,
        "federation": federation,
        "lineage": {"sites": site_lineage, "codeVersion": training_meta["codeVersion"]},
    }
    publish_result(lake, namespace, run_id, result, compact_result(result))
    log.info("federated run %s: %s after %d rounds", run_id, reason, status.rounds_completed)
    return result
