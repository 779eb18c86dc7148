"""The environment contract for `spec.custom` (user code in its own image).

The operator puts these variables into every training pod; `neuraxis run` sets them for local
processes:

    NEURAXIS_DATASET_URI       the Dataset's Delta table (file:// or s3:// URI)
    NEURAXIS_DATASET_VERSION   the table version to read (empty: latest)
    NEURAXIS_OUTPUT_URI        where to write the model artifact: models/<ns>/<model>/<version>/
                               <run-id> for a registered version, else runs/<ns>/<run-id>/model
                               (run-unique either way: a rerun never rewrites earlier files)
    NEURAXIS_RUN_URI           runs/<ns>/<run-id>/ (checkpoints, result.json)
    RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT   torch.distributed rendezvous
plus the lake's S3 settings (AWS_*) when the lake is s3:// and `spec.custom.env`.
"""

from __future__ import annotations

from neuraxis.crds.trainingjob import TrainingJob
from neuraxis.lake import Lake
from neuraxis.lake_access import artifact_folder

DEFAULT_MASTER_PORT = 29500
__all__ = ["DEFAULT_MASTER_PORT", "artifact_folder", "custom_trainer_env"]


def custom_trainer_env(
    job: TrainingJob,
    lake: Lake,
    namespace: str,
    run_id: str,
    *,
    rank: int,
    world_size: int,
    master_addr: str,
    master_port: int = DEFAULT_MASTER_PORT,
    local_rank: int = 0,
) -> dict[str, str]:
    """The variables a custom trainer process receives (see the module docstring)."""
    ref = job.spec.central_dataset()
    env = {
        "NEURAXIS_DATASET_URI": lake.uri(Lake.table_path(ref.namespace or namespace, ref.name)),
        "NEURAXIS_DATASET_VERSION": "" if ref.version is None else str(ref.version),
        "NEURAXIS_OUTPUT_URI": lake.uri(artifact_folder(job, namespace, run_id)),
        "NEURAXIS_RUN_URI": lake.uri(Lake.run_path(namespace, run_id)),
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(local_rank),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
    }
    env.update({k: v for k, v in lake.storage_options().items() if k.startswith("AWS_")})
    if job.spec.custom is not None:
        env.update(job.spec.custom.env)
    return env
