from neuraxis.workloads.federated.client_app import app

__all__ = ["app"]
