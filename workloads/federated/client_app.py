"""The Flower ClientApp a SuperNode runs for its site: it reads only the Dataset version named in
its node config and trains with workloads/federated/site.py.

Mods, outermost first: SecAgg+ masks what leaves the site; inside it the update is clipped
(central DP: `fixedclipping_mod`, the server adds the noise) or clipped and noised here (local
DP: `local_noise_mod`). The mods are always installed; each acts only when the server's round
config asks for it, so one ClientApp serves every privacy mode."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import numpy as np
from flwr.app.message import Context, Message
from flwr.app.message_type import MessageType
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.common.typing import Config, NDArrays, Scalar
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from neuraxis.crds.common import DatasetRef
from neuraxis.lake import Lake
from neuraxis.workloads.federated import config as keys
from neuraxis.workloads.federated.site import (
    Normalization,
    read_site_data,
    site_summary,
    train_round,
)

# Round config keys the ServerApp sets.
CFG_NORMALIZATION = "neuraxis-normalization"
CFG_CLASSES = "neuraxis-classes"
CFG_LOCAL_EPOCHS = "neuraxis-local-epochs"
CFG_ROUND = "neuraxis-round"
CFG_LOCAL_NOISE = "neuraxis-local-noise"  # "<clipping norm>,<noise multiplier>" (local DP)
CFG_PROXIMAL_MU = "proximal_mu"  # Flower's FedProx strategy sends this key
# Fit metric: seconds the site spent in its local training this round.
TRAIN_SECONDS = "trainSeconds"


class SiteClient(NumPyClient):
    """One site. get_properties: the summary for the global normalisation; fit: one round."""

    def __init__(self, context: Context):
        self.context = context
        self.job = keys.decode_job(str(context.run_config[keys.RUN_JOB]))
        self.namespace = str(context.run_config[keys.RUN_NAMESPACE])
        version = int(context.node_config[keys.NODE_DATASET_VERSION])
        self.ref = DatasetRef(
            name=str(context.node_config[keys.NODE_DATASET]),
            version=None if version < 0 else version,
        )
        self.site = str(context.node_config[keys.NODE_SITE])
        self.lake = Lake.from_env()

    def get_properties(self, config: Config) -> dict[str, Scalar]:
        data = read_site_data(self.lake, self.namespace, self.job, self.ref, classes=None)
        return {"site": self.site, "summary": json.dumps(site_summary(data))}

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, dict[str, Any]]:
        classes = json.loads(str(config[CFG_CLASSES]))
        data = read_site_data(self.lake, self.namespace, self.job, self.ref, classes or None)
        started = time.perf_counter()
        arrays, rows, metrics = train_round(
            self.job,
            data,
            [np.asarray(p, dtype=np.float32) for p in parameters],
            Normalization.from_json(str(config[CFG_NORMALIZATION])),
            local_epochs=int(config[CFG_LOCAL_EPOCHS]),
            server_round=int(config[CFG_ROUND]),
            proximal_mu=float(config.get(CFG_PROXIMAL_MU, 0.0)),
        )
        # The site's own compute, so a round's time splits into training and the rest.
        metrics[TRAIN_SECONDS] = time.perf_counter() - started
        return list(arrays), rows, {**metrics, "site": self.site}


def clip_and_noise(
    update: NDArrays, start: NDArrays, clipping_norm: float, noise_multiplier: float, seed: int
) -> NDArrays:
    """Local DP: clip the update (new - start) to L2 norm C, add N(0, (sigma*C)^2) to it."""
    deltas = [
        np.asarray(u, dtype=np.float64) - np.asarray(s) for u, s in zip(update, start, strict=True)
    ]
    norm = float(np.sqrt(sum(float((d * d).sum()) for d in deltas)))
    scale = min(1.0, clipping_norm / norm) if norm > 0 else 1.0
    rng = np.random.default_rng(seed)
    return [
        (
            np.asarray(s) + d * scale + rng.normal(0.0, noise_multiplier * clipping_norm, d.shape)
        ).astype(np.float32)
        for s, d in zip(start, deltas, strict=True)
    ]


def local_noise_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip and noise this site's update before it leaves the site (privacy mode local)."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    setting = fit_ins.config.get(CFG_LOCAL_NOISE)
    out: Message = call_next(msg, context)
    if not setting or out.has_error():
        return out
    clipping_norm, noise_multiplier = (float(v) for v in str(setting).split(","))
    fit_res = compat.recorddict_to_fitres(out.content, keep_input=True)
    noised = clip_and_noise(
        parameters_to_ndarrays(fit_res.parameters),
        parameters_to_ndarrays(fit_ins.parameters),
        clipping_norm,
        noise_multiplier,
        # Fresh noise for every site and round (never reused; secrets.randbits is the seed).
        seed=secrets.randbits(63),
    )
    fit_res.parameters = ndarrays_to_parameters(noised)
    out.content = compat.fitres_to_recorddict(fit_res, keep_input=True)
    return out


def _secagg_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's secaggplus_mod, for rounds the server runs with SecAgg+ (it fails on a plain
    train message: secureAggregation.enabled false)."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def _clipping_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's fixedclipping_mod, for rounds whose config carries a clipping norm (central)."""
    if msg.metadata.message_type == MessageType.TRAIN:
        fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        if KEY_CLIPPING_NORM in fit_ins.config:
            return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


def client_fn(context: Context) -> Any:
    return SiteClient(context).to_client()


app = ClientApp(
    client_fn=client_fn, mods=[_secagg_when_asked, _clipping_when_asked, local_noise_mod]
)
