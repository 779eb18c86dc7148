"""Column masking before anything is written (table and quarantine alike), and PII tags in the
Delta column metadata.

The hash salt comes from a Secret. In a pod the operator mounts the Secret key as an environment
variable, and `neuraxis run` reads the same variable: NEURAXIS_SECRET_<NAME>_<KEY> (upper case,
`-` and `.` as `_`), as documented on SecretKeyRef. No salt means no run (MissingSalt): an
unsalted hash of an e-mail address is reversible by a dictionary of addresses."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from neuraxis.crds.common import SecretKeyRef, secret_env_prefix
from neuraxis.crds.dataset import MaskedColumn, Privacy
from neuraxis.workloads.etl.errors import MISSING_SALT, SCHEMA_MISMATCH, EtlError, missing_column

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame
    from pyspark.sql.types import StructType

REDACTED = "[REDACTED]"
PII_KEY = "pii"
MASKING_KEY = "masking"
_TEMPORAL = ("timestamp", "timestamp_ntz", "date")


def salt_env_name(ref: SecretKeyRef) -> str:
    """NEURAXIS_SECRET_<NAME>_<KEY>, upper case, `-` and `.` replaced by `_`."""
    return secret_env_prefix(ref.name) + re.sub(r"[-.]", "_", ref.key.upper())


def resolve_salt(privacy: Privacy | None, env: Mapping[str, str]) -> str | None:
    """The salt when a column is hashed; MissingSalt when it is needed and absent or empty."""
    if privacy is None or not any(c.method == "hash" for c in privacy.columns):
        return None
    ref = privacy.salt_secret_ref
    if ref is None:  # the model's rule forbids this; keep the guarantee here too
        raise EtlError(MISSING_SALT, "spec.privacy.saltSecretRef is required for method hash")
    name = salt_env_name(ref)
    salt = env.get(name, "")
    if not salt:
        raise EtlError(
            MISSING_SALT,
            f"spec.privacy.saltSecretRef: no salt for Secret {ref.name!r} key {ref.key!r} "
            f"(environment variable {name} is unset or empty); refusing to write unsalted hashes",
        )
    return salt


@dataclass(frozen=True)
class MaskPlan:
    columns: tuple[MaskedColumn, ...]
    salt: str | None


def plan_masks(privacy: Privacy | None, schema: StructType, salt: str | None) -> MaskPlan:
    """Check the masked columns against the schema (pure)."""
    if privacy is None:
        return MaskPlan(columns=(), salt=None)
    names = schema.fieldNames()
    for i, m in enumerate(privacy.columns):
        where = f"spec.privacy.columns[{i}].column"
        if m.column not in names:
            raise missing_column(where, m.column, names)
        if m.method == "generalize":
            kind = schema[m.column].dataType.simpleString()
            if kind not in _TEMPORAL:
                raise EtlError(
                    SCHEMA_MISMATCH,
                    f"{where}: generalize needs a date or timestamp column; {m.column!r} is {kind}",
                )
    return MaskPlan(columns=tuple(privacy.columns), salt=salt)


def _masked(m: MaskedColumn, salt: str | None, kind: str) -> Column:
    from pyspark.sql import functions as sf

    value = sf.col(m.column)
    if m.method == "hash":
        # sha256(salt || value) as hex; null stays null (there is nothing to hide).
        return sf.sha2(sf.concat(sf.lit(salt or ""), value.cast("string")), 256)
    if m.method == "redact":
        return sf.when(value.isNotNull(), sf.lit(REDACTED)).cast("string")
    if m.method == "truncate":
        return sf.substring(value.cast("string"), 1, m.length or 0)
    granularity = m.granularity or "day"
    if kind == "date":
        if granularity in ("year", "month"):
            return sf.trunc(value, granularity)
        return value  # a date is already at day precision
    return sf.date_trunc(granularity, value)


def apply_masks(df: DataFrame, plan: MaskPlan) -> DataFrame:
    """Replace each masked column by its masked value, tagged in the column metadata."""
    if not plan.columns:
        return df
    replaced = {}
    for m in plan.columns:
        kind = df.schema[m.column].dataType.simpleString()
        metadata = {**df.schema[m.column].metadata, PII_KEY: list(m.tags), MASKING_KEY: m.method}
        replaced[m.column] = _masked(m, plan.salt, kind).alias(m.column, metadata=metadata)
    return df.withColumns(replaced)


def pii_tags(metadata: Mapping[str, object]) -> list[str]:
    tags = metadata.get(PII_KEY, [])
    return [str(t) for t in tags] if isinstance(tags, list) else []
