"""The contract between the operator and the federated workload (`neuraxis.workloads.federated`):
how the pods are started, where their TLS material is mounted, which environment they get,
and what the server app reports. The operator imports this module, never the workload.

In a cluster the operator starts, per run of a TrainingJob with `spec.federation`:
  - the SuperLink:  `python -m neuraxis.workloads.federated superlink --spec <SPEC_FILE>`
  - one SuperNode per site: `... supernode --spec <SPEC_FILE>`
  - the server app (a Job): `... server --spec <SPEC_FILE>`
and passes the rest in the environment variables below."""

from __future__ import annotations

from typing import Literal

FEDERATED_MODULE = "neuraxis.workloads.federated"
Role = Literal["superlink", "supernode", "server"]
ROLES: tuple[Role, ...] = ("superlink", "supernode", "server")

# Flower's SuperLink ports: the ServerAppIo API and the Control API (the server app: a run is
# submitted through Control, a ServerApp process pulls it through ServerAppIo) and the Fleet
# API (SuperNodes). The NetworkPolicies open each to its own clients only.
SERVERAPPIO_PORT = 9091
FLEET_PORT = 9092
CONTROL_PORT = 9093

# TLS material, mounted read-only. The SuperLink gets the server certificate and key (and the
# CA); a SuperNode and the server app get the CA certificate only.
TLS_MOUNT = "/etc/neuraxis/tls"
CA_CERT_FILE = "ca.crt"
SERVER_CERT_FILE = "tls.crt"
SERVER_KEY_FILE = "tls.key"

# Environment of the federated pods.
# host:port of the SuperLink API the pod talks to: Fleet for a SuperNode, ServerAppIo for the
# server app (which also gets CONTROL_ADDRESS_ENV).
SUPERLINK_ADDRESS_ENV = "NEURAXIS_FED_SUPERLINK"
CONTROL_ADDRESS_ENV = "NEURAXIS_FED_CONTROL"
TLS_DIR_ENV = "NEURAXIS_FED_TLS_DIR"
SITE_ENV = "NEURAXIS_FED_SITE"  # a SuperNode's site name
# A SuperNode's one Dataset (the same variables a training Job gets for its dataset):
# NEURAXIS_DATASET, NEURAXIS_DATASET_VERSION, NEURAXIS_DATASET_DIGEST (when known).

# The server app's result is the training result (outcome, reason, metrics, artifact) plus
# RESULT_KEY. The compact copy must fit the 4096-byte termination message (else only outcome,
# reason and resultUri arrive): keep the latest rounds that fit there, all of them in the lake's
# result.json; roundsCompleted and privacy always.
#   {"roundsCompleted": int,
#    "rounds": [{"round": int, "sitesActive": [str], "sitesDropped": [str],
#                "metrics": {str: float}}],
#    "privacy": {"epsilonSpent": float, "delta": float, "clippingNorm": float,
#                "noiseMultiplier": float}}
# A run stopped by its epsilon budget reports outcome Succeeded, reason BUDGET_EXHAUSTED; one
# that never had minSites sites reports outcome Failed, reason NOT_ENOUGH_SITES.
RESULT_KEY = "federation"
BUDGET_EXHAUSTED = "BudgetExhausted"
NOT_ENOUGH_SITES = "NotEnoughSites"
