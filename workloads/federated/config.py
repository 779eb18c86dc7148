"""How a federated run is described to Flower's processes: the run config (the same for the
ServerApp and every ClientApp; set by whoever submits the run) and each SuperNode's node config
(its site and its Dataset version only). The operator and `neuraxis run` both build them here."""

from __future__ import annotations

import base64
import json

from neuraxis.crds.trainingjob import TrainingJob

# Run config keys (declared with defaults in app/pyproject.toml).
RUN_JOB = "job"  # the TrainingJob, JSON then base64 (run config values are flat strings)
RUN_NAMESPACE = "namespace"
RUN_ID = "run-id"
RUN_RECORD_DIR = "record-dir"  # tests only: where the server records what it receives
# Node config keys (per SuperNode).
NODE_SITE = "site"
NODE_DATASET = "dataset"
NODE_DATASET_VERSION = "dataset-version"  # -1: the latest version


def encode_job(job: TrainingJob) -> str:
    return base64.b64encode(json.dumps(job.to_wire(), sort_keys=True).encode()).decode()


def decode_job(text: str) -> TrainingJob:
    return TrainingJob.model_validate(json.loads(base64.b64decode(text)))


def run_config(job: TrainingJob, namespace: str, run_id: str, record_dir: str = "") -> list[str]:
    """`flwr run --run-config` arguments (TOML values)."""
    values = {
        RUN_JOB: encode_job(job),
        RUN_NAMESPACE: namespace,
        RUN_ID: run_id,
        RUN_RECORD_DIR: record_dir,
    }
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def node_config(site: str, dataset: str, version: int | None) -> str:
    """`flower-supernode --node-config`: the site and the one Dataset version it may read."""
    pinned = -1 if version is None else version
    return f'{NODE_SITE}="{site}" {NODE_DATASET}="{dataset}" {NODE_DATASET_VERSION}={pinned}'
