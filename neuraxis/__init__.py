"""Neuraxis: an AI-platform bundle for Kubernetes (API, operator, workloads, infrastructure)."""

__version__ = "0.1.0"

API_GROUP = "neuraxis.dev"
API_VERSION = "v1alpha1"
