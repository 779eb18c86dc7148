"""Feature drift: a training profile in the artifact (`profile.json`) and the Population
Stability Index (PSI) of a sliding window of served rows against it.

The profile is computed on the training rows at training time: per feature, the decile edges
(the 10%..90% quantiles, duplicates dropped, so a feature with few distinct values gets fewer
bins), the training row count in each bin, and the mean (the explanation baseline). Bin i holds
values in [edges[i-1], edges[i]); the first and last bins are open-ended, so every value has a bin.

PSI = sum over bins of (a - e) * ln(a / e), with a and e the window's and the training's share of
rows in the bin, each raised to at least EPSILON so an empty bin gives a large but finite term.
Rule of thumb: < 0.1 no shift, 0.1-0.2 moderate, > 0.2 significant (PSI_THRESHOLD, the alert).
With a window of W rows and k bins, PSI of rows drawn from the training distribution is about
(k - 1) / W (0.009 for the default 1000 rows and 10 bins), far below the threshold.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from neuraxis.lake import Lake
from neuraxis.workloads.artifact import read_manifest, read_verified

PROFILE = "profile.json"
QUANTILES = [q / 10 for q in range(1, 10)]  # decile edges: up to 10 bins per feature
EPSILON = 1e-4
DEFAULT_WINDOW = 1000
PSI_THRESHOLD = 0.2


class FeatureProfile(BaseModel):
    name: str
    edges: list[float] = Field(description="Increasing inner bin edges (training quantiles).")
    counts: list[int] = Field(description="Training rows per bin (len(edges) + 1 bins).")
    mean: float
    std: float


class TrainingProfile(BaseModel):
    """What the training rows looked like, per feature, in signature order."""

    rows: int
    quantiles: list[float]
    features: list[FeatureProfile]

    @property
    def means(self) -> list[float]:
        return [f.mean for f in self.features]


def bin_indices(edges: npt.ArrayLike, values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The bin of each value: i such that edges[i-1] <= value < edges[i]."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")


def build_profile(names: list[str], x: npt.NDArray[Any]) -> TrainingProfile:
    """The profile of the training rows `x` [rows, features] (columns in `names` order)."""
    if x.ndim != 2 or x.shape[1] != len(names) or x.shape[0] == 0:
        raise ValueError(f"profile needs a non-empty [rows, {len(names)}] matrix, got {x.shape}")
    data = x.astype(np.float64)
    features = []
    for j, name in enumerate(names):
        column = data[:, j]
        edges = np.unique(np.quantile(column, QUANTILES))
        counts = np.bincount(bin_indices(edges, column), minlength=len(edges) + 1)
        features.append(
            FeatureProfile(
                name=name,
                edges=[float(e) for e in edges],
                counts=[int(c) for c in counts],
                mean=float(column.mean()),
                std=float(column.std()),
            )
        )
    return TrainingProfile(rows=int(data.shape[0]), quantiles=QUANTILES, features=features)


def profile_bytes(profile: TrainingProfile) -> bytes:
    return (profile.model_dump_json(indent=2) + "\n").encode()


def parse_profile(data: bytes) -> TrainingProfile:
    return TrainingProfile.model_validate_json(data)


def read_profile_file(lake: Lake, folder: str) -> bytes | None:
    """The verified profile.json of an artifact or bundle, None when it has none (artifacts
    from before profiles, custom trainers)."""
    if PROFILE not in read_manifest(lake, folder):
        return None
    return read_verified(lake, folder, [PROFILE])[PROFILE]


def profile_files(lake: Lake, folder: str) -> dict[str, bytes]:
    """`{profile.json: bytes}` to copy into a bundle built from `folder`, or {} without one."""
    data = read_profile_file(lake, folder)
    return {} if data is None else {PROFILE: data}


def read_profile(lake: Lake, folder: str) -> TrainingProfile | None:
    data = read_profile_file(lake, folder)
    return None if data is None else parse_profile(data)


def psi(expected: npt.NDArray[Any], actual: npt.NDArray[Any], epsilon: float = EPSILON) -> float:
    """PSI of two histograms over the same bins (counts; each normalised to shares)."""
    e = np.maximum(expected / max(expected.sum(), 1), epsilon)
    a = np.maximum(actual / max(actual.sum(), 1), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


class DriftWindow:
    """The last `size` served rows, kept as bin indices with running counts per feature (memory
    is O(size * features) whatever the traffic). Not thread-safe: the server calls it from its
    event loop only."""

    def __init__(self, profile: TrainingProfile, size: int = DEFAULT_WINDOW):
        if size < 1:
            raise ValueError(f"drift window size must be >= 1, got {size}")
        self.profile = profile
        self.size = size
        self._edges = [np.asarray(f.edges, dtype=np.float64) for f in profile.features]
        self._expected = [np.asarray(f.counts, dtype=np.float64) for f in profile.features]
        self._counts = [np.zeros(len(f.counts), dtype=np.int64) for f in profile.features]
        self._rows: deque[npt.NDArray[Any]] = deque()

    def __len__(self) -> int:
        return len(self._rows)

    def observe(self, rows: list[list[float]]) -> None:
        """Add rows (in signature order); the oldest leave once the window is full."""
        matrix = np.asarray(rows, dtype=np.float64)[-self.size :]
        bins = np.stack(
            [bin_indices(edges, matrix[:, j]) for j, edges in enumerate(self._edges)], axis=1
        )
        for row in bins:
            if len(self._rows) == self.size:
                old = self._rows.popleft()
                for j, b in enumerate(old):
                    self._counts[j][b] -= 1
            self._rows.append(row)
            for j, b in enumerate(row):
                self._counts[j][b] += 1

    def psi(self) -> dict[str, float] | None:
        """PSI per feature, or None until the window is full (a part-filled window would flap
        the alert on its sampling noise)."""
        if len(self._rows) < self.size:
            return None
        return {
            f.name: psi(expected, counts.astype(np.float64))
            for f, expected, counts in zip(
                self.profile.features, self._expected, self._counts, strict=True
            )
        }
