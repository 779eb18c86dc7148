"""The Neuraxis API (neuraxis.dev/v1alpha1): pydantic models, the single source of the CRDs."""

from neuraxis.crds.dataset import Dataset
from neuraxis.crds.edgedeployment import EdgeDeployment
from neuraxis.crds.modelversion import ModelVersion
from neuraxis.crds.trainingjob import TrainingJob

Resource = Dataset | TrainingJob | ModelVersion | EdgeDeployment

__all__ = ["Dataset", "EdgeDeployment", "ModelVersion", "Resource", "TrainingJob"]
