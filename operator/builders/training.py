"""TrainingJob -> headless Service + Indexed Job running torchrun, one process per GPU of a pod
(or, with `tuning`, one driver Job that runs Ray locally inside its pod)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neuraxis.crds import TrainingJob
from neuraxis.operator.builders.common import RUN_ID_ENV, job, spec_config_map
from neuraxis.operator.children import RUN_LABEL, SPEC_FILE, child_metadata, run_name
from neuraxis.operator.pods import pod_template, resource_limits, workload_container
from neuraxis.operator.settings import OperatorSettings

MASTER_PORT = 29500


@dataclass(frozen=True)
class ResolvedDataset:
    """The Dataset version a run reads, pinned when the run starts (lineage)."""

    name: str
    version: int
    uri: str | None = None
    digest: str | None = None


def pinned(tj: TrainingJob, dataset: ResolvedDataset) -> TrainingJob:
    """The job with its dataset reference pinned to the version resolved now."""
    out = tj.model_copy(deep=True)
    out.spec.central_dataset().version = dataset.version
    return out


def gpu_scheduling(settings: OperatorSettings, gpus: int) -> dict[str, Any]:
    if not gpus:
        return {}
    key, value, effect = settings.gpu_taint
    label_key, label_value = settings.gpu_pool_label
    return {
        "nodeSelector": {label_key: label_value},
        "tolerations": [{"key": key, "operator": "Equal", "value": value, "effect": effect}],
    }


def training_service_name(tj: TrainingJob) -> str:
    return f"{tj.metadata.name}-workers"


def processes_per_pod(gpus_per_worker: int) -> int:
    """torchrun starts one process per GPU the pod is given (each takes cuda:<local rank>);
    a CPU pod runs one."""
    return gpus_per_worker if gpus_per_worker > 0 else 1


def _train_command(
    tj: TrainingJob, job_name: str, workers: int, tuning: bool, gpus: int
) -> list[str]:
    namespace = tj.metadata.namespace or "default"
    workload = [
        "-m", "neuraxis.cli", "workload", "train", "--spec", SPEC_FILE,
        "--namespace", namespace, "--run-id", "$(NEURAXIS_RUN_ID)",
    ]  # fmt: skip
    if tuning:  # one driver pod: Ray runs the trials
        return ["python", *workload]
    master = f"{job_name}-0.{training_service_name(tj)}.{namespace}.svc"
    return [
        "torchrun", f"--nnodes={workers}", f"--nproc-per-node={processes_per_pod(gpus)}",
        "--max-restarts=0", "--node-rank=$(JOB_COMPLETION_INDEX)", f"--master-addr={master}",
        f"--master-port={MASTER_PORT}", *workload,
    ]  # fmt: skip


def build_training_children(
    tj: TrainingJob, dataset: ResolvedDataset, settings: OperatorSettings
) -> list[dict[str, Any]]:
    """Children of one run (one generation) of the job."""
    spec = tj.spec
    tuning = spec.tuning is not None
    name = run_name(tj, "tune" if tuning else "train")
    component = "tune" if tuning else "train"
    resolved = pinned(tj, dataset)
    config = spec_config_map(resolved, name, component)
    workers = 1 if tuning else spec.resources.workers
    gpus = spec.resources.gpus_per_worker
    env = {"NEURAXIS_DATASET": dataset.name, "NEURAXIS_DATASET_VERSION": str(dataset.version)}
    if dataset.digest:
        env["NEURAXIS_DATASET_DIGEST"] = dataset.digest
    completion_index = {
        "name": "JOB_COMPLETION_INDEX",
        "valueFrom": {
            "fieldRef": {
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
            }
        },
    }
    container = workload_container(
        tj,
        settings,
        _train_command(tj, name, workers, tuning, gpus),
        resources=resource_limits(spec.resources.cpu, spec.resources.memory, gpus),
        env=env,
        extra_env=[RUN_ID_ENV, completion_index],
        ports=None if tuning else [{"name": "rendezvous", "containerPort": MASTER_PORT}],
    )
    scheduling: dict[str, Any] = gpu_scheduling(settings, gpus)
    if not tuning:
        # Indexed pods get stable hostnames <job>-<index> under this subdomain (rendezvous).
        scheduling["subdomain"] = training_service_name(tj)
    template = pod_template(
        tj, settings, component, container, name, labels={RUN_LABEL: name}, scheduling=scheduling
    )
    run = job(
        tj,
        name,
        component,
        template,
        backoff_limit=spec.backoff_limit,
        active_deadline_seconds=spec.active_deadline_seconds,
        suspend=spec.suspend,
        completions=workers,
        indexed=True,
    )
    if tuning:
        return [config, run]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(tj, training_service_name(tj), component),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # rendezvous happens before pods are Ready
            "selector": {RUN_LABEL: name},
            "ports": [{"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
        },
    }
    return [config, service, run]
