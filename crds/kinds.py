"""The four Neuraxis kinds and how each appears in the API: names, short names, printer columns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from neuraxis import API_GROUP, API_VERSION
from neuraxis.crds.common import ApiModel
from neuraxis.crds.dataset import Dataset
from neuraxis.crds.edgedeployment import EdgeDeployment
from neuraxis.crds.modelversion import ModelVersion
from neuraxis.crds.trainingjob import TrainingJob

AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
PHASE_COLUMN = {"name": "Phase", "type": "string", "jsonPath": ".status.phase"}


@dataclass(frozen=True)
class KindInfo:
    """How one kind is named and shown by the API server."""

    kind: str
    plural: str
    short_name: str
    model: type[ApiModel]
    columns: list[dict[str, Any]] = field(default_factory=list)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{API_GROUP}"

    @property
    def api_version(self) -> str:
        return f"{API_GROUP}/{API_VERSION}"


KINDS: dict[str, KindInfo] = {
    info.kind: info
    for info in (
        KindInfo(
            "Dataset",
            "datasets",
            "nxds",
            Dataset,
            [
                PHASE_COLUMN,
                {"name": "Version", "type": "integer", "jsonPath": ".status.version"},
                {"name": "Rows", "type": "integer", "jsonPath": ".status.rows"},
                {"name": "Quality", "type": "boolean", "jsonPath": ".status.qualityPassed"},
            ],
        ),
        KindInfo(
            "TrainingJob",
            "trainingjobs",
            "nxtj",
            TrainingJob,
            [
                PHASE_COLUMN,
                {"name": "Dataset", "type": "string", "jsonPath": ".spec.datasetRef.name"},
                {"name": "Progress", "type": "integer", "jsonPath": ".status.progress.percent"},
                {"name": "Model", "type": "string", "jsonPath": ".status.modelVersion"},
            ],
        ),
        KindInfo(
            "ModelVersion",
            "modelversions",
            "nxmv",
            ModelVersion,
            [
                {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
                {"name": "Stage", "type": "string", "jsonPath": ".spec.stage"},
                PHASE_COLUMN,
                {
                    "name": "Endpoint",
                    "type": "string",
                    "jsonPath": ".status.endpoint",
                    "priority": 1,
                },
            ],
        ),
        KindInfo(
            "EdgeDeployment",
            "edgedeployments",
            "nxed",
            EdgeDeployment,
            [
                {"name": "Model", "type": "string", "jsonPath": ".spec.modelVersionRef.name"},
                PHASE_COLUMN,
                {"name": "Targeted", "type": "integer", "jsonPath": ".status.targetedNodes"},
                {"name": "Ready", "type": "integer", "jsonPath": ".status.readyNodes"},
            ],
        ),
    )
}
