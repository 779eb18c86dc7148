"""The contract between the operator and the federated workload (`neuraxis.workloads.federated`):
how the pods are started, where their TLS material is mounted, which environment they get,
and what the server app reports. The operator imports this module, never the workload.

In a cluster the operator starts, per run of a TrainingJob with `spec.federation`:
  - the SuperLink (a Deployment): `neuraxis workload federated superlink`; the ServerApp runs
    under it (Flower's subprocess isolation), so it gets the lake like any workload;
  - one SuperNode per site (a Deployment): `... supernode`;
  - the server (the run's Job): `... server --spec <SPEC_FILE> --namespace <ns> --run-id <id>`,
    which submits the run, waits for its result and reports it in its termination message;
and passes the rest in the environment variables below. `neuraxis run` starts the same commands
on loopback (neuraxis/local/federated.py)."""

from __future__ import annotations

import json
from typing import Any, Literal

WORKLOAD_COMMAND = ("python", "-m", "neuraxis.cli", "workload", "federated")
Role = Literal["superlink", "supernode", "server"]
ROLES: tuple[Role, ...] = ("superlink", "supernode", "server")

# Flower 1.42's SuperLink serves the Fleet API (SuperNodes), the Control API (the server's
# `flwr run`) and the ServerAppIo API on one port. The NetworkPolicies open it to the run's
# SuperNodes and server only.
SUPERLINK_PORT = 9092

# TLS material, mounted read-only. The SuperLink gets the server certificate and key (and the
# CA); a SuperNode and the server app get the CA certificate only.
TLS_MOUNT = "/etc/neuraxis/tls"
CA_CERT_FILE = "ca.crt"
SERVER_CERT_FILE = "tls.crt"
SERVER_KEY_FILE = "tls.key"

# Environment of the federated pods: host:port of the SuperLink for a SuperNode (Fleet) and
# for the server (Control); the folder holding the TLS files.
SUPERLINK_ADDRESS_ENV = "NEURAXIS_FED_SUPERLINK"
CONTROL_ADDRESS_ENV = "NEURAXIS_FED_CONTROL"
TLS_DIR_ENV = "NEURAXIS_FED_TLS_DIR"
SITE_ENV = "NEURAXIS_FED_SITE"  # a SuperNode's site name
# A SuperNode's one Dataset (the same variables a training Job gets for its dataset):
# NEURAXIS_DATASET, NEURAXIS_DATASET_VERSION, NEURAXIS_DATASET_DIGEST (when known).

# The server app's result is the training result (outcome, reason, metrics, artifact) plus
# RESULT_KEY. The compact copy must fit the 4096-byte termination message (else only outcome,
# reason and resultUri arrive): its RESULT_KEY is `compact_federation(<the full block>)`, the
# same shape with the latest rounds that fit; result.json in the lake has them all.
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

# Room for RESULT_KEY in the termination message, next to outcome, reason, metrics, artifact.
COMPACT_FEDERATION_BYTES = 2048


def compact_federation(
    federation: dict[str, Any], limit: int = COMPACT_FEDERATION_BYTES
) -> dict[str, Any]:
    """The RESULT_KEY block of the compact result: the whole status block (the wire form of
    status.federation), with only the latest rounds that fit in `limit` bytes of JSON;
    roundsCompleted and privacy always stay."""
    rounds = list(federation.get("rounds") or [])
    out = {**federation, "rounds": rounds}
    while rounds and len(json.dumps(out, separators=(",", ":")).encode()) > limit:
        rounds.pop(0)  # the oldest first: the latest rounds say how the run ended
        out["rounds"] = rounds
    return out
