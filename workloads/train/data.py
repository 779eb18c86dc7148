"""Training data from the lake: a Dataset's Delta table streamed as Arrow record batches and
turned into tensors batch by batch (no pandas copy of the table), plus the one deterministic
train/validation/test split that training and evaluation share."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from neuraxis.lake import Lake

if TYPE_CHECKING:
    import pyarrow as pa
    import torch

TaskType = Literal["classification", "regression"]
SPLIT_BUCKETS = 1000


class DataError(ValueError):
    """The table cannot feed this task; the message names the table and the column."""


def _splitmix64(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """A fast, well-mixed integer hash (vectorised), so the split does not follow row order."""
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


# Split codes in TabularData.split.
TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VALIDATION: "validation", TEST: "test"}


def assign_splits(
    row_index: npt.NDArray[np.int64], validation_split: float, test_split: float, seed: int
) -> npt.NDArray[np.int8]:
    """Each row's split (TRAIN, VALIDATION or TEST) from hash(row index, seed) mod 1000: buckets
    below test_split * 1000 are test, the next validation_split * 1000 validation, the rest train.

    The one split function: training learns on TRAIN, tunes and stops early on VALIDATION and
    never sees TEST; evaluation and the bundle recompute it (same fractions and seed, recorded in
    the artifact) and score on TEST. Row indices count rows in the table version's files sorted
    by path."""
    for name, value in (("validation", validation_split), ("test", test_split)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} split must be in [0, 1), got {value}")
    if validation_split + test_split >= 1:
        raise ValueError(
            f"validation split + test split must be below 1, got {validation_split + test_split}"
        )
    mixed = _splitmix64(row_index.astype(np.uint64) ^ np.uint64(seed))
    bucket = mixed % np.uint64(SPLIT_BUCKETS)
    test_end = np.uint64(round(test_split * SPLIT_BUCKETS))
    validation_end = np.uint64(round((test_split + validation_split) * SPLIT_BUCKETS))
    out = np.full(len(row_index), TRAIN, dtype=np.int8)
    out[bucket < validation_end] = VALIDATION
    out[bucket < test_end] = TEST
    return out


def _is_numeric(dtype: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_integer(dtype) or pa.types.is_floating(dtype))


def select_features(schema: pa.Schema, label: str, requested: list[str], table: str) -> list[str]:
    """The feature columns: `requested` (each must exist and be numeric), or every numeric column
    except the label, in schema order."""
    names = list(schema.names)
    if label not in names:
        raise DataError(f"{table}: spec.task.label {label!r} is not a column (have {names})")
    if requested:
        for name in requested:
            if name not in names:
                raise DataError(f"{table}: spec.task.features {name!r} is not a column")
            if not _is_numeric(schema.field(name).type):
                raise DataError(
                    f"{table}: spec.task.features {name!r} is {schema.field(name).type}, "
                    "not numeric"
                )
        return list(requested)
    chosen = [n for n in names if n != label and _is_numeric(schema.field(n).type)]
    if not chosen:
        raise DataError(f"{table}: no numeric columns besides the label {label!r}")
    return chosen


def label_strings(values: pa.Array) -> npt.NDArray[np.str_]:
    """Label values as strings: 1, 1.0 and "1" are different classes only when they differ
    as text, and integer-valued floats print like integers (a 0.0/1.0 label reads "0"/"1")."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if values.null_count:
        raise DataError("label has null values")
    if pa.types.is_floating(values.type):
        arr = values.to_numpy(zero_copy_only=False)
        if np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)
        out: npt.NDArray[np.str_] = np.asarray(arr, dtype=str)
        return out
    text: npt.NDArray[np.str_] = np.asarray(
        pc.cast(values, pa.string()).to_numpy(zero_copy_only=False), dtype=str
    )
    return text


@dataclass
class DatasetLineage:
    """Which data a model saw: the table, its version and the content digest its Dataset run
    recorded for that version (the digest in the Dataset status)."""

    name: str
    uri: str
    version: int
    digest: str


@dataclass
class TabularData:
    """Feature matrix and targets of a table version, with each row's split (assign_splits)."""

    features: list[str]
    label: str
    task: TaskType
    x: torch.Tensor
    y: torch.Tensor
    split: torch.Tensor  # int8 per row: TRAIN, VALIDATION or TEST
    classes: list[str] = field(default_factory=list)
    lineage: DatasetLineage | None = None

    def rows_in(self, split: int) -> torch.Tensor:
        return self.split == split

    @property
    def train_x(self) -> torch.Tensor:
        return self.x[self.rows_in(TRAIN)]

    @property
    def train_y(self) -> torch.Tensor:
        return self.y[self.rows_in(TRAIN)]

    @property
    def val_x(self) -> torch.Tensor:
        return self.x[self.rows_in(VALIDATION)]

    @property
    def val_y(self) -> torch.Tensor:
        return self.y[self.rows_in(VALIDATION)]

    @property
    def test_x(self) -> torch.Tensor:
        return self.x[self.rows_in(TEST)]

    @property
    def test_y(self) -> torch.Tensor:
        return self.y[self.rows_in(TEST)]

    def without_test(self) -> TabularData:
        """The same data with the test rows dropped: what training and tuning get, so no code
        path of theirs can touch a test row."""
        keep = ~self.rows_in(TEST)
        return replace(self, x=self.x[keep], y=self.y[keep], split=self.split[keep])

    def split_rows(self) -> dict[str, int]:
        """How many rows each split has (recorded with the artifact and in the card)."""
        return {name: int(self.rows_in(code).sum()) for code, name in SPLIT_NAMES.items()}


def recorded_digest(uri: str, version: int, storage_options: dict[str, str] | None) -> str:
    """The content digest the Dataset run recorded in the commit of `version` (its userMetadata,
    written by workloads/etl/delta_io.py): the one digest of a table version, never recomputed.

    The history is read from the latest snapshot: delta-rs numbers the history of a table
    opened at an older version wrongly."""
    import json

    from deltalake import DeltaTable

    for entry in DeltaTable(uri, storage_options=storage_options).history():
        if entry.get("version") != version:
            continue
        try:
            meta = json.loads(entry.get("userMetadata") or "{}")
        except ValueError:
            meta = {}
        digest = meta.get("digest") if isinstance(meta, dict) else None
        if isinstance(digest, str) and digest.startswith("sha256:"):
            return digest
        break
    raise DataError(
        f"{uri}: version {version} records no content digest in its commit "
        "(only a table written by a Dataset run can be trained on)"
    )


def read_table(
    lake: Lake,
    namespace: str,
    dataset: str,
    *,
    label: str,
    task: TaskType,
    features: list[str],
    version: int | None = None,
    validation_split: float = 0.0,
    test_split: float = 0.0,
    seed: int = 0,
    classes: list[str] | None = None,
    single_class_ok: bool = False,
) -> TabularData:
    """Stream `tables/<ns>/<dataset>` (at `version`, default latest) into tensors.

    `classes` fixes the class order (evaluation uses the model's); otherwise the sorted distinct
    label strings become the classes. `single_class_ok`: one federated site may hold a single
    label value (the federation as a whole has several)."""
    import torch
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    uri = lake.uri(Lake.table_path(namespace, dataset))
    try:
        table = DeltaTable(uri, version=version, storage_options=lake.storage_options())
    except TableNotFoundError as exc:
        raise DataError(f"{uri}: no Delta table (has Dataset {dataset!r} run?)") from exc
    arrow_ds = table.to_pyarrow_dataset()
    names = select_features(arrow_ds.schema, label, features, uri)
    columns = [*names, label]
    xs: list[torch.Tensor] = []
    labels: list[npt.NDArray[np.str_] | npt.NDArray[np.float32]] = []
    # Sorted fragments make row indices, hence the split, the same on every read of a version.
    for fragment in sorted(arrow_ds.get_fragments(), key=lambda f: str(f.path)):
        for batch in fragment.to_batches(columns=columns):
            if batch.num_rows == 0:
                continue
            block = np.empty((batch.num_rows, len(names)), dtype=np.float32)
            for i, name in enumerate(names):
                col = batch.column(name)
                if col.null_count:
                    raise DataError(f"{uri}: feature column {name!r} has null values")
                block[:, i] = col.to_numpy(zero_copy_only=False)
            xs.append(torch.from_numpy(block))
            label_col = batch.column(label)
            if task == "classification":
                labels.append(label_strings(label_col))
            else:
                if label_col.null_count or not _is_numeric(label_col.type):
                    raise DataError(f"{uri}: regression label {label!r} must be numeric, no nulls")
                labels.append(label_col.to_numpy(zero_copy_only=False).astype(np.float32))
    if not xs:
        raise DataError(f"{uri}: the table has no rows")
    x = torch.cat(xs)
    if task == "classification":
        raw = np.concatenate(labels).astype(str)
        class_list = classes if classes is not None else sorted(set(raw.tolist()))
        index = {c: i for i, c in enumerate(class_list)}
        unknown = sorted(set(raw.tolist()) - set(index))
        if unknown:
            raise DataError(f"{uri}: label values {unknown[:5]} are not classes of the model")
        if classes is None and len(class_list) < 2 and not single_class_ok:
            raise DataError(f"{uri}: classification needs at least 2 label values")
        y = torch.from_numpy(np.array([index[v] for v in raw.tolist()], dtype=np.int64))
    else:
        class_list = []
        y = torch.from_numpy(np.concatenate(labels))
    split = assign_splits(np.arange(len(x), dtype=np.int64), validation_split, test_split, seed)
    lineage = DatasetLineage(
        name=dataset,
        uri=uri,
        version=int(table.version()),
        digest=recorded_digest(uri, int(table.version()), lake.storage_options()),
    )
    return TabularData(
        features=names,
        label=label,
        task=task,
        x=x,
        y=y,
        split=torch.from_numpy(split),
        classes=class_list,
        lineage=lineage,
    )
