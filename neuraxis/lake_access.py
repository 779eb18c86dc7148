"""Scoped lake credentials: what each workload role may reach, as an S3 policy, and the
short-lived keys minted for it. The one contract the operator, the local runner and the tests
share (the operator never imports workload internals; workloads only read the env it carries).

A run gets a `LakeGrant` (lake-relative prefixes to read, write, or append to) built by the
constructor of its role; `session_policy` turns it into the IAM policy document an STS
`AssumeRole` call takes as its inline session policy. The minted keys can do only what both the
caller's own policy and the session policy allow, so MinIO (or S3) itself refuses everything
else with 403 AccessDenied. The same call works against AWS STS.

Roles (see the README, "Who can read what"):
    etl             read its inputs; write its own table (and quarantine) and its run's result;
                    append its namespace's lineage
    train           read its Dataset's table; write its run folder (and run-unique artifact)
    custom-trainer  its run folder; and only what its env contract names when given (its
                    Dataset's table to read, its artifact folder to write)
    evaluate        read its artifact and held-out table; write the artifact's card (and the
                    manifest that lists it) and its run folder (a backtest: the same)
    bundle          what evaluate may, and write its run-unique edge bundle folder
    serve           read its model artifact; append its inference-log prefix
    edge            read its bundle; append its inference-log and health prefixes
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlparse

from neuraxis.crds.trainingjob import TrainingJob
from neuraxis.lake import Lake, S3Settings

Role = Literal["etl", "train", "custom-trainer", "evaluate", "bundle", "serve", "edge"]
ROLES: tuple[Role, ...] = (
    "etl", "train", "custom-trainer", "evaluate", "bundle", "serve", "edge"
)  # fmt: skip

# STS bounds. AWS: 900 s to the role's MaxSessionDuration (at most 12 h). MinIO accepts 900 s
# to 365 days (measured: 31 536 000 s works, one day more is "invalid token expiry").
MIN_DURATION_S = 900
MAX_DURATION_S_AWS = 12 * 3600
MAX_DURATION_S_MINIO = 365 * 86400
# STS session policies: MinIO refuses more than 2 048 characters, AWS more than 2 048 packed.
MAX_POLICY_CHARS = 2048
DEFAULT_DURATION_S = MAX_DURATION_S_AWS
# Re-mint when less than this share of the lifetime is left: a run that starts just before the
# refresh still has hours of validity.
REFRESH_FRACTION = 1 / 3

# Secret keys besides the S3Settings ones, and the annotations the operator reads back.
SESSION_TOKEN_KEY = "AWS_SESSION_TOKEN"
EXPIRES_ANNOTATION = "neuraxis.dev/lake-credentials-expire"
POLICY_ANNOTATION = "neuraxis.dev/lake-policy-digest"
ROLE_LABEL = "neuraxis.dev/lake-role"

READ_ACTIONS = ("s3:GetObject",)
WRITE_ACTIONS = (
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",  # Delta commits on S3 without a lock rename by copy + delete
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
)
APPEND_ACTIONS = ("s3:PutObject",)  # logs: no reads, no deletes
# Roles whose code may run Spark (the ETL; a user's image): their policies also name each
# folder's own key (see prefix_policy).
SPARK_ROLES: tuple[Role, ...] = ("etl", "custom-trainer")


class LakeScopeError(ValueError):
    """A grant that would reach outside its namespace; the message names the prefix."""


@dataclass(frozen=True)
class LakeGrant:
    """Lake-relative prefixes (folders, no trailing slash) one run of `role` may reach, and
    `write_files`: single objects it may rewrite (an artifact's manifest)."""

    role: Role
    namespace: str
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    append: tuple[str, ...] = ()
    write_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Writes never leave the namespace; reads may (a cross-namespace input the reference
        # checks allowed), but only when a constructor was given them explicitly.
        for prefix in (*self.write, *self.append, *self.write_files):
            if not in_namespace(prefix, self.namespace):
                raise LakeScopeError(
                    f"{self.role} in {self.namespace}: cannot write {prefix!r}, which is "
                    f"not under a <kind>/{self.namespace}/ prefix of the lake"
                )
        for prefix in (*self.read, *self.write, *self.append, *self.write_files):
            if not prefix or prefix.startswith("/") or ".." in prefix.split("/"):
                raise LakeScopeError(f"{self.role}: {prefix!r} is not a lake-relative folder")
            if "*" in prefix.rstrip("*") or "?" in prefix:
                # Only a trailing `*` (the runs of a CronJob: `runs/<ns>/<name>-*`).
                raise LakeScopeError(f"{self.role}: {prefix!r} has a wildcard before its end")


def in_namespace(prefix: str, namespace: str) -> bool:
    parts = prefix.split("/")
    return len(parts) >= 2 and parts[1] == namespace and all(parts)


def etl_grant(
    namespace: str, table: str, inputs: Sequence[str], outputs: Sequence[str] = (), *, run: str
) -> LakeGrant:
    """An ETL run: read `inputs` (tables, raw log folders), write its table, its quarantine,
    any further `outputs` (an edge-logs table it ingests) and its run folder `run` (the
    result; `runs/<ns>/<name>-*` for the runs of a schedule), append its namespace's lineage."""
    return LakeGrant(
        "etl",
        namespace,
        read=tuple(sorted(set(inputs))),
        write=(
            Lake.table_path(namespace, table),
            Lake.quarantine_path(namespace, table),
            *sorted(set(outputs)),
            run,
        ),
        append=(f"{Lake.LINEAGE_PREFIX}/{namespace}",),
    )


def train_grant(
    namespace: str, dataset_table: str, run_id: str, *, artifact: str | None = None
) -> LakeGrant:
    """A training run of the built-in trainer: its Dataset's table, its run folder, and its
    run-unique artifact folder when it registers a model (`models/<ns>/<m>/<v>/<run-id>`)."""
    artifact_folder = (artifact,) if artifact else ()
    return LakeGrant(
        "train",
        namespace,
        read=(dataset_table,),
        write=(Lake.run_path(namespace, run_id), *artifact_folder),
    )


def artifact_folder(job: TrainingJob, namespace: str, run_id: str) -> str:
    """Where a training run's artifact goes: a folder of this run under the registered
    version's, or the run's own. The run id makes it unique, so retraining after a spec edit
    writes a new folder and never touches the files an earlier (maybe Approved) version was
    pinned to; it is also what a run's grant may write."""
    register = job.spec.register_
    if register is None:
        return f"{Lake.run_path(namespace, run_id)}/model"
    version = register.version_name or f"{register.model}-{job.metadata.name}"
    return f"{Lake.model_path(namespace, register.model, version)}/{run_id}"


def custom_trainer_grant(
    namespace: str,
    run_id: str,
    *,
    dataset_table: str | None = None,
    artifact: str | None = None,
) -> LakeGrant:
    """A user's trainer image: its run folder; and only what its environment contract names
    besides (`NEURAXIS_DATASET_URI` read, `NEURAXIS_OUTPUT_URI` write) when given."""
    return LakeGrant(
        "custom-trainer",
        namespace,
        read=(dataset_table,) if dataset_table else (),
        write=(Lake.run_path(namespace, run_id), *((artifact,) if artifact else ())),
    )


def card_writes(artifact: str, namespace: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What writing a model card changes in an artifact folder, as (folders, files): the card
    folder and the manifest that lists it; nothing for an artifact of another namespace (a
    granted cross-namespace source is read, never written: its card stays its owner's)."""
    if not in_namespace(artifact, namespace):
        return (), ()
    return (f"{artifact}/{Lake.CARD_FOLDER}",), (f"{artifact}/{Lake.ARTIFACT_MANIFEST}",)


def evaluate_grant(namespace: str, artifact: str, heldout: str, run: str) -> LakeGrant:
    """An evaluation or a backtest: its artifact and its held-out table (the evaluation
    Dataset's, else the training Dataset's); writes the card and its run folder `run`
    (`runs/<ns>/<name>-*` for a backtest schedule's Jobs)."""
    card, manifest = card_writes(artifact, namespace)
    return LakeGrant(
        "evaluate",
        namespace,
        read=tuple(sorted({artifact, heldout})),
        write=(*card, run),
        write_files=manifest,
    )


def bundle_grant(namespace: str, artifact: str, heldout: str, bundle: str, run: str) -> LakeGrant:
    """An edge bundle build: what an evaluation reads (it weighs int8 against fp32 on the
    same rows) and the card it extends; writes its run-unique bundle folder and run folder."""
    card, manifest = card_writes(artifact, namespace)
    return LakeGrant(
        "bundle",
        namespace,
        read=tuple(sorted({artifact, heldout})),
        write=(*card, bundle, run),
        write_files=manifest,
    )


def serve_grant(namespace: str, artifact: str, deployment: str) -> LakeGrant:
    """A predictor: its one model artifact folder; appends its inference logs."""
    return LakeGrant(
        "serve",
        namespace,
        read=(artifact,),
        append=(Lake.inference_logs_path(namespace, deployment),),
    )


def edge_grant(namespace: str, bundle: str, deployment: str) -> LakeGrant:
    """An edge agent (on a site outside the cluster): its bundle; appends logs and health."""
    return LakeGrant(
        "edge",
        namespace,
        read=(bundle,),
        append=(
            Lake.inference_logs_path(namespace, deployment),
            Lake.edge_health_path(namespace, deployment),
        ),
    )


def bucket_and_root(lake_root: str) -> tuple[str, str]:
    """`s3://bucket/prefix` -> (`bucket`, `prefix`) (prefix without slashes, maybe empty)."""
    parsed = urlparse(lake_root)
    if parsed.scheme not in ("s3", "s3a") or not parsed.netloc:
        raise LakeScopeError(f"{lake_root}: scoped credentials need an s3:// lake")
    return parsed.netloc, parsed.path.strip("/")


def session_policy(lake_root: str, grant: LakeGrant) -> dict[str, Any]:
    """The IAM policy document (session policy on STS, or a role policy) of `grant`."""
    return prefix_policy(
        lake_root,
        read=grant.read,
        write=grant.write,
        append=grant.append,
        write_files=grant.write_files,
        folder_keys=grant.role in SPARK_ROLES,
    )


def namespace_policy(lake_root: str, namespace: str) -> dict[str, Any]:
    """Read and write on every folder of one namespace: the bound of a namespace's cloud
    identity (IRSA role), inside which the per-run grants are narrower still."""
    return prefix_policy(lake_root, write=Lake.namespace_prefixes(namespace))


def prefix_policy(
    lake_root: str,
    *,
    read: Sequence[str] = (),
    write: Sequence[str] = (),
    append: Sequence[str] = (),
    write_files: Sequence[str] = (),
    folder_keys: bool = True,
) -> dict[str, Any]:
    """Objects under each prefix (`<prefix>/*`) with the actions of its kind of access, the
    single objects of `write_files`, and listing limited to the read and write prefixes.
    `folder_keys`: also each read or write folder's own key, which Hadoop's s3a probes with
    HEAD (403 there would read as an error); only code that may run Spark needs it. Compact:
    STS takes session policies of at most 2 048 characters."""
    bucket, root = bucket_and_root(lake_root)

    def key(prefix: str) -> str:
        return f"{root}/{prefix}" if root else prefix

    def objects(prefix: str, folder_key: bool) -> list[str]:
        """`<prefix>/*`, a trailing-`*` pattern as it is, and the folder's own key."""
        if prefix.endswith("*"):
            return [f"arn:aws:s3:::{bucket}/{key(prefix)}"]
        own = [f"arn:aws:s3:::{bucket}/{key(prefix)}"] if folder_key else []
        return [*own, f"arn:aws:s3:::{bucket}/{key(prefix)}/*"]

    statements: list[dict[str, Any]] = []
    for sid, actions, resources in (
        ("Read", READ_ACTIONS, [r for p in read for r in objects(p, folder_keys)]),
        ("Write", WRITE_ACTIONS, [
            *(r for p in write for r in objects(p, folder_keys)),
            *(f"arn:aws:s3:::{bucket}/{key(f)}" for f in write_files),
        ]),
        ("Append", APPEND_ACTIONS, [r for p in append for r in objects(p, False)]),
    ):  # fmt: skip
        if resources:
            statements.append(
                {"Sid": sid, "Effect": "Allow", "Action": list(actions), "Resource": resources}
            )
    folders = {key(p).rstrip("*") for p in (*read, *write)}
    # A folder inside another listed one is covered by that one's `/*`.
    listed = sorted(f for f in folders if not any(f.startswith(o + "/") for o in folders))
    if listed:
        # Listing is per bucket; the condition keeps it to the granted folders (Delta lists
        # `_delta_log/`, `Lake.exists` lists the folder itself).
        statements.append(
            {
                "Sid": "List",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
                "Condition": {
                    "StringLike": {"s3:prefix": [x for p in listed for x in (p, f"{p}/*")]}
                },
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def policy_json(lake_root: str, grant: LakeGrant) -> str:
    """Compact and deterministic (AWS packs session policies into 2 048 characters)."""
    return json.dumps(session_policy(lake_root, grant), sort_keys=True, separators=(",", ":"))


def policy_digest(lake_root: str, grant: LakeGrant) -> str:
    return hashlib.sha256(policy_json(lake_root, grant).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ScopedCredentials:
    access_key: str
    secret_key: str
    session_token: str
    expires: datetime


def session_name(grant: LakeGrant) -> str:
    """Shows in the audit log and CloudTrail: role and namespace (2-64 chars, [\\w+=,.@-])."""
    return f"neuraxis-{grant.role}-{grant.namespace}"[:64]


def mint(
    lake_root: str,
    grant: LakeGrant,
    caller: S3Settings,
    *,
    duration_s: int = DEFAULT_DURATION_S,
    role_arn: str = "arn:aws:iam::000000000000:role/neuraxis-lake",
) -> ScopedCredentials:
    """Keys for exactly `grant`, from STS `AssumeRole` with the caller's own (broader) keys.
    MinIO ignores `role_arn` (the caller's own identity is the parent); AWS needs the role the
    operator may assume. Raises LakeScopeError with the STS reason when refused."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    if not MIN_DURATION_S <= duration_s <= MAX_DURATION_S_MINIO:
        raise LakeScopeError(
            f"duration {duration_s}s: must be {MIN_DURATION_S}..{MAX_DURATION_S_MINIO} seconds"
        )
    policy = policy_json(lake_root, grant)
    if len(policy) > MAX_POLICY_CHARS:
        raise LakeScopeError(
            f"the lake policy of {grant.role} in {grant.namespace} is {len(policy)} characters; "
            f"STS takes at most {MAX_POLICY_CHARS}: shorter resource names (model, version, "
            "Dataset, run) shorten its folder paths"
        )
    sts = boto3.client(
        "sts",
        endpoint_url=caller.endpoint,
        aws_access_key_id=caller.access_key,
        aws_secret_access_key=caller.secret_key,
        aws_session_token=caller.session_token,
        region_name=caller.region,
    )
    try:
        answer = sts.assume_role(
            RoleArn=role_arn,
            RoleSessionName=session_name(grant),
            Policy=policy,
            DurationSeconds=duration_s,
        )
    except (ClientError, BotoCoreError) as exc:
        raise LakeScopeError(
            f"STS AssumeRole for {grant.role} in {grant.namespace} at "
            f"{caller.endpoint or 'AWS'} failed: {exc}"
        ) from exc
    creds = answer["Credentials"]
    return ScopedCredentials(
        creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"], creds["Expiration"]
    )


def credentials_env(creds: ScopedCredentials, caller: S3Settings) -> dict[str, str]:
    """The environment (Secret data) a pod of the grant gets: what `S3Settings` reads."""
    env = {
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        SESSION_TOKEN_KEY: creds.session_token,
        "AWS_REGION": caller.region,
    }
    if caller.endpoint:
        env["AWS_ENDPOINT_URL"] = caller.endpoint
    return env


def scoped_secret_name(role: Role, owner: str) -> str:
    """`neuraxis-lake-<role>-<owner>`; a long owner name is cut and made unique by a hash."""
    name = f"neuraxis-lake-{role}-{owner}"
    if len(name) <= 253:
        return name
    return f"{name[:236]}-{hashlib.sha256(owner.encode()).hexdigest()[:16]}"


def scoped_secret(
    name: str,
    namespace: str,
    grant: LakeGrant,
    lake_root: str,
    creds: ScopedCredentials,
    caller: S3Settings,
) -> dict[str, Any]:
    """The Secret the operator owns and the grant's pods mount (`envFrom`)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {ROLE_LABEL: grant.role},
            "annotations": {
                EXPIRES_ANNOTATION: creds.expires.astimezone(UTC).isoformat(),
                POLICY_ANNOTATION: policy_digest(lake_root, grant),
            },
        },
        "type": "Opaque",
        "stringData": credentials_env(creds, caller),
    }


def needs_refresh(
    annotations: Mapping[str, str],
    lake_root: str,
    grant: LakeGrant,
    now: datetime,
    duration_s: int = DEFAULT_DURATION_S,
) -> bool:
    """Mint again when the Secret is missing its stamps, was minted for another policy, or has
    less than REFRESH_FRACTION of its lifetime left."""
    if annotations.get(POLICY_ANNOTATION) != policy_digest(lake_root, grant):
        return True
    try:
        expires = datetime.fromisoformat(annotations[EXPIRES_ANNOTATION])
    except (KeyError, ValueError):
        return True
    return expires - now < timedelta(seconds=duration_s * REFRESH_FRACTION)
